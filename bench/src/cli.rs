//! The command line, and the plan it resolves to: a scenario preset (or the smoke check)
//! supplies defaults, explicit flags override them, and the resolved values are what the
//! result file records as the run's parameters.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, ValueEnum};
use serde::{Serialize, Serializer};

use crate::workload::Mix;

/// Load generator for cdc-gateway: opens N WebSocket clients, produces M change events
/// through Kafka, and reports delivery rate, latency, exact loss, and the gateway's memory
/// and CPU. Targets loopback only, and always stops by itself.
#[derive(Debug, Parser)]
#[command(name = "cdc-gateway-bench", version, about, long_about = None)]
pub struct Args {
    /// Preset workload; flags given explicitly override its values.
    #[arg(long, value_enum, env = "CDC_GATEWAY_BENCH_SCENARIO")]
    pub scenario: Option<Scenario>,

    /// Short CI check (200 clients, 500 events): exits non-zero on any loss, error, failed
    /// connection or unexpected close, never on timings.
    #[arg(long, env = "CDC_GATEWAY_BENCH_SMOKE", conflicts_with = "scenario")]
    pub smoke: bool,

    /// WebSocket clients to open.
    #[arg(long, env = "CDC_GATEWAY_BENCH_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub connections: Option<u32>,

    /// How clients subscribe.
    #[arg(long, env = "CDC_GATEWAY_BENCH_MIX", value_enum)]
    pub mix: Option<Mix>,

    /// Events to produce (at most; --duration may stop earlier).
    #[arg(long, env = "CDC_GATEWAY_BENCH_EVENTS", value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub events: Option<u64>,

    /// Events per second; 0 produces as fast as the broker takes them.
    #[arg(long, env = "CDC_GATEWAY_BENCH_RATE", value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub rate: Option<u64>,

    /// Longest time events are produced for (per step under scenario e).
    #[arg(long, env = "CDC_GATEWAY_BENCH_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Keeps the connections open this long after deliveries drain (memory is read at the end).
    #[arg(long, env = "CDC_GATEWAY_BENCH_HOLD", value_parser = parse_duration)]
    pub hold: Option<Duration>,

    /// After the last event is produced, stop waiting once no delivery arrived for this long.
    #[arg(long, env = "CDC_GATEWAY_BENCH_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Limit on connecting and getting the subscribe ack, per client.
    #[arg(long, env = "CDC_GATEWAY_BENCH_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Connections opened at the same time.
    #[arg(long, env = "CDC_GATEWAY_BENCH_OPEN_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub open_concurrency: u32,

    /// Extra bytes of padding in each event's `data` (makes messages bigger).
    #[arg(long, env = "CDC_GATEWAY_BENCH_PAYLOAD_PAD", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub payload_pad: u32,

    /// Client read buffer in bytes [default: 256 MiB shared out over the connections,
    /// between 4 KiB and 16 KiB each]. tungstenite zero-fills the whole buffer before every
    /// read, so a large one costs the clients a memset of its size per read: with messages
    /// arriving one at a time, 34 µs of CPU per message at 128 KiB against 11 µs at 4 KiB.
    #[arg(long, env = "CDC_GATEWAY_BENCH_READ_BUFFER", value_parser = clap::value_parser!(u32).range(512..=16_777_216))]
    pub read_buffer: Option<u32>,

    /// Scenario e: delivery rates to step through, deliveries per second, comma-separated.
    #[arg(long, env = "CDC_GATEWAY_BENCH_STEPS", value_delimiter = ',')]
    pub steps: Option<Vec<u64>>,

    /// Scenario e: how long each step produces.
    #[arg(long, env = "CDC_GATEWAY_BENCH_STEP_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub step_duration: Duration,

    /// Scenario e: a step passes when its p99 latency is below this (and nothing is lost).
    #[arg(long, env = "CDC_GATEWAY_BENCH_P99_BOUND", default_value = "50ms", value_parser = parse_duration)]
    pub p99_bound: Duration,

    /// Kafka topic the events go to (and the gateway reads).
    #[arg(
        long,
        env = "CDC_GATEWAY_BENCH_SOURCE_TOPIC",
        default_value = "cdc.events"
    )]
    pub source_topic: String,

    /// Partitions of the source topic when the bench creates it.
    #[arg(long, env = "CDC_GATEWAY_BENCH_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub partitions: i32,

    /// librdkafka property for the producer, `key=value` (repeatable).
    #[arg(long = "producer-property", env = "CDC_GATEWAY_BENCH_PRODUCER_PROPERTY", value_delimiter = ',', value_parser = parse_pair)]
    pub producer_properties: Vec<(String, String)>,

    /// A running broker (loopback only); without it the bench starts tansu.
    #[arg(long, env = "CDC_GATEWAY_BENCH_BROKERS")]
    pub brokers: Option<String>,

    /// A running gateway, `ws://127.0.0.1:PORT/ws` (needs --brokers); without it the bench
    /// starts the gateway binary.
    #[arg(long, env = "CDC_GATEWAY_BENCH_GATEWAY_URL", requires = "brokers")]
    pub gateway_url: Option<String>,

    /// Process id of the running gateway, to read its memory and CPU time.
    #[arg(long, env = "CDC_GATEWAY_BENCH_GATEWAY_PID", requires = "gateway_url")]
    pub gateway_pid: Option<u32>,

    /// The tansu binary to start [default: $HOME/.cache/cdc-gateway/tansu/bin/tansu].
    #[arg(long, env = "CDC_GATEWAY_TANSU")]
    pub tansu_bin: Option<PathBuf>,

    /// The gateway binary to start [default: cdc-gateway next to this executable].
    #[arg(long, env = "CDC_GATEWAY_BENCH_GATEWAY_BIN")]
    pub gateway_bin: Option<PathBuf>,

    /// One more argument for the started gateway (repeatable, one word each:
    /// `--gateway-arg=--outbound-queue=4096`).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,

    /// Directory for the logs of the processes the bench starts.
    #[arg(long, env = "CDC_GATEWAY_BENCH_LOG_DIR")]
    pub log_dir: Option<PathBuf>,

    /// Writes the full results, with these parameters, as JSON to this file.
    #[arg(long, env = "CDC_GATEWAY_BENCH_OUT")]
    pub out: Option<PathBuf>,

    /// Scenario f and --smoke: new connections per second while events flow, each subscribing to
    /// `cdc.order` with a snapshot, reading it to `synced`, then closing [default: 1000;
    /// 0 seeds the rows but opens no churn connections, a control run; --smoke: 20].
    #[arg(long, env = "CDC_GATEWAY_BENCH_CHURN_RATE", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub churn_rate: Option<u32>,

    /// Scenario f and --smoke: distinct rows of `order` produced before the run (and cycled
    /// over by its events), so every snapshot holds this many [default: 1000; --smoke: 100].
    #[arg(long, env = "CDC_GATEWAY_BENCH_CHURN_ROWS", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub churn_rows: Option<u32>,

    /// Scenario f and --smoke: churn connections open at the same time at most; when all are busy the
    /// churn falls behind its rate rather than piling up.
    #[arg(long, env = "CDC_GATEWAY_BENCH_CHURN_CONCURRENCY", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub churn_concurrency: u32,
}

/// Preset workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1,000 clients on cdc.order, events as fast as possible.
    A,
    /// 10,000 clients, each on its own row topic.
    B,
    /// 50,000 idle connections: memory per connection.
    C,
    /// 1,000 clients with a 3-predicate filter matching 10% of events.
    D,
    /// Steps the delivery rate up; the best step keeps p99 under the bound.
    E,
    /// Scenario a while new connections subscribe with a 1,000-row snapshot and close,
    /// 1,000 a second.
    F,
}

/// Everything a bench invocation does, resolved from the flags and the preset.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub scenario: Option<Scenario>,
    pub smoke: bool,
    pub connections: u32,
    pub mix: Mix,
    pub events: u64,
    pub rate: u64,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    #[serde(serialize_with = "seconds")]
    pub hold: Duration,
    #[serde(serialize_with = "seconds")]
    pub drain_timeout: Duration,
    #[serde(serialize_with = "seconds")]
    pub connect_timeout: Duration,
    pub open_concurrency: u32,
    pub payload_pad: u32,
    pub read_buffer: u32,
    pub steps: Option<Steps>,
    pub source_topic: String,
    pub partitions: i32,
    pub producer_properties: Vec<(String, String)>,
    pub brokers: Option<String>,
    pub gateway_url: Option<String>,
    pub gateway_pid: Option<u32>,
    pub tansu_bin: PathBuf,
    pub gateway_bin: PathBuf,
    pub gateway_args: Vec<String>,
    pub log_dir: PathBuf,
    pub out: Option<PathBuf>,
    /// Scenario f (and the smoke check): connection churn while the events flow.
    pub churn: Option<Churn>,
}

/// Connection churn: the rows seeded for the snapshots, and how fast connections come and go.
#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    /// Target connections per second; 0 seeds the rows and opens none.
    pub rate: u32,
    /// Distinct rows of `order` seeded before the run; the events cycle over the same ids.
    pub rows: u32,
    /// Churn connections open at once at most.
    pub concurrency: u32,
}

/// Scenario e's rate ladder.
#[derive(Debug, Clone, Serialize)]
pub struct Steps {
    pub deliveries_per_sec: Vec<u64>,
    #[serde(serialize_with = "seconds")]
    pub step_duration: Duration,
    #[serde(serialize_with = "seconds")]
    pub p99_bound: Duration,
}

/// Defaults a preset supplies.
struct Preset {
    connections: u32,
    mix: Mix,
    events: u64,
    rate: u64,
    duration: Duration,
    hold: Duration,
    /// Churn rate and rows: scenario f and the smoke check.
    churn: Option<(u32, u32)>,
}

const DEFAULT_STEPS: [u64; 9] = [
    25_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000, 3_200_000, 6_400_000,
];

impl Preset {
    fn of(scenario: Option<Scenario>, smoke: bool) -> Self {
        let secs = Duration::from_secs;
        let preset = |connections, mix, events, rate, duration| Preset {
            connections,
            mix,
            events,
            rate,
            duration,
            hold: Duration::ZERO,
            churn: None,
        };
        match (scenario, smoke) {
            // A light churn: 20 snapshots of 100 rows a second, about 100 connections in all.
            (_, true) => Preset {
                churn: Some((20, 100)),
                ..preset(200, Mix::Entity, 500, 100, secs(30))
            },
            (None, false) => preset(100, Mix::Entity, 10_000, 1_000, secs(60)),
            (Some(Scenario::A), _) => preset(1_000, Mix::Entity, 100_000, 0, secs(120)),
            (Some(Scenario::B), _) => preset(10_000, Mix::Row, 200_000, 0, secs(120)),
            (Some(Scenario::C), _) => Preset {
                hold: secs(10),
                ..preset(50_000, Mix::Idle, 0, 0, secs(60))
            },
            (Some(Scenario::D), _) => preset(1_000, Mix::Filter, 200_000, 0, secs(120)),
            // Events and rate are set per step from the target delivery rate.
            (Some(Scenario::E), _) => preset(1_000, Mix::Entity, 0, 0, secs(60)),
            (Some(Scenario::F), _) => Preset {
                churn: Some((1_000, 1_000)),
                ..preset(1_000, Mix::Entity, 100_000, 0, secs(120))
            },
        }
    }
}

impl Plan {
    pub fn resolve(args: Args) -> anyhow::Result<Self> {
        let preset = Preset::of(args.scenario, args.smoke);
        let stepped = args.scenario == Some(Scenario::E);
        if stepped && (args.events.is_some() || args.rate.is_some()) {
            bail!("scenario e sets --events and --rate per step: use --steps and --step-duration");
        }
        let connections = args.connections.unwrap_or(preset.connections);
        let mix = args.mix.unwrap_or(preset.mix);
        if stepped && mix == Mix::Idle {
            bail!("scenario e measures deliveries: --mix idle has none");
        }
        let steps = stepped.then(|| Steps {
            deliveries_per_sec: args.steps.clone().unwrap_or_else(|| DEFAULT_STEPS.to_vec()),
            step_duration: args.step_duration,
            p99_bound: args.p99_bound,
        });
        if let Some(steps) = &steps {
            if steps.deliveries_per_sec.is_empty() || steps.deliveries_per_sec.contains(&0) {
                bail!("--steps must list delivery rates above 0");
            }
            if steps.step_duration.is_zero() || steps.step_duration > Duration::from_secs(600) {
                bail!("--step-duration must be between 1s and 10m");
            }
        }
        let churn = match preset.churn {
            // The smoke check keeps its other mixes, without the churn.
            Some(_) if args.smoke && !matches!(mix, Mix::Entity | Mix::Filter) => None,
            Some((rate, rows)) => {
                if !matches!(mix, Mix::Entity | Mix::Filter) {
                    bail!(
                        "scenario f seeds rows of cdc.order and cycles the events over them: \
                         use --mix entity or filter"
                    );
                }
                Some(Churn {
                    rate: args.churn_rate.unwrap_or(rate),
                    rows: args.churn_rows.unwrap_or(rows),
                    concurrency: args.churn_concurrency,
                })
            }
            None if args.churn_rate.is_some() || args.churn_rows.is_some() => {
                bail!("--churn-rate and --churn-rows belong to --scenario f (or --smoke)")
            }
            None => None,
        };
        let duration = args.duration.unwrap_or(preset.duration);
        let hold = args.hold.unwrap_or(preset.hold);
        for (flag, value) in [("--duration", duration), ("--hold", hold)] {
            if value > Duration::from_secs(3600) {
                bail!("{flag} is at most 1h: the bench always stops by itself");
            }
        }
        if duration.is_zero() {
            bail!("--duration must be greater than 0");
        }
        let read_buffer = args
            .read_buffer
            .unwrap_or_else(|| ((256u32 << 20) / connections).clamp(4 << 10, 16 << 10));
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        let gateway_bin = match args.gateway_bin {
            Some(path) => path,
            None => std::env::current_exe()?
                .parent()
                .map(|dir| dir.join("cdc-gateway"))
                .unwrap_or_else(|| PathBuf::from("cdc-gateway")),
        };
        Ok(Plan {
            scenario: args.scenario,
            smoke: args.smoke,
            connections,
            mix,
            // Idle connections get no events unless asked for explicitly.
            events: args.events.unwrap_or(match mix {
                Mix::Idle => 0,
                _ => preset.events,
            }),
            rate: args.rate.unwrap_or(preset.rate),
            duration,
            hold,
            drain_timeout: args.drain_timeout,
            connect_timeout: args.connect_timeout,
            open_concurrency: args.open_concurrency,
            payload_pad: args.payload_pad,
            read_buffer,
            steps,
            source_topic: args.source_topic,
            partitions: args.partitions,
            producer_properties: args.producer_properties,
            brokers: args.brokers,
            gateway_url: args.gateway_url,
            gateway_pid: args.gateway_pid,
            tansu_bin: args
                .tansu_bin
                .unwrap_or_else(|| home.join(".cache/cdc-gateway/tansu/bin/tansu")),
            gateway_bin,
            gateway_args: args.gateway_args,
            log_dir: args
                .log_dir
                .unwrap_or_else(|| std::env::temp_dir().join("cdc-gateway-bench")),
            out: args.out,
            churn,
        })
    }
}

fn seconds<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (examples: 500ms, 5s, 2m)"))
}

fn parse_pair(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, val)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), val.trim().to_owned()))
        }
        _ => Err(format!("`{value}` is not of the form key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let args =
            Args::try_parse_from(std::iter::once("cdc-gateway-bench").chain(args.iter().copied()))?;
        Plan::resolve(args)
    }

    #[test]
    fn explicit_flags_override_the_preset() {
        let p = plan(&["--scenario", "b"]).unwrap();
        assert_eq!((p.connections, p.mix, p.rate), (10_000, Mix::Row, 0));
        let p = plan(&["--scenario", "b", "--connections", "500", "--rate", "100"]).unwrap();
        assert_eq!((p.connections, p.mix, p.rate), (500, Mix::Row, 100));
        let p = plan(&["--smoke"]).unwrap();
        assert_eq!((p.connections, p.mix, p.events), (200, Mix::Entity, 500));
        let p = plan(&["--scenario", "c"]).unwrap();
        assert_eq!(p.read_buffer, 5368);
        assert!(p.churn.is_none());
        let p = plan(&["--scenario", "f", "--events", "15000"]).unwrap();
        assert_eq!(
            (p.connections, p.mix, p.events),
            (1_000, Mix::Entity, 15_000)
        );
        let churn = p.churn.unwrap();
        assert_eq!(
            (churn.rate, churn.rows, churn.concurrency),
            (1_000, 1_000, 512)
        );
        let p = plan(&["--scenario", "f", "--churn-rate", "0", "--churn-rows", "50"]).unwrap();
        let churn = p.churn.unwrap();
        assert_eq!((churn.rate, churn.rows), (0, 50));
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(plan(&["--connections", "50001"]).is_err());
        assert!(plan(&["--duration", "2h"]).is_err());
        assert!(plan(&["--scenario", "e", "--rate", "5"]).is_err());
        assert!(plan(&["--scenario", "e", "--mix", "idle"]).is_err());
        assert!(plan(&["--gateway-url", "ws://127.0.0.1:1/ws"]).is_err());
        assert!(plan(&["--scenario", "a", "--churn-rate", "10"]).is_err());
        assert!(plan(&["--scenario", "f", "--mix", "row"]).is_err());
        assert!(plan(&["--scenario", "f", "--churn-rows", "0"]).is_err());
        let p = plan(&[
            "--gateway-arg=--outbound-queue=64",
            "--gateway-arg",
            "--log-level",
        ])
        .unwrap();
        assert_eq!(p.gateway_args, ["--outbound-queue=64", "--log-level"]);
    }
}
