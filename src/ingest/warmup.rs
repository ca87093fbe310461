//! The start-up read: before the consumer starts, one group-less reader reads what came before
//! each partition's start, in one pass over all partitions, and hands it over in chunks to be
//! applied without being dispatched: from where the table store stands (a new store: the
//! partition's beginning; an up-to-date one: nothing) and, for the resume history (protocol
//! section 7.2), up to `--history-warmup` records back. What it reached decides what the
//! tables and history may promise ([`Reached`]).
//!
//! The reader is its own consumer on a blocking thread: the group's offsets are untouched.
//! Chunks go through a bounded channel, so a rebuild of millions of records holds a few
//! thousand in memory at a time.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::context::ReaderContext;
use crate::config::Config;
use crate::position::Partition;

/// How long the read may go without receiving anything before it gives up.
const STALL: Duration = Duration::from_secs(30);

/// Records handed over at once.
pub const CHUNK: usize = 2048;

type Reader = BaseConsumer<ReaderContext>;

/// One record read back, owned.
pub struct Record {
    pub partition: Partition,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

/// One partition to read: `[first, end)`, whose log begins at `low`.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub partition: Partition,
    pub first: i64,
    pub end: i64,
    pub low: i64,
}

/// Times the read goes back further when a broker starts a partition later than asked.
const REWINDS: u32 = 6;

/// How long a partition may hand over nothing before it is asked from further back: a
/// rescue only, well past a first fetch's time (each seek starts the fetch again).
const QUIET: Duration = Duration::from_secs(5);

/// Per partition read to its end, the first offset the broker actually handed over (it may
/// start later than asked); partitions absent were not read to their end.
pub type Reached = HashMap<Partition, i64>;

#[derive(Clone)]
pub struct Warmup {
    reader: ClientConfig,
    /// Records of history per partition (`--history-warmup`).
    pub window: i64,
}

impl Warmup {
    pub fn new(config: &Config) -> Self {
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
                    // the read fails and nothing is promised that was not read.
                    .set("auto.offset.reset", "error")
                    .set("enable.partition.eof", "true");
            },
            |_| true,
        );
        let window = if config.history_events > 0 {
            i64::from(config.history_warmup)
        } else {
            0
        };
        Self { reader, window }
    }

    /// Reads every span (blocking), sending records in chunks of at most [`CHUNK`], in offset
    /// order per partition, until each span is read or the read stalls for [`STALL`]; stops
    /// early when the receiver is gone.
    pub fn read(
        &self,
        spans: &[Span],
        chunks: &tokio::sync::mpsc::Sender<Vec<Record>>,
    ) -> Result<Reached, KafkaError> {
        let mut reached = Reached::new();
        let mut pending: HashMap<Partition, (i64, i64)> = HashMap::new();
        let mut rewinds = Rewinds {
            lows: spans.iter().map(|s| (s.partition, s.low)).collect(),
            tries: HashMap::new(),
        };
        let reader: Reader = self.reader.create_with_context(ReaderContext)?;
        let mut list = TopicPartitionList::new();
        for span in spans {
            if span.first < span.end {
                list.add_partition_offset(
                    span.partition.topic.as_str(),
                    span.partition.partition,
                    Offset::Offset(from_batch(&reader, span)),
                )?;
                pending.insert(span.partition, (span.first, span.end));
            } else {
                reached.insert(span.partition, span.end);
            }
        }
        if pending.is_empty() {
            return Ok(reached);
        }
        // The first offset each partition actually handed over: a broker may start later
        // than asked (tansu 0.6 does, asked for an offset inside a record batch), and
        // nothing may be promised that was not read.
        let mut first_read: HashMap<Partition, i64> = HashMap::new();
        reader.assign(&list)?;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut last_progress = Instant::now();
        let send = |chunk: &mut Vec<Record>| {
            !chunk.is_empty() && chunks.blocking_send(std::mem::take(chunk)).is_err()
        };
        // When each partition was last asked for (assigned, or sought back).
        let mut asked: HashMap<Partition, Instant> =
            pending.keys().map(|p| (*p, Instant::now())).collect();
        while !pending.is_empty() && last_progress.elapsed() < STALL {
            // tansu 0.6, asked for an offset inside its last record batch, may answer with
            // nothing at all (no record, no end of partition) however long it is asked:
            // a partition that handed over nothing for [`QUIET`] is asked from further back.
            let quiet: Vec<(Partition, i64)> = pending
                .iter()
                .filter(|(p, _)| !first_read.contains_key(p))
                .filter(|(p, _)| asked.get(p).is_none_or(|at| at.elapsed() > QUIET))
                .map(|(p, (first, _))| (*p, *first))
                .collect();
            for (partition, first) in quiet {
                if rewinds.back(&reader, partition, first, "got nothing yet")? {
                    asked.insert(partition, Instant::now());
                    last_progress = Instant::now();
                }
            }
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    let partition = Partition::new(message.topic(), message.partition());
                    let Some(&(first, end)) = pending.get(&partition) else {
                        continue;
                    };
                    if let Entry::Vacant(vacant) = first_read.entry(partition) {
                        // tansu 0.6, asked for an offset inside a record batch, starts at the
                        // next batch: ask again from further back, and skip what comes before
                        // the offset wanted.
                        if message.offset() > first
                            && rewinds.back(&reader, partition, first, "began late")?
                        {
                            asked.insert(partition, Instant::now());
                            continue;
                        }
                        vacant.insert(message.offset().max(first));
                    }
                    if message.offset() < first {
                        continue;
                    }
                    let first = first_read[&partition];
                    if message.offset() < end {
                        chunk.push(Record {
                            partition,
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec),
                            offset: message.offset(),
                            timestamp_ms: message.timestamp().to_millis(),
                        });
                        if chunk.len() >= CHUNK && send(&mut chunk) {
                            return Ok(reached);
                        }
                    }
                    if message.offset() + 1 >= end {
                        pending.remove(&partition);
                        reached.insert(partition, first);
                        tracing::debug!(%partition, first, end, "start-up read reached the start");
                    }
                }
                // The end of a partition: nothing more before its start.
                Some(Err(KafkaError::PartitionEOF(id))) => {
                    last_progress = Instant::now();
                    let done: Vec<Partition> = pending
                        .keys()
                        .filter(|p| p.partition == id)
                        .copied()
                        .collect();
                    // EOF names only the partition number: finish it where the position
                    // reached says so, which the reader knows per topic.
                    for partition in done {
                        // Nothing handed over before the end: tansu, asked for an offset
                        // inside its last record batch, skips to the end. Further back.
                        let (first, _) = pending[&partition];
                        if !first_read.contains_key(&partition)
                            && rewinds.back(&reader, partition, first, "got nothing")?
                        {
                            asked.insert(partition, Instant::now());
                            continue;
                        }
                        if reached_end(&reader, partition, pending[&partition].1) {
                            let (first, end) = pending.remove(&partition).expect("pending");
                            let first = first_read.get(&partition).copied().unwrap_or(first);
                            reached.insert(partition, first);
                            tracing::debug!(%partition, first, end, "start-up read reached the partition's end");
                        }
                    }
                }
                Some(Err(e)) => {
                    send(&mut chunk);
                    return Err(e);
                }
                None => {}
            }
        }
        send(&mut chunk);
        for (partition, (first, end)) in &pending {
            tracing::warn!(%partition, first, end, "start-up read stalled: that partition's rows may be missing from snapshots");
        }
        Ok(reached)
    }
}

/// Where to start reading `span` so that its first record is handed over. tansu 0.6 (memory
/// storage) reports as high watermark its last record batch's base offset + 1, and, asked
/// for an offset inside that batch, answers with nothing (no record, no end of partition):
/// a span starting at or past the reported watermark starts at that batch's base instead
/// (what comes before `first` is skipped). A broker whose watermark is the log's end (Kafka)
/// never takes this path: the span ends at or before it.
fn from_batch(reader: &Reader, span: &Span) -> i64 {
    let watermarks = reader.fetch_watermarks(
        span.partition.topic.as_str(),
        span.partition.partition,
        Duration::from_secs(5),
    );
    match watermarks {
        Ok((_, high)) if span.first >= high && high > span.low => {
            tracing::debug!(partition = %span.partition, first = span.first, high, "start-up read: from the last record batch's base");
            high - 1
        }
        _ => span.first,
    }
}

/// How far back each partition has been asked for again, above its log's beginning.
struct Rewinds {
    lows: HashMap<Partition, i64>,
    tries: HashMap<Partition, u32>,
}

impl Rewinds {
    /// Seeks `partition` back from `first` (100, 400, 1,600... records, never below its log's
    /// beginning), at most [`REWINDS`] times; whether it did.
    fn back(
        &mut self,
        reader: &Reader,
        partition: Partition,
        first: i64,
        why: &str,
    ) -> Result<bool, KafkaError> {
        let low = self.lows.get(&partition).copied().unwrap_or(0);
        let tries = self.tries.entry(partition).or_insert(0);
        if first <= low || *tries >= REWINDS {
            return Ok(false);
        }
        let back = first.saturating_sub(100 << (2 * *tries)).max(low);
        *tries += 1;
        tracing::debug!(%partition, first, back, why, "start-up read: reading from further back");
        reader.seek(
            partition.topic.as_str(),
            partition.partition,
            Offset::Offset(back),
            Duration::from_secs(5),
        )?;
        Ok(true)
    }
}

/// Whether the reader has handed out everything of `partition` before `end` (its position,
/// the offset after the last record or control record it returned, is at `end` or past it).
/// Only that: a partition's end of file, or a high watermark below `end` that a broker may
/// report for a moment, does not mean the records before `end` were read, and a partition
/// taken as read before they were would make a snapshot that calls itself complete miss them.
fn reached_end(reader: &Reader, partition: Partition, end: i64) -> bool {
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
        let warmup = Warmup::new(&cli.config);
        let partition = Partition::new(topic, 0);
        // The starts said the log begins at 0.
        let stale = Span {
            partition,
            first: 0,
            end: high,
            low: 0,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 12);
        let result = warmup.read(&[stale], &tx);
        drop(tx);
        let mut first = None;
        while let Ok(chunk) = rx.try_recv() {
            first = first.or(chunk.first().map(|r| r.offset));
        }
        match result {
            Err(e) => eprintln!("the read failed, as it should: {e}"),
            Ok(reached) => {
                if let Some(from) = reached.get(&partition) {
                    assert!(
                        *from >= low && first.is_none_or(|first| first <= *from),
                        "claimed as read from {from}; the broker holds from {low}, the read began at {first:?}"
                    );
                }
            }
        }
    }
}
