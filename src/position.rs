//! Kafka positions as clients see them (protocol section 7.2): the source topic, partition and
//! offset of a record. A position is the same on every replica reading the same source topics,
//! which is what lets a client resume anywhere. Keys are written `"<source topic>:<partition>"`
//! (Kafka topic names cannot contain `:`).
//!
//! Source topic names are interned once per process ([`SourceTopic`]), so a position stays a
//! `Copy` value that the per-event path moves around without allocating or counting references.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, RwLock};

use serde_json::Value;

/// A source topic's name, interned: equal names are one `&'static str`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceTopic(&'static str);

/// Every source topic name seen by this process. Grows only with the topics the gateway reads,
/// which a deployment bounds.
static INTERNED: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());
/// Serializes first insertions, so two threads never leak the same name twice.
static INSERTING: Mutex<()> = Mutex::new(());

impl SourceTopic {
    pub fn intern(name: &str) -> Self {
        let find = |names: &[&'static str]| names.iter().copied().find(|n| *n == name);
        if let Some(found) = find(&INTERNED.read().unwrap_or_else(|e| e.into_inner())) {
            return SourceTopic(found);
        }
        let _inserting = INSERTING.lock().unwrap_or_else(|e| e.into_inner());
        let mut names = INTERNED.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = find(&names) {
            return SourceTopic(found);
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.push(leaked);
        SourceTopic(leaked)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for SourceTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for SourceTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// One partition of one source topic: a key of a [`Position`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    pub topic: SourceTopic,
    pub partition: i32,
}

impl Partition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: SourceTopic::intern(topic),
            partition,
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.topic, self.partition)
    }
}

/// Where a record came from in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition {
    pub topic: SourceTopic,
    pub partition: i32,
    pub offset: i64,
}

impl SourcePosition {
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        Self {
            topic: SourceTopic::intern(topic),
            partition,
            offset,
        }
    }

    pub fn key(&self) -> Partition {
        Partition {
            topic: self.topic,
            partition: self.partition,
        }
    }
}

/// An offset per partition: what a client has seen (`since`), what the gateway has dispatched
/// (the ack's `position`). A record at or below its partition's offset is covered.
pub type Position = BTreeMap<Partition, i64>;

/// The JSON object of a position: `{"<topic>:<partition>": offset, ...}`.
pub fn to_json(position: &Position) -> Value {
    Value::Object(
        position
            .iter()
            .map(|(key, offset)| (key.to_string(), Value::from(*offset)))
            .collect(),
    )
}

/// `topic:partition:offset,...`, the form of an SSE event id.
pub fn to_event_id(position: &Position) -> String {
    let mut out = String::with_capacity(position.len() * 24);
    for (key, offset) in position {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key.topic.as_str());
        out.push(':');
        out.push_str(itoa::Buffer::new().format(key.partition));
        out.push(':');
        out.push_str(itoa::Buffer::new().format(*offset));
    }
    out
}

/// Why a client's position was refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("a position is an object of \"<source topic>:<partition>\": offset")]
    NotAnObject,
    #[error("position key `{0}` is not \"<source topic>:<partition>\"")]
    BadKey(String),
    #[error("position offset for `{0}` is not an integer of -1 or more")]
    BadOffset(String),
    #[error("position key `{0}` names a partition without its source topic, and the gateway reads several source topics")]
    Ambiguous(String),
    #[error("position names `{0}`, a topic this gateway does not read")]
    UnknownTopic(String),
    #[error(
        "a position of {given} entries is more than the {limit} partitions this gateway reads"
    )]
    TooLarge { given: usize, limit: usize },
    #[error("position `{0}` is not `topic:partition:offset[,topic:partition:offset...]`")]
    BadEventId(String),
}

/// Resolves the keys a client sent against the partitions the gateway reads (`known`).
pub struct Resolver<'a> {
    known: &'a Position,
    /// Entries a client's position may have beyond the partitions read (`--since-margin`).
    margin: usize,
}

impl<'a> Resolver<'a> {
    pub fn new(known: &'a Position, margin: usize) -> Self {
        Self { known, margin }
    }

    /// The only source topic read, when there is exactly one: bare partition keys mean it.
    fn single_topic(&self) -> Option<SourceTopic> {
        let first = self.known.keys().next()?.topic;
        self.known.keys().all(|k| k.topic == first).then_some(first)
    }

    /// The most entries a position may have: the partitions read, and a margin for
    /// partitions another replica has discovered and this one not yet.
    fn limit(&self) -> usize {
        self.known.len() + self.margin
    }

    /// `"<topic>:<partition>"` or, with one source topic, `"<partition>"`. A partition the
    /// gateway does not read (yet) is kept: the resume then answers `recovered: false`.
    fn key(&self, text: &str) -> Result<Partition, PositionError> {
        let bad = || PositionError::BadKey(text.to_owned());
        let parse_partition = |p: &str| p.parse::<i32>().ok().filter(|p| *p >= 0);
        match text.rsplit_once(':') {
            Some((topic, partition)) => {
                let partition = parse_partition(partition).ok_or_else(bad)?;
                let known = self
                    .known
                    .keys()
                    .find(|k| k.topic.as_str() == topic)
                    .map(|k| k.topic)
                    .ok_or_else(|| PositionError::UnknownTopic(topic.to_owned()))?;
                Ok(Partition {
                    topic: known,
                    partition,
                })
            }
            None => {
                let partition = parse_partition(text).ok_or_else(bad)?;
                let topic = self
                    .single_topic()
                    .ok_or_else(|| PositionError::Ambiguous(text.to_owned()))?;
                Ok(Partition { topic, partition })
            }
        }
    }

    fn check_size(&self, given: usize) -> Result<(), PositionError> {
        let limit = self.limit();
        if given > limit {
            return Err(PositionError::TooLarge { given, limit });
        }
        Ok(())
    }

    /// A `since` object of a subscribe request.
    pub fn json(&self, since: &Value) -> Result<Position, PositionError> {
        let Value::Object(entries) = since else {
            return Err(PositionError::NotAnObject);
        };
        self.check_size(entries.len())?;
        entries
            .iter()
            .map(|(key, offset)| {
                let offset = offset
                    .as_i64()
                    .filter(|o| *o >= -1)
                    .ok_or_else(|| PositionError::BadOffset(key.clone()))?;
                Ok((self.key(key)?, offset))
            })
            .collect()
    }

    /// An SSE event id or `since` parameter: `topic:partition:offset,...` (or, with one source
    /// topic, `partition:offset,...`).
    pub fn event_id(&self, text: &str) -> Result<Position, PositionError> {
        let bad = || PositionError::BadEventId(text.to_owned());
        let entries: Vec<&str> = text.split(',').collect();
        self.check_size(entries.len())?;
        entries
            .into_iter()
            .map(|entry| {
                let (key, offset) = entry.trim().rsplit_once(':').ok_or_else(bad)?;
                let offset: i64 = offset.parse().ok().filter(|o| *o >= -1).ok_or_else(bad)?;
                Ok((self.key(key).map_err(|_| bad())?, offset))
            })
            .collect()
    }
}

/// What the consumer task has dispatched: for every partition the gateway reads, the offset of
/// the last record dispatched, or the offset just before the next one to dispatch. It is the
/// `position` of every subscribe ack, and the set of partitions a resume must name.
pub struct Dispatched {
    offsets: Mutex<Position>,
    /// True once the consumer has listed the partitions it reads: before that, a client's
    /// position cannot be checked against them.
    listed: tokio::sync::watch::Sender<bool>,
}

impl Default for Dispatched {
    fn default() -> Self {
        Self {
            offsets: Mutex::default(),
            listed: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Dispatched {
    /// The consumer has listed its partitions (and [`Dispatched::start`]ed each).
    pub fn mark_listed(&self) {
        self.listed.send_replace(true);
    }

    /// Resolves once the partitions are listed.
    pub async fn listed(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Position> {
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A partition the consumer starts reading at `next`.
    pub fn start(&self, partition: Partition, next: i64) {
        self.lock().insert(partition, next - 1);
    }

    /// A record was dispatched.
    pub fn record(&self, at: SourcePosition) {
        let mut offsets = self.lock();
        let entry = offsets.entry(at.key()).or_insert(at.offset);
        *entry = (*entry).max(at.offset);
    }

    pub fn snapshot(&self) -> Position {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(topics: &[&str], partitions: i32) -> Position {
        topics
            .iter()
            .flat_map(|t| (0..partitions).map(move |p| (Partition::new(t, p), -1)))
            .collect()
    }

    #[test]
    fn interning_gives_one_name() {
        let a = SourceTopic::intern("shop.orders");
        let b = SourceTopic::intern(&String::from("shop.orders"));
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_ne!(a, SourceTopic::intern("shop.customers"));
    }

    #[test]
    fn keys_with_topics_and_bare_partitions() {
        let one = known(&["t.a"], 2);
        let resolver = Resolver::new(&one, 64);
        let since = resolver
            .json(&serde_json::json!({"t.a:0": 5, "1": -1}))
            .unwrap();
        assert_eq!(
            since,
            Position::from([
                (Partition::new("t.a", 0), 5),
                (Partition::new("t.a", 1), -1)
            ])
        );
        assert_eq!(to_event_id(&since), "t.a:0:5,t.a:1:-1");
        assert_eq!(resolver.event_id("t.a:0:5,t.a:1:-1").unwrap(), since);
        assert_eq!(resolver.event_id("0:5, 1:-1").unwrap(), since);
        assert_eq!(
            to_json(&since),
            serde_json::json!({"t.a:0": 5, "t.a:1": -1})
        );
    }

    #[test]
    fn refusals() {
        let two = known(&["t.a", "t.b"], 1);
        let resolver = Resolver::new(&two, 64);
        let err = |v: serde_json::Value| resolver.json(&v).unwrap_err();
        assert_eq!(err(serde_json::json!([1])), PositionError::NotAnObject);
        assert!(matches!(
            err(serde_json::json!({"0": 1})),
            PositionError::Ambiguous(_)
        ));
        assert!(matches!(
            err(serde_json::json!({"t.c:0": 1})),
            PositionError::UnknownTopic(_)
        ));
        assert!(matches!(
            err(serde_json::json!({"t.a:x": 1})),
            PositionError::BadKey(_)
        ));
        assert!(matches!(
            err(serde_json::json!({"t.a:0": -2})),
            PositionError::BadOffset(_)
        ));
        let huge: serde_json::Map<String, serde_json::Value> =
            (0..67).map(|p| (format!("t.a:{p}"), 1.into())).collect();
        assert!(matches!(
            err(serde_json::Value::Object(huge)),
            PositionError::TooLarge {
                given: 67,
                limit: 66
            }
        ));
        for bad in [
            "",
            "t.a:0",
            "t.a:0:",
            "t.a::1",
            "t.a:0:x",
            "t.a:0:1,,t.b:0:1",
        ] {
            assert!(resolver.event_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            resolver.event_id("t.a:3:7").unwrap(),
            Position::from([(Partition::new("t.a", 3), 7)]),
            "a partition not read yet is kept (the resume is then not recovered)"
        );
    }
}
