//! The last-value cache behind `"snapshot": true` (protocol section 7.3): the latest event of
//! each row the gateway has dispatched, a delete included, so that a dashboard can draw its
//! table from the gateway and then follow it live. Only the consumer task writes (fan-out
//! records every event after dispatching it) and only the consumer task reads (a snapshot is
//! served between two records, see [`crate::fanout::FanOut::join`]); the lock is never
//! contended and never held across an await.
//!
//! The cache is bounded by a row count. When it is full, the least recently changed row of
//! all is evicted to make room, and its entity is marked incomplete: a snapshot of it says
//! `"complete": false`. So is every snapshot while the cache has not seen a partition from
//! its beginning ([`LastValues::mark_partial`]): rows changed before what it read are unknown.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::event::{ChangeEvent, Operation, Row, UNAVAILABLE, UNAVAILABLE_JSON};
use crate::metrics::CacheMetrics;

/// What row state did for one event ([`LastValues::complete`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// An update or delete judged against the row's last image (`Some(true)`), or one whose
    /// last image the cache does not hold (`Some(false)`: its `before` stays as the source
    /// wrote it).
    pub before: Option<bool>,
    /// Unchanged TOAST values replaced by the row's last known value.
    pub toast_filled: u32,
    /// Unchanged TOAST values whose last value is unknown: the field is left out of the row.
    pub toast_unknown: u32,
}

/// One row's latest event, and its payload serialized once.
pub struct Latest {
    pub event: ChangeEvent,
    pub payload: Bytes,
}

/// A held row: when it last changed (over all rows), and its latest event.
pub type Held = (u64, Arc<Latest>);

#[derive(Default)]
struct EntityRows {
    rows: HashMap<Box<str>, Held>,
    /// A row of this entity was evicted since the gateway started.
    incomplete: bool,
}

#[derive(Default)]
struct State {
    entities: HashMap<Box<str>, EntityRows>,
    /// Every held row by when it last changed: the first is the one to evict.
    by_change: BTreeMap<u64, (Box<str>, Box<str>)>,
    changes: u64,
    /// Payload bytes of the held rows.
    bytes: usize,
}

pub struct LastValues {
    capacity: usize,
    state: Mutex<State>,
    /// Some partition was not read from its beginning: any row may be missing.
    partial: AtomicBool,
    /// Rows held and evicted (`bytes` counts the rows' payloads).
    metrics: Option<CacheMetrics>,
}

impl LastValues {
    /// `capacity` 0 turns the cache off: every snapshot is empty and incomplete.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::new(State::default()),
            partial: AtomicBool::new(false),
            metrics: None,
        }
    }

    /// Reports what the cache holds and evicts in `metrics`.
    pub fn with_metrics(mut self, metrics: CacheMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows held, over all entities.
    pub fn rows_held(&self) -> usize {
        self.lock().by_change.len()
    }

    /// Says that records before what the cache was fed exist: snapshots are incomplete.
    pub fn mark_partial(&self) {
        self.partial.store(true, Ordering::Relaxed);
    }

    /// Completes an event from the row's last image before it is matched and delivered
    /// (protocol section 1, row state). An update or delete gets that image as its `before`:
    /// under Postgres' default REPLICA IDENTITY, Debezium sends no `before` for an update and
    /// only the key for a delete, and filters, claims and leave events need the row as it
    /// was. Debezium's placeholder for an unchanged TOAST value is replaced by the last known
    /// value, or the field is left out when none is known: a placeholder is never data.
    /// An image is used only when it is older than the event (a warm-up may hold newer ones).
    pub fn complete(&self, event: &mut ChangeEvent) -> Completion {
        let mut done = Completion::default();
        let Some(id) = event.entity_id.as_deref() else {
            return done;
        };
        let needs_before = matches!(event.operation, Operation::Update | Operation::Delete);
        let placeholder = |row: &Option<Row>| {
            row.as_ref()
                .is_some_and(|row| row.text().contains(UNAVAILABLE_JSON))
        };
        let (toast_data, toast_before) = (placeholder(&event.data), placeholder(&event.before));
        if !needs_before && !toast_data && !toast_before {
            return done;
        }
        let last: Option<Row> = self.before(event, id, |held| {
            (held.operation != Operation::Delete)
                .then(|| held.data.clone())
                .flatten()
                .filter(|data| data.text() != "null")
        });
        if needs_before {
            done.before = Some(last.is_some());
            if let Some(image) = &last {
                event.before = Some(image.clone());
            }
        }
        if toast_data {
            event.data = event
                .data
                .take()
                .map(|row| fill(row, last.as_ref(), &mut done));
        }
        if placeholder(&event.before) {
            event.before = event
                .before
                .take()
                .map(|row| fill(row, last.as_ref(), &mut done));
        }
        done
    }

    /// Whether the event is a change the row already went through: a connector that
    /// restarts (Debezium after a crash) sends what it had not committed again, as new Kafka
    /// records. A change whose place in the database's log (`source_lsn`) is at or before
    /// that of the row's last change is one. Rows the cache does not hold, and sources
    /// without a log position, are never judged replays.
    pub fn replayed(&self, event: &ChangeEvent) -> bool {
        let (Some(lsn), Some(id)) = (event.source_lsn, event.entity_id.as_deref()) else {
            return false;
        };
        self.before(event, id, |held| held.source_lsn)
            .is_some_and(|held| lsn <= held)
    }

    /// What `read` takes from the row's held event, when the cache holds one older than
    /// `event` (a warm-up may hold newer ones).
    fn before<T>(
        &self,
        event: &ChangeEvent,
        id: &str,
        read: impl FnOnce(&ChangeEvent) -> Option<T>,
    ) -> Option<T> {
        if !self.is_enabled() {
            return None;
        }
        let state = self.lock();
        state
            .entities
            .get(event.entity_type.as_str())
            .and_then(|rows| rows.rows.get(id))
            .map(|(_, held)| &held.event)
            .filter(|held| {
                held.position.key() != event.position.key()
                    || held.position.offset < event.position.offset
            })
            .and_then(read)
    }

    /// Records the latest event of its row, evicting the least recently changed row when
    /// full. A truncate empties its entity: none of the rows the cache held exist any more.
    pub fn record(&self, latest: &Arc<Latest>) {
        if !self.is_enabled() {
            return;
        }
        let event = &latest.event;
        let mut state = self.lock();
        let state = &mut *state;
        let Some(id) = event.entity_id.as_deref() else {
            if let Some(entity) = state.entities.get_mut(event.entity_type.as_str()) {
                for (changed, row) in entity.rows.drain().map(|(_, held)| held) {
                    state.by_change.remove(&changed);
                    state.bytes -= row.payload.len();
                }
            }
            self.report(state, 0);
            return;
        };
        state.changes += 1;
        let changed = state.changes;
        let name = event.entity_type.as_str();
        // Looked up before inserting: `entry` would allocate the key for every record.
        if !state.entities.contains_key(name) {
            state.entities.insert(name.into(), EntityRows::default());
        }
        let entity = state.entities.get_mut(name).expect("inserted");
        if let Some(row) = entity.rows.get_mut(id) {
            // A warm-up may have read further than the first records dispatched after it.
            let held = row.1.event.position;
            let newer = held.key() != event.position.key() || held.offset < event.position.offset;
            if newer {
                let key = state
                    .by_change
                    .remove(&row.0)
                    .expect("held rows are ordered");
                state.bytes = state.bytes + latest.payload.len() - row.1.payload.len();
                *row = (changed, Arc::clone(latest));
                state.by_change.insert(changed, key);
                self.report(state, 0);
            }
            return;
        }
        entity.rows.insert(id.into(), (changed, Arc::clone(latest)));
        state.bytes += latest.payload.len();
        state
            .by_change
            .insert(changed, (event.entity_type.as_str().into(), id.into()));
        let mut evicted = 0;
        if state.by_change.len() > self.capacity {
            let (_, (entity, id)) = state.by_change.pop_first().expect("over capacity");
            if let Some(rows) = state.entities.get_mut(&entity) {
                if let Some((_, row)) = rows.rows.remove(&id) {
                    state.bytes -= row.payload.len();
                }
                rows.incomplete = true;
            }
            evicted = 1;
        }
        self.report(state, evicted);
    }

    /// Updates the metrics after a change: `evicted` rows went.
    fn report(&self, state: &State, evicted: u64) {
        if let Some(metrics) = &self.metrics {
            metrics.held.set(state.by_change.len() as i64);
            metrics.bytes.set(state.bytes as i64);
            metrics.evictions.inc_by(evicted);
        }
    }

    /// The rows of an entity (`id` None) or of one row, each with its place in the order of
    /// changes (unsorted: whoever sends them sorts, not the consumer task that asks), and
    /// whether that is all of them.
    pub fn rows(&self, entity: &str, id: Option<&str>) -> (Vec<Held>, bool) {
        if !self.is_enabled() {
            return (Vec::new(), false);
        }
        let partial = self.partial.load(Ordering::Relaxed);
        let state = self.lock();
        let Some(rows) = state.entities.get(entity) else {
            return (Vec::new(), !partial);
        };
        let found: Vec<Held> = match id {
            Some(id) => rows.rows.get(id).into_iter().cloned().collect(),
            None => rows.rows.values().cloned().collect(),
        };
        // A row topic's snapshot is complete when its row is held, or when no row of the
        // entity can be missing.
        let complete = (id.is_some() && !found.is_empty()) || !(rows.incomplete || partial);
        (found, complete)
    }
}

/// The row with every top-level placeholder replaced by `last`'s value of the field, or the
/// field left out when `last` has none.
fn fill(row: Row, last: Option<&Row>, done: &mut Completion) -> Row {
    let serde_json::Value::Object(mut fields) = row.value().clone() else {
        return row;
    };
    let last = last.map(Row::value);
    fields.retain(|name, value| {
        if value.as_str() != Some(UNAVAILABLE) {
            return true;
        }
        match last.and_then(|last| last.get(name)) {
            Some(known) if known.as_str() != Some(UNAVAILABLE) => {
                *value = known.clone();
                done.toast_filled += 1;
                true
            }
            _ => {
                done.toast_unknown += 1;
                false
            }
        }
    });
    Row::from(serde_json::Value::Object(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Operation, SourcePosition};

    fn event(id: Option<&str>, operation: Operation, offset: i64) -> ChangeEvent {
        ChangeEvent {
            entity_type: "order".into(),
            entity_id: id.map(str::to_owned),
            operation,
            data: None,
            before: None,
            timestamp: "2026-11-23T10:00:00Z".into(),
            position: SourcePosition::new("cdc.events", 0, offset),
            kafka_timestamp_ms: None,
            source_lsn: None,
        }
    }

    fn latest(id: Option<&str>, operation: Operation, offset: i64) -> Arc<Latest> {
        Arc::new(Latest {
            event: event(id, operation, offset),
            payload: Bytes::from_static(b"{}"),
        })
    }

    /// Offsets in the order the rows changed.
    fn offsets(rows: &[Held]) -> Vec<i64> {
        let mut rows = rows.to_vec();
        rows.sort_unstable_by_key(|(changed, _)| *changed);
        rows.iter().map(|(_, r)| r.event.position.offset).collect()
    }

    #[test]
    fn keeps_the_latest_per_row_and_evicts_the_least_recently_changed() {
        let cache = LastValues::new(2);
        cache.record(&latest(Some("1"), Operation::Insert, 1));
        cache.record(&latest(Some("2"), Operation::Insert, 2));
        cache.record(&latest(Some("1"), Operation::Delete, 3));
        assert_eq!(cache.rows_held(), 2);
        let (rows, complete) = cache.rows("order", None);
        assert_eq!(
            (offsets(&rows), complete),
            (vec![2, 3], true),
            "oldest change first"
        );

        cache.record(&latest(Some("3"), Operation::Insert, 4));
        let (rows, complete) = cache.rows("order", None);
        assert_eq!(
            (offsets(&rows), complete),
            (vec![3, 4], false),
            "row 2 changed least recently: evicted"
        );
        assert!(cache.rows("order", Some("3")).1, "a held row is complete");
        let (rows, complete) = cache.rows("order", Some("2"));
        assert!(rows.is_empty() && !complete, "row 2 is not held");
        assert!(
            cache.rows("customer", None).1,
            "nothing seen, nothing missing"
        );

        cache.record(&latest(Some("3"), Operation::Update, 2));
        assert_eq!(
            offsets(&cache.rows("order", Some("3")).0),
            vec![4],
            "an older event never replaces a newer one"
        );

        cache.record(&latest(None, Operation::Truncate, 5));
        assert_eq!(cache.rows_held(), 0);
        assert!(cache.rows("order", None).0.is_empty());
    }

    #[test]
    fn a_partial_feed_makes_every_snapshot_incomplete() {
        let cache = LastValues::new(10);
        cache.record(&latest(Some("1"), Operation::Insert, 1));
        cache.mark_partial();
        assert!(!cache.rows("order", None).1);
        assert!(!cache.rows("customer", None).1);
        assert!(cache.rows("order", Some("1")).1);
    }

    #[test]
    fn a_disabled_cache_holds_nothing() {
        let cache = LastValues::new(0);
        cache.record(&latest(Some("1"), Operation::Insert, 1));
        let (rows, complete) = cache.rows("order", None);
        assert!(rows.is_empty() && !complete);
    }
}
