//! cdc-gateway-bench: a load generator for cdc-gateway. Parses the command line, runs the
//! bench, and turns the outcome into an exit status: 0 done (or smoke passed), 1 a failed
//! smoke check or a runtime error, 2 bad flags.

mod bench;
mod churn;
mod cli;
mod client;
mod host;
mod kafka;
mod report;
mod run;
mod scan;
mod scrape;
mod target;
mod workload;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let plan = match cli::Plan::resolve(cli::Args::parse()) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (smoke, connections) = (plan.smoke, plan.connections);
    // The bench runs on this (main) thread: the processes it starts are tied to it.
    match runtime.block_on(bench::execute(plan)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if smoke {
                println!("smoke: 0 passed, {connections} failed");
            }
            ExitCode::FAILURE
        }
    }
}
