//! The last-value cache behind `"snapshot": true` (protocol section 7.3): the latest event of
//! each row the gateway has dispatched, a delete included, so that a dashboard can draw its
//! table from the gateway and then follow it live. Only the consumer task writes (fan-out
//! records every event after dispatching it) and only the consumer task reads (a snapshot is
//! served between two records, see [`crate::fanout::FanOut::join`]); the lock is never
//! contended and never held across an await.
//!
//! The cache is bounded by a row count. When it is full, rows already in it keep being
//! updated and new rows are turned away; their entity is then marked incomplete, and a
//! snapshot of it says `"complete": false`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::event::ChangeEvent;

/// One row's latest event, and its payload serialized once.
pub struct Latest {
    pub event: ChangeEvent,
    pub payload: Bytes,
}

#[derive(Default)]
struct EntityRows {
    rows: HashMap<Box<str>, Arc<Latest>>,
    /// A row of this entity was turned away since the gateway started.
    incomplete: bool,
}

#[derive(Default)]
struct State {
    entities: HashMap<Box<str>, EntityRows>,
    rows: usize,
}

pub struct LastValues {
    capacity: usize,
    state: Mutex<State>,
}

impl LastValues {
    /// `capacity` 0 turns the cache off: every snapshot is empty and incomplete.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows held, over all entities.
    pub fn rows_held(&self) -> usize {
        self.lock().rows
    }

    /// Records the latest event of its row. A truncate empties its entity: none of the rows
    /// the cache held exist any more.
    pub fn record(&self, latest: &Arc<Latest>) {
        if !self.is_enabled() {
            return;
        }
        let event = &latest.event;
        let mut state = self.lock();
        let state = &mut *state;
        let Some(id) = event.entity_id.as_deref() else {
            if let Some(entity) = state.entities.get_mut(event.entity_type.as_str()) {
                state.rows -= entity.rows.len();
                entity.rows.clear();
            }
            return;
        };
        let latest = Arc::clone(latest);
        let entity = state
            .entities
            .entry(event.entity_type.as_str().into())
            .or_default();
        if let Some(row) = entity.rows.get_mut(id) {
            // A warm-up may have read further than the first records dispatched after it.
            let held = row.event.position;
            let newer =
                held.partition != event.position.partition || held.offset < event.position.offset;
            if newer {
                *row = latest;
            }
        } else if state.rows < self.capacity {
            entity.rows.insert(id.into(), latest);
            state.rows += 1;
        } else {
            entity.incomplete = true;
        }
    }

    /// The rows of an entity (`id` None) or of one row, and whether that is all of them.
    pub fn rows(&self, entity: &str, id: Option<&str>) -> (Vec<Arc<Latest>>, bool) {
        if !self.is_enabled() {
            return (Vec::new(), false);
        }
        let state = self.lock();
        let Some(rows) = state.entities.get(entity) else {
            return (Vec::new(), true);
        };
        let found: Vec<Arc<Latest>> = match id {
            Some(id) => rows.rows.get(id).cloned().into_iter().collect(),
            None => rows.rows.values().cloned().collect(),
        };
        // A row topic's snapshot is complete when its row is held, or when the row was
        // never turned away (the entity lost none).
        let complete = !rows.incomplete || (id.is_some() && !found.is_empty());
        (found, complete)
    }
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
            position: SourcePosition {
                partition: 0,
                offset,
            },
            kafka_timestamp_ms: None,
        }
    }

    fn latest(id: Option<&str>, operation: Operation, offset: i64) -> Arc<Latest> {
        Arc::new(Latest {
            event: event(id, operation, offset),
            payload: Bytes::from_static(b"{}"),
        })
    }

    fn offsets(rows: &[Arc<Latest>]) -> Vec<i64> {
        let mut offsets: Vec<i64> = rows.iter().map(|r| r.event.position.offset).collect();
        offsets.sort();
        offsets
    }

    #[test]
    fn keeps_the_latest_per_row_within_its_bound() {
        let cache = LastValues::new(2);
        cache.record(&latest(Some("1"), Operation::Insert, 1));
        cache.record(&latest(Some("2"), Operation::Insert, 2));
        cache.record(&latest(Some("1"), Operation::Delete, 3));
        assert_eq!(cache.rows_held(), 2);
        let (rows, complete) = cache.rows("order", None);
        assert_eq!((offsets(&rows), complete), (vec![2, 3], true));

        cache.record(&latest(Some("3"), Operation::Insert, 4));
        let (rows, complete) = cache.rows("order", None);
        assert_eq!(
            (offsets(&rows), complete),
            (vec![2, 3], false),
            "row 3 turned away"
        );
        assert!(cache.rows("order", Some("2")).1, "a held row is complete");
        let (rows, complete) = cache.rows("order", Some("3"));
        assert!(rows.is_empty() && !complete, "row 3 is not held");
        assert!(
            cache.rows("customer", None).1,
            "nothing seen, nothing missing"
        );

        cache.record(&latest(None, Operation::Truncate, 5));
        assert_eq!(cache.rows_held(), 0);
        assert!(cache.rows("order", None).0.is_empty());
    }

    #[test]
    fn a_disabled_cache_holds_nothing() {
        let cache = LastValues::new(0);
        cache.record(&latest(Some("1"), Operation::Insert, 1));
        let (rows, complete) = cache.rows("order", None);
        assert!(rows.is_empty() && !complete);
    }
}
