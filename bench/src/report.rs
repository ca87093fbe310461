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
