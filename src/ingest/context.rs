//! librdkafka callbacks: statistics (broker state -> readiness, consumer lag -> metrics),
//! errors (all brokers down -> not ready at once), and its log, which is the only place
//! librdkafka reports that it moved a partition's position because the broker no longer had
//! the records there (retention deleted them before they were read).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::health::{Health, Partition as LagPartition};
use crate::position::Partition;

pub struct GatewayContext {
    health: Arc<Health>,
    /// `--kafka-stall-timeout`, in milliseconds.
    stall_timeout_ms: i64,
    /// Partitions whose position librdkafka reset after the broker answered "offset out of
    /// range", until the consumer sees the gap that left.
    resets: Mutex<HashSet<Partition>>,
    /// Whether `resets` holds any: read per record, so the set is locked only after a reset.
    pending: std::sync::atomic::AtomicBool,
}

impl GatewayContext {
    pub fn new(health: Arc<Health>) -> Self {
        Self {
            health,
            stall_timeout_ms: 15_000,
            resets: Mutex::new(HashSet::new()),
            pending: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Calls a broker stalled when it leaves requests unanswered for longer than `timeout`.
    pub fn with_stall_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stall_timeout_ms = timeout.as_millis() as i64;
        self
    }

    /// Whether librdkafka reset `partition`'s position after an out-of-range fetch since the
    /// last call: the records between the last one read and the next were deleted unread.
    pub fn take_reset(&self, partition: &Partition) -> bool {
        if !self.pending.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let mut resets = self.resets.lock().unwrap_or_else(|e| e.into_inner());
        let taken = resets.remove(partition);
        self.pending
            .store(!resets.is_empty(), std::sync::atomic::Ordering::Release);
        taken
    }
}

/// The partition named by librdkafka's warning that it reset a position after an error,
/// e.g. `[thrd:main]: orders [0]: offset reset (at offset 200 (leader epoch 0), broker 1) to
/// cached BEGINNING offset offset 2104 (leader epoch -1): fetch failed due to requested
/// offset not available on the broker: Broker: Offset out of range`
/// (`rd_kafka_offset_reset`, librdkafka 2.12; the in-process test sees the real one). A reset
/// without an error (no committed offset at start) is logged at debug level and is not one.
fn reset_partition(level: RDKafkaLogLevel, facility: &str, message: &str) -> Option<Partition> {
    if facility != "OFFSET" || level as i32 > RDKafkaLogLevel::Warning as i32 {
        return None;
    }
    let (head, _) = message.split_once("]: offset reset (")?;
    // After the thread's name, "[thrd:main]: " (topic names cannot hold "]" or spaces).
    let head = head.rsplit_once("]: ").map_or(head, |(_, named)| named);
    let (topic, partition) = head.rsplit_once(" [")?;
    Some(Partition::new(topic, partition.parse().ok()?))
}

impl ClientContext for GatewayContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if let Some(partition) = reset_partition(level, facility, message) {
            self.resets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(partition);
            self.pending
                .store(true, std::sync::atomic::Ordering::Release);
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
        }
    }

    fn stats(&self, statistics: Statistics) {
        let connected = statistics
            .brokers
            .values()
            .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        self.health.set_kafka_connected(connected);
        // A hung broker keeps its connection UP and answers nothing: what shows it is how
        // long requests have waited since anything was received.
        let brokers = statistics
            .brokers
            .values()
            .filter(|broker| broker.nodeid >= 0)
            .map(|broker| {
                let idle_ms = (broker.rxidle >= 0).then_some(broker.rxidle / 1000);
                crate::health::Broker {
                    broker: broker.name.clone(),
                    state: broker.state.clone(),
                    awaiting_responses: broker.waitresp_cnt,
                    receive_idle_ms: idle_ms,
                    stalled: crate::health::Broker::is_stalled(
                        &broker.state,
                        broker.waitresp_cnt,
                        idle_ms,
                        self.stall_timeout_ms,
                    ),
                }
            })
            .collect();
        self.health.set_brokers(brokers);
        let mut lag = BTreeMap::new();
        for (topic, stats) in &statistics.topics {
            for (id, partition) in &stats.partitions {
                if *id >= 0 && partition.consumer_lag >= 0 {
                    lag.insert(
                        LagPartition {
                            topic: topic.clone(),
                            partition: *id,
                        },
                        partition.consumer_lag,
                    );
                }
            }
        }
        self.health.set_lag(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_kafka_connected(false);
        }
        tracing::warn!("Kafka client error: {error}: {reason}");
    }
}

/// The consumer assigns its partitions itself (no group rebalances): nothing to hook.
impl ConsumerContext for GatewayContext {}

/// The context of the group-less readers (the start-up read, the probe of partitions' ends):
/// they ask for partitions' ends (`enable.partition.eof`), which librdkafka also reports as
/// global errors; those are how their reads end, not faults, and are not logged as errors.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::trace!("reader at a partition's end: {reason}");
        } else {
            tracing::warn!("Kafka client error (reader): {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_range_reset_names_its_partition() {
        let warning = "[thrd:main]: shop.public.orders [3]: offset reset (at offset 200 \
                       (leader epoch 0), broker 1) to cached BEGINNING offset offset 2104 \
                       (leader epoch -1): fetch failed due to requested offset not available \
                       on the broker: Broker: Offset out of range";
        assert_eq!(
            reset_partition(RDKafkaLogLevel::Warning, "OFFSET", warning),
            Some(Partition::new("shop.public.orders", 3))
        );
        assert_eq!(
            reset_partition(
                RDKafkaLogLevel::Warning,
                "OFFSET",
                warning.trim_start_matches("[thrd:main]: ")
            ),
            Some(Partition::new("shop.public.orders", 3)),
            "without the thread's name"
        );
        assert_eq!(
            reset_partition(RDKafkaLogLevel::Debug, "OFFSET", warning),
            None,
            "a reset without an error (no committed offset) is logged at debug level"
        );
        assert_eq!(
            reset_partition(RDKafkaLogLevel::Warning, "FETCH", warning),
            None
        );
        assert_eq!(
            reset_partition(
                RDKafkaLogLevel::Warning,
                "OFFSET",
                "orders [x]: offset reset (at"
            ),
            None
        );
    }

    /// Issue 20.8: a reset is answered by its partition's next record, once. A flag left
    /// standing (the reset left no gap, or came before the partition's first record) once
    /// waited for the next harmless skip (compaction, a transaction marker) and made it a
    /// reported loss.
    #[test]
    fn a_reset_is_taken_once_and_only_for_its_partition() {
        let context = GatewayContext::new(Arc::new(Health::new(Arc::new(
            crate::metrics::Metrics::new(),
        ))));
        let orders = Partition::new("shop.public.orders", 3);
        let other = Partition::new("shop.public.orders", 4);
        assert!(!context.take_reset(&orders), "nothing reset yet");
        context.log(
            RDKafkaLogLevel::Warning,
            "OFFSET",
            "[thrd:main]: shop.public.orders [3]: offset reset (at offset 200 (leader epoch 0), \
             broker 1) to cached BEGINNING offset offset 2104 (leader epoch -1): fetch failed",
        );
        assert!(!context.take_reset(&other), "another partition's record");
        assert!(context.take_reset(&orders), "the partition's next record");
        assert!(!context.take_reset(&orders), "and only that one");
    }
}
