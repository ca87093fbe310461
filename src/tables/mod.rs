//! Row state (protocol sections 1 and 7.3): the table of every entity, as the source topics say
//! it is now. Each row's latest event is applied from the topics from their beginning (a
//! compacted Debezium topic is the table), kept on disk ([`store`]) so that it is bounded by
//! disk, not memory, and it is the one place the gateway learns a row from: snapshots page
//! through it, and updates, deletes and TOAST placeholders are completed from it.
//!
//! Only the consumer task writes: each record's row is looked up once ([`Tables::find`]),
//! judged (a change already applied is a replay: [`Found::replayed`]), completed
//! ([`Found::complete`]) and applied ([`Tables::apply`]) into a batch held in memory, which
//! is committed with the partitions' offsets and the entities' row counts in one atomic write
//! every 16,384 rows, every 200 ms, and before a snapshot is taken. So a restart reopens the
//! store and reads on from the offsets it finds, and a snapshot is the table exactly as of
//! the dispatched position.

mod scan;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use store::{Applied, StoreError, Stored, StoredRef};

use crate::event::{ChangeEvent, Operation, Row, UNAVAILABLE, UNAVAILABLE_JSON};
use crate::index::Filter;
use crate::metrics::TableMetrics;
use crate::position::Partition;

/// Rows applied and not yet committed that make the consumer task commit.
const FLUSH_ROWS: usize = 16_384;
/// Bytes of payload applied and not yet committed that make it commit.
const FLUSH_BYTES: usize = 16 << 20;
/// How long an applied row waits for its commit at most.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Where the store lives and how large it may grow (`--table-store-*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None`: a temporary directory, removed at exit (tables are rebuilt at every start).
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    pub cache_bytes: u64,
}

/// One row's latest event, and its payload serialized once.
pub struct Latest {
    pub event: ChangeEvent,
    pub payload: Bytes,
}

/// What row state did for one event ([`Found::complete`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// An update or delete judged against the row's last image (`Some(true)`), or one whose
    /// last image is not known (`Some(false)`: its `before` stays as the source wrote it).
    pub before: Option<bool>,
    /// Unchanged TOAST values replaced by the row's last known value.
    pub toast_filled: u32,
    /// Unchanged TOAST values whose last value is unknown: the field is left out of the row.
    pub toast_unknown: u32,
}

/// What the tables hold for an event's row, looked up once per record.
pub enum Found {
    Absent,
    /// Applied, not committed yet.
    Pending(Arc<Latest>),
    Stored(Stored),
}

#[derive(Default)]
struct State {
    /// Rows applied since the last commit (`None`: removed by a truncate).
    pending: HashMap<Vec<u8>, Option<Arc<Latest>>>,
    pending_bytes: usize,
    /// When the oldest uncommitted row was applied.
    oldest: Option<Instant>,
    partitions: HashMap<Partition, Applied>,
    dirty_partitions: Vec<Partition>,
    counts: HashMap<String, i64>,
    dirty_counts: Vec<String>,
    /// Why the last commit failed, while it does.
    failing: Option<String>,
}

struct Inner {
    store: store::Store,
    state: Mutex<State>,
    metrics: Option<TableMetrics>,
}

/// The tables of every entity; [`Tables::off`] holds nothing (tests of other parts).
pub struct Tables {
    inner: Option<Inner>,
}

impl Tables {
    /// No tables: every snapshot is empty and incomplete.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Opens the store (`settings.path`, else a new temporary directory).
    pub fn open(settings: &Settings) -> Result<Self, StoreError> {
        let (path, temporary) = match &settings.path {
            Some(path) => (path.clone(), false),
            None => (temporary_dir(), true),
        };
        let (store, opened) =
            store::Store::open(&path, temporary, settings.max_bytes, settings.cache_bytes)?;
        if let Some(why) = &opened.rebuilt {
            tracing::warn!(path = %path.display(), "table store could not be used ({why}): deleted, rebuilding it from the source topics");
        } else if !opened.partitions.is_empty() {
            tracing::info!(path = %path.display(), partitions = opened.partitions.len(), rows = opened.counts.values().sum::<i64>(), "table store opened: reading on from its offsets");
        }
        let state = State {
            partitions: opened.partitions,
            counts: opened.counts,
            ..State::default()
        };
        Ok(Self {
            inner: Some(Inner {
                store,
                state: Mutex::new(state),
                metrics: None,
            }),
        })
    }

    /// A store in a temporary directory with the default bounds (tests, the demo).
    pub fn temporary() -> Self {
        Self::open(&Settings {
            path: None,
            max_bytes: u64::MAX,
            cache_bytes: 16 << 20,
        })
        .expect("a temporary table store opens")
    }

    /// Reports rows, bytes and commits in `metrics`.
    pub fn with_metrics(mut self, metrics: TableMetrics) -> Self {
        if let Some(inner) = &mut self.inner {
            metrics.max_bytes.set(inner.store_max_bytes());
            inner.metrics = Some(metrics);
            inner.report(&inner.lock());
        }
        self
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Where each partition stands in the store.
    pub fn applied(&self) -> HashMap<Partition, Applied> {
        self.inner
            .as_ref()
            .map(|inner| inner.lock().partitions.clone())
            .unwrap_or_default()
    }

    /// Says where the store holds `partition` from when it has nothing of it yet: the first
    /// offset the broker still has (`low`). The partition is complete only from offset 0: a
    /// topic whose oldest records retention deleted may have held rows no one can read back.
    pub fn begin(&self, partition: Partition, low: i64) -> Applied {
        let Some(inner) = &self.inner else {
            return Applied {
                next: low,
                complete: false,
            };
        };
        let mut state = inner.lock();
        if let Some(applied) = state.partitions.get(&partition) {
            return *applied;
        }
        let applied = Applied {
            next: low,
            complete: low == 0,
        };
        state.partitions.insert(partition, applied);
        state.dirty_partitions.push(partition);
        applied
    }

    /// Every record of `partition` before `next` was read (records that change no row, such
    /// as tombstones and control records, move the offset too).
    pub fn reached(&self, partition: Partition, next: i64) {
        self.update(partition, |applied| applied.next = applied.next.max(next));
    }

    /// Records of `partition` before `next` will never be applied (deleted before they were
    /// read, or a read that could not finish): its rows may be missing, for good.
    pub fn lose(&self, partition: Partition, next: i64) {
        self.update(partition, |applied| {
            applied.next = applied.next.max(next);
            applied.complete = false;
        });
    }

    fn update(&self, partition: Partition, change: impl FnOnce(&mut Applied)) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut state = inner.lock();
        let applied = state.partitions.entry(partition).or_insert(Applied {
            next: 0,
            complete: false,
        });
        let was = *applied;
        change(applied);
        if *applied != was {
            state.dirty_partitions.push(partition);
        }
    }

    /// What the tables hold for the event's row.
    pub fn find(&self, event: &ChangeEvent) -> Found {
        let (Some(inner), Some(id)) = (&self.inner, event.entity_id.as_deref()) else {
            return Found::Absent;
        };
        let key = store::row_key(&event.entity_type, id);
        if let Some(pending) = inner.lock().pending.get(&key) {
            return match pending {
                Some(latest) => Found::Pending(Arc::clone(latest)),
                None => Found::Absent,
            };
        }
        match inner.store.get(&key) {
            Ok(Some(stored)) => Found::Stored(stored),
            Ok(None) => Found::Absent,
            Err(e) => {
                tracing::warn!("table store read failed: {e}");
                Found::Absent
            }
        }
    }

    /// Applies the event to its row (`found` is what [`Tables::find`] said of it): the
    /// row's latest event, a delete included (what a snapshot sends for the row: protocol
    /// section 7.3), a truncate emptying the entity. An event of an offset the store already applied (a restart
    /// reads from the group's offset, which may be behind the store's) changes nothing.
    pub fn apply(&self, latest: &Arc<Latest>, found: Found) {
        let Some(inner) = &self.inner else {
            return;
        };
        let event = &latest.event;
        let mut state = inner.lock();
        let state = &mut *state;
        let at = event.position;
        let applied = state.partitions.entry(at.key()).or_insert(Applied {
            next: 0,
            complete: false,
        });
        if at.offset < applied.next {
            return;
        }
        applied.next = at.offset + 1;
        state.dirty_partitions.push(at.key());
        let name = event.entity_type.as_str();
        let Some(id) = event.entity_id.as_deref() else {
            // A truncate: every row of the entity goes.
            let stored = inner.store.keys(name).unwrap_or_else(|e| {
                tracing::warn!("table store read failed: {e}");
                Vec::new()
            });
            let prefix = store::entity_prefix(name);
            for key in stored {
                state.pending.insert(key, None);
            }
            for value in state
                .pending
                .iter_mut()
                .filter(|(key, _)| key.starts_with(&prefix))
                .map(|(_, value)| value)
            {
                *value = None;
            }
            state.counts.insert(name.to_owned(), 0);
            state.dirty_counts.push(name.to_owned());
            state.oldest.get_or_insert_with(Instant::now);
            return;
        };
        // The latest event of a row already applied from another replica's restart of this
        // partition (the store is ahead of the event) is not replaced by an older one.
        if let Some(held) = found.position() {
            if held.key() == at.key() && held.offset >= at.offset {
                return;
            }
        }
        if matches!(found, Found::Absent) {
            *state.counts.entry(name.to_owned()).or_insert(0) += 1;
            state.dirty_counts.push(name.to_owned());
        }
        state.pending_bytes += latest.payload.len();
        state
            .pending
            .insert(store::row_key(name, id), Some(Arc::clone(latest)));
        state.oldest.get_or_insert_with(Instant::now);
    }

    /// Whether the uncommitted rows are due for their commit.
    pub fn should_flush(&self) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let state = inner.lock();
        state.pending.len() >= FLUSH_ROWS
            || state.pending_bytes >= FLUSH_BYTES
            || state.oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY)
    }

    /// When the oldest uncommitted row is due, if there is one.
    pub fn flush_due(&self) -> Option<Instant> {
        let inner = self.inner.as_ref()?;
        let state = inner.lock();
        if state.pending.is_empty() && state.dirty_partitions.is_empty() {
            return None;
        }
        Some(state.oldest.unwrap_or_else(Instant::now) + FLUSH_EVERY)
    }

    /// Why commits fail, while they do: the consumer waits (reads no record) until one
    /// succeeds, so no change is applied to clients and not to the table.
    pub fn failing(&self) -> Option<String> {
        self.inner.as_ref()?.lock().failing.clone()
    }

    /// Commits what was applied, with the partitions' offsets and the entities' counts.
    pub fn flush(&self) -> Result<(), StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut state = inner.lock();
        if state.pending.is_empty()
            && state.dirty_partitions.is_empty()
            && state.dirty_counts.is_empty()
        {
            return Ok(());
        }
        let mut writes: Vec<store::Write> = Vec::with_capacity(state.pending.len() + 8);
        for (key, latest) in &state.pending {
            let value = latest.as_ref().map(|latest| encoded(latest));
            writes.push((key.clone(), value));
        }
        let mut partitions = std::mem::take(&mut state.dirty_partitions);
        partitions.sort_unstable_by_key(|p| (p.topic.as_str(), p.partition));
        partitions.dedup();
        for partition in &partitions {
            writes.push(store::offset_write(*partition, state.partitions[partition]));
        }
        let mut counts = std::mem::take(&mut state.dirty_counts);
        counts.sort_unstable();
        counts.dedup();
        for entity in &counts {
            writes.push(store::count_write(entity, state.counts[entity]));
        }
        let rows = state.pending.len();
        let started = Instant::now();
        match inner.store.commit(writes) {
            Ok(()) => {
                state.pending.clear();
                state.pending_bytes = 0;
                state.oldest = None;
                if state.failing.take().is_some() {
                    tracing::info!("table store writes again: consumption resumes");
                }
                if let Some(metrics) = &inner.metrics {
                    metrics.commits.with_label_values(&["ok"]).inc();
                    metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                inner.report(&state);
                tracing::trace!(rows, "table store commit");
                Ok(())
            }
            Err(e) => {
                state.dirty_partitions = partitions;
                state.dirty_counts = counts;
                if state.failing.is_none() {
                    tracing::error!("{e}: consumption paused until the table store can be written (nothing is skipped)");
                }
                state.failing = Some(e.to_string());
                if let Some(metrics) = &inner.metrics {
                    metrics.commits.with_label_values(&["error"]).inc();
                }
                inner.report(&state);
                Err(e)
            }
        }
    }

    /// Commits what was applied and takes a view of the tables as they now stand: exactly
    /// what has been dispatched.
    pub fn view(&self) -> Result<View, StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(View {
                snapshot: None,
                complete: false,
            });
        };
        self.flush()?;
        let state = inner.lock();
        let complete = state.partitions.values().all(|a| a.complete);
        Ok(View {
            snapshot: Some(inner.store.snapshot()),
            complete,
        })
    }

    /// A view of what was last committed, marked incomplete: uncommitted rows are missing.
    pub fn committed_view(&self) -> View {
        View {
            snapshot: self.inner.as_ref().map(|inner| inner.store.snapshot()),
            complete: false,
        }
    }

    /// Rows held over all entities.
    pub fn rows_held(&self) -> i64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.lock().counts.values().sum())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store_max_bytes(&self) -> i64 {
        i64::try_from(self.store.max_bytes()).unwrap_or(i64::MAX)
    }

    fn report(&self, state: &State) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.rows.set(state.counts.values().sum());
        metrics
            .disk_bytes
            .set(i64::try_from(self.store.disk_bytes()).unwrap_or(i64::MAX));
        metrics.pending_rows.set(state.pending.len() as i64);
        metrics.failing.set(i64::from(state.failing.is_some()));
    }
}

/// A row's stored value.
fn encoded(latest: &Latest) -> Vec<u8> {
    store::encode(&latest.event, &latest.payload)
}

/// `cdc-gateway-tables-<pid>-<n>` in the system's temporary directory.
fn temporary_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "cdc-gateway-tables-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Found {
    fn position(&self) -> Option<crate::position::SourcePosition> {
        match self {
            Found::Absent => None,
            Found::Pending(latest) => Some(latest.event.position),
            Found::Stored(stored) => Some(stored.position),
        }
    }

    /// Whether the row's held change is `event`'s or a later one of its partition: the store
    /// applied it already (a restart reads the resume history's window again).
    pub fn holds_later(&self, event: &ChangeEvent) -> bool {
        self.position().is_some() && !self.older_than(event)
    }

    /// Whether the row's held change came before `event`'s (a restart may have applied later
    /// records of the partition than the one being dispatched again).
    fn older_than(&self, event: &ChangeEvent) -> bool {
        self.position().is_some_and(|held| {
            held.key() != event.position.key() || held.offset < event.position.offset
        })
    }

    /// Whether the event is a change the row already went through: a connector that
    /// restarts (Debezium after a crash) sends what it had not committed again, as new Kafka
    /// records. A change whose place in the database's log (`source_lsn`) is at or before
    /// that of the row's last change is one. Rows not held, and sources without a log
    /// position, are never judged replays.
    pub fn replayed(&self, event: &ChangeEvent) -> bool {
        let Some(lsn) = event.source_lsn else {
            return false;
        };
        if !self.older_than(event) {
            return false;
        }
        let held = match self {
            Found::Absent => None,
            Found::Pending(latest) => latest.event.source_lsn,
            Found::Stored(stored) => stored.source_lsn,
        };
        held.is_some_and(|held| lsn <= held)
    }

    /// The row's last image, when held, older than `event` and not deleted.
    fn last_image(&self, event: &ChangeEvent) -> Option<Row> {
        if !self.older_than(event) {
            return None;
        }
        let data = match self {
            Found::Absent => None,
            Found::Pending(latest) => (latest.event.operation != Operation::Delete)
                .then(|| latest.event.data.clone())
                .flatten(),
            Found::Stored(stored) if stored.operation != Operation::Delete => {
                match stored.event() {
                    Ok(held) => held.data,
                    Err(e) => {
                        tracing::warn!("{e}");
                        None
                    }
                }
            }
            Found::Stored(_) => None,
        };
        data.filter(|data| data.text() != "null")
    }

    /// Completes an event from the row's last image before it is matched and delivered
    /// (protocol section 1, row state). An update or delete gets that image as its `before`:
    /// under Postgres' default REPLICA IDENTITY, Debezium sends no `before` for an update and
    /// only the key for a delete, and filters, claims and leave events need the row as it
    /// was. Debezium's placeholder for an unchanged TOAST value is replaced by the last known
    /// value, or the field is left out when none is known: a placeholder is never data.
    pub fn complete(&self, event: &mut ChangeEvent) -> Completion {
        let mut done = Completion::default();
        if event.entity_id.is_none() {
            return done;
        }
        let needs_before = matches!(event.operation, Operation::Update | Operation::Delete);
        let placeholder = |row: &Option<Row>| {
            row.as_ref()
                .is_some_and(|row| row.text().contains(UNAVAILABLE_JSON))
        };
        let (toast_data, toast_before) = (placeholder(&event.data), placeholder(&event.before));
        if !needs_before && !toast_data && !toast_before {
            return done;
        }
        let last = self.last_image(event);
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

/// The tables as of one moment, for one or more snapshots: read while the consumer writes on.
pub struct View {
    snapshot: Option<fjall::Snapshot>,
    complete: bool,
}

/// One stored row of a view, with its key.
pub type ViewRow = Result<Stored, StoreError>;

impl View {
    /// Every partition was applied from its beginning, nothing lost: the view is the table.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Rows of `entity`, deleted ones (held as their delete event) included.
    pub fn count(&self, entity: &str) -> usize {
        self.snapshot
            .as_ref()
            .and_then(|s| store::count_in(s, entity).ok())
            .map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }

    /// The rows of `entity` in key order (a deleted row as its delete event), read a page at
    /// a time as the iterator advances.
    pub fn rows(self: &Arc<Self>, entity: &str) -> impl Iterator<Item = ViewRow> + Send {
        self.keyed_rows(entity)
            .map(|row| row.map(|(_, stored)| stored))
    }

    /// The rows of `entity` in key order with their keys.
    pub fn keyed_rows(
        self: &Arc<Self>,
        entity: &str,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Stored), StoreError>> + Send {
        Pages {
            view: Arc::clone(self),
            prefix: store::entity_prefix(entity),
            after: None,
            page: Vec::new().into_iter(),
            done: self.snapshot.is_none(),
        }
    }

    /// The keys of the rows of `entity` that `filter` matches, in key order, in one pass over
    /// the entity. A row whose text lacks the strings the filter compares with is passed
    /// over unparsed ([`crate::index::Needles`]); the others are parsed only as far as the
    /// fields the filter reads ([`Filter::row_fields`]). A large entity is cut into key
    /// ranges scanned on several threads when no other scan holds them ([`scan`]). Rows that
    /// cannot be read are logged and left out.
    pub fn keys_matching(&self, entity: &str, filter: &Filter) -> Vec<Vec<u8>> {
        use std::ops::Bound;
        let Some(snapshot) = &self.snapshot else {
            return Vec::new();
        };
        let needles = filter.needles();
        let fields = filter.row_fields();
        let judge = |value: &[u8]| -> bool {
            if !needles.may_match(value) {
                return false;
            }
            match StoredRef::decode(value).and_then(|row| row.event_reading(fields.as_deref())) {
                Ok(event) => filter.matches(&event),
                Err(e) => {
                    tracing::warn!("snapshot read: {e}");
                    false
                }
            }
        };
        let scan = |low: Bound<Vec<u8>>, high: Bound<Vec<u8>>| -> Vec<Vec<u8>> {
            snapshot
                .range::<Vec<u8>, _>((low, high))
                .filter_map(|item| {
                    item.map_err(|e| {
                        tracing::warn!("snapshot read: {}", StoreError::Read(e.into()))
                    })
                    .ok()
                })
                .filter(|(_, value)| judge(value))
                .map(|(key, _)| key.to_vec())
                .collect()
        };
        let prefix = store::entity_prefix(entity);
        let mut upper = prefix.clone();
        *upper.last_mut().expect("a prefix is never empty") += 1;
        let whole = || {
            scan(
                Bound::Included(prefix.clone()),
                Bound::Excluded(upper.clone()),
            )
        };
        let Some(helpers) = scan::Helpers::take(self.count(entity)) else {
            return whole();
        };
        let ends = || snapshot.range::<Vec<u8>, _>(prefix.clone()..upper.clone());
        let (Some(Ok((first, _))), Some(Ok((last, _)))) = (ends().next(), ends().next_back())
        else {
            return whole();
        };
        let cuts = scan::cuts(&first, &last, helpers.ranges());
        let bound = |i: usize| match i {
            0 => Bound::Included(prefix.clone()),
            i if i > cuts.len() => Bound::Excluded(upper.clone()),
            i => Bound::Included(cuts[i - 1].clone()),
        };
        let edge = |i: usize| match bound(i) {
            Bound::Included(key) if i > 0 => Bound::Excluded(key),
            other => other,
        };
        helpers
            .run(cuts.len() + 1, |i| scan(bound(i), edge(i + 1)))
            .concat()
    }

    /// Up to `n` rows under `prefix` after the key `after`.
    fn page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        n: usize,
    ) -> Vec<Result<(Vec<u8>, Stored), StoreError>> {
        use std::ops::Bound;
        let Some(snapshot) = &self.snapshot else {
            return Vec::new();
        };
        let mut upper = prefix.to_vec();
        // Entity names are ASCII: the last byte is below 0xFF.
        *upper.last_mut().expect("a prefix is never empty") += 1;
        let lower = match after {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        snapshot
            .range::<Vec<u8>, _>((lower, Bound::Excluded(upper)))
            .take(n)
            .map(|item| {
                let (key, value) = item.map_err(|e| StoreError::Read(e.into()))?;
                Ok((key.to_vec(), Stored::decode(&value)?))
            })
            .collect()
    }

    /// The row stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<ViewRow> {
        let snapshot = self.snapshot.as_ref()?;
        match snapshot.get(key) {
            Ok(Some(value)) => Some(Stored::decode(&value)),
            Ok(None) => None,
            Err(e) => Some(Err(StoreError::Read(e.into()))),
        }
    }

    /// The latest event of one row, a delete included.
    pub fn row(&self, entity: &str, id: &str) -> Option<ViewRow> {
        let snapshot = self.snapshot.as_ref()?;
        match snapshot.get(store::row_key(entity, id)) {
            Ok(Some(value)) => Some(Stored::decode(&value)),
            Ok(None) => None,
            Err(e) => Some(Err(StoreError::Read(e.into()))),
        }
    }
}

/// Rows read from a view a page at a time: no iterator of the store is held between pages.
struct Pages {
    view: Arc<View>,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    page: std::vec::IntoIter<Result<(Vec<u8>, Stored), StoreError>>,
    done: bool,
}

/// Rows read from the store at once: what one snapshot holds in memory at most.
pub const PAGE: usize = 512;

impl Iterator for Pages {
    type Item = Result<(Vec<u8>, Stored), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(row) = self.page.next() {
            return Some(row);
        }
        if self.done {
            return None;
        }
        let page = self.view.page(&self.prefix, self.after.as_deref(), PAGE);
        if page.len() < PAGE {
            self.done = true;
        }
        match page.iter().rev().find_map(|row| row.as_ref().ok()) {
            Some((key, _)) => self.after = Some(key.clone()),
            None => self.done = true,
        }
        self.page = page.into_iter();
        self.page.next()
    }
}

#[cfg(test)]
mod tests;
