//! The figures a run produces, as one serializable tree: printed as a short summary and
//! written whole to the JSON result file, together with the parameters that produced them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::Plan;
use crate::workload::Mix;

/// The result file: parameters, machine, and one entry per run (one per step under
/// scenario e).
#[derive(Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// RFC 3339, UTC, when the bench started.
    pub date: String,
    pub nproc: usize,
    pub params: Plan,
    /// The gateway's command line, when the bench started it.
    pub gateway_command: Option<Vec<String>>,
    pub runs: Vec<RunResult>,
    /// Scenario e: the run with the highest delivery rate that passed.
    pub best_step: Option<u32>,
}

#[derive(Serialize)]
pub struct RunResult {
    pub run: u32,
    pub mix: Mix,
    /// Scenario e: the delivery rate this step aimed at.
    pub target_deliveries_per_sec: Option<f64>,
    /// Scenario e: delivered everything, near the target rate, with p99 under the bound.
    pub passed: Option<bool>,
    /// How waiting for deliveries ended: `complete`, `drain_timeout`, `all_closed` (every
    /// client's connection ended), `interrupted`, `gateway_exited` or `no_events`.
    pub drain: &'static str,
    pub connections: Connections,
    pub events: Events,
    pub delivery: Delivery,
    pub throughput: Throughput,
    /// Receive time minus the producer's `sent_us`, in microseconds; absent with no delivery.
    pub latency_us: Option<Latency>,
    pub closes: Closes,
    pub gateway: Option<Process>,
    /// CPU seconds tansu used while events flowed (when started by the bench).
    pub tansu_cpu_seconds: Option<f64>,
    /// CPU seconds the bench itself used meanwhile: it shares the machine with the gateway.
    pub bench_cpu_seconds: Option<f64>,
    /// The gateway's own latency histograms over the run (from its `/metrics`), beside
    /// `latency_us`; absent when they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_latency: Option<GatewayLatency>,
    /// Scenario f: the connections that came and went while the events flowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnResult>,
}

/// Where the end-to-end latency goes, by the gateway's histograms (see `scrape.rs`).
#[derive(Serialize)]
pub struct GatewayLatency {
    /// `cdc_gateway_enqueue_latency_seconds`: Kafka record timestamp until queued for every
    /// recipient, per event: producer batching, broker, fetch, and the gateway's dispatch.
    pub enqueue: Option<StageLatency>,
    /// `cdc_gateway_dispatch_latency_seconds`: record handed over by librdkafka until queued
    /// for every recipient, per event: the gateway's own share of `enqueue`.
    pub dispatch: Option<StageLatency>,
    /// `cdc_gateway_write_latency_seconds`: per batch written to a socket, from its oldest
    /// message queued: the gateway's share after `dispatch`.
    pub write: Option<StageLatency>,
    /// `enqueue` minus `dispatch`, means only: until librdkafka hands the record over
    /// (producer batching, broker, fetch, and waiting in the consumer's queue while the
    /// gateway is behind).
    pub upstream_mean_us: Option<f64>,
    /// End-to-end mean minus `enqueue` mean: from queued to read by the client (the
    /// gateway's writer, the socket, and the client's wake-up and read).
    pub after_enqueue_mean_us: Option<f64>,
}

/// One stage's latency from a Prometheus histogram: exact count and mean; each quantile as
/// the bucket it lies in, and an estimate interpolated within it.
#[derive(Serialize)]
pub struct StageLatency {
    pub count: u64,
    pub mean_us: f64,
    pub p50: Option<BucketQuantile>,
    pub p90: Option<BucketQuantile>,
    pub p99: Option<BucketQuantile>,
}

#[derive(Serialize)]
pub struct BucketQuantile {
    pub estimate_us: f64,
    /// The bucket's bounds, microseconds: (lower, upper], no upper for `+Inf`.
    pub bucket_us: (f64, Option<f64>),
}

/// Connection churn (scenario f): each churn connection connects, subscribes to `cdc.order`
/// with `"snapshot": true`, reads the ack and every row up to `synced`, checks the rows, and
/// closes.
#[derive(Serialize, Default)]
pub struct ChurnResult {
    /// Connections per second asked for.
    pub target_per_sec: u32,
    /// Churn connections open at once at most.
    pub concurrency: u32,
    /// Distinct rows produced before the run: what every snapshot should hold.
    pub seeded_rows: u32,
    /// Seconds from seeding until the gateway's snapshot of `cdc.order` held every seeded row.
    pub seed_seconds: f64,
    /// Connections started.
    pub attempted: u64,
    /// Connections that got the ack, exactly the ack's `snapshot.rows` rows, each row once,
    /// and `synced`.
    pub completed: u64,
    pub failed: u64,
    /// Why connections failed, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Times every one of `concurrency` connections was still busy when the next was due:
    /// the churn fell behind its rate there.
    pub capped: u64,
    /// From the first connection started until the last one finished.
    pub seconds: f64,
    /// `completed / seconds`: the churn achieved.
    pub connects_per_sec: f64,
    /// Snapshot rows received by completed connections, in all.
    pub rows: u64,
    /// Fewest and most rows in one completed snapshot.
    pub rows_min: Option<u64>,
    pub rows_max: Option<u64>,
    /// Completed snapshots with fewer rows than were seeded.
    pub rows_below_seeded: u64,
    /// Completed snapshots whose ack said `complete: true` / `false`.
    pub complete: u64,
    pub incomplete: u64,
    /// TCP connect plus WebSocket upgrade, microseconds.
    pub connect_us: Option<Latency>,
    /// Subscribe sent until `synced` received (ack and every row read), microseconds.
    pub subscribe_snapshot_us: Option<Latency>,
    /// Connect started until `synced` received, microseconds.
    pub total_us: Option<Latency>,
}

#[derive(Serialize)]
pub struct Connections {
    pub requested: u32,
    pub opened: u64,
    pub failed: u64,
    /// Why connections failed, with counts.
    pub failure_reasons: BTreeMap<String, u64>,
    /// From the first connection attempt until every client subscribed or failed.
    pub seconds: f64,
}

#[derive(Serialize)]
pub struct Events {
    pub requested: u64,
    /// Events per second asked for; 0 means as fast as possible.
    pub rate: u64,
    /// Handed to librdkafka.
    pub sent: u64,
    /// Acknowledged by the broker: what the expected deliveries are computed from.
    pub acknowledged: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Stopped by --duration or an interrupt before all events were sent.
    pub stopped_early: bool,
}

#[derive(Serialize, Default)]
pub struct Delivery {
    /// Sum over subscribed clients of the acknowledged events their subscription selects.
    pub expected: u64,
    /// Data messages received.
    pub received: u64,
    /// Distinct expected events received.
    pub distinct: u64,
    /// `expected - distinct`.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Events of this run outside the client's subscription.
    pub unexpected: u64,
    /// Data messages that are not this run's events.
    pub stray: u64,
    /// Error replies and unreadable messages.
    pub errors: u64,
    /// Clients that subscribed and got exactly their events, each once, in order, and were
    /// not closed by the gateway.
    pub clients_exact: u64,
    pub clients_not_exact: u64,
    /// The clients that were not exact (at most `CLIENT_ROWS`).
    pub clients: Vec<ClientRow>,
}

/// Per-client rows kept in the result file.
pub const CLIENT_ROWS: usize = 1000;

#[derive(Serialize)]
pub struct ClientRow {
    pub client: u32,
    pub topic: String,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub stray: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// `stopped` (by the bench), `closed <code> <reason>`, `dropped: ...`, `not connected: ...`.
    pub ending: String,
}

#[derive(Serialize, Default)]
pub struct Throughput {
    /// Data messages received / `seconds`.
    pub deliveries_per_sec: Option<f64>,
    /// From the first event produced to the last one received.
    pub seconds: Option<f64>,
    /// Rate while the count of delivered events went from 10% to 90% of its final value:
    /// leaves out the ramp-up and the tail.
    pub steady_deliveries_per_sec: Option<f64>,
    /// That window, in seconds after the first event produced.
    pub steady_window: Option<[f64; 2]>,
    /// Distinct deliveries in each second after production started.
    pub per_second: Vec<u64>,
}

#[derive(Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    /// The quantiles of `histogram`; `None` when it is empty.
    pub fn of<T: hdrhistogram::Counter>(histogram: &hdrhistogram::Histogram<T>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Latency {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        })
    }
}

#[derive(Serialize, Default)]
pub struct Closes {
    /// Close frames the gateway sent on its own, by code.
    pub by_gateway: BTreeMap<u16, u64>,
    /// One reason text per code.
    pub reasons: BTreeMap<u16, String>,
    /// Connections that broke without a close frame.
    pub dropped: u64,
}

#[derive(Serialize)]
pub struct Process {
    pub pid: u32,
    /// VmRSS before the clients connected.
    pub rss_before_bytes: Option<u64>,
    /// VmRSS with every client connected, just before the bench closed them.
    pub rss_loaded_bytes: Option<u64>,
    /// `(rss_loaded - rss_before) / opened`: memory per open connection and subscription.
    pub rss_per_connection_bytes: Option<f64>,
    /// VmHWM: the process's peak RSS so far.
    pub peak_rss_bytes: Option<u64>,
    /// utime + stime used from the first event produced until deliveries drained.
    pub cpu_seconds: Option<f64>,
    pub cpu_ns_per_delivery: Option<f64>,
}

impl Report {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

impl RunResult {
    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let c = &self.connections;
        let e = &self.events;
        let d = &self.delivery;
        let rate = match e.rate {
            0 => "as fast as possible".to_owned(),
            r => format!("{}/s", group(r)),
        };
        let _ = writeln!(
            out,
            "run {}: {} clients, {} mix, {} events at {rate}{}",
            self.run,
            group(u64::from(c.requested)),
            self.mix.name(),
            group(e.requested),
            self.target_deliveries_per_sec
                .map_or(String::new(), |t| format!(
                    " (target {} deliveries/s)",
                    group(t as u64)
                )),
        );
        let _ = writeln!(
            out,
            "  connections  {} opened, {} failed in {:.2} s",
            group(c.opened),
            group(c.failed),
            c.seconds
        );
        for (reason, count) in &c.failure_reasons {
            let _ = writeln!(out, "               {count} × {reason}");
        }
        let _ = writeln!(
            out,
            "  events       {} sent, {} acknowledged, {} failed in {:.2} s{}",
            group(e.sent),
            group(e.acknowledged),
            group(e.failed),
            e.seconds,
            if e.stopped_early {
                " (stopped early)"
            } else {
                ""
            }
        );
        if let Some(error) = &e.first_error {
            let _ = writeln!(out, "               first error: {error}");
        }
        let _ = writeln!(
            out,
            "  delivery     expected {}, received {}, lost {}, duplicates {}, out-of-order {}, \
             unexpected {}, stray {}, errors {} ({})",
            group(d.expected),
            group(d.received),
            group(d.lost),
            group(d.duplicates),
            group(d.out_of_order),
            group(d.unexpected),
            group(d.stray),
            group(d.errors),
            self.drain,
        );
        let _ = writeln!(
            out,
            "               {} of {} clients exact",
            group(d.clients_exact),
            group(d.clients_exact + d.clients_not_exact)
        );
        let t = &self.throughput;
        if let (Some(rate), Some(seconds)) = (t.deliveries_per_sec, t.seconds) {
            let steady = match (t.steady_deliveries_per_sec, t.steady_window) {
                (Some(rate), Some([from, to])) => {
                    format!("; steady {}/s ({from:.1}–{to:.1} s)", group(rate as u64))
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  throughput   {} deliveries/s over {seconds:.2} s{steady}",
                group(rate as u64)
            );
        }
        if let Some(l) = &self.latency_us {
            let _ = writeln!(
                out,
                "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n = {})",
                micros(l.p50),
                micros(l.p90),
                micros(l.p99),
                micros(l.p999),
                micros(l.max),
                group(l.count)
            );
        }
        if let Some(g) = &self.gateway {
            let mut parts = Vec::new();
            if let Some(peak) = g.peak_rss_bytes {
                parts.push(format!("peak RSS {}", bytes(peak as f64)));
            }
            if let Some(per) = g.rss_per_connection_bytes {
                parts.push(format!("{}/connection", bytes(per)));
            }
            if let Some(cpu) = g.cpu_seconds {
                let per_delivery = g
                    .cpu_ns_per_delivery
                    .map_or(String::new(), |ns| format!(" = {ns:.0} ns/delivery"));
                parts.push(format!("CPU {cpu:.2} s{per_delivery}"));
            }
            let _ = writeln!(out, "  gateway      {}", parts.join(", "));
        }
        // On a shared machine the other processes' CPU is what the gateway did not get.
        let others: Vec<String> = [
            ("load generator", self.bench_cpu_seconds),
            ("tansu", self.tansu_cpu_seconds),
        ]
        .into_iter()
        .filter_map(|(who, cpu)| cpu.map(|cpu| format!("{who} {cpu:.2} s")))
        .collect();
        if !others.is_empty() {
            let _ = writeln!(out, "  other CPU    {}", others.join(", "));
        }
        if let Some(split) = &self.gateway_latency {
            let stage = |name: &str, stage: &Option<StageLatency>| {
                stage.as_ref().map(|s| {
                    format!(
                        "{name} p50 {}  p90 {}  p99 {}  mean {}  (n = {})",
                        bucket(&s.p50),
                        bucket(&s.p90),
                        bucket(&s.p99),
                        micros(s.mean_us.round() as u64),
                        group(s.count)
                    )
                })
            };
            let lines = [
                stage("record timestamp → queued  ", &split.enqueue),
                stage("fetched → queued (gateway) ", &split.dispatch),
                stage("queued → written (gateway) ", &split.write),
                split.upstream_mean_us.map(|us| {
                    format!(
                        "record timestamp → handed over by librdkafka, means: {}",
                        signed_micros(us)
                    )
                }),
                split.after_enqueue_mean_us.map(|us| {
                    format!(
                        "queued → read by the client (end-to-end mean − enqueue mean): {}",
                        signed_micros(us)
                    )
                }),
            ];
            for (i, line) in lines.into_iter().flatten().enumerate() {
                let label = if i == 0 { "  split" } else { "" };
                let _ = writeln!(out, "{label:<15}{line}");
            }
        }
        if let Some(churn) = &self.churn {
            churn.summary(&mut out);
        }
        let mut closes: Vec<String> = self
            .closes
            .by_gateway
            .iter()
            .map(|(code, n)| {
                let reason = self.closes.reasons.get(code).map_or("", String::as_str);
                format!("{code} {reason} × {n}")
            })
            .collect();
        if self.closes.dropped > 0 {
            closes.push(format!("dropped without close × {}", self.closes.dropped));
        }
        if !closes.is_empty() {
            let _ = writeln!(out, "  closes       {}", closes.join(", "));
        }
        for row in d.clients.iter().take(5) {
            let _ = writeln!(
                out,
                "  client {:>5}  {} expected {} received {} lost {} dup {} ooo {} unexpected {}: {}{}",
                row.client,
                row.topic,
                row.expected,
                row.received,
                row.lost,
                row.duplicates,
                row.out_of_order,
                row.unexpected,
                row.ending,
                row.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!("; {e}")),
            );
        }
        out
    }
}

impl ChurnResult {
    fn summary(&self, out: &mut String) {
        if self.target_per_sec == 0 {
            let _ = writeln!(
                out,
                "  churn        off (--churn-rate 0); {} rows seeded",
                group(u64::from(self.seeded_rows))
            );
            return;
        }
        let _ = writeln!(
            out,
            "  churn        {} connects/s (target {}/s, at most {} at once{}): {} started, {} \
             complete, {} failed in {:.2} s",
            group(self.connects_per_sec.round() as u64),
            group(u64::from(self.target_per_sec)),
            self.concurrency,
            if self.capped > 0 {
                format!(", all busy {} times", group(self.capped))
            } else {
                String::new()
            },
            group(self.attempted),
            group(self.completed),
            group(self.failed),
            self.seconds,
        );
        let rows = match (self.rows_min, self.rows_max) {
            (Some(min), Some(max)) if min == max => format!("{} rows each", group(min)),
            (Some(min), Some(max)) => format!("{}–{} rows", group(min), group(max)),
            _ => "no rows".to_owned(),
        };
        let _ = writeln!(
            out,
            "               snapshots {rows} (seeded {}, {} below), complete {} / incomplete {}; \
             {} rows in all",
            group(u64::from(self.seeded_rows)),
            group(self.rows_below_seeded),
            group(self.complete),
            group(self.incomplete),
            group(self.rows),
        );
        for (what, latency) in [
            ("subscribe+snapshot", &self.subscribe_snapshot_us),
            ("connect", &self.connect_us),
            ("connect to synced", &self.total_us),
        ] {
            if let Some(l) = latency {
                let _ = writeln!(
                    out,
                    "               {what:<18} p50 {}  p90 {}  p99 {}  max {}",
                    micros(l.p50),
                    micros(l.p90),
                    micros(l.p99),
                    micros(l.max),
                );
            }
        }
        for (reason, count) in &self.failure_reasons {
            let _ = writeln!(out, "               {count} × {reason}");
        }
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "               first error: {error}");
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// The bucket a quantile lies in: `1.00 ms–2.50 ms`, or `> 30.00 s` for the `+Inf` one.
fn bucket(quantile: &Option<BucketQuantile>) -> String {
    let us = |us: f64| micros(us.round() as u64);
    match quantile {
        None => "-".to_owned(),
        Some(BucketQuantile {
            bucket_us: (lower, Some(upper)),
            ..
        }) => format!("{}–{}", us(*lower), us(*upper)),
        Some(BucketQuantile {
            bucket_us: (lower, None),
            ..
        }) => format!("> {}", us(*lower)),
    }
}

/// A difference of means, which may come out below zero at the histograms' resolution.
fn signed_micros(us: f64) -> String {
    match us {
        us if us < 0.0 => format!("-{}", micros((-us).round() as u64)),
        us => micros(us.round() as u64),
    }
}

fn bytes(n: f64) -> String {
    match n {
        n if n < 10_240.0 => format!("{n:.0} B"),
        n if n < 10_485_760.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{:.1} MiB", n / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_easily() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(micros(950), "950 µs");
        assert_eq!(micros(12_340), "12.34 ms");
        assert_eq!(bytes(2048.0), "2048 B");
        assert_eq!(bytes(20_480.0), "20.0 KiB");
    }
}
