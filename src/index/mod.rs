//! The topic index: gateway topic -> the subscriptions on it. Sharded (dashmap) so that
//! subscribe/unsubscribe on one topic never blocks lookups on another, and copy-on-write per
//! topic: a lookup clones an `Arc` of the subscriber list and releases the shard at once, so
//! the fan-out path iterates (and may await on a full queue) without holding any lock. A
//! change copies the list only while a dispatcher still holds the old one (`Arc::make_mut`),
//! so thousands of clients joining one topic cost O(1) each, not O(subscribers).

pub mod filter;

use std::sync::Arc;

use dashmap::DashMap;

pub use filter::{Filter, FilterError};

use crate::outbound::Outbound;

/// One subscription: a connection's queue and the filter its messages must pass.
#[derive(Clone)]
pub struct Subscriber {
    pub outbound: Arc<Outbound>,
    pub filter: Arc<Filter>,
}

#[derive(Default)]
pub struct TopicIndex {
    topics: DashMap<Box<str>, Arc<Vec<Subscriber>>>,
}

impl TopicIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the connection to the topic, or replaces its filter if it is already there.
    /// Returns true when the subscription is new. A filter equal to one already on the topic
    /// is replaced by that one, and the list is kept grouped by filter, so fan-out evaluates
    /// each distinct filter once per event.
    pub fn subscribe(&self, topic: &str, outbound: &Arc<Outbound>, filter: Arc<Filter>) -> bool {
        let mut entry = self.topics.entry(topic.into()).or_default();
        let list = Arc::make_mut(&mut entry);
        if let Some(at) = list.iter().position(|s| s.outbound.id() == outbound.id()) {
            list.remove(at);
            Self::insert_grouped(list, outbound, filter);
            return false;
        }
        Self::insert_grouped(list, outbound, filter);
        true
    }

    fn insert_grouped(list: &mut Vec<Subscriber>, outbound: &Arc<Outbound>, filter: Arc<Filter>) {
        let outbound = Arc::clone(outbound);
        match list.iter().rposition(|s| *s.filter == *filter) {
            Some(at) => {
                let filter = Arc::clone(&list[at].filter);
                list.insert(at + 1, Subscriber { outbound, filter });
            }
            None => list.push(Subscriber { outbound, filter }),
        }
    }

    /// Removes the connection from the topic; returns whether it was subscribed.
    pub fn unsubscribe(&self, topic: &str, connection_id: u64) -> bool {
        let mut removed = false;
        self.topics.remove_if_mut(topic, |_, list| {
            if let Some(at) = list.iter().position(|s| s.outbound.id() == connection_id) {
                Arc::make_mut(list).remove(at);
                removed = true;
            }
            list.is_empty()
        });
        removed
    }

    /// The filter of one connection's subscription to `topic`.
    pub fn filter(&self, topic: &str, connection_id: u64) -> Option<Arc<Filter>> {
        let list = self.topics.get(topic)?;
        list.iter()
            .find(|s| s.outbound.id() == connection_id)
            .map(|s| Arc::clone(&s.filter))
    }

    /// The subscribers of a topic at this moment; no lock is held once this returns.
    pub fn subscribers(&self, topic: &str) -> Option<Arc<Vec<Subscriber>>> {
        self.topics.get(topic).map(|list| Arc::clone(&list))
    }

    /// Every topic with its subscribers at this moment, for the rare message that goes to
    /// every subscription; no lock is held once this returns.
    pub fn all(&self) -> Vec<(Box<str>, Arc<Vec<Subscriber>>)> {
        self.topics
            .iter()
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Outbound;

    #[test]
    fn subscribe_replace_unsubscribe() {
        let index = TopicIndex::new();
        let (a, _rx_a) = Outbound::new(1, 8);
        let (b, _rx_b) = Outbound::new(2, 8);
        assert!(index.subscribe("cdc.order", &a, Arc::new(Filter::default())));
        assert!(index.subscribe("cdc.order", &b, Arc::new(Filter::default())));
        let strict = Filter::compile(Some(&serde_json::json!({"operation": "insert"}))).unwrap();
        assert!(
            !index.subscribe("cdc.order", &a, Arc::new(strict.clone())),
            "a second subscribe replaces"
        );
        let subs = index.subscribers("cdc.order").unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(
            *subs.iter().find(|s| s.outbound.id() == 1).unwrap().filter,
            strict
        );
        assert!(index.unsubscribe("cdc.order", 1));
        assert!(!index.unsubscribe("cdc.order", 1));
        assert_eq!(
            subs.len(),
            2,
            "a list handed out earlier is not changed under its reader"
        );
        assert_eq!(index.topic_count(), 1);
        assert!(index.unsubscribe("cdc.order", 2));
        assert_eq!(index.topic_count(), 0, "empty topics are removed");
        assert!(index.subscribers("cdc.order").is_none());
    }

    #[test]
    fn equal_filters_are_shared_and_grouped() {
        let index = TopicIndex::new();
        let inserts = || {
            Arc::new(Filter::compile(Some(&serde_json::json!({"operation": "insert"}))).unwrap())
        };
        let (a, _ra) = Outbound::new(1, 8);
        let (b, _rb) = Outbound::new(2, 8);
        let (c, _rc) = Outbound::new(3, 8);
        index.subscribe("cdc.order", &a, inserts());
        index.subscribe("cdc.order", &b, Arc::new(Filter::default()));
        index.subscribe("cdc.order", &c, inserts());
        let subs = index.subscribers("cdc.order").unwrap();
        let ids: Vec<u64> = subs.iter().map(|s| s.outbound.id()).collect();
        assert_eq!(ids, vec![1, 3, 2], "equal filters sit next to each other");
        assert!(
            Arc::ptr_eq(&subs[0].filter, &subs[1].filter),
            "and share one compiled filter"
        );
    }
}
