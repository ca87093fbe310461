//! Recent events per entity, for `since` (protocol section 7.2): a client that reconnects with
//! the position it kept gets the events it missed, then live ones. Like the last-value cache,
//! history is written by the consumer task after each dispatch and read by it between two
//! records, so a replay and the live events after it leave no gap.
//!
//! History is bounded three ways: a count per entity (`--history-events`), an age
//! (`--history-max-age`) and a byte budget over all entities (`--history-budget-mib`), which
//! evicts the oldest event of whichever entity holds it. A replay is a promise, so it is only
//! answered when history provably covers the client's position on every partition the
//! gateway reads: the client named that partition, this process holds every record of it
//! from just after the client's offset on (it read or warmed it from there, see
//! [`History::cover`]), and evicted nothing of the entity after it there. Otherwise the
//! answer is `recovered: false` and the client reloads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metrics::CacheMetrics;
use crate::position::{Partition, Position};
use crate::tables::Latest;

/// Bytes counted for an event besides its payload and its row text (the event's own
/// fields, the bookkeeping).
const ENTRY_OVERHEAD: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events kept per entity; 0 turns history off.
    pub per_entity: usize,
    pub max_age: Duration,
    pub budget_bytes: usize,
}

/// One recorded event: when, in which order over all entities, and what.
type Entry = (Instant, u64, Arc<Latest>);

#[derive(Default)]
struct Entity {
    events: VecDeque<Entry>,
    /// Highest offset evicted per partition.
    evicted: HashMap<Partition, i64>,
}

#[derive(Default)]
struct State {
    entities: HashMap<Box<str>, Entity>,
    bytes: usize,
    /// Per partition, the offset from which this process holds every record.
    covered_from: HashMap<Partition, i64>,
    /// Events recorded so far: orders entries over all entities.
    recorded: u64,
    /// Highest offset recorded per partition: an event is never recorded twice.
    last: HashMap<Partition, i64>,
    /// Events held over all entities.
    held: usize,
}

pub struct History {
    limits: Limits,
    state: Mutex<State>,
    /// Events and bytes held, events evicted.
    metrics: Option<CacheMetrics>,
}

/// What an event costs the budget: its payload, the row text kept for filters, and overhead.
fn size(latest: &Latest) -> usize {
    let rows = [&latest.event.data, &latest.event.before]
        .into_iter()
        .flatten()
        .map(|row| row.text().len())
        .sum::<usize>();
    latest.payload.len() + rows + ENTRY_OVERHEAD
}

impl Entity {
    fn evict_front(&mut self) -> usize {
        let Some((_, _, latest)) = self.events.pop_front() else {
            return 0;
        };
        let at = latest.event.position;
        let evicted = self.evicted.entry(at.key()).or_insert(at.offset);
        *evicted = (*evicted).max(at.offset);
        size(&latest)
    }
}

impl History {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
            metrics: None,
        }
    }

    /// Reports what history holds and evicts in `metrics`.
    pub fn with_metrics(mut self, metrics: CacheMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Updates the metrics after a change: `evicted` events went.
    fn report(&self, state: &State, evicted: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.held.set(state.held as i64);
            metrics.bytes.set(state.bytes as i64);
            metrics.evictions.inc_by(evicted as u64);
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.limits.per_entity > 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares that from `offset` on, every record of `partition` is (or will be) recorded:
    /// a warm-up read back from there, or the consumer starts there. The first declaration
    /// for a partition holds: the warm-up's comes before the consumer's start.
    pub fn cover(&self, partition: Partition, offset: i64) {
        self.lock().covered_from.entry(partition).or_insert(offset);
    }

    /// Declares that records of `partition` before `next` may be missing here (the broker
    /// deleted them before they were read, or a restart could not go back to them): from now
    /// on only resumes from `next - 1` on are answered from history. Unlike [`History::cover`],
    /// this raises a declaration already made.
    pub fn lose(&self, partition: Partition, next: i64) {
        let mut state = self.lock();
        let from = state.covered_from.entry(partition).or_insert(next);
        *from = (*from).max(next);
    }

    /// Appends a dispatched event, then evicts what the limits no longer allow.
    pub fn record(&self, latest: &Arc<Latest>) {
        if !self.is_enabled() {
            return;
        }
        let now = Instant::now();
        let at = latest.event.position;
        let mut state = self.lock();
        let state = &mut *state;
        let last = state.last.entry(at.key()).or_insert(i64::MIN);
        if *last >= at.offset {
            return;
        }
        *last = at.offset;
        let name = latest.event.entity_type.as_str();
        // Looked up before inserting: `entry` would allocate the key for every record.
        if !state.entities.contains_key(name) {
            state.entities.insert(name.into(), Entity::default());
        }
        let entity = state.entities.get_mut(name).expect("inserted");
        state.recorded += 1;
        entity
            .events
            .push_back((now, state.recorded, Arc::clone(latest)));
        state.bytes += size(latest);
        state.held += 1;
        let mut evicted = 0;
        while entity.events.len() > self.limits.per_entity
            || entity
                .events
                .front()
                .is_some_and(|(t, _, _)| now.duration_since(*t) > self.limits.max_age)
        {
            state.bytes -= entity.evict_front();
            evicted += 1;
        }
        while state.bytes > self.limits.budget_bytes {
            // The oldest event of all: the entity whose front came first.
            let Some(oldest) = state
                .entities
                .values_mut()
                .filter(|e| !e.events.is_empty())
                .min_by_key(|e| e.events.front().map(|(_, seq, _)| *seq))
            else {
                break;
            };
            state.bytes -= oldest.evict_front();
            evicted += 1;
        }
        state.held -= evicted;
        self.report(state, evicted);
    }

    /// The events of `entity` (of its row `id` only, when given) after `since`, in dispatch
    /// order; `None` unless history covers `since` on every partition of `read` (every
    /// partition the gateway reads) and `since` names no other.
    pub fn replay(
        &self,
        entity: &str,
        id: Option<&str>,
        since: &Position,
        read: &Position,
    ) -> Option<Vec<Arc<Latest>>> {
        if !self.is_enabled() || since.keys().any(|k| !read.contains_key(k)) {
            return None;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let mut missing = Entity::default();
        let history = match state.entities.get_mut(entity) {
            Some(history) => {
                let mut evicted = 0;
                while history
                    .events
                    .front()
                    .is_some_and(|(t, _, _)| now.duration_since(*t) > self.limits.max_age)
                {
                    state.bytes -= history.evict_front();
                    evicted += 1;
                }
                if evicted > 0 {
                    state.held -= evicted;
                    if let Some(metrics) = &self.metrics {
                        metrics.held.set(state.held as i64);
                        metrics.bytes.set(state.bytes as i64);
                        metrics.evictions.inc_by(evicted as u64);
                    }
                }
                history
            }
            None => &mut missing,
        };
        let covered = read.keys().all(|partition| {
            let Some(offset) = since.get(partition) else {
                return false;
            };
            let held_from_there = state
                .covered_from
                .get(partition)
                .is_some_and(|from| *from <= offset.saturating_add(1));
            let nothing_evicted_after =
                history.evicted.get(partition).is_none_or(|e| *e <= *offset);
            held_from_there && nothing_evicted_after
        });
        if !covered {
            return None;
        }
        Some(
            history
                .events
                .iter()
                .map(|(_, _, latest)| latest)
                .filter(|latest| {
                    let at = latest.event.position;
                    since.get(&at.key()).is_some_and(|o| at.offset > *o)
                        && id.is_none_or(|id| latest.event.entity_id.as_deref() == Some(id))
                })
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ChangeEvent, Operation, SourcePosition};
    use bytes::Bytes;

    fn latest(entity: &str, id: &str, partition: i32, offset: i64) -> Arc<Latest> {
        Arc::new(Latest {
            event: ChangeEvent {
                entity_type: entity.into(),
                entity_id: Some(id.into()),
                operation: Operation::Update,
                data: None,
                before: None,
                timestamp: "2026-11-23T10:00:00Z".into(),
                position: SourcePosition::new("t", partition, offset),
                kafka_timestamp_ms: None,
                source_lsn: None,
            },
            payload: Bytes::from(vec![b' '; 100]),
        })
    }

    fn history(per_entity: usize, budget_bytes: usize) -> History {
        History::new(Limits {
            per_entity,
            max_age: Duration::from_secs(600),
            budget_bytes,
        })
    }

    fn offsets(events: Option<Vec<Arc<Latest>>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|l| l.event.position.offset).collect())
    }

    fn position(pairs: &[(i32, i64)]) -> Position {
        pairs
            .iter()
            .map(|(p, o)| (Partition::new("t", *p), *o))
            .collect()
    }

    #[test]
    fn replays_what_came_after_the_position_while_covered() {
        let h = history(3, usize::MAX);
        h.cover(Partition::new("t", 0), 10);
        h.cover(Partition::new("t", 1), 6);
        for offset in 10..15 {
            h.record(&latest("order", &(offset % 2).to_string(), 0, offset));
        }
        h.record(&latest("order", "9", 1, 7));
        let read = position(&[(0, 14), (1, 7)]);
        // Three per entity: 10, 11 and 12 were evicted, so positions from 12 on are covered.
        assert_eq!(
            offsets(h.replay("order", None, &position(&[(0, 12), (1, 7)]), &read)),
            Some(vec![13, 14])
        );
        assert_eq!(
            offsets(h.replay("order", Some("0"), &position(&[(0, 12), (1, 7)]), &read)),
            Some(vec![14])
        );
        assert_eq!(
            h.replay("order", None, &position(&[(0, 10), (1, 7)]), &read)
                .map(|_| ()),
            None,
            "evicted"
        );
        assert_eq!(
            offsets(h.replay("order", None, &position(&[(0, 13), (1, 6)]), &read)),
            Some(vec![14, 7]),
            "dispatch order across partitions"
        );
        assert_eq!(
            h.replay("order", None, &position(&[(0, 13), (1, 4)]), &read)
                .map(|_| ()),
            None,
            "partition 1 is held from 6 on only"
        );
        assert_eq!(
            h.replay("order", None, &position(&[(0, 13)]), &read)
                .map(|_| ()),
            None,
            "a partition the client did not name could hide missed events"
        );
        assert_eq!(
            h.replay("order", None, &position(&[(0, 13), (1, 7), (2, 0)]), &read)
                .map(|_| ()),
            None,
            "a partition this gateway does not read"
        );
        assert_eq!(
            offsets(h.replay("customer", None, &position(&[(0, 12), (1, 7)]), &read)),
            Some(vec![])
        );
    }

    #[test]
    fn records_lost_end_the_coverage_before_them() {
        let h = history(100, usize::MAX);
        let p = Partition::new("t", 0);
        h.cover(p, 0);
        for offset in 0..5 {
            h.record(&latest("order", "1", 0, offset));
        }
        // Offsets 5 to 9 were deleted before they were read; 10 came next.
        h.lose(p, 10);
        h.cover(p, 0);
        h.record(&latest("order", "1", 0, 10));
        let read = position(&[(0, 10)]);
        for since in [0, 4, 8] {
            assert_eq!(
                h.replay("order", None, &position(&[(0, since)]), &read)
                    .map(|_| ()),
                None,
                "from {since} the lost records would be skipped"
            );
        }
        assert_eq!(
            offsets(h.replay("order", None, &position(&[(0, 9)]), &read)),
            Some(vec![10]),
            "a client that had the lost records (from another replica) resumes"
        );
        h.lose(p, 3);
        assert_eq!(
            h.replay("order", None, &position(&[(0, 4)]), &read)
                .map(|_| ()),
            None,
            "an earlier loss does not lower the coverage"
        );
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_event_of_all() {
        let one = 100 + ENTRY_OVERHEAD;
        let h = history(100, 3 * one);
        h.cover(Partition::new("t", 0), 0);
        h.record(&latest("order", "1", 0, 1));
        h.record(&latest("customer", "1", 0, 2));
        h.record(&latest("order", "2", 0, 3));
        h.record(&latest("order", "3", 0, 4));
        let read = position(&[(0, 4)]);
        let since = position(&[(0, 1)]);
        assert_eq!(
            offsets(h.replay("order", None, &since, &read)),
            Some(vec![3, 4])
        );
        assert_eq!(
            offsets(h.replay("customer", None, &since, &read)),
            Some(vec![2])
        );
        assert_eq!(
            h.replay("order", None, &position(&[(0, 0)]), &read)
                .map(|_| ()),
            None
        );
        h.record(&latest("order", "4", 0, 5));
        assert_eq!(
            h.replay("customer", None, &since, &read).map(|_| ()),
            None,
            "customer's 2 went"
        );
    }

    #[test]
    fn an_event_is_recorded_once() {
        let h = history(10, usize::MAX);
        h.cover(Partition::new("t", 0), 0);
        h.record(&latest("order", "1", 0, 1));
        h.record(&latest("order", "1", 0, 1));
        h.record(&latest("order", "1", 0, 0));
        let read = position(&[(0, 1)]);
        assert_eq!(
            offsets(h.replay("order", None, &position(&[(0, -1)]), &read)),
            Some(vec![1])
        );
    }
}
