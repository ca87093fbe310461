//! One invocation: start or find the target, do one run (or scenario e's ladder of runs),
//! print and write the results, and turn them into an exit status. Whatever was started is
//! stopped when the target drops, on every path out of here.

use std::process::ExitCode;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::cli::{Plan, Steps};
use crate::report::{Report, RunResult};
use crate::run::{self, RunSpec};
use crate::target::{Target, TargetSpec};

/// Descriptors the bench needs besides one per connection.
const SPARE_DESCRIPTORS: u64 = 256;
/// Share of a step's target rate it must deliver to count as sustained.
const SUSTAINED: f64 = 0.9;

pub async fn execute(plan: Plan) -> anyhow::Result<ExitCode> {
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // Churn connections (scenario f) come on top of the steady ones, as many as run at once.
    let churn_connections = plan.churn.as_ref().map_or(0, |churn| churn.concurrency);
    crate::host::raise_nofile(
        u64::from(plan.connections) + u64::from(churn_connections) + SPARE_DESCRIPTORS,
    );
    let interrupted = interrupt_signal();
    let mut target = Target::start(TargetSpec {
        brokers: plan.brokers.clone(),
        gateway_url: plan.gateway_url.clone(),
        gateway_pid: plan.gateway_pid,
        tansu_bin: plan.tansu_bin.clone(),
        gateway_bin: plan.gateway_bin.clone(),
        gateway_args: plan.gateway_args.clone(),
        source_topic: plan.source_topic.clone(),
        partitions: plan.partitions,
        connections: plan.connections + churn_connections,
        log_dir: plan.log_dir.clone(),
    })
    .await?;
    eprintln!(
        "target: brokers {}, gateway {}, source topic {} ({} partitions)",
        target.brokers, target.ws_url, plan.source_topic, target.partitions
    );

    let mut runs = Vec::new();
    let mut best_step = None;
    match &plan.steps {
        None => {
            let spec = RunSpec {
                run: 0,
                events: plan.events,
                rate: plan.rate,
                target_deliveries_per_sec: None,
            };
            let result = run::run(&mut target, &plan, &spec, &interrupted).await?;
            print!("{}", result.summary());
            runs.push(result);
        }
        Some(steps) => {
            for (step, &deliveries) in steps.deliveries_per_sec.iter().enumerate() {
                let rate = run::event_rate(plan.mix, plan.connections, deliveries);
                let spec = RunSpec {
                    run: step as u32,
                    events: (rate as f64 * steps.step_duration.as_secs_f64()).ceil() as u64,
                    rate,
                    target_deliveries_per_sec: Some(deliveries as f64),
                };
                let mut result = run::run(&mut target, &plan, &spec, &interrupted).await?;
                let passed = step_passed(&result, steps, deliveries as f64);
                result.passed = Some(passed);
                print!("{}", result.summary());
                println!(
                    "  step         {}",
                    if passed { "PASSED" } else { "FAILED" }
                );
                runs.push(result);
                if !passed || *interrupted.borrow() {
                    break;
                }
                best_step = Some(step as u32);
            }
            print_ladder(&runs, best_step);
        }
    }

    let report = Report {
        tool: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        date,
        nproc: crate::host::nproc(),
        gateway_command: target.gateway_command.clone(),
        params: plan.clone(),
        runs,
        best_step,
    };
    drop(target);
    if let Some(out) = &plan.out {
        report.write(out)?;
        eprintln!("results written to {}", out.display());
    }
    if plan.smoke {
        return Ok(smoke_verdict(&report.runs[0]));
    }
    if *interrupted.borrow() {
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// A step passes when it delivered everything, near its target rate, with p99 in bound.
fn step_passed(result: &RunResult, steps: &Steps, target: f64) -> bool {
    let p99_ok = result
        .latency_us
        .as_ref()
        .is_some_and(|l| u128::from(l.p99) < steps.p99_bound.as_micros());
    let rate_ok = result
        .throughput
        .deliveries_per_sec
        .is_some_and(|rate| rate >= SUSTAINED * target);
    result.drain == "complete" && result.delivery.lost == 0 && p99_ok && rate_ok
}

fn print_ladder(runs: &[RunResult], best: Option<u32>) {
    println!("\nstep  target/s      achieved/s    p99        lost  result");
    for result in runs {
        println!(
            "{:>4}  {:>12}  {:>12}  {:>9}  {:>4}  {}",
            result.run,
            crate::report::group(result.target_deliveries_per_sec.unwrap_or(0.0) as u64),
            crate::report::group(result.throughput.deliveries_per_sec.unwrap_or(0.0) as u64),
            result
                .latency_us
                .as_ref()
                .map_or("-".into(), |l| format!("{:.1} ms", l.p99 as f64 / 1e3)),
            result.delivery.lost,
            if result.passed == Some(true) {
                "pass"
            } else {
                "fail"
            },
        );
    }
    match best.and_then(|b| runs.get(b as usize)) {
        Some(result) => println!(
            "best sustained: {} deliveries/s with p99 under the bound (step {})",
            crate::report::group(result.throughput.deliveries_per_sec.unwrap_or(0.0) as u64),
            result.run
        ),
        None => println!("best sustained: none of the steps passed"),
    }
}

/// Exit status of `--smoke`: failure on any client without exact delivery, any produce
/// error, any error reply, or any churn connection whose snapshot was wrong or did not
/// arrive; never on timings. Ends with the `smoke: N passed, M failed` line.
fn smoke_verdict(result: &RunResult) -> ExitCode {
    let passed = result.delivery.clients_exact;
    let failed = u64::from(result.connections.requested) - passed;
    let mut problems = Vec::new();
    if result.events.failed > 0 || result.events.acknowledged < result.events.requested {
        problems.push(format!(
            "{} of {} events acknowledged by the broker",
            result.events.acknowledged, result.events.requested
        ));
    }
    if result.delivery.lost > 0 {
        problems.push(format!("{} deliveries lost", result.delivery.lost));
    }
    for (what, count) in [
        ("failed connections", result.connections.failed),
        ("duplicates", result.delivery.duplicates),
        ("out-of-order deliveries", result.delivery.out_of_order),
        ("unexpected deliveries", result.delivery.unexpected),
        ("stray messages", result.delivery.stray),
        ("error replies", result.delivery.errors),
        (
            "closes by the gateway",
            result.closes.by_gateway.values().sum(),
        ),
        ("dropped connections", result.closes.dropped),
    ] {
        if count > 0 {
            problems.push(format!("{count} {what}"));
        }
    }
    if let Some(churn) = &result.churn {
        if churn.failed > 0 {
            problems.push(format!(
                "{} of {} churn connections failed ({})",
                churn.failed,
                churn.attempted,
                churn.first_error.as_deref().unwrap_or_default()
            ));
        }
        if churn.rows_below_seeded > 0 {
            problems.push(format!(
                "{} churn snapshots held fewer than the {} seeded rows",
                churn.rows_below_seeded, churn.seeded_rows
            ));
        }
    }
    for problem in &problems {
        println!("smoke problem: {problem}");
    }
    println!("smoke: {passed} passed, {failed} failed");
    if problems.is_empty() && failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Turns true on Ctrl-C or SIGTERM: the run stops producing, closes its clients, reports
/// what it has, and stops what it started.
fn interrupt_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        eprintln!("interrupted: stopping");
        let _ = tx.send(true);
    });
    rx
}
