//! Fan-out: one event -> the queues of every matching subscriber. Each event's payload is
//! serialized once, each gateway topic's data message once, and every recipient gets the same
//! `Bytes`. Queues are bounded per connection. A full queue pauses dispatch (and with it the
//! Kafka consumer) for at most the slow-client grace period: a burst reaches every client that
//! keeps reading, and a client that stays full is closed with 4004 or, under the drop policy,
//! skipped with a count. No lock is held while waiting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::SlowClientPolicy;
use crate::event::{ChangeEvent, GatewayTopic};
use crate::history::{self, History};
use crate::index::filter::Redaction;
use crate::index::{Filter, TopicIndex};
use crate::metrics::{DropReason, Metrics};
use crate::outbound::Outbound;
use crate::position::{Dispatched, Partition, Position};
use crate::protocol::close::CloseCode;
use crate::protocol::data::{data_message, Kind};
use crate::protocol::reply;
use crate::queue::{Item, TrySendError};
use crate::tables::{Found, Latest, Stored, Tables, View};

/// Hands events to the subscribers of their topics.
pub struct FanOut {
    index: Arc<TopicIndex>,
    metrics: Arc<Metrics>,
    dispatched: Arc<Dispatched>,
    policy: SlowClientPolicy,
    grace: Duration,
    /// Messages a second a stalled client must accept to keep its connection.
    min_drain_rate: f64,
    /// The longest one stall may hold dispatch, renewed windows included (at least `grace`).
    max_stall: Duration,
    /// Rows one connection's backlogs may hold (`--max-backlog-rows`).
    max_backlog_rows: usize,
    tables: Arc<Tables>,
    history: Arc<History>,
}

/// Why a join was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    /// The rows it owes would take the connection's backlog past its budget.
    #[error("{rows} rows owed with {held} still unread: at most {budget} per connection (--max-backlog-rows)")]
    BacklogFull {
        rows: usize,
        held: usize,
        budget: usize,
    },
}

/// What a join found: the ack of each topic says it, and the requester is told it.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The dispatched position when the subscription began: every partition read.
    pub position: Position,
    /// With `since`: whether the missed events follow (never with a snapshot, which is the
    /// client's reload instead).
    pub recovered: Option<bool>,
}

/// Builds one topic's subscribe ack: the topic, what the join found, and the snapshot's row
/// count and completeness when one was asked for.
pub type AckBuilder = Box<dyn FnMut(&str, &Joined, Option<(usize, bool)>) -> Vec<u8> + Send>;

/// A subscription to one or more topics (a WebSocket subscribe, or an SSE stream's topics).
/// It is served by the consumer task between two records ([`FanOut::join`]), so its ack's
/// position, the snapshot rows or missed events it sends, and the live events that follow
/// leave no gap and repeat nothing.
pub struct Join {
    /// Each topic with its compiled filter.
    pub topics: Vec<(String, Filter)>,
    pub outbound: Arc<Outbound>,
    /// The position the client resumes from.
    pub since: Option<Position>,
    pub snapshot: bool,
    pub ack: AckBuilder,
    /// Told what the join found once the subscriptions are in the index, or why it was not
    /// served (nothing was queued or subscribed then).
    pub done: tokio::sync::oneshot::Sender<Result<Joined, JoinRefused>>,
}

impl FanOut {
    pub fn new(
        index: Arc<TopicIndex>,
        metrics: Arc<Metrics>,
        dispatched: Arc<Dispatched>,
        policy: SlowClientPolicy,
        grace: Duration,
    ) -> Self {
        Self {
            index,
            metrics,
            dispatched,
            policy,
            grace,
            min_drain_rate: 0.0,
            max_stall: grace,
            max_backlog_rows: usize::MAX,
            tables: Arc::new(Tables::off()),
            history: Arc::new(History::new(history::Limits {
                per_entity: 0,
                max_age: Duration::ZERO,
                budget_bytes: 0,
            })),
        }
    }

    /// Requires a stalled client to accept `rate` messages a second (default: any progress).
    pub fn with_min_drain_rate(mut self, rate: f64) -> Self {
        self.min_drain_rate = rate;
        self
    }

    /// Lets a client that keeps accepting `--slow-client-min-rate` hold dispatch for up to
    /// `max_stall` in one stall (never less than the grace period).
    pub fn with_max_stall(mut self, max_stall: Duration) -> Self {
        self.max_stall = max_stall.max(self.grace);
        self
    }

    /// Bounds the rows one connection's unread snapshot and replay backlogs may hold.
    pub fn with_max_backlog_rows(mut self, rows: usize) -> Self {
        self.max_backlog_rows = rows;
        self
    }

    /// Keeps recent events per entity in `history`, for resume.
    pub fn with_history(mut self, history: Arc<History>) -> Self {
        self.history = history;
        self
    }

    /// Applies every event to `tables`, the row state snapshots read.
    pub fn with_tables(mut self, tables: Arc<Tables>) -> Self {
        self.tables = tables;
        self
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    pub fn dispatched(&self) -> &Dispatched {
        &self.dispatched
    }

    /// Serves a [`Join`]. For each topic: its ack; with a snapshot, the rows that pass the
    /// filter, least recently changed first, then `synced`. Then, when resuming (without a
    /// snapshot, which supersedes it) and history covers the client's position on every
    /// partition, the missed events of all the topics in offset order per partition. Then the
    /// subscriptions enter the index, refusing what a resumed client already has. Called by
    /// the consumer task between two records.
    pub async fn join(&self, mut join: Join) {
        let position = self.dispatched.snapshot();
        let replays: Option<Vec<Vec<Arc<Latest>>>> = match &join.since {
            Some(since) if !join.snapshot => join
                .topics
                .iter()
                .map(|(topic, _)| {
                    let (entity, id) = split_topic(topic)?;
                    self.history.replay(entity, id, since, &position)
                })
                .collect(),
            _ => None,
        };
        // With a snapshot nothing is replayed: the rows are the client's reload.
        let joined = Joined {
            recovered: join.since.is_some().then_some(replays.is_some()),
            position,
        };
        if let Some(recovered) = joined.recovered.filter(|_| !join.snapshot) {
            self.metrics
                .resumes
                .with_label_values(&[if recovered { "true" } else { "false" }])
                .inc();
        }
        let topics: Vec<(Arc<str>, Arc<Filter>)> = std::mem::take(&mut join.topics)
            .into_iter()
            .map(|(topic, filter)| (Arc::from(topic), Arc::new(filter)))
            .collect();
        // What the subscribe owes is gathered here, between two records: a view of the tables
        // as of the ack's position (committed first: the view is exactly what was
        // dispatched) and the missed events as `Arc`s. The connection's writer pages through
        // the view, filters, orders and renders as it writes ([`Owing`]): the consumer task
        // never reads a table for one client, nor waits for it to read.
        let view: Option<Arc<View>> = join.snapshot.then(|| Arc::new(self.view()));
        // A snapshot is paged from the store: it holds one page of rows in memory at most,
        // and is reserved at that (or its entity's row count, when smaller) until its rows
        // are sent. So a million-row table is one snapshot within the default budget, and a
        // client that re-subscribes without reading still reaches the bound.
        let shares: Vec<usize> = match &view {
            Some(view) => topics
                .iter()
                .map(|(topic, _)| match split_topic(topic) {
                    Some((entity, None)) => view.count(entity).min(crate::tables::PAGE),
                    Some((_, Some(_))) => 1,
                    None => 0,
                })
                .collect(),
            None => Vec::new(),
        };
        let rows =
            replays.iter().flatten().map(Vec::len).sum::<usize>() + shares.iter().sum::<usize>();
        // What one connection may make the gateway hold for it is bounded: a subscribe whose
        // rows would take its backlog past --max-backlog-rows is refused, not queued.
        let reservation =
            match Reservation::take(&join.outbound, rows, self.max_backlog_rows, &self.metrics) {
                Ok(reservation) => reservation,
                Err(refused) => {
                    let _ = join.done.send(Err(refused));
                    return;
                }
            };
        let mut owing = Owing {
            topics: topics.clone(),
            joined: joined.clone(),
            ack: join.ack,
            view,
            shares,
            replays,
            metrics: Arc::clone(&self.metrics),
            reservation,
        };
        let item = match owing.single_ack() {
            Some(ack) => Item::Message(ack),
            None => Item::Backlog(Box::new(owing.into_backlog())),
        };
        if !self.offer(&join.outbound, item).await {
            // Under the drop policy a full queue skips a message; a subscribe's ack and what
            // it owes cannot be skipped without the client missing them unawares (issue
            // 20.8): the connection is closed as a slow consumer instead, and nothing enters
            // the index. It resumes from the position it kept.
            join.outbound.close(CloseCode::SlowConsumer);
            return;
        }
        // After a replay, live events the client already has are refused (this replica may be
        // behind its position). Without one, live delivery simply starts: the client reloads.
        let floor = join.since.take().filter(|_| joined.recovered == Some(true));
        for (topic, filter) in topics {
            let filter = match &floor {
                Some(floor) => Arc::new(Arc::unwrap_or_clone(filter).above(floor.clone())),
                None => filter,
            };
            self.index.subscribe(&topic, &join.outbound, filter);
        }
        let _ = join.done.send(Ok(joined));
    }

    /// A view of the tables as they now stand. A view whose uncommitted rows cannot be
    /// committed (the store is full or failing) is the last committed state, and says it is
    /// not complete.
    fn view(&self) -> View {
        match self.tables.view() {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!("snapshot from the last committed tables, marked incomplete: {e}");
                self.tables.committed_view()
            }
        }
    }

    /// Applies an event that is not dispatched (read at start, before each partition's
    /// start) to the tables, and to the resume history when `into_history`. `earlier` holds,
    /// for the one start-up read, the last event of each row that the store already held a
    /// later state of: such an event (the resume history's window, read again after a
    /// restart) is judged against the row's previous event in the read, as it was when it
    /// was live, not against the store's later row; otherwise a resumed client would get
    /// updates without their before-image, and a confined one no leave event.
    pub fn remember(&self, mut event: ChangeEvent, into_history: bool, earlier: &mut Earlier) {
        let found = self.tables.find(&event);
        if let (true, Some(id)) = (found.holds_later(&event), event.entity_id.clone()) {
            let key = (event.entity_type.clone(), id);
            let found = earlier
                .get(&key)
                .map_or(Found::Absent, |latest| Found::Pending(Arc::clone(latest)));
            if found.replayed(&event) {
                self.metrics.source_replays.inc();
                return;
            }
            self.complete(&mut event, &found);
            let payload = Bytes::from(event.payload_json());
            let latest = Arc::new(Latest { event, payload });
            if into_history && self.history.is_enabled() {
                self.history.record(&latest);
            }
            earlier.insert(key, latest);
            return;
        }
        if found.replayed(&event) {
            self.metrics.source_replays.inc();
            return;
        }
        self.complete(&mut event, &found);
        self.record(event, None, found, into_history);
    }

    /// Judges the event against the row's last image where the source left it out (see
    /// [`Found::complete`]), and counts what that found.
    fn complete(&self, event: &mut ChangeEvent, found: &Found) {
        let done = found.complete(event);
        let count = |result: &str, n: u64| {
            if n > 0 {
                self.metrics
                    .row_images
                    .with_label_values(&[result])
                    .inc_by(n);
            }
        };
        match done.before {
            Some(true) => count("before_known", 1),
            Some(false) => count("before_unknown", 1),
            None => {}
        }
        count("toast_filled", u64::from(done.toast_filled));
        count("toast_unknown", u64::from(done.toast_unknown));
    }

    /// Applies the event to its row (moved, not copied: this runs once per record) and keeps
    /// it for resumes.
    fn record(&self, event: ChangeEvent, payload: Option<Bytes>, found: Found, into_history: bool) {
        let history = into_history && self.history.is_enabled();
        if self.tables.is_enabled() || history {
            let payload = payload.unwrap_or_else(|| Bytes::from(event.payload_json()));
            let latest = Arc::new(Latest { event, payload });
            self.tables.apply(&latest, found);
            if history {
                self.history.record(&latest);
            }
        }
    }

    /// Queues the event for every matching subscriber of its entity and row topics, and a
    /// leave event for every subscriber whose filter the row no longer passes. Returns once
    /// every recipient has it queued, was skipped under the policy, or is gone.
    pub async fn dispatch(&self, mut owned: ChangeEvent) {
        // A change the row already went through (a connector re-sending after a restart)
        // reaches nobody twice; its offset still counts as dispatched.
        let found = self.tables.find(&owned);
        if found.replayed(&owned) {
            self.metrics.source_replays.inc();
            self.dispatched.record(owned.position);
            return;
        }
        self.complete(&mut owned, &found);
        let event = &owned;
        let mut payload: Option<Bytes> = None;
        let mut delivered = 0u64;
        // Connections whose queue was full, with the messages they are owed, in order.
        let mut stalled: Vec<(Arc<Outbound>, Vec<Item>)> = Vec::new();
        let topics = [Some(event.entity_topic()), event.row_topic()];
        for topic in topics.iter().flatten() {
            let Some(subscribers) = self.index.subscribers(topic) else {
                continue;
            };
            // One message per variant the subscribers need, built once: live or leave, with
            // an image the token's claims reject hidden or not.
            let mut messages: [Option<Bytes>; 4] = Default::default();
            // Subscribers of one topic with equal filters share one compiled filter (the index
            // interns them), so each distinct filter is evaluated once per event.
            let mut last: Option<(&Filter, Option<(Kind, Redaction)>)> = None;
            for subscriber in subscribers.iter() {
                let filter: &Filter = &subscriber.filter;
                let variant = match last {
                    Some((seen, variant)) if std::ptr::eq(seen, filter) => variant,
                    _ => {
                        let kind = if filter.matches(event) {
                            Some(Kind::Live)
                        } else if filter.matched_before(event) {
                            Some(Kind::Leave)
                        } else {
                            None
                        };
                        let variant =
                            kind.map(|kind| (kind, filter.redaction(event, kind == Kind::Leave)));
                        last = Some((filter, variant));
                        variant
                    }
                };
                let Some((kind, redaction)) = variant else {
                    continue;
                };
                let slot = match (kind, redaction) {
                    (Kind::Leave, Redaction::None) => 1,
                    (_, Redaction::Before) => 2,
                    (_, Redaction::Data) => 3,
                    _ => 0,
                };
                let outbound = &subscriber.outbound;
                let bytes = messages[slot]
                    .get_or_insert_with(|| match redaction {
                        Redaction::None => {
                            let payload =
                                payload.get_or_insert_with(|| Bytes::from(event.payload_json()));
                            data_message(topic, payload, event.position, kind)
                        }
                        _ => data_message(topic, &redacted(event, redaction), event.position, kind),
                    })
                    .clone();
                delivered +=
                    u64::from(self.offer_or_stall(&mut stalled, outbound, Item::Message(bytes)));
            }
        }
        delivered += self.wait_for_stalled(stalled).await;
        // One shared counter update per event, not per recipient.
        self.metrics.deliveries.inc_by(delivered);
        let (position, kafka_timestamp_ms) = (event.position, event.kafka_timestamp_ms);
        self.record(owned, payload, found, true);
        self.dispatched.record(position);
        if let Some(ts) = kafka_timestamp_ms {
            let latency_ms = crate::clock::now_millis().saturating_sub(ts).max(0);
            self.metrics
                .enqueue_latency
                .observe(latency_ms as f64 / 1000.0);
        }
    }

    /// Queues `item` for `outbound` if its queue has room and nothing of it waits in
    /// `stalled`; otherwise it waits there, after what the connection is already owed.
    /// True when queued now.
    #[inline]
    fn offer_or_stall(
        &self,
        stalled: &mut Vec<(Arc<Outbound>, Vec<Item>)>,
        outbound: &Arc<Outbound>,
        item: Item,
    ) -> bool {
        if let Some(waiting) = stalled.iter_mut().find(|(o, _)| Arc::ptr_eq(o, outbound)) {
            waiting.1.push(item);
            return false;
        }
        match self.try_offer(outbound, item) {
            Ok(queued) => queued,
            Err(item) => {
                stalled.push((Arc::clone(outbound), vec![item]));
                false
            }
        }
    }

    /// Queues what full queues are owed, waiting for them together, not one after another: N
    /// stalled clients hold the consumer back for one grace period, not N. Returns how many
    /// messages were queued.
    async fn wait_for_stalled(&self, stalled: Vec<(Arc<Outbound>, Vec<Item>)>) -> u64 {
        if stalled.is_empty() {
            return 0;
        }
        let waits = stalled.into_iter().map(|(outbound, messages)| async move {
            let mut queued = 0;
            for message in messages {
                queued += u64::from(self.offer(&outbound, message).await);
            }
            queued
        });
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .sum::<u64>()
    }

    /// Tells every subscription that records of `partition` from offset `from` to `to` were
    /// skipped unread: a `reset` message (an extension of the protocol) queued like an event,
    /// after what came before the gap and before what comes after it.
    pub async fn reset_all(&self, partition: Partition, from: i64, to: i64) {
        let mut stalled: Vec<(Arc<Outbound>, Vec<Item>)> = Vec::new();
        for (topic, subscribers) in self.index.all() {
            let message = Bytes::from(reply::reset(
                &topic,
                partition.topic.as_str(),
                partition.partition,
                from,
                to,
            ));
            for subscriber in subscribers.iter() {
                let item = Item::Message(message.clone());
                self.offer_or_stall(&mut stalled, &subscriber.outbound, item);
            }
        }
        self.wait_for_stalled(stalled).await;
    }

    /// Queues one message for one connection, waiting while its queue is full (see
    /// [`FanOut::wait_offer`]); true once it is queued.
    async fn offer(&self, outbound: &Outbound, message: Item) -> bool {
        match self.try_offer(outbound, message) {
            Ok(delivered) => delivered,
            Err(message) => self.wait_offer(outbound, message).await,
        }
    }

    /// Queues a message if the queue has room: `Ok(true)` when queued, `Ok(false)` when the
    /// connection is gone or closing, `Err` with the message when the queue is full.
    fn try_offer(&self, outbound: &Outbound, message: Item) -> Result<bool, Item> {
        match outbound.queue.try_send(message) {
            Ok(held) => {
                outbound.accepted(held, outbound.queue.capacity());
                Ok(true)
            }
            Err(TrySendError::Closed) => Ok(self.dropped(DropReason::ConnectionClosed)),
            Err(TrySendError::Full(_)) if outbound.is_closing() => {
                Ok(self.dropped(DropReason::SlowConsumerClosed))
            }
            Err(TrySendError::Full(message)) => Err(message),
        }
    }

    /// Waits for room in a full queue. The wait runs in windows of the grace period: a window
    /// in which the client accepted at least `--slow-client-min-rate` messages a second (and
    /// at least one) opens another while the stall has lasted less than `max_stall`; a window
    /// with less, or a stall that reached `max_stall`, ends the client under the policy
    /// (closed with 4004, or this message skipped and counted). However steadily a client
    /// reads, it holds every other client back for `max_stall` at most (by default the grace
    /// period: protocol section 3). A stall ends once the client drains its queue to half.
    async fn wait_offer(&self, outbound: &Outbound, mut message: Item) -> bool {
        let grace_ms = self.grace.as_millis() as i64;
        loop {
            let window = match outbound.window_ms() {
                0 => grace_ms,
                shorter => shorter,
            };
            let remaining = outbound.full_since() + window - crate::outbound::elapsed_ms();
            if remaining > 0 {
                let deadline =
                    tokio::time::Instant::now() + Duration::from_millis(remaining as u64);
                tokio::select! {
                    room = tokio::time::timeout_at(deadline, outbound.queue.wait_for_space()) => match room {
                        Ok(Ok(())) => match self.try_offer(outbound, message) {
                            Ok(delivered) => return delivered,
                            Err(again) => {
                                message = again;
                                continue;
                            }
                        },
                        Ok(Err(_)) => return self.dropped(DropReason::ConnectionClosed),
                        Err(_window_over) => {}
                    },
                    _ = outbound.closing() => return self.dropped(DropReason::SlowConsumerClosed),
                }
            }
            let accepted = outbound.accepted_in_window();
            let stalled_for = crate::outbound::elapsed_ms() - outbound.stall_since();
            let may_renew = stalled_for < self.max_stall.as_millis() as i64;
            if may_renew
                && accepted > 0
                && accepted as f64 >= self.min_drain_rate * self.grace.as_secs_f64()
            {
                // The last window ends with the stall's bound, not past it.
                let left = self.max_stall.as_millis() as i64 - stalled_for;
                outbound.renew_window(left.min(grace_ms));
                continue;
            }
            return match self.policy {
                SlowClientPolicy::Close => {
                    tracing::info!(
                        connection = outbound.id(),
                        accepted,
                        "closing slow consumer: queue full past the grace period"
                    );
                    outbound.close(CloseCode::SlowConsumer);
                    self.dropped(DropReason::SlowConsumerClosed)
                }
                SlowClientPolicy::Drop => self.dropped(DropReason::QueueFull),
            };
        }
    }

    fn dropped(&self, reason: DropReason) -> bool {
        self.metrics.count_drop(reason);
        false
    }
}

/// The payload of `event` with the image `redaction` names set to `null`.
fn redacted(event: &ChangeEvent, redaction: Redaction) -> Vec<u8> {
    let mut shown = event.clone();
    match redaction {
        Redaction::Before => shown.before = None,
        Redaction::Data => shown.data = None,
        Redaction::None => {}
    }
    shown.payload_json()
}

/// The data message of a recorded event (a snapshot row or a missed event) for a subscriber
/// with `filter`: its payload serialized when recorded, unless the claims hide an image.
fn shown(topic: &str, filter: &Filter, latest: &Latest, kind: Kind) -> Bytes {
    let event = &latest.event;
    match filter.redaction(event, kind == Kind::Leave) {
        Redaction::None => data_message(topic, &latest.payload, event.position, kind),
        redaction => data_message(topic, &redacted(event, redaction), event.position, kind),
    }
}

/// A missed event a subscribe owes, rendered for the subscriber when its writer gets to it.
enum Owed {
    Shown {
        topic: Arc<str>,
        filter: Arc<Filter>,
        event: Arc<Latest>,
        kind: Kind,
    },
}

impl Owed {
    fn render(self) -> Bytes {
        match self {
            Owed::Shown {
                topic,
                filter,
                event,
                kind,
            } => shown(&topic, &filter, &event, kind),
        }
    }

    /// Missed events go out in offset order per partition.
    fn order(&self) -> (crate::position::Partition, i64) {
        let Owed::Shown { event, .. } = self;
        let at = event.event.position;
        (at.key(), at.offset)
    }
}

/// Rows a connection's backlogs hold, reserved against its budget when a subscribe is
/// served and given back as they are written, filtered out, or dropped unwritten.
pub struct Reservation {
    held: Arc<std::sync::atomic::AtomicUsize>,
    gauge: prometheus::IntGauge,
    rows: usize,
}

impl Reservation {
    fn take(
        outbound: &Outbound,
        rows: usize,
        budget: usize,
        metrics: &Metrics,
    ) -> Result<Self, JoinRefused> {
        use std::sync::atomic::Ordering;
        let held = outbound.backlog_rows();
        let mut now = held.load(Ordering::Acquire);
        loop {
            if rows > 0 && now.saturating_add(rows) > budget {
                return Err(JoinRefused::BacklogFull {
                    rows,
                    held: now,
                    budget,
                });
            }
            match held.compare_exchange(now, now + rows, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        metrics.backlog_rows.add(rows as i64);
        Ok(Self {
            held: Arc::clone(held),
            gauge: metrics.backlog_rows.clone(),
            rows,
        })
    }

    fn give_back(&mut self, rows: usize) {
        let rows = rows.min(self.rows);
        self.rows -= rows;
        self.held
            .fetch_sub(rows, std::sync::atomic::Ordering::AcqRel);
        self.gauge.sub(rows as i64);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.give_back(self.rows);
    }
}

/// What a subscribe owes, as gathered at its join: a view of the tables for its snapshots, or
/// the missed events history holds. Paged, filtered, ordered and rendered by the connection's
/// writer ([`Owing::into_backlog`]), each topic's ack first: a snapshot's ack says how many
/// rows follow.
struct Owing {
    topics: Vec<(Arc<str>, Arc<Filter>)>,
    joined: Joined,
    ack: AckBuilder,
    view: Option<Arc<View>>,
    /// Each snapshot's share of the reservation.
    shares: Vec<usize>,
    replays: Option<Vec<Vec<Arc<Latest>>>>,
    metrics: Arc<Metrics>,
    reservation: Reservation,
}

/// The reservation, shared by the parts of one subscribe's backlog.
type SharedReservation = Arc<std::sync::Mutex<Reservation>>;

impl Reservation {
    fn shared_give_back(shared: &SharedReservation, rows: usize) {
        if rows > 0 {
            shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .give_back(rows);
        }
    }
}

/// The ack builder, shared by the topics of one subscribe as the writer gets to each.
type SharedAck = Arc<std::sync::Mutex<AckBuilder>>;

impl Owing {
    /// The ack of a subscribe to one topic that owes nothing else: sent as it is.
    fn single_ack(&mut self) -> Option<Bytes> {
        if self.view.is_some() || self.replays.is_some() || self.topics.len() != 1 {
            return None;
        }
        let (topic, _) = &self.topics[0];
        Some(Bytes::from((self.ack)(topic, &self.joined, None)))
    }

    /// The messages in order: per topic its ack, then with a snapshot its rows (in key
    /// order, read from the view as the writer asks for them) and `synced`; then the missed
    /// events of every topic, in offset order per partition. Nothing is read, filtered or
    /// rendered until the writer gets to it.
    fn into_backlog(self) -> impl Iterator<Item = Bytes> + Send {
        let Owing {
            topics,
            joined,
            ack,
            view,
            shares,
            replays,
            metrics,
            reservation,
        } = self;
        let replayed = reservation.rows - shares.iter().sum::<usize>();
        let reservation: SharedReservation = Arc::new(std::sync::Mutex::new(reservation));
        let ack: SharedAck = Arc::new(std::sync::Mutex::new(ack));
        let mut parts: Vec<Box<dyn Iterator<Item = Bytes> + Send>> = Vec::new();
        for (i, (topic, filter)) in topics.iter().enumerate() {
            let (ack, joined) = (Arc::clone(&ack), joined.clone());
            match &view {
                Some(view) => parts.push(Box::new(SnapshotRows {
                    topic: Arc::clone(topic),
                    filter: Arc::clone(filter),
                    view: Arc::clone(view),
                    ack,
                    joined,
                    metrics: Arc::clone(&metrics),
                    reservation: Arc::clone(&reservation),
                    share: shares.get(i).copied().unwrap_or(0),
                    stage: Stage::Start,
                })),
                None => {
                    let topic = Arc::clone(topic);
                    parts.push(Box::new(std::iter::once_with(move || {
                        let mut ack = ack.lock().unwrap_or_else(|e| e.into_inner());
                        Bytes::from((*ack)(&topic, &joined, None))
                    })))
                }
            }
        }
        if let Some(replays) = replays {
            let reserved = replayed;
            let missed = std::iter::once_with(move || {
                // What the client would have received live: the events its filter matches,
                // and leave events where an update moved a row out of it.
                let mut missed: Vec<Owed> = topics
                    .iter()
                    .zip(&replays)
                    .flat_map(|((topic, filter), events)| {
                        events.iter().filter_map(move |e| {
                            let kind = if filter.matches(&e.event) {
                                Kind::Live
                            } else if filter.matched_before(&e.event) {
                                Kind::Leave
                            } else {
                                return None;
                            };
                            Some(Owed::Shown {
                                topic: Arc::clone(topic),
                                filter: Arc::clone(filter),
                                event: Arc::clone(e),
                                kind,
                            })
                        })
                    })
                    .collect();
                missed.sort_by_key(Owed::order);
                metrics.deliveries.inc_by(missed.len() as u64);
                // What the filters left out is not held for the client.
                Reservation::shared_give_back(&reservation, reserved.saturating_sub(missed.len()));
                missed.into_iter().map(move |owed| {
                    Reservation::shared_give_back(&reservation, 1);
                    owed.render()
                })
            })
            .flatten();
            parts.push(Box::new(missed));
        }
        parts.into_iter().flatten()
    }
}

/// Where a topic's snapshot stands.
enum Stage {
    Start,
    Rows(Box<dyn Iterator<Item = Bytes> + Send>),
    Synced,
    Done,
}

/// One topic's snapshot, read from a view of the tables as the writer asks for messages:
/// the ack (with the row count), the rows that pass the filter, then `synced`.
struct SnapshotRows {
    topic: Arc<str>,
    filter: Arc<Filter>,
    view: Arc<View>,
    ack: SharedAck,
    joined: Joined,
    metrics: Arc<Metrics>,
    reservation: SharedReservation,
    /// Rows reserved for this snapshot and not given back yet.
    share: usize,
    stage: Stage,
}

impl Iterator for SnapshotRows {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.stage {
                Stage::Start => {
                    let (count, complete, rows) = blocking(|| self.plan());
                    // Fewer rows than reserved pass the filter: the rest is not held.
                    let unsent = self.share.saturating_sub(count);
                    Reservation::shared_give_back(&self.reservation, unsent);
                    self.share -= unsent;
                    self.metrics
                        .snapshots
                        .with_label_values(&[if complete { "true" } else { "false" }])
                        .inc();
                    tracing::debug!(
                        topic = &*self.topic,
                        position = %crate::position::to_event_id(&self.joined.position),
                        rows = count,
                        complete,
                        "snapshot"
                    );
                    let mut ack = self.ack.lock().unwrap_or_else(|e| e.into_inner());
                    let message =
                        Bytes::from((*ack)(&self.topic, &self.joined, Some((count, complete))));
                    drop(ack);
                    self.stage = Stage::Rows(rows);
                    return Some(message);
                }
                Stage::Rows(rows) => match rows.next() {
                    Some(row) => {
                        self.metrics.deliveries.inc();
                        return Some(row);
                    }
                    None => {
                        Reservation::shared_give_back(&self.reservation, self.share);
                        self.share = 0;
                        self.stage = Stage::Synced;
                    }
                },
                Stage::Synced => {
                    self.stage = Stage::Done;
                    return Some(Bytes::from(reply::synced(&self.topic)));
                }
                Stage::Done => return None,
            }
        }
    }
}

impl SnapshotRows {
    /// How many rows the snapshot sends, whether they are the whole table, and the rows.
    /// Without a filter the count is the entity's and the rows stream straight from the view;
    /// with one, the view is scanned once for the keys that pass, and those rows follow.
    #[allow(clippy::type_complexity)]
    fn plan(&self) -> (usize, bool, Box<dyn Iterator<Item = Bytes> + Send>) {
        let (topic, filter) = (Arc::clone(&self.topic), Arc::clone(&self.filter));
        let Some((entity, id)) = split_topic(&topic) else {
            return (0, false, Box::new(std::iter::empty()));
        };
        let complete = self.view.is_complete();
        if let Some(id) = id {
            let row = self.view.row(entity, id).and_then(readable);
            let found = row.is_some();
            let rows: Vec<Bytes> = row
                .into_iter()
                .filter_map(|stored| rendered(&topic, &filter, stored, true))
                .collect();
            return (rows.len(), complete || found, Box::new(rows.into_iter()));
        }
        if filter.is_empty() {
            let count = self.view.count(entity);
            let rows = self
                .view
                .rows(entity)
                .filter_map(readable)
                .map(move |stored| {
                    data_message(&topic, &stored.payload, stored.position, Kind::Snapshot)
                });
            return (count, complete, Box::new(rows));
        }
        let keys = self.view.keys_matching(entity, &filter);
        let view = Arc::clone(&self.view);
        let count = keys.len();
        let rows = keys.into_iter().filter_map(move |key| {
            let stored = readable(view.get(&key)?)?;
            rendered(&topic, &filter, stored, false)
        });
        (count, complete, Box::new(rows))
    }
}

/// A row read from a view, or `None` (logged) when it cannot be.
fn readable(row: crate::tables::ViewRow) -> Option<Stored> {
    row.map_err(|e| tracing::warn!("snapshot read: {e}")).ok()
}

/// A stored row as a snapshot message for a subscriber with `filter` (claims redact its
/// images), or `None` when `check` and the filter rejects it.
fn rendered(topic: &str, filter: &Filter, stored: Stored, check: bool) -> Option<Bytes> {
    let event = stored
        .event()
        .map_err(|e| tracing::warn!("snapshot read: {e}"))
        .ok()?;
    if check && !filter.matches(&event) {
        return None;
    }
    let latest = Latest {
        event,
        payload: stored.payload,
    };
    Some(shown(topic, filter, &latest, Kind::Snapshot))
}

/// Runs `read` (a table scan) off the async worker where the runtime allows it, so other
/// connections' tasks move to another thread meanwhile.
fn blocking<T>(read: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(read)
        }
        _ => read(),
    }
}

/// Per row (entity, id), the last event a start-up read went through again (see
/// [`FanOut::remember`]): as many as the resume history's window holds rows at most.
pub type Earlier = std::collections::HashMap<(String, String), Arc<Latest>>;

/// The entity and row id of a gateway topic; `None` for a topic that is not one.
fn split_topic(topic: &str) -> Option<(&str, Option<&str>)> {
    match GatewayTopic::parse(topic).ok()? {
        GatewayTopic::Entity { entity } => Some((entity, None)),
        GatewayTopic::Row { entity, id } => Some((entity, Some(id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Operation, Row, SourcePosition};
    use crate::protocol::data::data_message_position;
    use serde_json::{json, Value};
    use tokio::time::Instant;

    fn event(id: &str, offset: i64) -> ChangeEvent {
        ChangeEvent {
            entity_type: "order".into(),
            entity_id: Some(id.into()),
            operation: Operation::Insert,
            data: Some(json!({"id": id, "status": "new"}).into()),
            before: None,
            timestamp: "2026-11-22T10:00:00Z".into(),
            position: SourcePosition::new("cdc.events", 1, offset),
            kafka_timestamp_ms: None,
            source_lsn: None,
        }
    }

    fn fanout(policy: SlowClientPolicy, grace_ms: u64) -> (FanOut, Arc<TopicIndex>, Arc<Metrics>) {
        let index = Arc::new(TopicIndex::new());
        let metrics = Arc::new(Metrics::new());
        let f = FanOut::new(
            index.clone(),
            metrics.clone(),
            Arc::new(Dispatched::default()),
            policy,
            Duration::from_millis(grace_ms),
        );
        (f, index, metrics)
    }

    #[tokio::test]
    async fn one_serialization_shared_by_every_recipient() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Close, 100);
        let (a, mut rx_a) = Outbound::new(1, 4);
        let (b, mut rx_b) = Outbound::new(2, 4);
        index.subscribe("cdc.order", &a, Arc::new(Filter::default()));
        index.subscribe("cdc.order", &b, Arc::new(Filter::default()));
        index.subscribe("cdc.order.7", &b, Arc::new(Filter::default()));
        fanout.dispatch(event("7", 10)).await;
        let (ma, mb1, mb2) = (
            rx_a.recv().await.unwrap(),
            rx_b.recv().await.unwrap(),
            rx_b.recv().await.unwrap(),
        );
        assert_eq!(ma.as_ptr(), mb1.as_ptr(), "the same bytes, not a copy");
        let v: Value = serde_json::from_slice(&mb2).unwrap();
        assert_eq!(v["topic"], "cdc.order.7");
        assert_eq!(v["payload"]["entity_id"], "7");
        assert_eq!(v["offset"], 10);
        assert_eq!(v["partition"], 1);
        assert_eq!(
            data_message_position(&mb2),
            Some(SourcePosition::new("cdc.events", 1, 10))
        );
        assert_eq!(metrics.deliveries.get(), 3);
        assert_eq!(v["source"], "cdc.events");
        assert_eq!(
            fanout.dispatched.snapshot(),
            Position::from([(crate::position::Partition::new("cdc.events", 1), 10)])
        );
    }

    #[tokio::test]
    async fn filters_select_recipients() {
        let (fanout, index, _) = fanout(SlowClientPolicy::Close, 100);
        let (a, mut rx_a) = Outbound::new(1, 4);
        let only_9 = Filter::compile(Some(&json!({"entity_id": "9"}))).unwrap();
        index.subscribe("cdc.order", &a, Arc::new(only_9));
        fanout.dispatch(event("7", 1)).await;
        fanout.dispatch(event("9", 2)).await;
        let v: Value = serde_json::from_slice(&rx_a.recv().await.unwrap()).unwrap();
        assert_eq!(v["payload"]["entity_id"], "9");
        assert!(rx_a.try_recv().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_waits_then_closes_with_4004() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Close, 1000);
        let (slow, mut rx) = Outbound::new(1, 1);
        index.subscribe("cdc.order", &slow, Arc::new(Filter::default()));
        fanout.dispatch(event("1", 1)).await;
        let started = Instant::now();
        fanout.dispatch(event("2", 2)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "dispatch is paced by the full queue"
        );
        assert_eq!(slow.closed().await, CloseCode::SlowConsumer);
        assert_eq!(
            metrics
                .drops
                .with_label_values(&["slow_consumer_closed"])
                .get(),
            1
        );
        assert!(rx.recv().await.is_some_and(|m| !m.is_empty()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_catches_up_within_the_grace_gets_everything() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Close, 5000);
        let (client, mut rx) = Outbound::new(1, 2);
        index.subscribe("cdc.order", &client, Arc::new(Filter::default()));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            while got < 50 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                rx.recv().await.unwrap();
                got += 1;
            }
            got
        });
        for i in 0..50 {
            fanout.dispatch(event(&i.to_string(), i)).await;
        }
        assert_eq!(reader.await.unwrap(), 50);
        assert_eq!(metrics.deliveries.get(), 50);
        assert_eq!(
            metrics
                .drops
                .with_label_values(&["slow_consumer_closed"])
                .get(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drop_policy_skips_and_counts() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Drop, 100);
        let (client, mut rx) = Outbound::new(1, 1);
        index.subscribe("cdc.order", &client, Arc::new(Filter::default()));
        for i in 0..4 {
            fanout.dispatch(event(&i.to_string(), i)).await;
        }
        assert_eq!(metrics.drops.with_label_values(&["queue_full"]).get(), 3);
        assert!(!client.is_closing());
        rx.recv().await.unwrap();
        fanout.dispatch(event("5", 5)).await;
        assert_eq!(
            metrics.deliveries.get(),
            2,
            "delivery resumes once the client reads"
        );
    }

    /// Issue 20.8: under the drop policy, a subscribe's ack (and the replay behind it) once
    /// could be skipped like any message, leaving a subscription the client never heard of
    /// and a replay it silently lacked. The connection is closed instead.
    #[tokio::test(start_paused = true)]
    async fn under_the_drop_policy_a_subscribe_is_never_skipped_silently() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Drop, 100);
        let (client, _rx) = Outbound::new(1, 1);
        index.subscribe("cdc.other", &client, Arc::new(Filter::default()));
        // Its one slot taken by a message it never reads.
        assert!(client
            .queue
            .try_send(Item::Message(Bytes::from_static(b"{}")))
            .is_ok());
        let (join, joined) = join_of(&client, Some(Position::new()));
        fanout.join(join).await;
        assert_eq!(client.closed().await, CloseCode::SlowConsumer);
        assert!(joined.await.is_err(), "no subscription was made");
        assert!(index.filter("cdc.order", 1).is_none());
        assert_eq!(metrics.drops.with_label_values(&["queue_full"]).get(), 1);
    }

    /// Issue 20.3: a connection that re-subscribes with snapshots and never reads once made
    /// the gateway hold every backlog. Past the budget, a subscribe is refused and nothing is
    /// queued; rows written, or filtered out, give their share back.
    #[tokio::test]
    async fn backlogs_are_bounded_per_connection() {
        let (fanout, _index, metrics) = fanout(SlowClientPolicy::Close, 100);
        let fanout = fanout
            .with_tables(Arc::new(Tables::temporary()))
            .with_max_backlog_rows(25);
        for i in 0..10 {
            fanout.remember(event(&i.to_string(), i), true, &mut Earlier::new());
        }
        let (client, mut rx) = Outbound::new(1, 16);
        let snapshot = |filter: Filter| {
            let (done, joined) = tokio::sync::oneshot::channel();
            let join = Join {
                topics: vec![("cdc.order".into(), filter)],
                outbound: Arc::clone(&client),
                since: None,
                snapshot: true,
                ack: Box::new(|topic, found, rows| {
                    reply::subscribed(topic, &found.position, None, rows, None)
                }),
                done,
            };
            (join, joined)
        };
        for _ in 0..2 {
            let (join, joined) = snapshot(Filter::default());
            fanout.join(join).await;
            assert!(joined.await.unwrap().is_ok());
        }
        assert_eq!(
            metrics.backlog_rows.get(),
            20,
            "two snapshots of 10 rows owed"
        );
        let (join, joined) = snapshot(Filter::default());
        fanout.join(join).await;
        assert!(
            matches!(
                joined.await.unwrap(),
                Err(JoinRefused::BacklogFull {
                    rows: 10,
                    held: 20,
                    budget: 25
                })
            ),
            "a third would hold 30 rows"
        );
        // Reading the first backlog (ack, 10 rows, synced) gives its rows back.
        for _ in 0..12 {
            rx.recv().await.unwrap();
        }
        assert_eq!(metrics.backlog_rows.get(), 10);
        let selective = Filter::compile(Some(&serde_json::json!({"entity_id": "3"}))).unwrap();
        let (join, joined) = snapshot(selective);
        fanout.join(join).await;
        assert!(joined.await.unwrap().is_ok(), "10 + 10 rows fit in 25");
        // The second backlog read whole, then the selective one's ack: its 9 filtered-out
        // rows are given back as it is built, its one row once its rows are all written.
        for _ in 0..13 {
            rx.recv().await.unwrap();
        }
        assert_eq!(metrics.backlog_rows.get(), 1);
        let row: serde_json::Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(row["payload"]["entity_id"], "3");
        let synced: serde_json::Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(synced["type"], "synced");
        assert_eq!(metrics.backlog_rows.get(), 0);
        drop(rx);
        assert_eq!(metrics.backlog_rows.get(), 0);
    }

    #[tokio::test]
    async fn an_update_that_moves_a_row_out_of_a_filter_is_a_leave_event() {
        let (fanout, index, _) = fanout(SlowClientPolicy::Close, 100);
        let (new_only, mut rx_new) = Outbound::new(1, 4);
        let (all, mut rx_all) = Outbound::new(2, 4);
        let filter = Filter::compile(Some(&json!({"data.status": "new"}))).unwrap();
        index.subscribe("cdc.order", &new_only, Arc::new(filter));
        index.subscribe("cdc.order", &all, Arc::new(Filter::default()));
        let mut shipped = event("7", 3);
        shipped.operation = Operation::Update;
        shipped.before = Some(json!({"id": "7", "status": "new"}).into());
        shipped.data = Some(json!({"id": "7", "status": "shipped"}).into());
        fanout.dispatch(shipped.clone()).await;
        let left: Value = serde_json::from_slice(&rx_new.recv().await.unwrap()).unwrap();
        assert_eq!(left["leave"], true);
        assert_eq!(left["payload"]["data"]["status"], "shipped");
        let live: Value = serde_json::from_slice(&rx_all.recv().await.unwrap()).unwrap();
        assert_eq!(live.get("leave"), None);
        // Once out, later updates of the row are neither data nor leave events.
        let mut again = shipped.clone();
        again.position.offset = 4;
        again.before = again.data.clone();
        fanout.dispatch(again).await;
        assert!(rx_new.try_recv().is_none());
    }

    fn join_of(
        outbound: &Arc<Outbound>,
        since: Option<Position>,
    ) -> (
        Join,
        tokio::sync::oneshot::Receiver<Result<Joined, JoinRefused>>,
    ) {
        let (done, joined) = tokio::sync::oneshot::channel();
        let join = Join {
            topics: vec![("cdc.order".into(), Filter::default())],
            outbound: Arc::clone(outbound),
            since,
            snapshot: false,
            ack: Box::new(|topic, found, _| {
                reply::subscribed(topic, &found.position, found.recovered, None, None)
            }),
            done,
        };
        (join, joined)
    }

    #[tokio::test]
    async fn a_resume_is_recovered_only_when_every_partition_read_is_covered() {
        use crate::position::Partition;
        let (fanout, _index, _) = fanout(SlowClientPolicy::Close, 100);
        let fanout = fanout.with_history(Arc::new(History::new(history::Limits {
            per_entity: 100,
            max_age: Duration::from_secs(60),
            budget_bytes: usize::MAX,
        })));
        let (p0, p1) = (
            Partition::new("cdc.events", 0),
            Partition::new("cdc.events", 1),
        );
        for p in [p0, p1] {
            fanout.dispatched.start(p, 0);
            fanout.history.cover(p, 0);
        }
        for offset in 0..3 {
            fanout.dispatch(event(&offset.to_string(), offset)).await;
        }
        let (client, mut rx) = Outbound::new(1, 16);
        let since = Position::from([(p0, -1), (p1, 0)]);
        let (join, joined) = join_of(&client, Some(since));
        fanout.join(join).await;
        let joined = joined.await.unwrap().unwrap();
        assert_eq!(joined.recovered, Some(true));
        assert_eq!(joined.position, Position::from([(p0, -1), (p1, 2)]));
        let ack: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(ack["recovered"], true);
        assert_eq!(
            ack["position"],
            json!({"cdc.events:0": -1, "cdc.events:1": 2})
        );
        let offsets: Vec<i64> = [rx.recv().await.unwrap(), rx.recv().await.unwrap()]
            .iter()
            .map(|m| {
                serde_json::from_slice::<Value>(m).unwrap()["offset"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(offsets, vec![1, 2], "the missed events, after the ack");
        assert!(rx.try_recv().is_none());

        let (other, mut rx_other) = Outbound::new(2, 16);
        let (join, joined) = join_of(&other, Some(Position::from([(p1, 0)])));
        fanout.join(join).await;
        assert_eq!(
            joined.await.unwrap().unwrap().recovered,
            Some(false),
            "partition 0 was not named: its missed events could not be proven absent"
        );
        let ack: Value = serde_json::from_slice(&rx_other.recv().await.unwrap()).unwrap();
        assert_eq!(ack["recovered"], false);
        assert!(rx_other.try_recv().is_none(), "nothing replayed");
    }

    /// Debezium restarted after a crash sends what it had not committed again, as new Kafka
    /// records with the same log positions.
    #[tokio::test]
    async fn a_change_the_connector_sends_again_reaches_nobody_twice() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Close, 100);
        let fanout = fanout.with_tables(Arc::new(Tables::temporary()));
        let (client, mut rx) = Outbound::new(1, 16);
        index.subscribe("cdc.order", &client, Arc::new(Filter::default()));
        let change = |id: &str, offset, lsn| {
            let mut e = event(id, offset);
            e.operation = Operation::Update;
            e.source_lsn = Some(lsn);
            e
        };
        for (offset, lsn) in [(1, 100), (2, 200), (3, 300)] {
            fanout.dispatch(change("7", offset, lsn)).await;
        }
        // The restart: offsets 4 and 5 repeat LSNs 200 and 300; 6 is new. Row 8 was never
        // seen: its first change is delivered whatever its LSN.
        for (id, offset, lsn) in [("7", 4, 200), ("7", 5, 300), ("8", 6, 50), ("7", 7, 301)] {
            fanout.dispatch(change(id, offset, lsn)).await;
        }
        let mut got = Vec::new();
        while let Some(m) = rx.try_recv() {
            got.push(
                serde_json::from_slice::<Value>(&m).unwrap()["offset"]
                    .as_i64()
                    .unwrap(),
            );
        }
        assert_eq!(got, vec![1, 2, 3, 6, 7]);
        assert_eq!(metrics.source_replays.get(), 2);
        assert_eq!(
            fanout.dispatched.snapshot(),
            Position::from([(crate::position::Partition::new("cdc.events", 1), 7)]),
            "the replays' offsets count as dispatched"
        );
    }

    /// Postgres' default REPLICA IDENTITY: an update has no `before`, a delete's `before`
    /// holds the key with defaults elsewhere, an unchanged TOASTed column is a placeholder.
    #[tokio::test]
    async fn row_state_stands_in_for_the_images_debezium_leaves_out() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Close, 100);
        let fanout = fanout.with_tables(Arc::new(Tables::temporary()));
        let (acme, mut rx) = Outbound::new(1, 16);
        let claim = Filter::compile(Some(&json!({"row.tenant": "acme"}))).unwrap();
        index.subscribe(
            "cdc.order",
            &acme,
            Arc::new(Filter::default().confined_by(&claim)),
        );
        let (big, mut rx_big) = Outbound::new(2, 16);
        let over = Filter::compile(Some(&json!({"data.amount": {"gte": 500}}))).unwrap();
        index.subscribe("cdc.order", &big, Arc::new(over));
        let change = |id: &str, offset, operation, data: Option<Value>, before: Option<Value>| {
            let mut e = event(id, offset);
            e.operation = operation;
            e.data = data.map(Row::from);
            e.before = before.map(Row::from);
            e
        };
        let note = "x".repeat(40);
        fanout
            .dispatch(change(
                "7",
                1,
                Operation::Insert,
                Some(json!({"id": 7, "tenant": "acme", "amount": 900, "note": note})),
                None,
            ))
            .await;
        fanout
            .dispatch(change(
                "8",
                2,
                Operation::Insert,
                Some(json!({"id": 8, "tenant": "acme", "amount": 10, "note": "n"})),
                None,
            ))
            .await;
        for rx in [&mut rx, &mut rx_big] {
            while rx.try_recv().is_some() {}
        }
        // Row 7 leaves the amount filter, TOASTed note unchanged: no before.
        fanout
            .dispatch(change("7", 3, Operation::Update,
                Some(json!({"id": 7, "tenant": "acme", "amount": 5, "note": crate::event::UNAVAILABLE})), None))
            .await;
        let left: Value = serde_json::from_slice(&rx_big.recv().await.unwrap()).unwrap();
        assert_eq!(left["leave"], true, "{left}");
        assert_eq!(left["payload"]["before"]["amount"], 900);
        let live: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(
            live["payload"]["data"]["note"],
            note.as_str(),
            "the last known value"
        );
        // Row 7 moves to globex: the acme token's table must drop it.
        fanout
            .dispatch(change(
                "7",
                4,
                Operation::Update,
                Some(json!({"id": 7, "tenant": "globex", "amount": 5, "note": "secret"})),
                None,
            ))
            .await;
        let gone: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(gone["leave"], true, "{gone}");
        assert_eq!(
            gone["payload"]["data"],
            Value::Null,
            "globex's image stays hidden"
        );
        // Row 8 is deleted: its before is the key and defaults.
        fanout
            .dispatch(change(
                "8",
                5,
                Operation::Delete,
                None,
                Some(json!({"id": 8, "tenant": "", "amount": 0, "note": ""})),
            ))
            .await;
        let deleted: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(deleted["payload"]["operation"], "delete");
        assert_eq!(deleted["payload"]["before"]["tenant"], "acme");
        // A row the gateway never saw: nothing is guessed.
        fanout
            .dispatch(change("9", 6, Operation::Update,
                Some(json!({"id": 9, "tenant": "acme", "amount": 1, "note": crate::event::UNAVAILABLE})), None))
            .await;
        let unknown: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(unknown["payload"]["before"], Value::Null);
        assert_eq!(
            unknown["payload"]["data"].get("note"),
            None,
            "a placeholder is never data"
        );
        let count = |result: &str| metrics.row_images.with_label_values(&[result]).get();
        assert_eq!(
            [
                count("before_known"),
                count("before_unknown"),
                count("toast_filled"),
                count("toast_unknown")
            ],
            [3, 1, 1, 1]
        );
        assert!(rx.try_recv().is_none() && rx_big.try_recv().is_none());
    }

    #[tokio::test]
    async fn claims_hide_the_other_tenants_image_of_a_row_that_moves() {
        let (fanout, index, _) = fanout(SlowClientPolicy::Close, 100);
        let (acme, mut rx) = Outbound::new(1, 4);
        let claim = Filter::compile(Some(&json!({"data.tenant": "acme"}))).unwrap();
        let filter = Filter::default().confined_by(&claim);
        index.subscribe("cdc.order", &acme, Arc::new(filter));
        let moved = |offset, from: &str, to: &str| {
            let mut e = event("7", offset);
            e.operation = Operation::Update;
            e.before = Some(json!({"id": "7", "tenant": from, "secret": from}).into());
            e.data = Some(json!({"id": "7", "tenant": to, "secret": to}).into());
            e
        };
        fanout.dispatch(moved(1, "globex", "acme")).await;
        let arrived: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(arrived["payload"]["data"]["tenant"], "acme");
        assert_eq!(
            arrived["payload"]["before"],
            Value::Null,
            "where the row came from is globex's"
        );
        fanout.dispatch(moved(2, "acme", "globex")).await;
        let left: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(left["leave"], true);
        assert_eq!(
            left["payload"]["data"],
            Value::Null,
            "where it went is globex's"
        );
        assert_eq!(left["payload"]["before"]["tenant"], "acme");
    }

    #[tokio::test]
    async fn a_replay_carries_the_leave_events_the_client_missed() {
        use crate::position::Partition;
        let (fanout, _index, _) = fanout(SlowClientPolicy::Close, 100);
        let fanout = fanout.with_history(Arc::new(History::new(history::Limits {
            per_entity: 100,
            max_age: Duration::from_secs(60),
            budget_bytes: usize::MAX,
        })));
        let p1 = Partition::new("cdc.events", 1);
        fanout.dispatched.start(p1, 0);
        fanout.history.cover(p1, 0);
        let mut shipped = event("7", 0);
        shipped.operation = Operation::Update;
        shipped.before = Some(json!({"id": "7", "status": "new"}).into());
        shipped.data = Some(json!({"id": "7", "status": "shipped"}).into());
        fanout.dispatch(shipped).await;
        let (client, mut rx) = Outbound::new(1, 16);
        let (mut join, joined) = join_of(&client, Some(Position::from([(p1, -1)])));
        join.topics = vec![(
            "cdc.order".into(),
            Filter::compile(Some(&json!({"data.status": "new"}))).unwrap(),
        )];
        fanout.join(join).await;
        assert_eq!(joined.await.unwrap().unwrap().recovered, Some(true));
        rx.recv().await.unwrap();
        let missed: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(
            (&missed["offset"], &missed["leave"]),
            (&json!(0), &json!(true)),
            "the row left the filter while the client was away"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_clients_are_waited_for_together() {
        let (fanout, index, metrics) = fanout(SlowClientPolicy::Close, 1000);
        let mut receivers = Vec::new();
        for id in 0..3 {
            let (stalled, rx) = Outbound::new(id, 1);
            index.subscribe("cdc.order", &stalled, Arc::new(Filter::default()));
            receivers.push((stalled, rx));
        }
        fanout.dispatch(event("1", 1)).await;
        let started = Instant::now();
        fanout.dispatch(event("2", 2)).await;
        let held = started.elapsed();
        assert!(
            held >= Duration::from_millis(1000) && held < Duration::from_millis(1500),
            "three stalled clients held dispatch {held:?}, one grace period at most"
        );
        for (stalled, _) in &receivers {
            assert_eq!(stalled.closed().await, CloseCode::SlowConsumer);
        }
        assert_eq!(
            metrics
                .drops
                .with_label_values(&["slow_consumer_closed"])
                .get(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_slower_than_the_minimum_rate_is_closed_a_steady_one_is_not() {
        let (fanout, index, _) = fanout(SlowClientPolicy::Close, 1000);
        let fanout = fanout
            .with_min_drain_rate(10.0)
            .with_max_stall(Duration::from_secs(60));
        let reader = |every_ms: u64, mut rx: crate::queue::Receiver| {
            tokio::spawn(async move {
                while rx.recv().await.is_some() {
                    tokio::time::sleep(Duration::from_millis(every_ms)).await;
                }
            })
        };
        let (trickler, rx_trickler) = Outbound::new(1, 4);
        let (steady, rx_steady) = Outbound::new(2, 4);
        index.subscribe("cdc.order", &trickler, Arc::new(Filter::default()));
        index.subscribe("cdc.order", &steady, Arc::new(Filter::default()));
        let _trickle = reader(400, rx_trickler); // 2.5 a second: below 10
        let _steady = reader(50, rx_steady); // 20 a second: keeps up, slowly
        for i in 0..60 {
            fanout.dispatch(event(&i.to_string(), i)).await;
        }
        assert_eq!(trickler.closed().await, CloseCode::SlowConsumer);
        assert!(!steady.is_closing(), "a steady reader rides out the burst");
    }

    /// Issue 20.7: renewed windows once let a reader just above the minimum rate pace every
    /// dispatch to its own for as long as a burst lasted. One stall holds dispatch for
    /// `max_stall` at most (by default the grace period), however steadily the client reads.
    #[tokio::test(start_paused = true)]
    async fn a_steady_reader_holds_dispatch_no_longer_than_the_stall_bound() {
        for (max_stall, bound) in [(None, 1000), (Some(3000), 3000)] {
            let (fanout, index, _) = fanout(SlowClientPolicy::Close, 1000);
            let mut fanout = fanout.with_min_drain_rate(10.0);
            if let Some(ms) = max_stall {
                fanout = fanout.with_max_stall(Duration::from_millis(ms));
            }
            let (steady, mut rx) = Outbound::new(1, 4);
            index.subscribe("cdc.order", &steady, Arc::new(Filter::default()));
            // 20 a second: above the minimum rate, far below the burst's.
            let _reader = tokio::spawn(async move {
                while rx.recv().await.is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let started = Instant::now();
            let mut i = 0;
            while !steady.is_closing() {
                fanout.dispatch(event(&i.to_string(), i)).await;
                i += 1;
                assert!(i < 10_000, "the steady reader was never closed");
            }
            let held = started.elapsed();
            assert!(
                held >= Duration::from_millis(bound) && held < Duration::from_millis(bound + 300),
                "max stall {max_stall:?}: dispatch held {held:?}, bound {bound} ms"
            );
            assert_eq!(steady.closed().await, CloseCode::SlowConsumer);
        }
    }
}
