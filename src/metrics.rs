//! Every metric the gateway exports, named and labelled in one place so that what it reports
//! is reviewable as a list (and the dashboard and alerts can be checked against it). Labelled
//! series are created up front for every known label value, so rates work from the first scrape.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::protocol::ErrorCode;

/// Results of consuming one Kafka record.
/// `duplicate`: a record at or below the highest offset already dispatched from its partition
/// (Kafka handed it out again), skipped.
pub const CONSUMED_RESULTS: [&str; 4] = ["dispatched", "tombstone", "decode_error", "duplicate"];

/// Why a connection was refused at admission (`connection::Refusal::reason`), and
/// `http_connections` for a socket refused before its first request.
pub const REFUSAL_REASONS: [&str; 8] = [
    "shutting_down",
    "origin",
    "token_required",
    "token",
    "too_many_connections",
    "too_many_pending_auth",
    "too_many_from_address",
    "http_connections",
];

/// Why a message for a client was not enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Drop policy: the client's queue stayed full past the grace period.
    QueueFull,
    /// Close policy: the client was (being) closed with 4004.
    SlowConsumerClosed,
    /// The connection ended before the message could be queued.
    ConnectionClosed,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::SlowConsumerClosed,
        DropReason::ConnectionClosed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::SlowConsumerClosed => "slow_consumer_closed",
            DropReason::ConnectionClosed => "connection_closed",
        }
    }
}

/// What a bounded cache (the resume history, the snapshot cache) holds and evicts.
#[derive(Clone)]
pub struct CacheMetrics {
    /// Events (history) or rows (snapshot cache) held.
    pub held: IntGauge,
    /// Bytes held, as the cache counts them against its budget.
    pub bytes: IntGauge,
    pub evictions: IntCounter,
}

/// What the table store holds and does (src/tables).
#[derive(Clone)]
pub struct TableMetrics {
    /// Rows over all entities, deletes not counted.
    pub rows: IntGauge,
    pub disk_bytes: IntGauge,
    pub max_bytes: IntGauge,
    /// Rows applied and not yet committed.
    pub pending_rows: IntGauge,
    /// 1 while commits fail (full, or a write error): consumption waits.
    pub failing: IntGauge,
    pub commits: IntCounterVec,
    pub commit_seconds: Histogram,
    /// Records left to read before the tables are rebuilt to every partition's start.
    pub rebuild_remaining: IntGauge,
    /// Records read by rebuilds and catch-ups at start.
    pub rebuild_records: IntCounter,
}

/// Buckets of the gateway's own stages (dispatch, write): 10 us to 5 s, fine around 1-2.5 ms.
const GATEWAY_STAGE_BUCKETS: [f64; 17] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025,
    0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
];

pub struct Metrics {
    registry: Registry,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    pub connections_closed: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub subscriptions_active: IntGauge,
    pub topics_active: IntGauge,
    pub events_consumed: IntCounterVec,
    pub decode_errors: IntCounterVec,
    /// Updates and deletes judged against the row's last image (or not: unknown), and
    /// unchanged TOAST values filled from it (or left out).
    pub row_images: IntCounterVec,
    /// Changes a connector sent again (same place in the database's log), not delivered.
    pub source_replays: IntCounter,
    /// Records whose source (db.schema.table) differs from the first seen under their entity.
    pub entity_collisions: IntCounterVec,
    /// Records holding a logical type the decoder passes through as the converter wrote it.
    pub decode_unknown_types: IntCounterVec,
    pub dead_letter: IntCounterVec,
    /// Source offsets skipped unread: the broker no longer had the records.
    pub source_offsets_lost: IntCounter,
    pub deliveries: IntCounter,
    pub drops: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    /// Per broker: seconds since its connection last received anything (librdkafka's
    /// `rxidle`), while requests to it await an answer; 0 otherwise.
    pub broker_waiting: prometheus::GaugeVec,
    /// Brokers whose answers are overdue past `--kafka-stall-timeout` (hung, not down).
    pub brokers_stalled: IntGauge,
    pub kafka_connected: IntGauge,
    pub assigned_partitions: IntGauge,
    pub ready: IntGauge,
    pub enqueue_latency: Histogram,
    /// The gateway's own share: record handed over by librdkafka -> queued for every client.
    pub dispatch_latency: Histogram,
    /// The writer's share: a batch's oldest message queued -> the batch written to the socket.
    pub write_latency: Histogram,
    pub error_replies: IntCounterVec,
    pub history: CacheMetrics,
    pub tables: TableMetrics,
    /// Subscribes with `since` (and no snapshot), by whether the missed events followed.
    pub resumes: IntCounterVec,
    /// Subscribes with a snapshot, by whether it was complete.
    pub snapshots: IntCounterVec,
    /// Snapshot rows and missed events queued for clients and not yet written.
    pub backlog_rows: IntGauge,
    /// Fetches of `--jwt-jwks-url`, by result (`ok`, `error`).
    pub jwks_fetches: IntCounterVec,
    /// Signing keys held from the key set.
    pub jwks_keys: IntGauge,
    /// Replicas whose presence was heard recently, this one included.
    pub presence_replicas: IntGauge,
    /// Schema lookups in `--schema-registry-url`, by result (`ok`, `not_found`, `error`).
    pub schema_registry_fetches: IntCounterVec,
    /// 1 while consumption waits for a schema the registry cannot be asked for.
    pub schema_registry_waiting: IntGauge,
    /// Registry schemas held, by id.
    pub schema_registry_schemas: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            for value in values {
                c.with_label_values(&[value]);
            }
            c
        };
        let drop_labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
        let code_labels: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let consumer_lag = IntGaugeVec::new(
            Opts::new("cdc_gateway_consumer_lag", "Messages between the committed position and the high watermark, per source partition."),
            &["topic", "partition"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("unique metric");
        let broker_waiting = prometheus::GaugeVec::new(
            Opts::new(
                "cdc_gateway_kafka_broker_waiting_seconds",
                "Per broker: seconds since its connection last received anything while requests to it await an answer (0 when none do). A hung broker keeps its connection up and answers nothing.",
            ),
            &["broker"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(broker_waiting.clone()))
            .expect("unique metric");
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let enqueue_latency = histogram(
            "cdc_gateway_enqueue_latency_seconds",
            "Time from the Kafka record timestamp to the event being queued for its clients.",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ],
        );
        let dispatch_latency = histogram(
            "cdc_gateway_dispatch_latency_seconds",
            "Time from a record handed over by the Kafka client to its event queued for every recipient (decode, filters, serialization, waits on full queues): the gateway's share of enqueue latency.",
            &GATEWAY_STAGE_BUCKETS,
        );
        let write_latency = histogram(
            "cdc_gateway_write_latency_seconds",
            "Time from the oldest message of a batch queued for a connection to the batch written to its socket (the writer's wake-up, framing, and the write, which waits on clients that read slowly).",
            &GATEWAY_STAGE_BUCKETS,
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");

        Metrics {
            connections_active: gauge(
                "cdc_gateway_connections_active",
                "Open WebSocket connections.",
            ),
            connections_total: counter(
                "cdc_gateway_connections_total",
                "WebSocket connections accepted.",
            ),
            connections_closed: counter_vec(
                "cdc_gateway_connections_closed_total",
                "Connections closed by the gateway, by close code.",
                "code",
                &[
                    "1000", "1001", "1007", "1008", "1009", "4001", "4002", "4003", "4004",
                ],
            ),
            connections_refused: counter_vec(
                "cdc_gateway_connections_refused_total",
                "Connections refused at admission, by the limit or check that refused them.",
                "reason",
                &REFUSAL_REASONS,
            ),
            subscriptions_active: gauge(
                "cdc_gateway_subscriptions_active",
                "Active subscriptions over all connections.",
            ),
            topics_active: gauge(
                "cdc_gateway_topics_active",
                "Gateway topics with at least one subscriber.",
            ),
            events_consumed: counter_vec(
                "cdc_gateway_events_consumed_total",
                "Kafka records consumed, by result.",
                "result",
                &CONSUMED_RESULTS,
            ),
            // The ingest side registers every reason it reports (`Ingest::new`): metrics
            // knows no decoder.
            decode_errors: counter_vec(
                "cdc_gateway_decode_errors_total",
                "Records that could not be decoded, by reason.",
                "reason",
                &[],
            ),
            row_images: counter_vec(
                "cdc_gateway_row_images_total",
                "Row state at work: updates and deletes judged against the row's last image (before_known) or sent as the source wrote them because the gateway does not hold it (before_unknown); unchanged TOAST values filled from it (toast_filled) or left out of the row (toast_unknown).",
                "result",
                &["before_known", "before_unknown", "toast_filled", "toast_unknown"],
            ),
            source_replays: counter(
                "cdc_gateway_source_replays_total",
                "Changes the source connector sent again after a restart (a Postgres LSN at or before the row's last change), skipped: no client gets a change twice.",
            ),
            entity_collisions: counter_vec(
                "cdc_gateway_entity_collisions_total",
                "Records from a second source table (another schema or database) under an entity name already fed by a first one, by entity: their rows merge. See --entity-naming.",
                "entity",
                &[],
            ),
            decode_unknown_types: counter_vec(
                "cdc_gateway_decode_unknown_types_total",
                "Records with a value of a Kafka Connect logical type the gateway does not decode (passed through as written), by type name.",
                "type",
                &[],
            ),
            dead_letter: counter_vec(
                "cdc_gateway_dead_letter_total",
                "Undecodable records copied to the dead-letter topic, by result.",
                "result",
                &["written", "failed", "overflow"],
            ),
            source_offsets_lost: counter(
                "cdc_gateway_source_offsets_lost_total",
                "Source offsets the gateway skipped without reading them: the broker had deleted the records (retention) before the gateway read them, or did not hand them over at a start. No client received them; resumes from before them answer recovered: false.",
            ),
            deliveries: counter(
                "cdc_gateway_deliveries_total",
                "Data messages queued to clients.",
            ),
            drops: counter_vec(
                "cdc_gateway_drops_total",
                "Data messages not delivered to a client, by reason.",
                "reason",
                &drop_labels,
            ),
            consumer_lag,
            broker_waiting,
            brokers_stalled: gauge(
                "cdc_gateway_kafka_brokers_stalled",
                "Brokers whose connection is up but whose answers are overdue past --kafka-stall-timeout (hung: stopped, overloaded, or a network path that drops packets).",
            ),
            kafka_connected: gauge(
                "cdc_gateway_kafka_connected",
                "1 while a Kafka broker connection is up.",
            ),
            assigned_partitions: gauge(
                "cdc_gateway_assigned_partitions",
                "Source partitions assigned to this gateway.",
            ),
            ready: gauge("cdc_gateway_ready", "1 while /readyz answers 200."),
            enqueue_latency,
            dispatch_latency,
            write_latency,
            error_replies: counter_vec(
                "cdc_gateway_error_replies_total",
                "Error replies sent to clients, by protocol error code.",
                "code",
                &code_labels,
            ),
            history: CacheMetrics {
                held: gauge(
                    "cdc_gateway_history_events",
                    "Events held in the resume history (--history-events, --history-max-age).",
                ),
                bytes: gauge(
                    "cdc_gateway_history_bytes",
                    "Bytes the resume history counts against --history-budget-mib.",
                ),
                evictions: counter(
                    "cdc_gateway_history_evictions_total",
                    "Events evicted from the resume history (count, age or budget).",
                ),
            },
            tables: TableMetrics {
                rows: gauge(
                    "cdc_gateway_table_rows",
                    "Rows in the table store over all entities (a deleted row is held as its delete event until a truncate): what snapshots read.",
                ),
                disk_bytes: gauge(
                    "cdc_gateway_table_disk_bytes",
                    "Bytes the table store takes on disk.",
                ),
                max_bytes: gauge(
                    "cdc_gateway_table_max_bytes",
                    "The table store's bound (--table-store-max-mib), in bytes.",
                ),
                pending_rows: gauge(
                    "cdc_gateway_table_pending_rows",
                    "Rows applied to the tables and not yet committed to disk (committed every 16,384 rows, 200 ms, and before a snapshot).",
                ),
                failing: gauge(
                    "cdc_gateway_table_store_failing",
                    "1 while the table store cannot be written (full or a disk error): consumption waits, /readyz answers 503.",
                ),
                commits: counter_vec(
                    "cdc_gateway_table_commits_total",
                    "Commits of applied rows with their offsets, by result.",
                    "result",
                    &["ok", "error"],
                ),
                commit_seconds: histogram(
                    "cdc_gateway_table_commit_seconds",
                    "Time one commit of applied rows takes.",
                    &GATEWAY_STAGE_BUCKETS,
                ),
                rebuild_remaining: gauge(
                    "cdc_gateway_table_rebuild_remaining_records",
                    "Records the start-up read still has to apply before the tables reach every partition's start (a new store: the whole topics).",
                ),
                rebuild_records: counter(
                    "cdc_gateway_table_rebuild_records_total",
                    "Records applied by the start-up read (rebuild or catch-up of the table store).",
                ),
            },
            resumes: counter_vec(
                "cdc_gateway_resumes_total",
                "Subscribes with `since`, by whether the missed events followed (recovered).",
                "recovered",
                &["true", "false"],
            ),
            snapshots: counter_vec(
                "cdc_gateway_snapshots_total",
                "Subscribes with a snapshot, by whether the snapshot was complete.",
                "complete",
                &["true", "false"],
            ),
            backlog_rows: gauge(
                "cdc_gateway_backlog_rows",
                "Snapshot rows and missed events owed to clients and not yet written, over all connections (each bounded by --max-backlog-rows).",
            ),
            jwks_fetches: counter_vec(
                "cdc_gateway_jwks_fetches_total",
                "Fetches of the JSON Web Key Set (--jwt-jwks-url), by result; after an error the keys fetched before stay in use.",
                "result",
                &["ok", "error"],
            ),
            jwks_keys: gauge(
                "cdc_gateway_jwks_keys",
                "Signing keys held from the JSON Web Key Set (--jwt-jwks-url).",
            ),
            presence_replicas: gauge(
                "cdc_gateway_presence_replicas",
                "Replicas whose presence document was heard within its age limit, this one included (--presence-topic).",
            ),
            schema_registry_fetches: counter_vec(
                "cdc_gateway_schema_registry_fetches_total",
                "Schema lookups by id in the schema registry (--schema-registry-url), by result: ok, not_found (the records written with it are decode errors), error (unreachable or failing: consumption waits and retries).",
                "result",
                &["ok", "not_found", "error"],
            ),
            schema_registry_waiting: gauge(
                "cdc_gateway_schema_registry_waiting",
                "1 while consumption waits for a schema because the schema registry cannot be reached (/readyz says so); no record is skipped for it.",
            ),
            schema_registry_schemas: gauge(
                "cdc_gateway_schema_registry_schemas",
                "Schemas fetched from the schema registry and held, by id (at most 10,000).",
            ),
            registry,
        }
    }

    /// A batch of data messages reached the socket (for SSE, the HTTP connection): how long
    /// its oldest message waited since queued ([`crate::queue::now_ns`]; 0: nothing waited).
    pub fn observe_write(&self, waited_since: &mut u64) {
        if *waited_since != 0 {
            let waited = crate::queue::now_ns().saturating_sub(*waited_since);
            self.write_latency.observe(waited as f64 / 1e9);
            *waited_since = 0;
        }
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops.with_label_values(&[reason.label()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    /// docs/operating.md's metrics table is the operator's list of what `/metrics` exports
    /// (issue 22.13: metrics were missing from it). Every name this module registers has a
    /// row there, and every row names a metric this module registers: a metric added
    /// without its row, or a row left after its metric went, fails here.
    #[test]
    fn every_metric_is_documented_and_every_documented_metric_exists() {
        let source = include_str!("metrics.rs");
        let guide = include_str!("../docs/operating.md");
        let names = |text: &str, prefix: &str| -> std::collections::BTreeSet<String> {
            text.match_indices(prefix)
                .map(|(at, _)| {
                    text[at + prefix.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect::<String>()
                })
                .filter(|name| !name.is_empty() && !name.ends_with('_'))
                .collect()
        };
        let registered = names(source, "\"cdc_gateway_");
        let documented = names(guide, "| `cdc_gateway_");
        assert!(registered.len() > 30, "{registered:?}");
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "registered in src/metrics.rs, no row in docs/operating.md's metrics table: {undocumented:?}"
        );
        let stale: Vec<_> = documented.difference(&registered).collect();
        assert!(
            stale.is_empty(),
            "rows in docs/operating.md for metrics src/metrics.rs does not register: {stale:?}"
        );
    }
}
