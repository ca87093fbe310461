//! Presence: how many subscriptions watch a topic, and, under `--auth jwt`, which users (by
//! their token's `sub`), over every replica. Dashboards that several people watch want to
//! show who else is looking; Centrifugo and Supabase Realtime offer it with Redis or Erlang
//! clustering. Here each replica keeps its own counts, publishes them to a compacted Kafka
//! topic keyed by its replica id (`--presence-topic`, [`crate::ingest::presence`]) and reads
//! the other replicas' documents from it: no new component. A replica that stops publishing
//! (killed, partitioned away) ages out after [`Presence::stale_after`].
//!
//! Clients ask with `{"action":"presence","topic":…}`, or subscribe with `"presence": true`
//! to get a `presence` message whenever the topic's watchers change, coalesced to one per
//! `--presence-interval`. Both need the topic to be one the token may read.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::outbound::Outbound;
use crate::queue::Item;

/// Users listed per topic in a document a replica publishes (its count stays exact).
const MAX_USERS: usize = 1_000;

/// Who watches one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub subscribers: u64,
    #[serde(default)]
    pub users: BTreeSet<String>,
}

/// What one replica publishes: its watchers per topic, as of `at_ms` (its clock).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    pub replica: String,
    pub at_ms: i64,
    pub topics: HashMap<String, Counts>,
}

/// One connection that asked for presence messages on some topics, and what it was last sent.
struct Watcher {
    outbound: Arc<Outbound>,
    sent: HashMap<String, Counts>,
}

pub struct Presence {
    replica: String,
    interval: Duration,
    /// Users are named only under `--auth jwt` (a `sub` is what a token says).
    named: bool,
    /// This replica's subscriptions: topic -> connection -> its token's `sub`.
    local: Mutex<HashMap<String, HashMap<u64, Option<String>>>>,
    /// Bumped on every local change: the publisher sends when it moved.
    version: AtomicU64,
    /// The other replicas' latest documents.
    remote: Mutex<HashMap<String, Document>>,
    watchers: Mutex<HashMap<u64, Watcher>>,
    replicas: prometheus::IntGauge,
}

impl Presence {
    pub fn new(
        replica: String,
        interval: Duration,
        named: bool,
        replicas: prometheus::IntGauge,
    ) -> Self {
        Self {
            replica,
            interval,
            named,
            local: Mutex::default(),
            version: AtomicU64::new(0),
            remote: Mutex::default(),
            watchers: Mutex::default(),
            replicas,
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A document older than this (by its own clock) is of a replica that is gone.
    pub fn stale_after(&self) -> Duration {
        (self.interval * 4).max(Duration::from_secs(5))
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A connection subscribed to `topic` (with its token's `sub`, under `--auth jwt`).
    pub fn join(&self, topic: &str, connection: u64, sub: Option<&str>) {
        lock(&self.local)
            .entry(topic.to_owned())
            .or_default()
            .insert(connection, sub.map(str::to_owned));
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The connection's subscription to `topic` ended (its presence messages too).
    pub fn leave(&self, topic: &str, connection: u64) {
        let mut local = lock(&self.local);
        if let Some(watching) = local.get_mut(topic) {
            watching.remove(&connection);
            if watching.is_empty() {
                local.remove(topic);
            }
        }
        drop(local);
        self.version.fetch_add(1, Ordering::AcqRel);
        if let Some(watcher) = lock(&self.watchers).get_mut(&connection) {
            watcher.sent.remove(topic);
        }
    }

    /// Sends `outbound` a presence message for `topic` whenever its watchers change (the
    /// first at the next tick).
    pub fn watch(&self, topic: &str, outbound: &Arc<Outbound>) {
        lock(&self.watchers)
            .entry(outbound.id())
            .or_insert_with(|| Watcher {
                outbound: Arc::clone(outbound),
                sent: HashMap::new(),
            })
            .sent
            .entry(topic.to_owned())
            .or_insert_with(|| Counts {
                // Never equal to a real state: the first tick sends.
                subscribers: u64::MAX,
                users: BTreeSet::new(),
            });
    }

    /// The connection is gone.
    pub fn forget(&self, connection: u64) {
        lock(&self.watchers).remove(&connection);
    }

    /// Who watches `topic` over every replica heard from recently.
    pub fn counts(&self, topic: &str) -> Counts {
        let mut counts = Counts::default();
        if let Some(watching) = lock(&self.local).get(topic) {
            counts.subscribers = watching.len() as u64;
            counts.users.extend(watching.values().flatten().cloned());
        }
        let now = crate::clock::now_millis();
        let stale = self.stale_after().as_millis() as i64;
        for document in lock(&self.remote).values() {
            if now - document.at_ms > stale {
                continue;
            }
            if let Some(theirs) = document.topics.get(topic) {
                counts.subscribers += theirs.subscribers;
                counts.users.extend(theirs.users.iter().cloned());
            }
        }
        if !self.named {
            counts.users.clear();
        }
        counts
    }

    /// Replicas (this one included) heard from recently.
    pub fn replicas_seen(&self) -> usize {
        let now = crate::clock::now_millis();
        let stale = self.stale_after().as_millis() as i64;
        1 + lock(&self.remote)
            .values()
            .filter(|d| now - d.at_ms <= stale)
            .count()
    }

    /// This replica's document, to publish.
    pub fn document(&self) -> Document {
        let topics = lock(&self.local)
            .iter()
            .map(|(topic, watching)| {
                let users = watching
                    .values()
                    .flatten()
                    .take(MAX_USERS)
                    .cloned()
                    .collect();
                let counts = Counts {
                    subscribers: watching.len() as u64,
                    users,
                };
                (topic.clone(), counts)
            })
            .collect();
        Document {
            replica: self.replica.clone(),
            at_ms: crate::clock::now_millis(),
            topics,
        }
    }

    /// Another replica's document (`None`: its tombstone, it stopped cleanly). Our own, read
    /// back, is ignored.
    pub fn apply(&self, replica: &str, document: Option<Document>) {
        if replica == self.replica {
            return;
        }
        let mut remote = lock(&self.remote);
        match document {
            Some(document) => {
                remote.insert(replica.to_owned(), document);
            }
            None => {
                remote.remove(replica);
            }
        }
        drop(remote);
        self.replicas.set(self.replicas_seen() as i64);
    }

    /// Sends every watcher the topics whose watchers changed since it was last told; a
    /// watcher whose queue is full is told at a later tick. Called every `interval`.
    pub fn tick(&self) {
        self.replicas.set(self.replicas_seen() as i64);
        let mut current: HashMap<String, Counts> = HashMap::new();
        let mut watchers = lock(&self.watchers);
        for watcher in watchers.values_mut() {
            for (topic, sent) in watcher.sent.iter_mut() {
                let now = current
                    .entry(topic.clone())
                    .or_insert_with(|| self.counts(topic));
                if now == sent {
                    continue;
                }
                let joins: Vec<&String> = now.users.difference(&sent.users).collect();
                let leaves: Vec<&String> = sent.users.difference(&now.users).collect();
                let message = message(topic, now, self.named, Some((&joins, &leaves)), None);
                if watcher
                    .outbound
                    .queue
                    .try_send(Item::Message(Bytes::from(message)))
                    .is_ok()
                {
                    *sent = now.clone();
                }
            }
        }
    }
}

/// A `presence` message: the topic's subscriptions over every replica, and under
/// `--auth jwt` the users among them; with `changes`, who joined and left since the last one.
pub fn message(
    topic: &str,
    counts: &Counts,
    named: bool,
    changes: Option<(&[&String], &[&String])>,
    id: Option<&Value>,
) -> Vec<u8> {
    let mut fields = serde_json::Map::new();
    fields.insert("type".into(), "presence".into());
    fields.insert("topic".into(), topic.into());
    fields.insert("subscribers".into(), counts.subscribers.into());
    if named {
        fields.insert("users".into(), serde_json::json!(counts.users));
        if let Some((joins, leaves)) = changes {
            fields.insert("joins".into(), serde_json::json!(joins));
            fields.insert("leaves".into(), serde_json::json!(leaves));
        }
    }
    if let Some(id) = id {
        fields.insert("id".into(), id.clone());
    }
    serde_json::to_vec(&Value::Object(fields)).expect("a JSON value always serializes")
}

/// Runs [`Presence::tick`] every interval until dropped.
pub async fn run(presence: Arc<Presence>) {
    let mut every = tokio::time::interval(presence.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        presence.tick();
    }
}

/// This replica's id by default: the host name (a pod's name on Kubernetes) and the process.
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "cdc-gateway".to_owned());
    format!("{host}-{}", std::process::id())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(named: bool) -> Presence {
        Presence::new(
            "gw-a".into(),
            Duration::from_secs(1),
            named,
            prometheus::IntGauge::new("x", "x").unwrap(),
        )
    }

    #[test]
    fn counts_merge_this_replica_and_fresh_others() {
        let p = presence(true);
        p.join("cdc.order", 1, Some("alice"));
        p.join("cdc.order", 2, Some("alice"));
        p.join("cdc.order", 3, Some("bob"));
        p.join("cdc.customer", 3, Some("bob"));
        let mut topics = HashMap::new();
        topics.insert(
            "cdc.order".to_owned(),
            Counts {
                subscribers: 2,
                users: ["carol".to_owned(), "alice".to_owned()].into(),
            },
        );
        let fresh = Document {
            replica: "gw-b".into(),
            at_ms: crate::clock::now_millis(),
            topics: topics.clone(),
        };
        p.apply("gw-b", Some(fresh));
        let stale = Document {
            replica: "gw-c".into(),
            at_ms: crate::clock::now_millis() - 60_000,
            topics,
        };
        p.apply("gw-c", Some(stale));
        let counts = p.counts("cdc.order");
        assert_eq!(counts.subscribers, 5, "3 here, 2 on gw-b, gw-c aged out");
        assert_eq!(
            counts.users.into_iter().collect::<Vec<_>>(),
            ["alice", "bob", "carol"]
        );
        assert_eq!(p.replicas_seen(), 2);
        p.apply("gw-b", None);
        assert_eq!(p.counts("cdc.order").subscribers, 3, "gw-b's tombstone");
        p.leave("cdc.order", 3);
        assert_eq!(
            p.counts("cdc.order").users.into_iter().collect::<Vec<_>>(),
            ["alice"]
        );
        p.apply("gw-a", None);
        assert_eq!(
            p.counts("cdc.order").subscribers,
            2,
            "our own read back is ignored"
        );
    }

    #[test]
    fn without_tokens_no_user_is_named() {
        let p = presence(false);
        p.join("cdc.order", 1, None);
        let counts = p.counts("cdc.order");
        assert_eq!((counts.subscribers, counts.users.len()), (1, 0));
        let message: Value =
            serde_json::from_slice(&message("cdc.order", &counts, false, None, None)).unwrap();
        assert_eq!(
            message,
            serde_json::json!({"type": "presence", "topic": "cdc.order", "subscribers": 1})
        );
    }

    #[tokio::test]
    async fn watchers_get_one_message_per_change_with_joins_and_leaves() {
        let p = presence(true);
        let (outbound, mut rx) = Outbound::new(7, 8);
        p.join("cdc.order", 7, Some("alice"));
        p.watch("cdc.order", &outbound);
        p.tick();
        let first: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(first["subscribers"], 1);
        assert_eq!(first["joins"], serde_json::json!(["alice"]));
        p.tick();
        p.join("cdc.order", 8, Some("bob"));
        p.join("cdc.order", 9, Some("bob"));
        p.tick();
        let second: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(
            (&second["subscribers"], &second["joins"], &second["leaves"]),
            (
                &serde_json::json!(3),
                &serde_json::json!(["bob"]),
                &serde_json::json!([])
            ),
            "two joins coalesced into one message; an unchanged tick sent nothing"
        );
        p.leave("cdc.order", 8);
        p.leave("cdc.order", 9);
        p.tick();
        let third: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(third["leaves"], serde_json::json!(["bob"]));
        p.forget(7);
        p.join("cdc.order", 10, Some("dave"));
        p.tick();
        assert!(
            rx.try_recv().is_none(),
            "a forgotten connection is told nothing"
        );
    }
}
