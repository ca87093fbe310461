//! Wiring: builds every stage from the configuration and runs the consumer and the server side
//! by side; the state they share is the [`crate::hub`]. The data path it assembles reads top to bottom:
//! Kafka -> decode -> index lookup -> filter -> serialize once -> per-connection queue -> socket.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::{Config, ConfigError};
use crate::fanout::FanOut;
use crate::health::Health;
use crate::history::{self, History};
use crate::hub::{Hub, Settings, JOIN_QUEUE};
use crate::index::TopicIndex;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::position::Dispatched;
use crate::tables::Tables;

/// What the port serves besides the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// `/ws`, `/sse`, health and metrics.
    ApiOnly,
    /// Also the demo page at `/` (`cdc-gateway demo`).
    Demo,
}

/// A gateway whose configuration is checked: ready to run on a listener.
pub struct Gateway {
    config: Config,
    verifier: Option<Verifier>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pages: Pages,
}

impl Gateway {
    /// Builds what the configuration names beyond flag syntax (the token verifier's keys,
    /// the TLS certificate); an error here is a configuration error (exit status 2).
    pub fn new(config: Config, pages: Pages) -> Result<Self, ConfigError> {
        let verifier = Verifier::from_config(&config)?;
        let tls = crate::tls::acceptor(&config)?;
        Ok(Self {
            config,
            verifier,
            tls,
            pages,
        })
    }

    /// Serves `listener` and consumes Kafka until `shutdown` resolves, then shuts down in
    /// order (readiness, listener, connections with 1001, final commit).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Gateway {
            config,
            verifier,
            tls,
            pages,
        } = self;
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
        .with_min_drain_rate(config.slow_client_min_rate)
        .with_max_stall(config.slow_client_max_stall)
        .with_max_backlog_rows(config.max_backlog_rows as usize)
        .with_tables(Arc::new(
            Tables::open(&config.tables())?.with_metrics(metrics.tables.clone()),
        ))
        .with_history(Arc::new(
            History::new(history::Limits {
                per_entity: config.history_events as usize,
                max_age: config.history_max_age,
                budget_bytes: (config.history_budget_mib as usize).saturating_mul(1 << 20),
            })
            .with_metrics(metrics.history.clone()),
        ));
        let (joins, joins_served) = tokio::sync::mpsc::channel(JOIN_QUEUE);
        let ingest = Ingest::new(&config, fanout, Arc::clone(&health), Arc::clone(&metrics))?;
        raise_open_file_limit(config.max_connections);
        tracing::info!(
            listen = %listener.local_addr()?,
            brokers = config.brokers,
            topics = ?config.source_topics,
            group = config.consumer_group(),
            "cdc-gateway {} serving",
            env!("CARGO_PKG_VERSION")
        );

        // The identity provider's keys, fetched now and kept fresh while the gateway runs.
        let key_set = verifier.as_ref().and_then(|v| v.key_set()).map(|set| {
            set.with_metrics(metrics.jwks_fetches.clone(), metrics.jwks_keys.clone());
            tokio::spawn(Arc::clone(set).run())
        });
        let presence = Arc::new(crate::presence::Presence::new(
            config
                .replica_id
                .clone()
                .unwrap_or_else(crate::presence::default_replica_id),
            config.presence_interval,
            verifier.is_some(),
            metrics.presence_replicas.clone(),
        ));
        let presence_tick = tokio::spawn(crate::presence::run(Arc::clone(&presence)));
        let stop_presence = CancellationToken::new();
        let presence_link = config.presence_topic().map(|topic| {
            let (presence, config, stop) =
                (Arc::clone(&presence), config.clone(), stop_presence.clone());
            tokio::spawn(async move {
                crate::ingest::presence::link(presence, &config, topic, stop).await
            })
        });
        let hub = Arc::new(Hub {
            presence,
            index,
            metrics,
            dispatched,
            health: Arc::clone(&health),
            settings: Settings::from_config(&config),
            connection_slots: Arc::new(Semaphore::new(config.max_connections as usize)),
            pending_auth_slots: Arc::new(Semaphore::new(config.max_pending_auth as usize)),
            http_slots: Arc::new(Semaphore::new(config.max_http_connections as usize)),
            per_address: dashmap::DashMap::new(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            demo_page: pages == Pages::Demo,
            tls,
            verifier,
            joins,
            next_connection_id: AtomicU64::new(1),
        });
        let stop_accepting = CancellationToken::new();
        let stop_consuming = CancellationToken::new();
        let server = tokio::spawn(crate::http::serve(
            listener,
            Arc::clone(&hub),
            stop_accepting.clone(),
        ));
        let consumer = tokio::spawn(ingest.run(stop_consuming.clone(), joins_served));

        shutdown.await;
        crate::shutdown::drain(crate::shutdown::Drain {
            shared: &hub,
            delay: config.shutdown_delay,
            timeout: config.drain_timeout.max(Duration::from_millis(100)),
            stop_accepting,
            stop_consuming,
            server,
            consumer,
        })
        .await;
        if let Some(task) = key_set {
            task.abort();
        }
        presence_tick.abort();
        // The tombstone that tells the other replicas this one is gone.
        stop_presence.cancel();
        if let Some(link) = presence_link {
            let _ = tokio::time::timeout(Duration::from_secs(3), link).await;
        }
        Ok(())
    }
}

/// Binds `--listen`.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", config.listen))
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
