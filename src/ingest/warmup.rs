//! Warms the resume history and the snapshot cache from Kafka (protocol section 7.2), so that a
//! client resumes across a gateway restart and onto another replica: before the consumer
//! starts, one group-less reader reads back up to `--history-warmup` records before each
//! partition's start, in one pass over all partitions, and the records are kept without
//! being dispatched. What it reached decides what history may promise ([`Warmed::from`]).
//!
//! The reader is its own consumer on a blocking thread: the group's offsets are untouched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::assignment::Start;
use crate::config::Config;
use crate::position::Partition;

/// Bound on the whole read-back.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One record read back, owned.
pub struct Record {
    pub partition: Partition,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

/// What a read-back got: the records in offset order per partition, and per partition the
/// offset from which everything up to its start was read.
pub struct Warmed {
    pub records: Vec<Record>,
    pub from: HashMap<Partition, i64>,
}

#[derive(Clone)]
pub struct Warmup {
    reader: ClientConfig,
    window: i64,
}

impl Warmup {
    /// `None` when there is nothing to warm: no window, or no history and no snapshots.
    pub fn new(config: &Config) -> Option<Self> {
        let wanted = config.history_events > 0 || config.snapshot_rows > 0;
        if config.history_warmup == 0 || !wanted {
            return None;
        }
        let reader = super::kafka_client(
            config,
            |reader| {
                reader
                    .set("group.id", format!("{}-warmup", config.consumer_group()))
                    .set("client.id", "cdc-gateway-warmup")
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    // An offset retention deleted between reading the low watermark and
                    // fetching is an error, not a jump to the end (librdkafka's default):
                    // the read fails and history promises nothing it did not read.
                    .set("auto.offset.reset", "error")
                    .set("enable.partition.eof", "true");
            },
            |_| true,
        );
        Some(Self {
            reader,
            window: i64::from(config.history_warmup),
        })
    }

    /// Reads `[max(next - window, low), next)` of every partition (blocking). A partition the
    /// read could not finish in time keeps what it got, but counts as read from its start.
    pub fn read(&self, starts: &[Start]) -> Result<Warmed, KafkaError> {
        let mut from: HashMap<Partition, i64> =
            starts.iter().map(|s| (s.partition, s.next)).collect();
        let mut pending: HashMap<Partition, (i64, i64)> = HashMap::new();
        let mut list = TopicPartitionList::new();
        for start in starts {
            let first = start.next.saturating_sub(self.window).max(start.low);
            if first < start.next {
                list.add_partition_offset(
                    start.partition.topic.as_str(),
                    start.partition.partition,
                    Offset::Offset(first),
                )?;
                pending.insert(start.partition, (first, start.next));
            }
        }
        let mut records = Vec::new();
        // The first offset each partition actually handed over: a broker may start later
        // than asked (tansu 0.6 does, asked for an offset inside a record batch), and
        // history may only promise what was read.
        let mut first_read: HashMap<Partition, i64> = HashMap::new();
        if pending.is_empty() {
            return Ok(Warmed { records, from });
        }
        let reader: BaseConsumer = self.reader.create()?;
        reader.assign(&list)?;
        let deadline = Instant::now() + TIMEOUT;
        while !pending.is_empty() && Instant::now() < deadline {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let partition = Partition::new(message.topic(), message.partition());
                    let Some(&(first, end)) = pending.get(&partition) else {
                        continue;
                    };
                    let first = *first_read
                        .entry(partition)
                        .or_insert(message.offset().max(first));
                    if message.offset() < end {
                        records.push(Record {
                            partition,
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec),
                            offset: message.offset(),
                            timestamp_ms: message.timestamp().to_millis(),
                        });
                    }
                    if message.offset() + 1 >= end {
                        pending.remove(&partition);
                        from.insert(partition, first);
                        tracing::debug!(%partition, first, end, "warm-up read to its start");
                    }
                }
                // The end of a partition: nothing more before its start.
                Some(Err(KafkaError::PartitionEOF(id))) => {
                    let done: Vec<Partition> = pending
                        .keys()
                        .filter(|p| p.partition == id)
                        .copied()
                        .collect();
                    // EOF names only the partition number: finish it where the position
                    // reached says so, which the reader knows per topic.
                    for partition in done {
                        if reached_end(&reader, partition, pending[&partition].1) {
                            let (first, end) = pending.remove(&partition).expect("pending");
                            let first = first_read.get(&partition).copied().unwrap_or(first);
                            from.insert(partition, first);
                            tracing::debug!(%partition, first, end, "warm-up read to the partition's end");
                        }
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        for (partition, (first, end)) in &pending {
            tracing::warn!(%partition, first, end, "warm-up timed out: snapshots are incomplete");
        }
        Ok(Warmed { records, from })
    }
}

/// Whether the reader has handed out everything of `partition` before `end` (its position,
/// the offset after the last record or control record it returned, is at `end` or past it).
/// Only that: a partition's end of file, or a high watermark below `end` that a broker may
/// report for a moment, does not mean the records before `end` were read, and a partition
/// taken as read before they were would make a snapshot that calls itself complete miss them.
fn reached_end(reader: &BaseConsumer, partition: Partition, end: i64) -> bool {
    let Ok(positions) = reader.position() else {
        return false;
    };
    let at = positions
        .find_partition(partition.topic.as_str(), partition.partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        });
    let reached = at.is_some_and(|at| at >= end);
    if reached {
        tracing::debug!(%partition, ?at, end, "warm-up reader at the partition's end");
    }
    reached
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};

    use super::*;
    use crate::config::Cli;

    /// Issue 20.8: retention deletes the warm-up's first offset after the starts were read
    /// (here: the starts say the log begins at 0; the mock cluster kept only its last 5 MiB).
    /// The reader once jumped to the end, read nothing, and claimed the partition as read
    /// from 0: history would then answer `recovered: true` for records it never held.
    #[test]
    fn a_first_offset_deleted_under_the_reader_is_never_claimed_as_read() {
        let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
        let topic = "warmup-retention";
        cluster.create_topic(topic, 1, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        let pad = "x".repeat(2000);
        for seq in 0..4500 {
            let value = format!(
                r#"{{"entity_type":"order","entity_id":"1","operation":"update","data":{{"seq":{seq},"pad":"{pad}"}}}}"#
            );
            loop {
                match producer.send(BaseRecord::<(), _>::to(topic).payload(&value)) {
                    Ok(()) => break,
                    Err(_) => {
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        let (low, high) = probe
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap();
        assert!(
            low > 0 && high == 4500,
            "retention deleted the oldest records ({low}, {high})"
        );

        let cli = Cli::try_parse_from([
            "cdc-gateway",
            "--brokers",
            &cluster.bootstrap_servers(),
            "--source-topics",
            topic,
            "--history-warmup",
            "100000",
        ])
        .unwrap();
        let warmup = Warmup::new(&cli.config).unwrap();
        let partition = Partition::new(topic, 0);
        let stale = Start {
            partition,
            next: high,
            low: 0,
            deleted_from: None,
        };
        match warmup.read(&[stale]) {
            Err(e) => eprintln!("the read failed, as it should: {e}"),
            Ok(warmed) => {
                let from = warmed.from[&partition];
                let first = warmed.records.first().map(|r| r.offset);
                assert!(
                    from >= low && first.is_none_or(|first| first <= from),
                    "claimed as read from {from}; the broker holds from {low}, the read began at {first:?}"
                );
            }
        }
    }
}
