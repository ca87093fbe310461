//! One run against a target: open every client and wait for its subscribe ack, prove with a
//! probe event per partition that the gateway reads past this point, produce the events,
//! wait until every expected delivery arrived (or deliveries stop), then close the clients
//! and turn what they saw into a `RunResult`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::churn;
use crate::cli::Plan;
use crate::client::{self, Counters, Ending, Outcome, Probe};
use crate::host::Pid;
use crate::kafka::{EventProducer, ProduceSpec};
use crate::report::{
    ChurnResult, ClientRow, Closes, Connections, Delivery, Events, GatewayLatency, Latency,
    Process, RunResult, Throughput, CLIENT_ROWS,
};
use crate::scrape::Buckets;
use crate::target::Target;
use crate::workload::Mix;

/// How long the probe may take to come through.
const PROBE_WAIT: Duration = Duration::from_secs(30);
/// After the last expected delivery, how long late duplicates are still counted.
const SETTLE: Duration = Duration::from_millis(500);
/// Interval of progress updates and delivery samples.
const TICK: Duration = Duration::from_millis(100);
/// How long the gateway may take to hold every seeded row in its snapshot of `cdc.order`.
const SEED_WAIT: Duration = Duration::from_secs(30);
/// The seed is produced again after this long without every row in the snapshot (a gateway
/// that began reading after the first seed missed it).
const SEED_RETRY: Duration = Duration::from_secs(5);

/// What varies between the runs of one invocation (scenario e steps the rate).
pub struct RunSpec {
    pub run: u32,
    pub events: u64,
    pub rate: u64,
    pub target_deliveries_per_sec: Option<f64>,
}

/// Gateway, tansu and bench CPU seconds at one moment.
struct CpuMark {
    gateway: Option<f64>,
    tansu: Option<f64>,
    bench: Option<f64>,
}

impl CpuMark {
    fn now(target: &Target) -> Self {
        Self {
            gateway: target.gateway.and_then(|pid| Pid::Of(pid).cpu_seconds()),
            tansu: target.tansu.and_then(|pid| Pid::Of(pid).cpu_seconds()),
            bench: Pid::Me.cpu_seconds(),
        }
    }
}

fn since(end: Option<f64>, start: Option<f64>) -> Option<f64> {
    Some(end? - start?)
}

pub async fn run(
    target: &mut Target,
    plan: &Plan,
    spec: &RunSpec,
    interrupted: &watch::Receiver<bool>,
) -> anyhow::Result<RunResult> {
    let clients = plan.connections;
    let settings = Arc::new(client::Settings {
        url: target.ws_url.clone(),
        addr: target.ws_addr,
        sources: crate::host::source_addresses(clients, target.ws_addr.ip()),
        ws_config: WebSocketConfig::default()
            .read_buffer_size(plan.read_buffer as usize)
            .write_buffer_size(0),
        connect_timeout: plan.connect_timeout,
        mix: plan.mix,
        clients,
        run: spec.run,
        events: spec.events,
    });
    // Scenario f: seed the rows every snapshot should hold, before the steady clients
    // subscribe (they must not see the seed).
    let churn = churn_settings(target, plan);
    let seed_seconds = match &churn {
        Some(churn) => seed(target, plan, churn, interrupted).await?,
        None => 0.0,
    };
    // The probe connects first, so a connection limit that the clients fill cannot keep it out.
    let probe = match spec.events {
        0 => None,
        _ => Some(
            Probe::open(&settings)
                .await
                .context("opening the probe connection")?,
        ),
    };
    let gateway = target.gateway.map(Pid::Of);
    let rss = |field| gateway.and_then(|pid| pid.status_bytes(field));
    let rss_before = rss("VmRSS");
    let counters = Arc::new(Counters::default());
    let (stop, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(plan.open_concurrency as usize));
    let failed_clients = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let task = client::run(
                i,
                Arc::clone(&settings),
                Arc::clone(&gate),
                Arc::clone(&counters),
                stop_rx.clone(),
            );
            let failed_clients = Arc::clone(&failed_clients);
            tokio::spawn(async move {
                let outcome = task.await;
                if matches!(outcome.ending, Ending::NotConnected(_)) {
                    failed_clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(outcome.client);
                }
                outcome
            })
        })
        .collect();

    // Connect.
    let started = Instant::now();
    let bar = progress_bar(u64::from(clients), "connect");
    loop {
        let subscribed = counters.subscribed.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        bar.set_position(subscribed + failed);
        bar.set_message(format!("{failed} failed"));
        if subscribed + failed >= u64::from(clients) || *interrupted.borrow() {
            break;
        }
        target.check_alive()?;
        tokio::time::sleep(TICK).await;
    }
    bar.finish_and_clear();
    let connect_seconds = started.elapsed().as_secs_f64();
    let opened = counters.subscribed.load(Ordering::Relaxed);
    eprintln!(
        "run {}: {opened} of {clients} clients subscribed ({} failed) in {connect_seconds:.2} s",
        spec.run,
        counters.failed.load(Ordering::Relaxed)
    );

    // Produce and wait for the deliveries.
    let mut flow = Flow::default();
    match probe {
        Some(probe) if !*interrupted.borrow() => {
            flow = deliver(
                target,
                plan,
                spec,
                probe,
                &counters,
                &failed_clients,
                interrupted,
            )
            .await?;
        }
        Some(_) => flow.drain = "interrupted",
        None => {
            flow.drain = "no_events";
            flow.cpu_start = Some(CpuMark::now(target));
        }
    }
    // CPU is counted while events flow, or over the hold when there are none.
    let drained = (spec.events > 0).then(|| CpuMark::now(target));
    if !plan.hold.is_zero() && !*interrupted.borrow() {
        eprintln!("holding {opened} connections for {:?}", plan.hold);
        let mut interrupted = interrupted.clone();
        let _ = tokio::time::timeout(plan.hold, interrupted.wait_for(|i| *i)).await;
    }
    let cpu_end = drained.unwrap_or_else(|| CpuMark::now(target));
    let rss_loaded = rss("VmRSS");
    let peak_rss = rss("VmHWM");

    // Close every client and collect what it saw.
    let _ = stop.send(true);
    let bar = progress_bar(u64::from(clients), "close");
    let mut outcomes = Vec::with_capacity(clients as usize);
    for task in tasks {
        outcomes.push(task.await.context("a client task failed")?);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let cpu_start = flow
        .cpu_start
        .take()
        .unwrap_or_else(|| CpuMark::now(target));
    let churn_result = flow.churn.take();
    let metrics = flow.metrics.take();
    let mut result = summarize(plan, spec, &outcomes, flow);
    result.gateway_latency =
        metrics.map(|(before, after)| gateway_latency(&before, &after, &result));
    result.connections.seconds = connect_seconds;
    result.churn = churn.map(|settings| {
        let mut churn = churn_result.unwrap_or_else(|| ChurnResult {
            target_per_sec: settings.rate,
            concurrency: settings.concurrency,
            seeded_rows: settings.rows,
            ..ChurnResult::default()
        });
        churn.seed_seconds = seed_seconds;
        churn
    });
    let delivered = result.delivery.received;
    let gateway_cpu = since(cpu_end.gateway, cpu_start.gateway);
    result.gateway = target.gateway.map(|pid| Process {
        pid,
        rss_before_bytes: rss_before,
        rss_loaded_bytes: rss_loaded,
        rss_per_connection_bytes: match (rss_before, rss_loaded) {
            (Some(before), Some(loaded)) if opened > 0 => {
                Some((loaded as f64 - before as f64) / opened as f64)
            }
            _ => None,
        },
        peak_rss_bytes: peak_rss,
        cpu_seconds: gateway_cpu,
        cpu_ns_per_delivery: gateway_cpu
            .filter(|_| delivered > 0)
            .map(|cpu| cpu * 1e9 / delivered as f64),
    });
    result.tansu_cpu_seconds = since(cpu_end.tansu, cpu_start.tansu);
    result.bench_cpu_seconds = since(cpu_end.bench, cpu_start.bench);
    Ok(result)
}

/// What happened between the first event produced and the end of the drain.
#[derive(Default)]
struct Flow {
    drain: &'static str,
    expected: Vec<u64>,
    events: Option<Events>,
    first_produce_us: Option<u64>,
    /// (seconds after production started, distinct deliveries so far).
    samples: Vec<(f64, u64)>,
    cpu_start: Option<CpuMark>,
    churn: Option<ChurnResult>,
    /// The gateway's latency histograms before the first event and after the drain.
    metrics: Option<(String, String)>,
}

/// What scenario f's churn connections share, when the plan has a churn.
fn churn_settings(target: &Target, plan: &Plan) -> Option<Arc<churn::Settings>> {
    plan.churn.as_ref().map(|churn| {
        Arc::new(churn::Settings::new(
            target.ws_url.clone(),
            target.ws_addr,
            plan.connect_timeout,
            churn,
        ))
    })
}

/// Produces `settings.rows` distinct rows of `order` (run `SEED_RUN`) and waits until a
/// snapshot of `cdc.order` holds them all; returns the seconds that took.
async fn seed(
    target: &Target,
    plan: &Plan,
    settings: &churn::Settings,
    interrupted: &watch::Receiver<bool>,
) -> anyhow::Result<f64> {
    let rows = settings.rows;
    let producer = Arc::new(EventProducer::new(
        &target.brokers,
        &plan.source_topic,
        u64::from(rows),
        &plan.producer_properties,
    )?);
    let started = Instant::now();
    let mut seeded_at: Option<Instant> = None;
    loop {
        if seeded_at.is_none_or(|at| at.elapsed() >= SEED_RETRY) {
            let seeder = Arc::clone(&producer);
            let spec = ProduceSpec {
                run: crate::workload::SEED_RUN,
                events: u64::from(rows),
                rate: 0,
                ids: rows,
                pad: String::new(),
                deadline: SEED_WAIT,
            };
            let done = tokio::task::spawn_blocking(move || {
                seeder.produce(&spec, &AtomicU64::new(0), &AtomicBool::new(false))
            })
            .await
            .context("the seed producer thread failed")?;
            let ledger = producer.ledger();
            let acknowledged = ledger.acknowledged().count();
            if acknowledged < rows as usize {
                bail!(
                    "the broker acknowledged {acknowledged} of the {rows} seed rows: {}",
                    ledger
                        .first_error()
                        .or(done.flush_error)
                        .unwrap_or_else(|| "no error reported".into())
                );
            }
            seeded_at = Some(Instant::now());
        }
        let held = match churn::snapshot_once(settings).await {
            Ok(snapshot) if snapshot.rows >= u64::from(rows) => {
                let seconds = started.elapsed().as_secs_f64();
                eprintln!(
                    "run: seeded {rows} rows of cdc.order; a snapshot holds {} rows ({}) \
                     after {seconds:.2} s",
                    snapshot.rows,
                    if snapshot.complete {
                        "complete"
                    } else {
                        "incomplete"
                    },
                );
                return Ok(seconds);
            }
            Ok(snapshot) => format!("{} rows", snapshot.rows),
            Err(failure) => failure.detail,
        };
        if *interrupted.borrow() {
            bail!("interrupted while seeding the snapshot rows");
        }
        if started.elapsed() > SEED_WAIT {
            bail!(
                "after {SEED_WAIT:?} a snapshot of cdc.order still had {} where {rows} rows were \
                 seeded: does the gateway read --source-topic {}, with its snapshot cache on \
                 (--snapshot-rows)?",
                held,
                plan.source_topic
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn deliver(
    target: &mut Target,
    plan: &Plan,
    spec: &RunSpec,
    mut probe: Probe,
    counters: &Counters,
    failed_clients: &Mutex<Vec<u32>>,
    interrupted: &watch::Receiver<bool>,
) -> anyhow::Result<Flow> {
    let churn = churn_settings(target, plan);
    let producer = Arc::new(EventProducer::new(
        &target.brokers,
        &plan.source_topic,
        spec.events,
        &plan.producer_properties,
    )?);
    let mut missing: BTreeSet<i32> = (0..target.partitions).collect();
    let deadline = Instant::now() + PROBE_WAIT;
    while !missing.is_empty() {
        for &partition in &missing {
            producer.probe(spec.run, partition);
        }
        probe
            .wait(spec.run, &mut missing, Duration::from_secs(1))
            .await?;
        if *interrupted.borrow() {
            return Ok(Flow {
                drain: "interrupted",
                ..Flow::default()
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway delivered no probe event from partitions {missing:?} of {} within \
                 {PROBE_WAIT:?}: is it reading that topic?",
                plan.source_topic
            );
        }
    }
    probe.close().await;

    let metrics_before = crate::scrape::metrics(target.ws_addr).await;
    let cpu_start = CpuMark::now(target);
    let sent = Arc::new(AtomicU64::new(0));
    let stop_producing = Arc::new(AtomicBool::new(false));
    let produce = ProduceSpec {
        run: spec.run,
        events: spec.events,
        rate: spec.rate,
        // Scenario f: the events change the seeded rows, so every snapshot keeps their count.
        ids: churn.as_ref().map_or(plan.connections, |churn| churn.rows),
        pad: "x".repeat(plan.payload_pad as usize),
        deadline: plan.duration,
    };
    let mut production = {
        let (producer, sent, stop) = (
            Arc::clone(&producer),
            Arc::clone(&sent),
            Arc::clone(&stop_producing),
        );
        tokio::task::spawn_blocking(move || producer.produce(&produce, &sent, &stop))
    };
    // The churn runs from the first event until the deliveries drained.
    let (stop_churn, churn_stop_rx) = watch::channel(false);
    let churn_counters = Arc::new(churn::Counters::default());
    let churn_task = churn.filter(|c| c.rate > 0).map(|settings| {
        tokio::spawn(churn::drive(
            settings,
            Arc::clone(&churn_counters),
            churn_stop_rx,
        ))
    });

    let per_event = plan.mix.recipients_per_event(plan.connections);
    let bar = progress_bar(spec.events, "produce");
    let started = Instant::now();
    let mut flow = Flow {
        cpu_start: Some(cpu_start),
        ..Flow::default()
    };
    let mut produced = false;
    let mut expected_total = u64::MAX;
    let (mut last_count, mut last_change) = (0, Instant::now());
    flow.drain = loop {
        tokio::time::sleep(TICK).await;
        let delivered = counters.delivered.load(Ordering::Relaxed);
        flow.samples
            .push((started.elapsed().as_secs_f64(), delivered));
        if delivered != last_count {
            (last_count, last_change) = (delivered, Instant::now());
        }
        let rate = delivered as f64 / started.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(sent.load(Ordering::Relaxed));
        let churned = match &churn_task {
            Some(_) => format!(
                "; churn {} done, {} failed ({}/s)",
                crate::report::group(churn_counters.completed.load(Ordering::Relaxed)),
                crate::report::group(churn_counters.failed.load(Ordering::Relaxed)),
                crate::report::group(
                    (churn_counters.completed.load(Ordering::Relaxed) as f64
                        / started.elapsed().as_secs_f64().max(1e-3)) as u64
                ),
            ),
            None => String::new(),
        };
        bar.set_message(format!(
            "delivered {} of ~{} ({}/s){churned}",
            crate::report::group(delivered),
            crate::report::group((sent.load(Ordering::Relaxed) as f64 * per_event) as u64),
            crate::report::group(rate as u64),
        ));
        if *interrupted.borrow() {
            stop_producing.store(true, Ordering::Relaxed);
        }
        if !produced && production.is_finished() {
            let done = (&mut production)
                .await
                .context("the producer thread failed")?;
            let ledger = producer.ledger();
            flow.expected = plan.mix.expected(plan.connections, ledger.acknowledged());
            for &client in failed_clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                flow.expected[client as usize] = 0;
            }
            expected_total = flow.expected.iter().sum();
            flow.first_produce_us = done.first_us;
            let acknowledged = ledger.acknowledged().count() as u64;
            flow.events = Some(Events {
                requested: spec.events,
                rate: spec.rate,
                sent: done.sent,
                acknowledged,
                failed: ledger.failed(),
                first_error: ledger.first_error().or(done.flush_error),
                seconds: done.seconds,
                stopped_early: done.stopped_early,
            });
            bar.set_length(done.sent);
            last_change = Instant::now();
            produced = true;
        }
        if produced {
            if delivered >= expected_total {
                tokio::time::sleep(SETTLE).await;
                break "complete";
            }
            let subscribed = counters.subscribed.load(Ordering::Relaxed);
            if counters.ended.load(Ordering::Relaxed) >= subscribed {
                break "all_closed";
            }
            if *interrupted.borrow() {
                break "interrupted";
            }
            if last_change.elapsed() >= plan.drain_timeout {
                break "drain_timeout";
            }
        }
        if target.check_alive().is_err() {
            stop_producing.store(true, Ordering::Relaxed);
            if produced {
                break "gateway_exited";
            }
        }
    };
    bar.finish_and_clear();
    if let Some(before) = metrics_before {
        flow.metrics = crate::scrape::metrics(target.ws_addr)
            .await
            .map(|after| (before, after));
    }
    let _ = stop_churn.send(true);
    if let Some(task) = churn_task {
        eprintln!(
            "run {}: deliveries {}; waiting for {} churn connections still open",
            spec.run,
            flow.drain,
            churn_counters.started.load(Ordering::Relaxed)
                - churn_counters.completed.load(Ordering::Relaxed)
                - churn_counters.failed.load(Ordering::Relaxed)
        );
        flow.churn = Some(task.await.context("the churn driver failed")?);
    }
    Ok(flow)
}

/// Adds up the clients' tallies.
fn summarize(plan: &Plan, spec: &RunSpec, outcomes: &[Outcome], flow: Flow) -> RunResult {
    let mut delivery = Delivery::default();
    let mut closes = Closes::default();
    let mut failure_reasons = BTreeMap::new();
    let mut latency: Histogram<u64> =
        Histogram::new_with_bounds(1, client::LATENCY_MAX_US, 2).expect("valid histogram bounds");
    let mut last_receive_us = 0;
    for outcome in outcomes {
        let tally = &outcome.tally;
        let expected = flow
            .expected
            .get(outcome.client as usize)
            .copied()
            .unwrap_or(0);
        delivery.expected += expected;
        delivery.received += tally.received;
        delivery.distinct += tally.distinct;
        delivery.lost += expected.saturating_sub(tally.distinct);
        delivery.duplicates += tally.duplicates;
        delivery.out_of_order += tally.out_of_order;
        delivery.unexpected += tally.unexpected;
        delivery.stray += tally.stray;
        delivery.errors += tally.errors;
        last_receive_us = last_receive_us.max(tally.last_receive_us);
        if let Some(histogram) = &tally.latency {
            for value in histogram.iter_recorded() {
                latency.saturating_record_n(
                    value.value_iterated_to(),
                    u64::from(value.count_at_value()),
                );
            }
        }
        let ending = match &outcome.ending {
            Ending::Stopped => "stopped".to_owned(),
            Ending::NotConnected(reason) => {
                *failure_reasons.entry(reason.clone()).or_insert(0) += 1;
                format!("not connected: {reason}")
            }
            Ending::ServerClosed { code, reason } => {
                *closes.by_gateway.entry(*code).or_insert(0) += 1;
                closes
                    .reasons
                    .entry(*code)
                    .or_insert_with(|| reason.clone());
                format!("closed {code} {reason}")
            }
            Ending::Dropped(reason) => {
                closes.dropped += 1;
                format!("dropped: {reason}")
            }
        };
        if tally.exact(expected) && outcome.ending == Ending::Stopped {
            delivery.clients_exact += 1;
            continue;
        }
        delivery.clients_not_exact += 1;
        if delivery.clients.len() < CLIENT_ROWS {
            delivery.clients.push(ClientRow {
                client: outcome.client,
                topic: plan.mix.subscription(outcome.client).0,
                expected,
                received: tally.received,
                lost: expected.saturating_sub(tally.distinct),
                duplicates: tally.duplicates,
                out_of_order: tally.out_of_order,
                unexpected: tally.unexpected,
                stray: tally.stray,
                errors: tally.errors,
                first_error: tally.first_error.clone(),
                ending,
            });
        }
    }
    let opened = outcomes
        .iter()
        .filter(|o| !matches!(o.ending, Ending::NotConnected(_)))
        .count() as u64;
    RunResult {
        run: spec.run,
        mix: plan.mix,
        target_deliveries_per_sec: spec.target_deliveries_per_sec,
        passed: None,
        drain: flow.drain,
        connections: Connections {
            requested: plan.connections,
            opened,
            failed: outcomes.len() as u64 - opened,
            failure_reasons,
            seconds: 0.0,
        },
        throughput: throughput(&flow, delivery.received, last_receive_us),
        events: flow.events.unwrap_or(Events {
            requested: spec.events,
            rate: spec.rate,
            sent: 0,
            acknowledged: 0,
            failed: 0,
            first_error: None,
            seconds: 0.0,
            stopped_early: spec.events > 0,
        }),
        latency_us: Latency::of(&latency),
        delivery,
        closes,
        gateway: None,
        tansu_cpu_seconds: None,
        bench_cpu_seconds: None,
        gateway_latency: None,
        churn: None,
    }
}

/// The gateway's enqueue and dispatch latency over the run, beside the clients' latency.
fn gateway_latency(before: &str, after: &str, result: &RunResult) -> GatewayLatency {
    let stage = |name| {
        let after = Buckets::parse(after, name)?;
        let before = Buckets::parse(before, name);
        before
            .map_or(after.clone(), |before| after.since(&before))
            .stage()
    };
    let enqueue = stage(crate::scrape::ENQUEUE);
    let dispatch = stage(crate::scrape::DISPATCH);
    let write = stage(crate::scrape::WRITE);
    GatewayLatency {
        upstream_mean_us: enqueue
            .as_ref()
            .zip(dispatch.as_ref())
            .map(|(e, d)| e.mean_us - d.mean_us),
        after_enqueue_mean_us: enqueue
            .as_ref()
            .zip(result.latency_us.as_ref())
            .map(|(e, l)| l.mean - e.mean_us),
        enqueue,
        dispatch,
        write,
    }
}

/// Overall and steady-state delivery rates, and deliveries per second.
fn throughput(flow: &Flow, received: u64, last_receive_us: u64) -> Throughput {
    let mut out = Throughput::default();
    let Some(first_us) = flow.first_produce_us else {
        return out;
    };
    if last_receive_us > first_us && received > 0 {
        let seconds = (last_receive_us - first_us) as f64 / 1e6;
        out.seconds = Some(seconds);
        out.deliveries_per_sec = Some(received as f64 / seconds);
    }
    let total = flow.samples.last().map_or(0, |&(_, n)| n);
    let reach = |share: f64| {
        flow.samples
            .iter()
            .find(|&&(_, n)| n as f64 >= share * total as f64)
            .copied()
    };
    if let (Some((from, low)), Some((to, high))) = (reach(0.1), reach(0.9)) {
        // A window shorter than a few samples says nothing about a steady state.
        if to - from >= 5.0 * TICK.as_secs_f64() {
            out.steady_deliveries_per_sec = Some((high - low) as f64 / (to - from));
            out.steady_window = Some([from, to]);
        }
    }
    let (mut previous, mut last, mut second) = (0, 0, 1.0);
    for &(t, n) in &flow.samples {
        while t > second {
            out.per_second.push(last - previous);
            (previous, second) = (last, second + 1.0);
        }
        last = n;
    }
    if last > previous {
        out.per_second.push(last - previous);
    }
    out
}

fn progress_bar(length: u64, phase: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(phase);
    bar
}

/// The event rate that makes `deliveries_per_sec` under `mix` with `clients` clients.
pub fn event_rate(mix: Mix, clients: u32, deliveries_per_sec: u64) -> u64 {
    let per_event = mix.recipients_per_event(clients).max(1e-9);
    ((deliveries_per_sec as f64 / per_event).round() as u64).max(1)
}
