//! A randomized delivery checker: a seeded history of CDC records on two source topics of
//! three partitions each (some already in the broker before the gateways start, the rest in
//! bursts), two gateway replicas, one stopped with SIGTERM and one killed with SIGKILL
//! mid-burst and each restarted with its group id, and two dozen WebSocket and SSE clients
//! that subscribe at random moments with random topics, filters and snapshots, drop their
//! connections and resume with their kept position on whichever replica is up. Afterwards
//! the broker's log, read independently, is the truth every subscription period is checked
//! against (see `verdict`).
//!
//! `CDC_CHECKER_SEED` replays a seed (the interleaving with the broker still varies);
//! `CDC_CHECKER_DURATION` (seconds of live traffic, default 40) turns the run into a soak.

pub(crate) mod clients;
pub(crate) mod sse;
pub(crate) mod verdict;
mod workload;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::support::{http_get, unique, Endpoint as _, Gateway, Producer, Tansu};
use clients::{ClientPlan, Endpoint, Stage, Transport};
use workload::{Workload, ENTITIES};

const DEFAULT_LIVE: Duration = Duration::from_secs(40);
const CLIENTS: usize = 24;
/// How long a (re)started replica may take to answer /readyz 200.
const READY_WITHIN: Duration = Duration::from_secs(45);
/// How long a replica may take to dispatch everything once production stops.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(30);

fn seed() -> u64 {
    match std::env::var("CDC_CHECKER_SEED") {
        Ok(seed) => seed.trim().parse().expect("CDC_CHECKER_SEED is a u64"),
        Err(_) => rand::random(),
    }
}

fn live_duration() -> Duration {
    match std::env::var("CDC_CHECKER_DURATION") {
        Ok(secs) => Duration::from_secs(
            secs.trim()
                .parse()
                .expect("CDC_CHECKER_DURATION is seconds"),
        ),
        Err(_) => DEFAULT_LIVE,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_delivery_checker() {
    let seed = seed();
    eprintln!("checker seed: {seed}");
    let live = live_duration();
    let mut rng = StdRng::seed_from_u64(seed);

    let tansu = Tansu::start();
    let brokers = tansu.brokers();
    let topics = vec![unique("chk-orders"), unique("chk-customers")];
    for topic in &topics {
        tansu.create_topic(topic, workload::PARTITIONS).await;
    }
    let producer = tansu.producer();
    let mut history = Workload::new(rng.gen());
    let backlog = history.batch(rng.gen_range(300..500));
    let mut counts = BTreeMap::new();
    workload::produce(&producer, &topics, &backlog, &mut counts).await;

    let sources = topics.join(",");
    let stage = Stage {
        replicas: Arc::new(Mutex::new(Vec::new())),
        finale: CancellationToken::new(),
    };
    let mut cluster = Cluster {
        replicas: Vec::new(),
        brokers: brokers.clone(),
        sources,
        stage: stage.clone(),
        failures: Vec::new(),
    };
    let (a, b) = tokio::join!(
        cluster.start_replica("A", unique("chk-group-a"), 0),
        cluster.start_replica("B", unique("chk-group-b"), 0),
    );
    cluster.replicas = vec![a, b];
    cluster.publish();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| plan(id, live, StdRng::seed_from_u64(rng.gen())))
        .map(|plan| tokio::spawn(clients::run(plan, stage.clone())))
        .collect();

    let stop = CancellationToken::new();
    let (bursts, burst_requests) = mpsc::channel(4);
    let producing = tokio::spawn(produce_live(
        producer,
        topics.clone(),
        history,
        burst_requests,
        stop.clone(),
        StdRng::seed_from_u64(rng.gen()),
        counts,
    ));

    let started = Instant::now();
    for k in 0u32.. {
        let at = Duration::from_secs(10)
            + k * Duration::from_secs(15)
            + Duration::from_millis(rng.gen_range(0..3000));
        if at + Duration::from_secs(8) > live {
            break;
        }
        tokio::time::sleep_until(started + at).await;
        let which = rng.gen_range(0..cluster.replicas.len());
        if k % 2 == 0 {
            cluster.terminate(which).await;
        } else {
            let burst = rng.gen_range(1500..2500);
            bursts.send(burst).await.expect("the producer runs");
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
            cluster.kill(which).await;
        }
    }
    tokio::time::sleep_until(started + live).await;
    stop.cancel();
    let counts = producing.await.expect("the producer");
    let produced: usize = counts.values().sum();

    // Nothing more is produced: the log is complete, and every replica must reach its end.
    let log = {
        let (brokers, counts) = (brokers.clone(), counts.clone());
        tokio::task::spawn_blocking(move || verdict::read_log(&brokers, &counts))
            .await
            .unwrap()
    };
    let last = log.last_offsets();
    cluster.wait_caught_up(&last).await;
    stage.finale.cancel();
    let mut subs = Vec::new();
    for client in clients {
        let logs = tokio::time::timeout(Duration::from_secs(90), client)
            .await
            .expect("every client finishes its final resume")
            .expect("client task");
        subs.extend(logs);
    }
    let keys = verdict::partition_keys(&topics);
    let (mut violations, coverage) = verdict::check(seed, &log, &keys, &subs);
    for failure in cluster.failures.drain(..) {
        violations.push(verdict::Violation {
            kind: "replica",
            text: format!("seed {seed}: {failure}"),
        });
    }
    if coverage.recovered_true == 0 {
        violations.push(verdict::Violation {
            kind: "coverage",
            text: format!("seed {seed}: no resume answered recovered: true, so none was checked"),
        });
    }
    eprintln!(
        "checker seed {seed}: {produced} records, {} subscriptions, {coverage:#?}",
        subs.len()
    );
    if violations.is_empty() {
        return;
    }
    let mut kinds: BTreeMap<&str, Vec<&verdict::Violation>> = BTreeMap::new();
    for violation in &violations {
        kinds.entry(violation.kind).or_default().push(violation);
    }
    let counts: BTreeMap<&str, usize> = kinds.iter().map(|(k, v)| (*k, v.len())).collect();
    let all = std::env::temp_dir()
        .join("cdc-gateway-tests")
        .join(format!("checker-{seed}.txt"));
    let text: Vec<String> = violations
        .iter()
        .map(|v| format!("[{}] {}", v.kind, v.text))
        .collect();
    std::fs::write(&all, text.join("\n")).expect("writing the violations");
    eprintln!(
        "checker seed {seed}: {} violations {counts:?} (all in {}); the first of each kind, 20 in all:",
        violations.len(),
        all.display()
    );
    let each = (20 / kinds.len()).max(1);
    for (kind, found) in &kinds {
        for violation in found.iter().take(each) {
            eprintln!("  [{kind}] {}", violation.text);
        }
    }
    panic!(
        "checker seed {seed}: {} violations of the delivery guarantee; \
         rerun with CDC_CHECKER_SEED={seed}",
        violations.len()
    );
}

/// A client's script, drawn from its own seeded generator.
fn plan(id: usize, live: Duration, mut rng: StdRng) -> ClientPlan {
    let transport = if id % 4 == 3 {
        Transport::Sse
    } else {
        Transport::Ws
    };
    let topic_count = if rng.gen_bool(0.3) { 2 } else { 1 };
    let shared_filters = filters(&mut rng);
    let mut subs: Vec<(String, Option<Value>)> = Vec::new();
    while subs.len() < topic_count {
        let (entity, ids) = ENTITIES[rng.gen_range(0..ENTITIES.len())];
        let topic = if rng.gen_bool(0.6) {
            format!("cdc.{entity}")
        } else {
            format!("cdc.{entity}.{}", rng.gen_range(1..=ids))
        };
        if subs.iter().any(|(t, _)| *t == topic) {
            continue;
        }
        let filters = match transport {
            Transport::Sse => shared_filters.clone(),
            Transport::Ws => filters(&mut rng),
        };
        subs.push((topic, filters));
    }
    // The first few subscribe before any live record (while the backlog is dispatched).
    let start = if id < 6 {
        Duration::ZERO
    } else {
        Duration::from_millis(rng.gen_range(0..live.as_millis() as u64 * 6 / 10))
    };
    ClientPlan {
        id,
        transport,
        subs,
        start,
        rng,
    }
}

fn filters(rng: &mut StdRng) -> Option<Value> {
    match rng.gen_range(0..100) {
        0..30 => None,
        30..55 => Some(json!({"data.tenant": "a"})),
        55..75 => Some(json!({"row.tenant": "b"})),
        75..90 => Some(json!({"data.status": {"in": ["new", "paid"]}})),
        _ => Some(json!({"data.tenant": "b", "data.status": ["paid", "shipped"]})),
    }
}

/// Produces bursts until `stop`, and a burst of the requested size on request; returns how
/// many records each `topic:partition` holds, `counts` (the backlog's) included.
async fn produce_live(
    producer: Producer,
    topics: Vec<String>,
    mut history: Workload,
    mut requests: mpsc::Receiver<usize>,
    stop: CancellationToken,
    mut rng: StdRng,
    mut counts: BTreeMap<String, usize>,
) -> BTreeMap<String, usize> {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    loop {
        let pause = Duration::from_millis(rng.gen_range(150..1200));
        let size = match rng.gen_range(0..100) {
            0..70 => rng.gen_range(3..40),
            70..95 => rng.gen_range(40..150),
            _ => rng.gen_range(150..400),
        };
        let size = tokio::select! {
            _ = stop.cancelled() => break,
            Some(requested) = requests.recv() => requested,
            _ = tokio::time::sleep(pause) => size,
        };
        let batch = history.batch(size);
        workload::produce(&producer, &topics, &batch, &mut counts).await;
    }
    counts
}

/// One replica: a group id that outlives the processes started with it.
struct Replica {
    name: &'static str,
    group: String,
    generation: u32,
    /// Where it listens (kept after its process is gone, to name it).
    endpoint: Endpoint,
    /// The process, until it is reaped.
    gateway: Option<Gateway>,
}

/// The replicas, and what went wrong with them (not a client's view, but reported the same).
struct Cluster {
    replicas: Vec<Replica>,
    brokers: String,
    sources: String,
    stage: Stage,
    failures: Vec<String>,
}

impl Cluster {
    async fn start_replica(&self, name: &'static str, group: String, generation: u32) -> Replica {
        let gateway = Gateway::spawn(&self.brokers, &self.sources, &["--group-id", &group]);
        let began = Instant::now();
        let deadline = began + READY_WITHIN;
        loop {
            if let Ok((200, _)) = http_get(gateway.addr(), "/readyz").await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {name}{generation} (group {group}) not ready within {READY_WITHIN:?}:\n{}",
                gateway.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "checker: replica {name}{generation} on port {} ready after {:?} (log: gateway-{}.log)",
            gateway.port,
            began.elapsed(),
            gateway.port
        );
        Replica {
            name,
            group,
            generation,
            endpoint: Endpoint {
                label: format!("{name}{generation}:{}", gateway.port),
                addr: gateway.addr(),
            },
            gateway: Some(gateway),
        }
    }

    /// Tells the clients which replicas are up.
    fn publish(&self) {
        *self.stage.replicas.lock().unwrap() = self
            .replicas
            .iter()
            .map(|replica| replica.endpoint.clone())
            .collect();
    }

    fn withdraw(&self, index: usize) {
        let label = &self.replicas[index].endpoint.label;
        self.stage
            .replicas
            .lock()
            .unwrap()
            .retain(|endpoint| endpoint.label != *label);
    }

    fn signal(&self, index: usize, signal: &str) {
        let replica = &self.replicas[index];
        eprintln!("checker: SIG{signal} to replica {}", replica.endpoint.label);
        replica.gateway.as_ref().expect("running").signal(signal);
    }

    /// A graceful stop, as a deployment does it: out of the rotation, SIGTERM, a clean exit,
    /// then a new process with the same group id.
    async fn terminate(&mut self, index: usize) {
        self.withdraw(index);
        self.signal(index, "TERM");
        let code = self.reap(index, Duration::from_secs(30)).await;
        if code != Some(0) {
            self.failures.push(format!(
                "replica {} exited with {code:?} after SIGTERM, not 0",
                self.replicas[index].endpoint.label
            ));
        }
        self.restart(index).await;
    }

    /// A crash: SIGKILL without warning, then a new process with the same group id.
    async fn kill(&mut self, index: usize) {
        self.signal(index, "KILL");
        self.withdraw(index);
        self.reap(index, Duration::from_secs(10)).await;
        self.restart(index).await;
    }

    /// Waits for the replica's process to exit; its exit code.
    async fn reap(&mut self, index: usize, within: Duration) -> Option<i32> {
        let mut gateway = self.replicas[index].gateway.take().expect("running");
        tokio::task::spawn_blocking(move || gateway.wait_exit(within))
            .await
            .unwrap()
    }

    async fn restart(&mut self, index: usize) {
        let (name, group, generation) = {
            let replica = &self.replicas[index];
            (replica.name, replica.group.clone(), replica.generation + 1)
        };
        self.replicas[index] = self.start_replica(name, group, generation).await;
        self.publish();
    }

    /// Waits until every replica has dispatched the last record of every partition (its ack
    /// position).
    async fn wait_caught_up(&mut self, want: &BTreeMap<String, i64>) {
        for replica in &self.replicas {
            let endpoint = &replica.endpoint;
            let deadline = Instant::now() + CATCH_UP_WITHIN;
            let mut last = None;
            loop {
                last = probe(endpoint).await.or(last);
                if last.as_ref() == Some(want) {
                    break;
                }
                if Instant::now() > deadline {
                    self.failures.push(format!(
                        "replica {} did not reach the end of the log {want:?} within \
                         {CATCH_UP_WITHIN:?} of the last record: its position is {last:?}",
                        endpoint.label
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// The position a fresh subscription on the replica is acked with.
async fn probe(endpoint: &Endpoint) -> Option<clients::Position> {
    let url = format!("ws://{}/ws", endpoint.addr);
    let connect = tokio_tungstenite::connect_async(url);
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()?;
    let subscribe = json!({"action": "subscribe", "topic": "cdc.checker_probe", "id": 1});
    ws.send(Message::text(subscribe.to_string())).await.ok()?;
    let ack = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let message: Value = serde_json::from_str(&text).ok()?;
                if message["type"] == "ack" {
                    return Some(message);
                }
            }
        }
        None
    })
    .await
    .ok()??;
    let _ = ws.close(None).await;
    Some(clients::ack_position(&ack))
}
