//! The state every connection shares, below the transports: the topic index, metrics,
//! health, the dispatched position, the connection slots, the token verifier, and the queue of
//! subscriptions for the consumer task to serve. WebSocket sessions and SSE streams reach it
//! only through the connection core ([`crate::connection`]); `gateway` builds it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::Config;
use crate::fanout::{Join, JoinRefused, Joined};
use crate::health::Health;
use crate::index::{Filter, TopicIndex};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::position::{Dispatched, Position};
use crate::protocol::reply;

/// Subscriptions waiting for the consumer task; more make their connections wait.
pub const JOIN_QUEUE: usize = 256;

/// The client address of a request's connection (a request extension), for per-address
/// limits.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// The `--max-http-connections` permit of one socket, held until the connection ends or
/// becomes a session or stream, which count against `--max-connections` instead: a socket
/// holding an endless `/sse` response must not take the slot a health probe needs.
#[derive(Clone)]
pub struct HttpSlot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl HttpSlot {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(permit))))
    }

    /// Gives the permit back: the connection is a session or stream from now on.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Per-connection limits and timers, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_subscriptions: usize,
    pub max_message_size: usize,
    pub outbound_queue: usize,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    /// `None`: no JSON heartbeats.
    pub app_ping_interval: Option<Duration>,
    pub rate_limit: u32,
    pub rate_burst: u32,
    /// How long a connection's queues may stay full before it is closed as a slow consumer.
    pub slow_client_grace: Duration,
    /// Under `--auth jwt`: how long a connection without a token has to send `auth`.
    pub auth_timeout: Duration,
    /// Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// 0: no limit.
    pub max_connections_per_ip: u32,
    /// Bound on reading an HTTP request head (slowloris, idle keep-alive sockets).
    pub header_read_timeout: Duration,
    /// Bounds on one subscription's filters.
    pub filter_limits: crate::index::filter::Limits,
    /// Entries a `since` may have beyond the partitions read.
    pub since_margin: usize,
}

/// State shared by the HTTP side and every connection.
pub struct Hub {
    pub index: Arc<TopicIndex>,
    pub metrics: Arc<Metrics>,
    /// What the consumer task has dispatched, per partition read.
    pub dispatched: Arc<Dispatched>,
    pub health: Arc<Health>,
    pub settings: Settings,
    /// One permit per allowed connection (`--max-connections`).
    pub connection_slots: Arc<Semaphore>,
    /// One permit per connection waiting for its token (`--max-pending-auth`).
    pub pending_auth_slots: Arc<Semaphore>,
    /// One permit per socket that is not a session or stream yet (`--max-http-connections`).
    pub http_slots: Arc<Semaphore>,
    /// Connections per client address, when `--max-connections-per-ip` is set.
    pub per_address: dashmap::DashMap<std::net::IpAddr, u32>,
    /// Cancelled when sessions must close with 1001.
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for them to finish closing.
    pub sessions: TaskTracker,
    /// Serves the demo page at `/` (only under `cdc-gateway demo`).
    pub demo_page: bool,
    /// Terminates TLS on the port (`--tls-cert`, `--tls-key`); `None`: plain TCP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Checks tokens under `--auth jwt`; `None` under `--auth none`.
    pub verifier: Option<Verifier>,
    /// Subscriptions, for the consumer task to serve between two records.
    pub joins: tokio::sync::mpsc::Sender<Join>,
    /// Who watches which topic, over every replica.
    pub presence: Arc<crate::presence::Presence>,
    pub(crate) next_connection_id: AtomicU64,
}

impl Hub {
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes `outbound` to `topics` through the consumer task, which queues each topic's
    /// ack (with the dispatched position), the snapshot rows or the missed events when asked
    /// (protocol sections 7.2 and 7.3), then enters the subscriptions into the index, between two
    /// records: no gap and no repeat between what the ack says and what follows. `None` when
    /// the consumer task is gone (shutdown); `Some(Err)` when the join was refused.
    pub async fn join(
        &self,
        topics: Vec<(String, Filter)>,
        outbound: &Arc<Outbound>,
        since: Option<Position>,
        snapshot: bool,
        id: Option<&Value>,
    ) -> Option<Result<Joined, JoinRefused>> {
        let (done, joined) = tokio::sync::oneshot::channel();
        let id = id.cloned();
        let join = Join {
            topics,
            outbound: Arc::clone(outbound),
            since,
            snapshot,
            ack: Box::new(move |topic, found: &Joined, rows| {
                reply::subscribed(topic, &found.position, found.recovered, rows, id.as_ref())
            }),
            done,
        };
        self.joins.send(join).await.ok()?;
        joined.await.ok()
    }
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_subscriptions: config.max_subscriptions as usize,
            max_message_size: config.max_message_size as usize,
            outbound_queue: config.outbound_queue as usize,
            idle_timeout: config.idle_timeout,
            ping_interval: config.ping_interval,
            app_ping_interval: Some(config.app_ping_interval).filter(|d| !d.is_zero()),
            rate_limit: config.client_rate_limit,
            rate_burst: config.client_rate_burst,
            header_read_timeout: config.header_read_timeout,
            filter_limits: config.filter_limits(),
            since_margin: config.since_margin as usize,
            max_connections_per_ip: config.max_connections_per_ip,
            slow_client_grace: config.slow_client_grace,
            auth_timeout: config.auth_timeout,
            allowed_origins: config
                .allowed_origins
                .iter()
                .filter(|o| !o.is_empty())
                .cloned()
                .collect(),
        }
    }
}
