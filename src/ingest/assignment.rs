//! Which partitions the gateway reads, and where it starts each one. Every replica must see
//! every event, so group membership would buy nothing but rebalances and session timeouts: a
//! replica killed with SIGKILL would hold its group until the broker timed it out, and every
//! rebalance hands records out again. The consumer therefore assigns itself every partition
//! of every source topic (names, or `^regex` entries matched against the cluster's metadata),
//! starts each at the offset committed under its group id (else where `--auto-offset-reset`
//! says), and keeps committing there. A background task re-reads the metadata to pick up new
//! partitions and newly matching topics, which start at their beginning: they are new.
//!
//! A partition's end is never taken from the broker's ListOffsets answer alone: tansu 0.6
//! answers "latest" with the base offset of its newest record batch plus one, short of the end
//! whenever that batch holds more than one record. Where the end decides the start (a new
//! group reading from the end, a committed offset beyond what the broker reported), it is read:
//! [`ends`] fetches each such partition from its newest batch to the end of the log.
//!
//! Everything here blocks on broker requests; callers run it on a blocking thread, never on
//! the consumer task.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;

use super::context::ReaderContext;
use super::GatewayConsumer;
use crate::config::OffsetReset;
use crate::position::Partition;

/// Bound on each broker request made here.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The `--source-topics` entries: exact names and `^regex` patterns.
#[derive(Debug, Clone)]
pub struct Sources {
    names: Vec<String>,
    patterns: Vec<Regex>,
}

impl Sources {
    /// Fails on a pattern that is not a regular expression (config validation reports it).
    pub fn new(entries: &[String]) -> Result<Self, regex::Error> {
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        for entry in entries {
            if entry.starts_with('^') {
                patterns.push(Regex::new(entry)?);
            } else {
                names.push(entry.clone());
            }
        }
        Ok(Self { names, patterns })
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.names.iter().any(|n| n == topic) || self.patterns.iter().any(|p| p.is_match(topic))
    }
}

/// Where a partition starts, and the first offset it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub partition: Partition,
    /// The next offset the consumer reads.
    pub next: i64,
    /// The low watermark: nothing before it can be read back.
    pub low: i64,
    /// The group's committed offset when it is below `low`: the records from it up to `low`
    /// were deleted (retention) before this group read them, and are lost to its clients.
    pub deleted_from: Option<i64>,
}

/// Every partition of the source topics the cluster has now. Topics that do not exist (yet)
/// are simply absent; they are picked up when they appear.
pub fn partitions(
    consumer: &GatewayConsumer,
    sources: &Sources,
) -> Result<BTreeSet<Partition>, KafkaError> {
    let metadata = consumer.fetch_metadata(None, TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none() && sources.matches(topic.name()))
        .flat_map(|topic| {
            topic
                .partitions()
                .iter()
                .map(|p| Partition::new(topic.name(), p.id()))
        })
        .collect())
}

/// Where each partition starts: its committed offset under the group id, else the end
/// (`latest`) or the beginning (`earliest`) of the partition. `probe` configures the
/// group-less reader that finds a partition's end where the start depends on it ([`ends`]).
pub fn starts(
    consumer: &GatewayConsumer,
    probe: &ClientConfig,
    partitions: &BTreeSet<Partition>,
    reset: OffsetReset,
) -> Result<Vec<Start>, KafkaError> {
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition(p.topic.as_str(), p.partition);
    }
    let committed = consumer.committed_offsets(list, TIMEOUT)?;
    let mut found = Vec::new();
    for p in partitions {
        let (low, reported) = consumer.fetch_watermarks(p.topic.as_str(), p.partition, TIMEOUT)?;
        let committed = committed
            .find_partition(p.topic.as_str(), p.partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            });
        found.push((*p, committed, low, reported));
    }
    // The partitions whose start is the end, or may be: the end must be read.
    let wanted: Vec<(Partition, i64)> = found
        .iter()
        .filter(|(_, committed, _, reported)| end_decides(*committed, *reported, reset))
        .map(|(p, _, low, reported)| (*p, reported.saturating_sub(1).max(*low)))
        .collect();
    let ends = ends(probe, &wanted)?;
    Ok(found
        .into_iter()
        .map(|(partition, committed, low, reported)| {
            let end = ends
                .get(&partition)
                .copied()
                .unwrap_or(reported)
                .max(reported);
            Start {
                partition,
                next: next_offset(committed, low, end, reset),
                low,
                deleted_from: committed.filter(|offset| *offset < low),
            }
        })
        .collect())
}

/// Whether a partition's start depends on where its log ends: a new group reading from the
/// end, or a committed offset beyond the end the broker reported (which tansu reports short).
fn end_decides(committed: Option<i64>, reported: i64, reset: OffsetReset) -> bool {
    match committed {
        Some(offset) => offset > reported,
        None => reset == OffsetReset::Latest,
    }
}

/// Where a partition starts, given its end (read where it matters, [`end_decides`]).
fn next_offset(committed: Option<i64>, low: i64, end: i64, reset: OffsetReset) -> i64 {
    match (committed, reset) {
        // A committed offset below the low watermark no longer exists; one beyond the end
        // (a topic deleted and created again) starts at the end.
        (Some(offset), _) => offset.min(end).max(low),
        (None, OffsetReset::Earliest) => low,
        (None, OffsetReset::Latest) => end,
    }
}

/// The offset after the last record of each partition, read: each is fetched from `from` (an
/// offset the broker serves: the base of its newest batch, where tansu says the log ends) to
/// the end of its log, one source topic at a time (the end of a partition is reported by its
/// number alone). Fails when some partition does not reach its end in time: the caller retries.
fn ends(
    probe: &ClientConfig,
    wanted: &[(Partition, i64)],
) -> Result<HashMap<Partition, i64>, KafkaError> {
    let mut ends = HashMap::new();
    if wanted.is_empty() {
        return Ok(ends);
    }
    let reader: BaseConsumer<ReaderContext> = probe.create_with_context(ReaderContext)?;
    let topics: BTreeSet<&str> = wanted.iter().map(|(p, _)| p.topic.as_str()).collect();
    for topic in topics {
        // Per partition: the offset after the last record handed over, at least `from`.
        let mut pending: HashMap<i32, i64> = HashMap::new();
        let mut list = TopicPartitionList::new();
        for (p, from) in wanted.iter().filter(|(p, _)| p.topic.as_str() == topic) {
            list.add_partition_offset(topic, p.partition, Offset::Offset(*from))?;
            pending.insert(p.partition, *from);
        }
        reader.assign(&list)?;
        let deadline = Instant::now() + TIMEOUT;
        while !pending.is_empty() {
            if Instant::now() >= deadline {
                tracing::warn!(topic, partitions = ?pending.keys().collect::<Vec<_>>(), "the end of some source partitions could not be read in time");
                return Err(KafkaError::OffsetFetch(RDKafkaErrorCode::OperationTimedOut));
            }
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) if message.topic() == topic => {
                    if let Some(at) = pending.get_mut(&message.partition()) {
                        *at = (*at).max(message.offset() + 1);
                    }
                }
                Some(Ok(_)) | None => {}
                Some(Err(KafkaError::PartitionEOF(id))) => {
                    if let Some(end) = pending.remove(&id) {
                        let partition = Partition::new(topic, id);
                        tracing::debug!(%partition, end, "source partition's end read");
                        ends.insert(partition, end);
                    }
                }
                Some(Err(e)) => return Err(e),
            }
        }
        reader.unassign()?;
    }
    Ok(ends)
}

/// The consumer's assignment list for `starts`.
pub fn assignment(starts: &[Start]) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for start in starts {
        list.add_partition_offset(
            start.partition.topic.as_str(),
            start.partition.partition,
            Offset::Offset(start.next),
        )?;
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        let sources = Sources::new(&["cdc.events".into(), r"^shop\.public\..*".into()]).unwrap();
        assert!(sources.matches("cdc.events"));
        assert!(sources.matches("shop.public.orders"));
        assert!(!sources.matches("cdc.events2"));
        assert!(!sources.matches("shop.private.orders"));
        assert!(Sources::new(&["^(".into()]).is_err());
    }

    #[test]
    fn the_end_is_read_where_it_decides_the_start() {
        use OffsetReset::{Earliest, Latest};
        // tansu reports 8 where the log ends at 10 (its newest batch holds 7 to 9).
        assert!(end_decides(None, 8, Latest));
        assert!(!end_decides(None, 8, Earliest));
        assert!(
            end_decides(Some(10), 8, Earliest),
            "committed beyond the report"
        );
        assert!(!end_decides(Some(8), 8, Latest));
        assert!(!end_decides(Some(3), 8, Latest));

        assert_eq!(next_offset(None, 0, 10, Latest), 10);
        assert_eq!(next_offset(None, 2, 10, Earliest), 2);
        assert_eq!(
            next_offset(Some(10), 0, 10, Latest),
            10,
            "not cut back to 8"
        );
        assert_eq!(next_offset(Some(12), 0, 10, Latest), 10, "beyond the end");
        assert_eq!(next_offset(Some(1), 2, 10, Latest), 2, "deleted");
    }
}
