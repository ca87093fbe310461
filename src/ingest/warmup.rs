//! Warms the resume history and the snapshot cache from Kafka (protocol section 7.2), so that
//! a client resumes across a gateway restart and onto another replica: the first time the
//! consumer task needs a partition (its first record, or a resume that names it), it reads
//! back up to `--history-warmup` records that come before where the group's consumption of
//! that partition starts, decodes them, and records them without dispatching them.
//!
//! The read-back uses its own group-less consumer, assigned to the one partition, on a
//! blocking thread: the group's consumer and its offsets are untouched.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::decode::{Decoded, Decoder, RawRecord};
use super::GatewayConsumer;
use crate::config::Config;
use crate::event::SourcePosition;
use crate::fanout::FanOut;

/// Bound on one partition's read-back, and on each broker request it makes.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One record read back, owned.
struct Record {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    offset: i64,
    timestamp_ms: Option<i64>,
}

pub struct Warmup {
    reader: ClientConfig,
    window: i64,
    /// Source topics the consumer reads; a resume names partitions, not topics.
    topics: Vec<String>,
    /// Partitions already warmed, per source topic.
    warmed: HashMap<String, HashSet<i32>>,
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
                    .set("group.id", format!("{}-warmup", config.group_id))
                    .set("client.id", "cdc-gateway-warmup")
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "true");
            },
            |_| true,
        );
        Some(Self {
            reader,
            window: i64::from(config.history_warmup),
            topics: config.source_topics.clone(),
            warmed: HashMap::new(),
        })
    }

    /// Before the first record of `topic`/`partition`, at `offset`: reads back what came
    /// before it.
    pub async fn before_first(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        decoder: &Decoder,
        fanout: &FanOut,
    ) {
        // Checked for every record: a lookup that allocates nothing.
        if self.is_warmed(topic, partition) {
            return;
        }
        self.mark(topic, partition);
        self.read_back(topic, partition, offset, decoder, fanout)
            .await;
    }

    /// Before a resume names `partitions`: reads back what came before the group's position
    /// on each one not warmed yet (its committed offset, or the end of the partition).
    pub async fn before_resume(
        &mut self,
        partitions: impl Iterator<Item = i32>,
        consumer: &Arc<GatewayConsumer>,
        decoder: &Decoder,
        fanout: &FanOut,
    ) {
        let wanted: Vec<(String, i32)> = partitions
            .flat_map(|p| self.topics.iter().map(move |t| (t.clone(), p)))
            .filter(|(topic, partition)| !self.is_warmed(topic, *partition))
            .collect();
        for (topic, partition) in wanted {
            let consumer = Arc::clone(consumer);
            let lookup = (topic.clone(), partition);
            let end = tokio::task::spawn_blocking(move || group_position(&consumer, &lookup))
                .await
                .ok()
                .flatten();
            // A partition this gateway does not consume (or cannot look up) stays unwarmed.
            let Some(end) = end else { continue };
            self.mark(&topic, partition);
            self.read_back(&topic, partition, end, decoder, fanout)
                .await;
        }
    }

    fn is_warmed(&self, topic: &str, partition: i32) -> bool {
        self.warmed
            .get(topic)
            .is_some_and(|partitions| partitions.contains(&partition))
    }

    fn mark(&mut self, topic: &str, partition: i32) {
        self.warmed
            .entry(topic.to_owned())
            .or_default()
            .insert(partition);
    }

    async fn read_back(
        &self,
        topic: &str,
        partition: i32,
        end: i64,
        decoder: &Decoder,
        fanout: &FanOut,
    ) {
        let (reader, window, owned_topic) = (self.reader.clone(), self.window, topic.to_owned());
        let read = tokio::task::spawn_blocking(move || {
            read_range(&reader, &owned_topic, partition, end, window)
        })
        .await;
        let records = match read {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                tracing::warn!(topic, partition, "history warm-up failed: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(topic, partition, "history warm-up failed: {e}");
                return;
            }
        };
        let mut warmed = 0;
        for record in &records {
            let raw = RawRecord {
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                position: SourcePosition {
                    partition,
                    offset: record.offset,
                },
                timestamp_ms: record.timestamp_ms,
            };
            if let Ok(Decoded::Event(event)) = decoder.decode(&raw) {
                fanout.remember(&event);
                warmed += 1;
            }
        }
        tracing::info!(
            topic,
            partition,
            end,
            events = warmed,
            "history warmed from Kafka"
        );
    }
}

/// Where the group's consumption of a partition starts: the committed offset, else the
/// partition's end. `None` when neither can be read.
fn group_position(consumer: &GatewayConsumer, (topic, partition): &(String, i32)) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, *partition);
    let committed = consumer.committed_offsets(tpl, TIMEOUT).ok()?;
    match committed
        .find_partition(topic, *partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(offset)) => Some(offset),
        _ => consumer
            .fetch_watermarks(topic, *partition, TIMEOUT)
            .ok()
            .map(|(_, high)| high),
    }
}

/// The records of `[end - window, end)` that still exist, in offset order.
fn read_range(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    end: i64,
    window: i64,
) -> Result<Vec<Record>, rdkafka::error::KafkaError> {
    let reader: BaseConsumer = config.create()?;
    let (low, _high) = reader.fetch_watermarks(topic, partition, TIMEOUT)?;
    let start = end.saturating_sub(window).max(low);
    let mut records = Vec::new();
    if start >= end {
        return Ok(records);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    reader.assign(&tpl)?;
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if message.offset() >= end {
                    break;
                }
                records.push(Record {
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis(),
                });
                if message.offset() + 1 >= end {
                    break;
                }
            }
            // The end of the partition: nothing more before `end`.
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(records)
}
