//! The connection core that WebSocket sessions and SSE streams share, so that admission,
//! authorization and subscription are written once and a fix to one is a fix to both. A
//! transport asks [`admit`] whether a request may connect, opens a [`Connection`] with what
//! it was granted, and calls [`Connection::authorize`], [`Connection::subscribe`] and
//! [`Connection::unsubscribe`]; it only maps the [`Refusal`]s and [`SubscribeError`]s to
//! close codes, error messages or HTTP statuses, and the queued messages to frames or
//! `data:` lines. Dropping the connection releases its subscriptions, slot and gauges.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::auth::{AuthError, Grant};
use crate::event::GatewayTopic;
use crate::fanout::Joined;
use crate::hub::{Hub, Peer};
use crate::index::filter::Limits;
use crate::index::Filter;
use crate::outbound::Outbound;
use crate::position::{Position, Resolver};
use crate::protocol::ErrorCode;
use crate::queue;

/// Why a request may not connect.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("origin not allowed")]
    Origin,
    #[error("a token is required: `Authorization: Bearer <JWT>` or `token=<JWT>`")]
    TokenRequired,
    #[error("{0}")]
    Token(AuthError),
    #[error("too many connections")]
    TooManyConnections,
    #[error("too many connections waiting for a token")]
    TooManyPendingAuth,
    #[error("too many connections from this address")]
    TooManyFromAddress,
}

impl Refusal {
    /// The label of `cdc_gateway_connections_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Origin => "origin",
            Refusal::TokenRequired => "token_required",
            Refusal::Token(_) => "token",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::TooManyPendingAuth => "too_many_pending_auth",
            Refusal::TooManyFromAddress => "too_many_from_address",
        }
    }
}

/// Where a connection stands with authentication.
pub enum Access {
    /// `--auth none`: everything is allowed.
    Open,
    /// `--auth jwt` without a token yet: it must come in an `auth` message by the deadline.
    Pending(Instant),
    /// A verified token's grant, until it expires.
    Granted(Grant),
}

/// How a transport takes a token that the request did not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLater {
    /// In an `auth` message within `--auth-timeout` (WebSocket).
    Allowed,
    /// Never: the request must carry it (SSE).
    Refused,
}

/// What admission granted: the slots the connection holds and its access.
pub struct Admitted {
    limits: Limits,
    slot: OwnedSemaphorePermit,
    /// Held while the connection waits for its token.
    pending: Option<OwnedSemaphorePermit>,
    address: Option<AddressSlot>,
    access: Access,
}

/// One connection counted against its client address; uncounted on drop.
struct AddressSlot {
    hub: Arc<Hub>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.hub
            .per_address
            .remove_if_mut(&self.address, |_, count| {
                *count -= 1;
                *count == 0
            });
    }
}

/// Decides whether `request` may connect: the gateway is not shutting down, its `Origin` is
/// allowed, its token (header or `token` parameter) is valid, and there is a connection slot,
/// a slot among those waiting for a token (when it has none yet) and room for its address.
/// Every refusal is counted by reason.
pub fn admit<B>(
    hub: &Arc<Hub>,
    request: &Request<B>,
    later: TokenLater,
) -> Result<Admitted, Refusal> {
    admit_unmetered(hub, request, later).inspect_err(|refusal| {
        hub.metrics
            .connections_refused
            .with_label_values(&[refusal.reason()])
            .inc();
    })
}

fn admit_unmetered<B>(
    hub: &Arc<Hub>,
    request: &Request<B>,
    later: TokenLater,
) -> Result<Admitted, Refusal> {
    if hub.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    if !origin_allowed(hub, request) {
        return Err(Refusal::Origin);
    }
    let access = match (&hub.verifier, crate::auth::request_token(request), later) {
        (None, _, _) => Access::Open,
        (Some(verifier), Some(token), _) => {
            Access::Granted(verifier.verify(&token).map_err(Refusal::Token)?)
        }
        (Some(_), None, TokenLater::Allowed) => {
            Access::Pending(Instant::now() + hub.settings.auth_timeout)
        }
        (Some(_), None, TokenLater::Refused) => return Err(Refusal::TokenRequired),
    };
    let slot = Arc::clone(&hub.connection_slots)
        .try_acquire_owned()
        .map_err(|_| Refusal::TooManyConnections)?;
    let pending = match access {
        Access::Pending(_) => Some(
            Arc::clone(&hub.pending_auth_slots)
                .try_acquire_owned()
                .map_err(|_| Refusal::TooManyPendingAuth)?,
        ),
        _ => None,
    };
    let address = match request.extensions().get::<Peer>() {
        Some(Peer(address)) if hub.settings.max_connections_per_ip > 0 => {
            let mut count = hub.per_address.entry(*address).or_insert(0);
            if *count >= hub.settings.max_connections_per_ip {
                return Err(Refusal::TooManyFromAddress);
            }
            *count += 1;
            Some(AddressSlot {
                hub: Arc::clone(hub),
                address: *address,
            })
        }
        _ => None,
    };
    Ok(Admitted {
        limits: hub.settings.filter_limits,
        slot,
        pending,
        address,
        access,
    })
}

/// With `--allowed-origins` set, a browser's request must come from one of them. A request
/// without `Origin` is not a browser's (browsers always send it on WebSocket upgrades and
/// cross-origin requests): the check defends pages, and other clients could forge it anyway.
fn origin_allowed<B>(hub: &Hub, request: &Request<B>) -> bool {
    let allowed = &hub.settings.allowed_origins;
    match request.headers().get(hyper::header::ORIGIN) {
        _ if allowed.is_empty() => true,
        None => true,
        Some(origin) => origin
            .to_str()
            .is_ok_and(|origin| allowed.iter().any(|a| a == origin)),
    }
}

/// Why a subscribe was refused; the connection and its other subscriptions stay.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeError {
    pub code: ErrorCode,
    pub message: String,
    pub topic: Option<String>,
}

impl SubscribeError {
    fn new(code: ErrorCode, message: impl Into<String>, topic: &str) -> Self {
        Self {
            code,
            message: message.into(),
            topic: Some(topic.to_owned()),
        }
    }
}

/// A position as a transport received it.
pub enum Since<'a> {
    /// A WebSocket `since` object.
    Json(&'a Value),
    /// An SSE `Last-Event-ID` or `since` parameter.
    EventId(&'a str),
}

impl Admitted {
    /// The compiled filter of a subscription to `topic`, before the connection opens.
    pub fn filter(&self, topic: &str, filters: Option<&Value>) -> Result<Filter, SubscribeError> {
        compile(&self.access, &self.limits, topic, filters)
    }
}

/// The compiled filter of a subscription to `topic`: the topic is a gateway topic, the access
/// allows it, and the client's filters (ANDed with the token's claim filters) are valid.
fn compile(
    access: &Access,
    limits: &Limits,
    topic: &str,
    filters: Option<&Value>,
) -> Result<Filter, SubscribeError> {
    if let Err(why) = GatewayTopic::parse(topic) {
        return Err(SubscribeError::new(ErrorCode::InvalidTopic, why, topic));
    }
    let compiled = match access {
        Access::Pending(_) => {
            return Err(SubscribeError::new(
                ErrorCode::Unauthenticated,
                r#"send {"action":"auth","token":"<JWT>"} first"#,
                topic,
            ))
        }
        Access::Granted(grant) if !grant.allows(topic) => {
            return Err(SubscribeError::new(
                ErrorCode::Forbidden,
                "the token's `topics` claim does not cover this topic",
                topic,
            ))
        }
        Access::Granted(grant) => {
            Filter::compile_within(filters, limits).map(|own| grant.confine_compiled(topic, own))
        }
        Access::Open => Filter::compile_within(filters, limits),
    };
    compiled.map_err(|e| SubscribeError::new(ErrorCode::InvalidFilter, e.to_string(), topic))
}

/// How long a resume waits for the consumer to list its partitions (a client that reconnects
/// the moment a restarted gateway opens its port) before its position is checked anyway.
/// They are listed once the start-up read has brought the tables up to the partitions'
/// starts, which for a new replica of a large table takes minutes: a valid position must
/// not be refused meanwhile (the large-table oracle run found resumes refused after 30 s).
const LISTING_WAIT: Duration = Duration::from_secs(900);

/// Resolves a client's position against the partitions the gateway reads, once it knows them.
pub async fn resolve(hub: &Hub, since: Since<'_>) -> Result<Position, SubscribeError> {
    let _ = tokio::time::timeout(LISTING_WAIT, hub.dispatched.listed()).await;
    let read = hub.dispatched.snapshot();
    let resolver = Resolver::new(&read, hub.settings.since_margin);
    match since {
        Since::Json(value) => resolver.json(value),
        Since::EventId(text) => resolver.event_id(text),
    }
    .map_err(|e| SubscribeError {
        code: ErrorCode::InvalidMessage,
        message: e.to_string(),
        topic: None,
    })
}

/// One admitted connection: its queue, its subscriptions and its access.
pub struct Connection {
    hub: Arc<Hub>,
    outbound: Arc<Outbound>,
    subscriptions: HashSet<String>,
    access: Access,
    _slot: OwnedSemaphorePermit,
    /// Held until the first valid token.
    pending: Option<OwnedSemaphorePermit>,
    _address: Option<AddressSlot>,
}

impl Connection {
    /// Opens an admitted connection; returns it and the receiving end of its queue.
    pub fn open(hub: Arc<Hub>, admitted: Admitted) -> (Self, queue::Receiver) {
        let id = hub.next_connection_id();
        let (outbound, queue) = Outbound::closed_by(id, hub.settings.outbound_queue, &hub.shutdown);
        hub.metrics.connections_active.inc();
        hub.metrics.connections_total.inc();
        let connection = Connection {
            hub,
            outbound,
            subscriptions: HashSet::new(),
            access: admitted.access,
            _slot: admitted.slot,
            pending: admitted.pending,
            _address: admitted.address,
        };
        (connection, queue)
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// True until a valid token arrives under `--auth jwt`.
    pub fn is_pending(&self) -> bool {
        matches!(self.access, Access::Pending(_))
    }

    /// When access ends: the auth timeout of a connection without a token, or its token's
    /// expiry; `None` under `--auth none`.
    pub fn access_ends(&self) -> Option<(Instant, AccessEnd)> {
        match &self.access {
            Access::Open => None,
            Access::Pending(at) => Some((*at, AccessEnd::NoToken)),
            Access::Granted(grant) => {
                Some((Instant::now() + grant.remaining(), AccessEnd::Expired))
            }
        }
    }

    /// How long the token has left; `None` without one.
    pub fn token_remaining(&self) -> Option<Duration> {
        match &self.access {
            Access::Granted(grant) => Some(grant.remaining()),
            _ => None,
        }
    }

    /// A token from an `auth` message: the first of a connection, or a fresh one whose
    /// claims replace the old ones. Returns the topics the fresh claims no longer cover,
    /// whose subscriptions have ended; the others are confined by the fresh claim filters
    /// from the next event on. Under `--auth none` there is nothing to check.
    pub fn authorize(&mut self, token: &str) -> Result<Vec<String>, AuthError> {
        let Some(verifier) = &self.hub.verifier else {
            return Ok(Vec::new());
        };
        let grant = verifier.verify(token)?;
        // No longer waiting for a token: its place goes to the next connection.
        self.pending = None;
        let revoked: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|topic| !grant.allows(topic))
            .cloned()
            .collect();
        for topic in &revoked {
            self.subscriptions.remove(topic);
            self.release([topic.clone()]);
        }
        let id = self.outbound.id();
        for topic in &self.subscriptions {
            let Some(filter) = self.hub.index.filter(topic, id) else {
                continue;
            };
            let confined = grant.confine_compiled(topic, filter.without_claims());
            if confined != *filter {
                self.hub
                    .index
                    .subscribe(topic, &self.outbound, Arc::new(confined));
            }
        }
        self.access = Access::Granted(grant);
        Ok(revoked)
    }

    /// The compiled filter of a subscription to `topic` ([`compile`]).
    pub fn filter(&self, topic: &str, filters: Option<&Value>) -> Result<Filter, SubscribeError> {
        compile(
            &self.access,
            &self.hub.settings.filter_limits,
            topic,
            filters,
        )
    }

    /// Resolves a client's position ([`resolve`]).
    pub async fn since(&self, since: Since<'_>) -> Result<Position, SubscribeError> {
        resolve(&self.hub, since).await
    }

    /// Subscribes to `topics` (each with its compiled filter) through the consumer task,
    /// which queues each topic's ack, then the snapshot rows or missed events, ahead of the
    /// live events. Subscribing again to a topic replaces its filter. `Ok(None)` when the
    /// gateway is shutting down.
    pub async fn subscribe(
        &mut self,
        topics: Vec<(String, Filter)>,
        since: Option<Position>,
        snapshot: bool,
        id: Option<&Value>,
    ) -> Result<Option<Joined>, SubscribeError> {
        let max = self.hub.settings.max_subscriptions;
        let new: HashSet<&str> = topics
            .iter()
            .map(|(t, _)| t.as_str())
            .filter(|t| !self.subscriptions.contains(*t))
            .collect();
        if self.subscriptions.len() + new.len() > max {
            let topic = topics.first().map(|(t, _)| t.as_str()).unwrap_or_default();
            return Err(SubscribeError::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
                topic,
            ));
        }
        let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
        let first = names.first().cloned().unwrap_or_default();
        let joined = match self
            .hub
            .join(topics, &self.outbound, since, snapshot, id)
            .await
        {
            None => return Ok(None),
            Some(Ok(joined)) => joined,
            Some(Err(refused)) => {
                return Err(SubscribeError::new(
                    ErrorCode::BacklogFull,
                    refused.to_string(),
                    &first,
                ))
            }
        };
        let subject = match &self.access {
            Access::Granted(grant) => grant.subject().map(str::to_owned),
            _ => None,
        };
        for topic in names {
            if self.subscriptions.insert(topic.clone()) {
                self.hub.metrics.subscriptions_active.inc();
                self.hub
                    .presence
                    .join(&topic, self.outbound.id(), subject.as_deref());
            }
        }
        self.count_topics();
        Ok(Some(joined))
    }

    /// Whether this connection may see `topic`'s presence: a topic its token may read (any
    /// topic without auth). `Err` with the reply's code and text otherwise.
    pub fn presence_allowed(&self, topic: &str) -> Result<(), SubscribeError> {
        crate::event::GatewayTopic::parse(topic)
            .map_err(|e| SubscribeError::new(ErrorCode::InvalidTopic, e, topic))?;
        match &self.access {
            Access::Granted(grant) if !grant.allows(topic) => Err(SubscribeError::new(
                ErrorCode::Forbidden,
                "the token's `topics` claim does not cover this topic",
                topic,
            )),
            _ => Ok(()),
        }
    }

    /// Ends the subscription to `topic`; false when there was none.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        if !self.subscriptions.remove(topic) {
            return false;
        }
        self.release([topic.to_owned()]);
        true
    }

    /// Ends every subscription (the connection is closing; later events are not for it).
    pub fn unsubscribe_all(&mut self) {
        let topics: Vec<String> = self.subscriptions.drain().collect();
        self.release(topics);
    }

    fn release(&self, topics: impl IntoIterator<Item = String>) {
        for topic in topics {
            self.hub.index.unsubscribe(&topic, self.outbound.id());
            self.hub.metrics.subscriptions_active.dec();
            self.hub.presence.leave(&topic, self.outbound.id());
        }
        self.count_topics();
    }

    fn count_topics(&self) {
        self.hub
            .metrics
            .topics_active
            .set(self.hub.index.topic_count() as i64);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.unsubscribe_all();
        self.hub.presence.forget(self.outbound.id());
        self.hub.metrics.connections_active.dec();
    }
}

/// Why access ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessEnd {
    /// No token came within the auth timeout.
    NoToken,
    /// The token expired and no fresh one came.
    Expired,
}
