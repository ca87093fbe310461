//! Parses the configuration, sets up logging, runs the gateway (or the demo), and turns the
//! outcome into an exit status: 0 after a clean drain, 1 on a runtime error, 2 on bad config.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cdc_gateway::config::{Cli, Command, LogFormat};
use cdc_gateway::gateway::{self, Gateway, Pages};

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // The demo listens where its own --listen says: that is the address checked.
    if let Some(Command::Demo(args)) = &cli.command {
        cli.config.listen = args.listen;
    }
    if let Err(e) = cli
        .config
        .load_kafka_property_files()
        .and_then(|()| cli.config.validate())
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let filter = EnvFilter::new(&cli.config.log_level);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Some(Command::Demo(args)) => runtime.block_on(cdc_gateway::demo::run(cli.config, args)),
        None => {
            let gateway = match Gateway::new(cli.config.clone(), Pages::ApiOnly) {
                Ok(gateway) => gateway,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(async move {
                let listener = gateway::bind(&cli.config).await?;
                gateway.run(listener, cdc_gateway::shutdown::signal()).await
            })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
