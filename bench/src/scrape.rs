//! The gateway's own latency histograms, read from its `/metrics` before the first event and
//! after the deliveries drained, so that a run can put the gateway's view of where the time
//! goes beside the clients' produce-to-receive latency:
//!
//! - `cdc_gateway_enqueue_latency_seconds`: Kafka record timestamp (the producer's clock when
//!   it handed the record to librdkafka) until the event is queued for every recipient. It
//!   holds the producer's batching, the broker, the gateway's fetch and its dispatch, in
//!   whole milliseconds (both clocks are read in ms).
//! - `cdc_gateway_dispatch_latency_seconds`: record handed over by librdkafka until queued for
//!   every recipient: decode, filters, serialization and the enqueues, the gateway's share of
//!   the above.
//! - `cdc_gateway_write_latency_seconds`: per batch written to a socket, from its oldest
//!   message queued: the writer's wake-up, framing and the write, the gateway's other share.
//!
//! What none covers, the client's read, is in the end-to-end mean minus the enqueue mean. Quantiles come from the bucket counts, interpolated within a
//! bucket as Prometheus' `histogram_quantile` does: read them as estimates at the buckets'
//! resolution.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::report::{BucketQuantile, StageLatency};

pub const ENQUEUE: &str = "cdc_gateway_enqueue_latency_seconds";
pub const DISPATCH: &str = "cdc_gateway_dispatch_latency_seconds";
pub const WRITE: &str = "cdc_gateway_write_latency_seconds";

/// The body of `GET /metrics`, or `None` when the gateway does not answer 200.
pub async fn metrics(addr: SocketAddr) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split(' ').nth(1)? == "200").then(|| body.to_owned())
    })
    .await
    .ok()
    .flatten()
}

/// A quantile of a histogram, in seconds: the interpolated estimate and the bucket it lies
/// in (`None` above: the `+Inf` bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantile {
    pub estimate: f64,
    pub bucket: (f64, Option<f64>),
}

/// One Prometheus histogram without labels: cumulative counts by upper bound, sum, count.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    /// (`le`, cumulative count), ascending; `+Inf` last.
    pub cumulative: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Buckets {
    /// The histogram `name` of an exposition text.
    pub fn parse(text: &str, name: &str) -> Option<Self> {
        let mut out = Buckets {
            cumulative: Vec::new(),
            sum: 0.0,
            count: 0.0,
        };
        let bucket = format!("{name}_bucket{{le=\"");
        let (sum, count) = (format!("{name}_sum "), format!("{name}_count "));
        let mut found = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let (le, value) = rest.split_once("\"} ")?;
                let le = match le {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().ok()?,
                };
                out.cumulative.push((le, value.trim().parse().ok()?));
            } else if let Some(value) = line.strip_prefix(&sum) {
                out.sum = value.trim().parse().ok()?;
            } else if let Some(value) = line.strip_prefix(&count) {
                out.count = value.trim().parse().ok()?;
                found = true;
            }
        }
        out.cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        (found && !out.cumulative.is_empty()).then_some(out)
    }

    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets {
            cumulative: self
                .cumulative
                .iter()
                .map(|&(le, n)| {
                    let earlier = before
                        .cumulative
                        .iter()
                        .find(|&&(l, _)| l == le)
                        .map_or(0.0, |&(_, n)| n);
                    (le, n - earlier)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// The `q` quantile in seconds, interpolated linearly within its bucket as Prometheus'
    /// `histogram_quantile` does (the first bucket starts at 0; a quantile in the `+Inf`
    /// bucket is the highest finite bound), with that bucket's bounds.
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let total = self.cumulative.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in &self.cumulative {
            if n >= rank {
                if le.is_infinite() {
                    break;
                }
                let within = n - below;
                let share = if within > 0.0 {
                    (rank - below) / within
                } else {
                    1.0
                };
                return Some(Quantile {
                    estimate: lower + (le - lower) * share,
                    bucket: (lower, Some(le)),
                });
            }
            (lower, below) = (le, n);
        }
        Some(Quantile {
            estimate: lower,
            bucket: (lower, None),
        })
    }

    pub fn stage(&self) -> Option<StageLatency> {
        let us = |seconds: f64| seconds * 1e6;
        let quantile = |q| {
            self.quantile(q).map(|quantile| BucketQuantile {
                estimate_us: us(quantile.estimate),
                bucket_us: (us(quantile.bucket.0), quantile.bucket.1.map(us)),
            })
        };
        (self.count > 0.0).then(|| StageLatency {
            count: self.count as u64,
            mean_us: us(self.sum / self.count),
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x y\n\
        cdc_gateway_enqueue_latency_seconds_bucket{le=\"0.001\"} 10\n\
        cdc_gateway_enqueue_latency_seconds_bucket{le=\"0.005\"} 90\n\
        cdc_gateway_enqueue_latency_seconds_bucket{le=\"0.01\"} 100\n\
        cdc_gateway_enqueue_latency_seconds_bucket{le=\"+Inf\"} 100\n\
        cdc_gateway_enqueue_latency_seconds_sum 0.3\n\
        cdc_gateway_enqueue_latency_seconds_count 100\n\
        cdc_gateway_dispatch_latency_seconds_count 0\n";

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let after = Buckets::parse(TEXT, ENQUEUE).unwrap();
        assert_eq!(after.count, 100.0);
        assert_eq!(
            after.quantile(0.05).unwrap(),
            Quantile {
                estimate: 0.0005,
                bucket: (0.0, Some(0.001))
            }
        );
        let median = after.quantile(0.5).unwrap();
        assert!((median.estimate - 0.003).abs() < 1e-12);
        assert_eq!(median.bucket, (0.001, Some(0.005)));
        assert!((after.quantile(0.95).unwrap().estimate - 0.0075).abs() < 1e-12);
        let before = Buckets {
            cumulative: vec![
                (0.001, 10.0),
                (0.005, 10.0),
                (0.01, 10.0),
                (f64::INFINITY, 10.0),
            ],
            sum: 0.005,
            count: 10.0,
        };
        let delta = after.since(&before);
        assert_eq!(delta.count, 90.0);
        assert!((delta.quantile(0.5).unwrap().estimate - 0.00325).abs() < 1e-12);
        let mut beyond = delta.clone();
        beyond.cumulative[3].1 = 180.0;
        assert_eq!(
            beyond.quantile(0.99).unwrap(),
            Quantile {
                estimate: 0.01,
                bucket: (0.01, None)
            }
        );
        let stage = delta.stage().unwrap();
        assert_eq!(stage.count, 90);
        assert!((stage.mean_us - 0.295 / 90.0 * 1e6).abs() < 1e-6);
        // A histogram without observations has no quantiles; an absent one is None.
        assert!(Buckets::parse(TEXT, DISPATCH).is_none());
        assert!(Buckets::parse("", ENQUEUE).is_none());
    }
}
