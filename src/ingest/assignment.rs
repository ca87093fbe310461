//! Which partitions the gateway reads, and where it starts each one. Every replica must see
//! every event, so group membership would buy nothing but rebalances and session timeouts: a
//! replica killed with SIGKILL would hold its group until the broker timed it out, and every
//! rebalance hands records out again. The consumer therefore assigns itself every partition
//! of every source topic (names, or `^regex` entries matched against the cluster's metadata),
//! starts each at the offset committed under its group id (else where `--auto-offset-reset`
//! says), and keeps committing there. A background task re-reads the metadata to pick up new
//! partitions and newly matching topics, which start at their beginning: they are new.
//!
//! Everything here blocks on broker requests; callers run it on a blocking thread, never on
//! the consumer task.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;

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
/// (`latest`) or the beginning (`earliest`) of the partition.
pub fn starts(
    consumer: &GatewayConsumer,
    partitions: &BTreeSet<Partition>,
    reset: OffsetReset,
) -> Result<Vec<Start>, KafkaError> {
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition(p.topic.as_str(), p.partition);
    }
    let committed = consumer.committed_offsets(list, TIMEOUT)?;
    partitions
        .iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(p.topic.as_str(), p.partition, TIMEOUT)?;
            let committed = committed
                .find_partition(p.topic.as_str(), p.partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            let next = match (committed, reset) {
                // A committed offset below the low watermark no longer exists.
                (Some(offset), _) => offset.clamp(low, high),
                (None, OffsetReset::Earliest) => low,
                (None, OffsetReset::Latest) => high,
            };
            Ok(Start {
                partition: *p,
                next,
                low,
            })
        })
        .collect()
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
}
