//! Wiring: builds every stage from the configuration, runs the consumer and the server side by
//! side, and holds the state they share. The data path it assembles reads top to bottom:
//! Kafka -> decode -> index lookup -> filter -> serialize once -> per-connection queue -> socket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::Config;
use crate::fanout::{FanOut, Join, Joined};
use crate::health::Health;
use crate::history::{self, History};
use crate::index::{Filter, TopicIndex};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::position::{Dispatched, Position, PositionError, Resolver};
use crate::protocol::reply;
use crate::snapshot::LastValues;
use crate::ws::SessionSettings;

/// Snapshot and resume subscriptions waiting for the consumer task; more make their sessions
/// wait.
const JOIN_QUEUE: usize = 256;

/// State shared by the HTTP side and every WebSocket session.
pub struct Shared {
    pub index: Arc<TopicIndex>,
    pub metrics: Arc<Metrics>,
    /// What the consumer task has dispatched, per partition read.
    pub dispatched: Arc<Dispatched>,
    pub health: Arc<Health>,
    pub settings: SessionSettings,
    /// One permit per allowed connection (`--max-connections`).
    pub connection_slots: Arc<Semaphore>,
    /// Cancelled when sessions must close with 1001.
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for them to finish closing.
    pub sessions: TaskTracker,
    /// Serves the demo page at `/` (only under `cdc-gateway demo`).
    pub demo_page: bool,
    /// Checks tokens under `--auth jwt`; `None` under `--auth none`.
    pub verifier: Option<Verifier>,
    /// Subscriptions, for the consumer task to serve between two records.
    pub joins: tokio::sync::mpsc::Sender<Join>,
    next_connection_id: AtomicU64,
}

impl Shared {
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Resolves a client's position against the partitions the gateway reads.
    pub fn resolve_since(&self, since: &Value) -> Result<Position, PositionError> {
        Resolver::new(&self.dispatched.snapshot()).json(since)
    }

    /// Subscribes `outbound` to `topics` through the consumer task, which queues each topic's
    /// ack (with the dispatched position), the snapshot rows or the missed events when asked
    /// (protocol section 7), then enters the subscriptions into the index, between two
    /// records: no gap and no repeat between what the ack says and what follows. `None` when
    /// the consumer task is gone (shutdown).
    pub async fn join(
        &self,
        topics: Vec<(String, Filter)>,
        outbound: &Arc<Outbound>,
        since: Option<Position>,
        snapshot: bool,
        id: Option<&Value>,
    ) -> Option<Joined> {
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

    /// Takes a closing connection's subscriptions out of the index, and out of the metrics.
    pub fn release_subscriptions(
        &self,
        connection_id: u64,
        topics: impl IntoIterator<Item = String>,
    ) {
        for topic in topics {
            self.index.unsubscribe(&topic, connection_id);
            self.metrics.subscriptions_active.dec();
        }
        self.metrics
            .topics_active
            .set(self.index.topic_count() as i64);
    }
}

impl SessionSettings {
    fn from_config(config: &Config) -> Self {
        Self {
            max_subscriptions: config.max_subscriptions as usize,
            max_message_size: config.max_message_size as usize,
            outbound_queue: config.outbound_queue as usize,
            idle_timeout: config.idle_timeout,
            ping_interval: config.ping_interval,
            app_ping_interval: Some(config.app_ping_interval).filter(|d| !d.is_zero()),
            rate_limit: config.client_rate_limit,
            rate_burst: config.client_rate_burst,
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

/// Runs the gateway until SIGTERM or SIGINT, then shuts down in order.
pub async fn run(config: Config, demo_page: bool) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(Arc::clone(&metrics)));
    let index = Arc::new(TopicIndex::new());
    let dispatched = Arc::new(Dispatched::default());
    let fanout = FanOut::new(
        Arc::clone(&index),
        Arc::clone(&metrics),
        Arc::clone(&dispatched),
        config.slow_client_policy,
        config.slow_client_grace,
    )
    .with_last_values(Arc::new(LastValues::new(config.snapshot_rows as usize)))
    .with_history(Arc::new(History::new(history::Limits {
        per_entity: config.history_events as usize,
        max_age: config.history_max_age,
        budget_bytes: (config.history_budget_mib as usize).saturating_mul(1 << 20),
    })));
    let (joins, joins_served) = tokio::sync::mpsc::channel(JOIN_QUEUE);
    let ingest = Ingest::new(&config, fanout, Arc::clone(&health), Arc::clone(&metrics))?;
    raise_open_file_limit(config.max_connections);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        brokers = config.brokers,
        topics = ?config.source_topics,
        group = config.group_id,
        "cdc-gateway {} serving",
        env!("CARGO_PKG_VERSION")
    );

    let shared = Arc::new(Shared {
        index,
        metrics,
        dispatched,
        health: Arc::clone(&health),
        settings: SessionSettings::from_config(&config),
        connection_slots: Arc::new(Semaphore::new(config.max_connections as usize)),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        demo_page,
        verifier: Verifier::from_config(&config)?,
        joins,
        next_connection_id: AtomicU64::new(1),
    });
    let stop_accepting = CancellationToken::new();
    let stop_consuming = CancellationToken::new();
    let server = tokio::spawn(crate::http::serve(
        listener,
        Arc::clone(&shared),
        stop_accepting.clone(),
    ));
    let consumer = tokio::spawn(ingest.run(stop_consuming.clone(), joins_served));

    crate::shutdown::signal().await;
    crate::shutdown::drain(crate::shutdown::Drain {
        shared: &shared,
        delay: config.shutdown_delay,
        timeout: config.drain_timeout.max(Duration::from_millis(100)),
        stop_accepting,
        stop_consuming,
        server,
        consumer,
    })
    .await;
    Ok(())
}

/// Each connection is a file descriptor: lift the soft limit to the hard one (as most servers
/// do) and say so when even that cannot hold `--max-connections`.
fn raise_open_file_limit(max_connections: u32) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
        let limit = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
            limit.rlim_cur
        };
        // Kafka sockets, the listener and a margin besides the connections.
        let needed = u64::from(max_connections) + 256;
        if (limit as u64) < needed {
            tracing::warn!(
                open_file_limit = limit,
                max_connections,
                "the open-file limit cannot hold --max-connections; connections beyond it will fail to be accepted"
            );
        }
    }
}
