//! The one place configuration lives: every flag, its `CDC_GATEWAY_*` variable, its default,
//! and the checks that turn a bad value into a startup error naming the flag. Other modules
//! receive the parts they need as plain values and never read the environment themselves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Streams database change events from Kafka to WebSocket and SSE clients, filtered per subscription.
#[derive(Debug, Clone, Parser)]
#[command(name = "cdc-gateway", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run on an embedded mock Kafka cluster with a generator of order and customer events.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Change events the demo generator produces per second.
    #[arg(long, env = "CDC_GATEWAY_DEMO_EVENTS_PER_SECOND", default_value_t = 5)]
    pub events_per_second: u32,

    /// Address of the demo's page, WebSocket, health and metrics endpoints (loopback: the
    /// demo has no authentication).
    #[arg(long, env = "CDC_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// How the value of a source record is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Detect the envelope per record.
    Auto,
    /// Only the simple envelope (`entity_type`, `entity_id`, `operation`, ...).
    Simple,
    /// Only Debezium's envelope, with or without the JSON converter's schema/payload wrapper.
    Debezium,
    /// Avro in the Confluent wire format (magic byte 0, schema id), schemas from
    /// --schema-registry-url; the envelope (Debezium's or the simple one) detected per record.
    Avro,
}

/// What a Debezium record's entity is named after (protocol section 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EntityNaming {
    /// `source.table`: `orders`. Tables of the same name in different schemas or databases
    /// share one entity (detected and counted: cdc_gateway_entity_collisions_total).
    Table,
    /// `<source.schema>-<source.table>`: `tenant_a-orders` (`<db>-<table>` where the source
    /// has no schema, as MySQL).
    Schema,
    /// `<source.db>-<source.schema>-<source.table>`: `shop-tenant_a-orders`.
    Database,
}

/// How decoded Kafka Connect decimals (`numeric`, `decimal`) are written in `data`/`before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecimalFormat {
    /// Exact JSON numbers (`1234.56`, every digit the database holds).
    Number,
    /// JSON strings (`"1234.56"`), for clients whose JSON parser rounds to a double.
    String,
}

/// How clients prove who they are (protocol section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every client may subscribe to every topic.
    None,
    /// Clients present a signed JWT whose claims say what they may read.
    Jwt,
}

/// What happens to a client whose outbound queue stays full past the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowClientPolicy {
    /// Close the connection with 4004.
    Close,
    /// Keep the connection and skip the messages it cannot take, counting each.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of the gateway. Each flag also reads `CDC_GATEWAY_<FLAG>`. The flags that
/// `demo` replaces (Kafka, group, where to start, where to listen) are not global, so the
/// demo's `--help` does not offer them.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT].
    #[arg(long, env = "CDC_GATEWAY_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,

    /// Source topics, comma-separated. An entry starting with `^` is a regular expression.
    #[arg(
        long,
        env = "CDC_GATEWAY_SOURCE_TOPICS",
        default_value = "cdc.events",
        value_delimiter = ','
    )]
    pub source_topics: Vec<String>,

    /// Kafka consumer group id: the name under which offsets are committed. With
    /// `--instance`, the base of each replica's own group id.
    #[arg(long, env = "CDC_GATEWAY_GROUP_ID", default_value = "cdc-gateway")]
    pub group_id: String,

    /// This replica's name, e.g. the pod name (`metadata.name` through the downward API).
    /// When set, offsets are committed under `<group-id>-<instance>`: every replica reads
    /// every partition, so each keeps its own place and a restarted pod resumes from it.
    #[arg(long, env = "CDC_GATEWAY_INSTANCE")]
    pub instance: Option<String>,

    /// Address for the WebSocket, SSE, health and metrics endpoints.
    #[arg(long, env = "CDC_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Envelope of the source records.
    #[arg(global = true, long, env = "CDC_GATEWAY_INPUT_FORMAT", value_enum, default_value_t = InputFormat::Auto)]
    pub input_format: InputFormat,

    /// Confluent Schema Registry (or a compatible one: Apicurio's ccompat API, Redpanda) the
    /// schemas of Avro records are fetched from, once per schema id: `https://host:8081`,
    /// optionally with `user:password@` before the host. Needed by --input-format avro, and
    /// by auto to read Avro records.
    #[arg(global = true, long, env = "CDC_GATEWAY_SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,

    /// User for HTTP basic authentication with the schema registry (Confluent Cloud: the API
    /// key).
    #[arg(global = true, long, env = "CDC_GATEWAY_SCHEMA_REGISTRY_USER")]
    pub schema_registry_user: Option<String>,

    /// Password for --schema-registry-user (Confluent Cloud: the API secret).
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    pub schema_registry_password: Option<String>,

    /// PEM certificates to trust for an https:// --schema-registry-url, besides the Mozilla
    /// roots (a private registry's CA).
    #[arg(global = true, long, env = "CDC_GATEWAY_SCHEMA_REGISTRY_CA_FILE")]
    pub schema_registry_ca_file: Option<std::path::PathBuf>,

    /// How decimals decoded from a Kafka Connect schema are written: exact JSON numbers, or
    /// strings for clients whose JSON parser rounds to a double.
    #[arg(global = true, long, env = "CDC_GATEWAY_DECIMAL_FORMAT", value_enum, default_value_t = DecimalFormat::Number)]
    pub decimal_format: DecimalFormat,

    /// What a Debezium record's entity is named after: its table, its schema and table, or
    /// its database, schema and table (joined with `-`); the rename map applies to the name.
    #[arg(global = true, long, env = "CDC_GATEWAY_ENTITY_NAMING", value_enum, default_value_t = EntityNaming::Table)]
    pub entity_naming: EntityNaming,

    /// Entity rename map, e.g. `orders=order,customers=customer`.
    #[arg(global = true, long, env = "CDC_GATEWAY_ENTITY_MAP", value_delimiter = ',', value_parser = parse_pair)]
    pub entity_map: Vec<(String, String)>,

    /// Topic that receives a copy of every record that cannot be decoded.
    #[arg(global = true, long, env = "CDC_GATEWAY_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// librdkafka property `key=value` (repeatable; SASL, TLS, fetch tuning ...). A value is
    /// taken whole, commas included (`debug=broker,topic`, a JAAS line); the variable holds
    /// one property per line. Wins over --kafka-property-file.
    #[arg(global = true, long = "kafka-property", env = "CDC_GATEWAY_KAFKA_PROPERTY", value_delimiter = '\n', value_parser = parse_pair)]
    pub kafka_properties: Vec<(String, String)>,

    /// File of librdkafka properties, one `key=value` per line (`#` comments), read at
    /// start: for secrets mounted from a Kubernetes Secret (`sasl.password=...`). Repeatable;
    /// the variable holds one path per line.
    #[arg(
        global = true,
        long = "kafka-property-file",
        env = "CDC_GATEWAY_KAFKA_PROPERTY_FILE",
        value_delimiter = '\n'
    )]
    pub kafka_property_files: Vec<std::path::PathBuf>,

    /// Where a group without committed offsets starts reading.
    #[arg(long, env = "CDC_GATEWAY_AUTO_OFFSET_RESET", value_enum, default_value_t = OffsetReset::Latest)]
    pub auto_offset_reset: OffsetReset,

    /// Concurrent connections (WebSocket sessions and SSE streams); more are closed with 1008 (SSE: 429).
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Connections (of --max-connections) that may wait for a token at once under --auth jwt;
    /// more are closed with 1008. Keeps unauthenticated sockets from taking every slot.
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_PENDING_AUTH", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_auth: u32,

    /// Connections from one client address (WebSocket sessions and SSE streams together);
    /// more are refused (1008, SSE: 429). 0: no limit (behind a proxy every client has the
    /// proxy's address).
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 0
    )]
    pub max_connections_per_ip: u32,

    /// Sockets that have not (yet) become a WebSocket session or an SSE stream: HTTP requests
    /// in progress and idle keep-alive sockets; more are closed at once.
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_HTTP_CONNECTIONS", default_value_t = 1_024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_http_connections: u32,

    /// Subscriptions per connection; more get TOO_MANY_SUBSCRIPTIONS.
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_SUBSCRIPTIONS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions: u32,

    /// Keys in one subscription's `filters`; more get INVALID_FILTER.
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_FILTER_CLAUSES", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_filter_clauses: u32,

    /// Values in one `in` / `nin` list of a filter (long lists are hashed); more get
    /// INVALID_FILTER.
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_FILTER_VALUES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_filter_values: u32,

    /// Segments in one filter key (`data.a.b` has three); more get INVALID_FILTER.
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_FILTER_DEPTH", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_filter_depth: u32,

    /// Entries a `since` position may have beyond the partitions this replica reads (for
    /// partitions another replica found first); more get INVALID_MESSAGE.
    #[arg(global = true, long, env = "CDC_GATEWAY_SINCE_MARGIN", default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub since_margin: u32,

    /// Messages queued per connection before it counts as full.
    #[arg(global = true, long, env = "CDC_GATEWAY_OUTBOUND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub outbound_queue: u32,

    /// What to do with a client whose queue stays full past the grace period.
    #[arg(global = true, long, env = "CDC_GATEWAY_SLOW_CLIENT_POLICY", value_enum, default_value_t = SlowClientPolicy::Close)]
    pub slow_client_policy: SlowClientPolicy,

    /// How long an outbound queue may stay full (Kafka is paced meanwhile).
    #[arg(global = true, long, env = "CDC_GATEWAY_SLOW_CLIENT_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub slow_client_grace: Duration,

    /// The longest one client may hold ingestion back in one stall (its queue full, not yet
    /// drained to half), however steadily it reads: grace windows renewed for a client above
    /// --slow-client-min-rate end there. At least --slow-client-grace; the default, equal to
    /// it, bounds every stall by the grace period alone (protocol section 3).
    #[arg(global = true, long, env = "CDC_GATEWAY_SLOW_CLIENT_MAX_STALL", default_value = "5s", value_parser = parse_duration)]
    pub slow_client_max_stall: Duration,

    /// Largest client message in bytes; a bigger one closes with 1009.
    #[arg(global = true, long, env = "CDC_GATEWAY_MAX_MESSAGE_SIZE", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(128..))]
    pub max_message_size: u32,

    /// Messages a second a client whose queue is full must accept, measured over each
    /// --slow-client-grace window, to keep its connection (a slow but steady reader keeps up
    /// with a burst; one that reads a message now and then is closed with 4004).
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_SLOW_CLIENT_MIN_RATE",
        default_value_t = 10.0
    )]
    pub slow_client_min_rate: f64,

    /// PEM certificate chain: serve wss:// and https:// on --listen (with --tls-key).
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_TLS_KEY",
        requires = "tls_cert",
        hide_env_values = true
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// An HTTP connection that has not sent a whole request head this long (a slow or idle
    /// client holding a socket, between requests on keep-alive too) is closed.
    #[arg(global = true, long, env = "CDC_GATEWAY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection that sends nothing (not even a pong) this long is closed with 4003.
    #[arg(global = true, long, env = "CDC_GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Interval of RFC 6455 ping frames.
    #[arg(global = true, long, env = "CDC_GATEWAY_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Interval of JSON `{"type":"ping"}` heartbeats; 0s turns them off.
    #[arg(global = true, long, env = "CDC_GATEWAY_APP_PING_INTERVAL", default_value = "0s", value_parser = parse_duration)]
    pub app_ping_interval: Duration,

    /// Client messages per second per connection; more get RATE_LIMITED.
    #[arg(global = true, long, env = "CDC_GATEWAY_CLIENT_RATE_LIMIT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_rate_limit: u32,

    /// Burst of client messages allowed above the rate.
    #[arg(global = true, long, env = "CDC_GATEWAY_CLIENT_RATE_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_rate_burst: u32,

    /// Directory of the table store: every entity's rows on disk, with the offsets they were
    /// applied up to, so that a restart reads on from there instead of rebuilding. One
    /// directory per replica (it is locked). Without it a temporary directory is used and
    /// removed at exit: the tables are rebuilt from the source topics at every start.
    #[arg(global = true, long, env = "CDC_GATEWAY_TABLE_STORE_PATH")]
    pub table_store_path: Option<std::path::PathBuf>,

    /// Disk the table store may take, in MiB. At the bound, commits are refused: consumption
    /// waits (nothing is skipped), /readyz answers 503 and cdc_gateway_table_store_failing is 1.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_TABLE_STORE_MAX_MIB",
        default_value_t = 10_240,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub table_store_max_mib: u64,

    /// Memory for the table store's block cache, in MiB.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_TABLE_STORE_CACHE_MIB",
        default_value_t = 32,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub table_store_cache_mib: u64,

    /// Snapshot rows and missed events one connection's unread backlogs may hold: a subscribe
    /// that would owe more gets BACKLOG_FULL (nothing is subscribed). Bounds what a client
    /// that re-subscribes with snapshots and never reads can make the gateway hold.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_MAX_BACKLOG_ROWS",
        default_value_t = 250_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_backlog_rows: u32,

    /// Recent events kept per entity for `since` (resume); 0 turns history off (every resume
    /// answers `recovered: false`).
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_HISTORY_EVENTS",
        default_value_t = 10_000
    )]
    pub history_events: u32,

    /// Events older than this leave the history.
    #[arg(global = true, long, env = "CDC_GATEWAY_HISTORY_MAX_AGE", default_value = "10m", value_parser = parse_duration)]
    pub history_max_age: Duration,

    /// Records read back per partition at start to warm the resume history, so that resume
    /// works across a restart; 0 starts empty. (The tables are read from where the table
    /// store stands, whatever this says.)
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_HISTORY_WARMUP",
        default_value_t = 1000
    )]
    pub history_warmup: u32,

    /// Memory for the history of all entities together, in MiB.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_HISTORY_BUDGET_MIB",
        default_value_t = 256
    )]
    pub history_budget_mib: u32,

    /// Client authentication: none, or JWT bearer tokens (--jwt-secret, --jwt-public-key or
    /// --jwt-jwks-url).
    #[arg(global = true, long, env = "CDC_GATEWAY_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub auth: AuthMode,

    /// Serve every row to anyone who connects: --auth none on an address beyond loopback.
    /// Without it, such a gateway refuses to start.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_ALLOW_UNAUTHENTICATED",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_unauthenticated: bool,

    /// Shared secret of HS256 tokens, under --auth jwt.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM public key of RS256 (RSA) or ES256 (EC P-256) tokens, under --auth jwt, as
    /// `PATH` or `KID=PATH`. Repeatable: a token whose header names a `kid` is checked
    /// against the key of that id, one without against every key (rotation without a
    /// restart: sign with the new key once every replica has it).
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_JWT_PUBLIC_KEY",
        value_delimiter = '\n'
    )]
    pub jwt_public_key: Vec<String>,

    /// A JSON Web Key Set of RS256/ES256 keys (Auth0, Keycloak, Cognito, ...:
    /// `https://issuer/.well-known/jwks.json`), under --auth jwt. Fetched at start and every
    /// --jwt-jwks-refresh, and again (at most every 5 s) when a token names a `kid` it lacks.
    #[arg(global = true, long, env = "CDC_GATEWAY_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// How often the key set is fetched again (keys removed there stop verifying by then).
    #[arg(global = true, long, env = "CDC_GATEWAY_JWT_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub jwt_jwks_refresh: Duration,

    /// PEM certificates to trust for an https:// --jwt-jwks-url, besides the Mozilla roots
    /// (a private identity provider's CA).
    #[arg(global = true, long, env = "CDC_GATEWAY_JWT_JWKS_CA_FILE")]
    pub jwt_jwks_ca_file: Option<std::path::PathBuf>,

    /// Required `iss` claim; not checked when unset.
    #[arg(global = true, long, env = "CDC_GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim; not checked when unset.
    #[arg(global = true, long, env = "CDC_GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    #[arg(global = true, long, env = "CDC_GATEWAY_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Under --auth jwt, how long a connection without a token has to send `auth` (then 4002).
    #[arg(global = true, long, env = "CDC_GATEWAY_AUTH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// Allowed `Origin` header values, comma-separated; empty allows any.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// On shutdown, /readyz reports 503 this long before the listener closes.
    #[arg(global = true, long, env = "CDC_GATEWAY_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Bound on closing connections and committing offsets at shutdown.
    #[arg(global = true, long, env = "CDC_GATEWAY_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How often the source topics' metadata is re-read for new partitions and, with `^regex`
    /// entries, newly matching topics (read from their beginning).
    #[arg(global = true, long, env = "CDC_GATEWAY_PARTITION_DISCOVERY_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub partition_discovery_interval: Duration,

    /// How long a connected broker may leave requests unanswered before /health, the
    /// metric `cdc_gateway_kafka_brokers_stalled` and the logs call it stalled (a hung broker
    /// keeps its TCP connection up). Seen at --stats-interval granularity. Readiness is not
    /// changed by it (docs/operating.md, "Health").
    #[arg(global = true, long, env = "CDC_GATEWAY_KAFKA_STALL_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub kafka_stall_timeout: Duration,

    /// The compacted Kafka topic through which replicas share presence (who watches which
    /// topic): each publishes its own counts there and reads the others'. Default:
    /// `<group id>-presence` (the deployment's group id, without --instance), created (cleanup.policy=compact) when missing. An empty value
    /// keeps presence to this replica's clients.
    #[arg(global = true, long, env = "CDC_GATEWAY_PRESENCE_TOPIC")]
    pub presence_topic: Option<String>,

    /// How often presence is published and presence messages are sent (coalesced).
    #[arg(global = true, long, env = "CDC_GATEWAY_PRESENCE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub presence_interval: Duration,

    /// This replica's name in presence documents. Default: the host name (a pod's name on
    /// Kubernetes) and the process id.
    #[arg(global = true, long, env = "CDC_GATEWAY_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Interval of librdkafka statistics (consumer lag, broker state).
    #[arg(global = true, long, env = "CDC_GATEWAY_STATS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Log output format.
    #[arg(global = true, long, env = "CDC_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `info,cdc_gateway=debug`.
    #[arg(
        global = true,
        long,
        env = "CDC_GATEWAY_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

impl Config {
    /// Reads every --kafka-property-file and puts its properties before the --kafka-property
    /// values (which therefore win). Called once at start; an unreadable file or a line that
    /// is not `key=value` is a startup error naming the file and line (never the value).
    pub fn load_kafka_property_files(&mut self) -> Result<(), ConfigError> {
        let mut loaded = Vec::new();
        for path in &self.kafka_property_files {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "--kafka-property-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
                let pair = parse_pair(line).map_err(|_| {
                    ConfigError::new(
                        "--kafka-property-file",
                        format!("{} line {}: not key=value", path.display(), number + 1),
                    )
                })?;
                loaded.push(pair);
            }
        }
        loaded.append(&mut self.kafka_properties);
        self.kafka_properties = loaded;
        self.kafka_property_files.clear();
        Ok(())
    }

    /// Checks that clap's per-flag parsers cannot: relations between values and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "--brokers",
                "must name at least one HOST:PORT",
            ));
        }
        if self.source_topics.is_empty() || self.source_topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::new(
                "--source-topics",
                "must list non-empty topic names",
            ));
        }
        for pattern in self.source_topics.iter().filter(|t| t.starts_with('^')) {
            if let Err(e) = regex::Regex::new(pattern) {
                return Err(ConfigError::new(
                    "--source-topics",
                    format!("`{pattern}` is not a regular expression: {e}"),
                ));
            }
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::new("--group-id", "must not be empty"));
        }
        if self.input_format == InputFormat::Avro && self.schema_registry_url.is_none() {
            return Err(ConfigError::new(
                "--input-format",
                "avro needs --schema-registry-url",
            ));
        }
        if self.schema_registry_user.is_some() != self.schema_registry_password.is_some() {
            return Err(ConfigError::new(
                "--schema-registry-user",
                "give --schema-registry-user and --schema-registry-password together",
            ));
        }
        if let Some(instance) = &self.instance {
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if instance.is_empty() || instance.len() > 200 || !instance.chars().all(valid) {
                return Err(ConfigError::new(
                    "--instance",
                    format!("`{instance}`: 1-200 characters of [A-Za-z0-9._-]"),
                ));
            }
        }
        for (from, to) in &self.entity_map {
            if !crate::event::is_valid_entity(to) {
                return Err(ConfigError::new(
                    "--entity-map",
                    format!(
                        "`{from}={to}`: `{to}` is not a valid entity name ([A-Za-z0-9_-]{{1,128}})"
                    ),
                ));
            }
        }
        if let Some(topic) = &self.dead_letter_topic {
            let read_back = self.source_topics.iter().any(|source| {
                source == topic
                    || (source.starts_with('^')
                        && regex::Regex::new(source).is_ok_and(|p| p.is_match(topic)))
            });
            if topic.trim().is_empty() || read_back {
                return Err(ConfigError::new(
                    "--dead-letter-topic",
                    "must be a non-empty topic that no --source-topics entry names or matches",
                ));
            }
        }
        for (flag, value) in [
            ("--auth-timeout", self.auth_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--ping-interval", self.ping_interval),
            ("--slow-client-grace", self.slow_client_grace),
            ("--stats-interval", self.stats_interval),
            ("--kafka-stall-timeout", self.kafka_stall_timeout),
            ("--jwt-jwks-refresh", self.jwt_jwks_refresh),
            ("--presence-interval", self.presence_interval),
            (
                "--partition-discovery-interval",
                self.partition_discovery_interval,
            ),
            ("--drain-timeout", self.drain_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(flag, "must be greater than 0"));
            }
        }
        if self.auth == AuthMode::None
            && !self.listen.ip().is_loopback()
            && !self.allow_unauthenticated
        {
            return Err(ConfigError::new(
                "--auth",
                format!(
                    "is none while --listen {} reaches beyond this machine: anyone who connects \
                     would read every row. Set --auth jwt, listen on 127.0.0.1, or say \
                     --allow-unauthenticated (CDC_GATEWAY_ALLOW_UNAUTHENTICATED=true) if that \
                     is what you want",
                    self.listen
                ),
            ));
        }
        if self.ping_interval >= self.idle_timeout {
            return Err(ConfigError::new(
                "--ping-interval",
                "must be shorter than --idle-timeout, or healthy idle clients would time out",
            ));
        }
        if self
            .log_level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(ConfigError::new(
                "--log-level",
                format!("`{}` is not a valid filter", self.log_level),
            ));
        }
        Ok(())
    }

    /// Where the table store lives and how large it may grow.
    pub fn tables(&self) -> crate::tables::Settings {
        crate::tables::Settings {
            path: self.table_store_path.clone(),
            max_bytes: self.table_store_max_mib.saturating_mul(1 << 20),
            cache_bytes: self.table_store_cache_mib.saturating_mul(1 << 20),
        }
    }

    /// The group id offsets are committed under: `--group-id`, suffixed with `--instance`.
    pub fn consumer_group(&self) -> String {
        match &self.instance {
            Some(instance) => format!("{}-{instance}", self.group_id),
            None => self.group_id.clone(),
        }
    }

    /// The presence topic replicas share (`--presence-topic`, or `<group-id>-presence`);
    /// `None` when sharing is off (an empty `--presence-topic`).
    pub fn presence_topic(&self) -> Option<String> {
        match &self.presence_topic {
            Some(topic) if topic.trim().is_empty() => None,
            Some(topic) => Some(topic.clone()),
            // The deployment's group id, not a replica's own (`--instance`): every replica
            // of one deployment shares the topic.
            None => Some(format!("{}-presence", self.group_id)),
        }
    }

    /// The bounds on one subscription's filters.
    pub fn filter_limits(&self) -> crate::index::filter::Limits {
        crate::index::filter::Limits {
            clauses: self.max_filter_clauses as usize,
            values: self.max_filter_values as usize,
            depth: self.max_filter_depth as usize,
        }
    }

    /// The rename map as a lookup table.
    pub fn entity_renames(&self) -> HashMap<String, String> {
        self.entity_map.iter().cloned().collect()
    }
}

/// A configuration value that cannot be used, naming the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            flag,
            message: message.into(),
        }
    }
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (examples: 500ms, 5s, 2m)"))
}

fn parse_pair(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, val)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), val.trim().to_string()))
        }
        _ => Err(format!("`{value}` is not of the form key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments, on a gateway that may serve without authentication (what the other
    /// checks are tested on).
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["--allow-unauthenticated"];
        all.extend_from_slice(args);
        parse_bare(&all)
    }

    fn parse_bare(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cdc-gateway").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_valid_except_that_they_serve_everyone() {
        let open = parse_bare(&[]).unwrap().config.validate().unwrap_err();
        assert_eq!(open.flag, "--auth", "{open}");
        assert!(
            open.to_string().contains("--allow-unauthenticated"),
            "{open}"
        );
        parse_bare(&["--listen", "127.0.0.1:8080"])
            .unwrap()
            .config
            .validate()
            .unwrap();
        parse_bare(&["--listen", "[::1]:8080"])
            .unwrap()
            .config
            .validate()
            .unwrap();
        parse_bare(&[
            "--auth",
            "jwt",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ])
        .unwrap()
        .config
        .validate()
        .unwrap();
        let cli = parse_bare(&["--allow-unauthenticated"]).unwrap();
        cli.config.validate().unwrap();
        assert_eq!(cli.config.source_topics, vec!["cdc.events"]);
        assert_eq!(cli.config.slow_client_grace, Duration::from_secs(5));
    }

    #[test]
    fn avro_needs_a_registry_and_credentials_come_in_pairs() {
        let check = |args: &[&str]| parse(args).unwrap().config.validate();
        let err = check(&["--input-format", "avro"]).unwrap_err();
        assert!(err.to_string().contains("--schema-registry-url"), "{err}");
        let registry = ["--schema-registry-url", "https://registry.example:8081"];
        check(&[&["--input-format", "avro"][..], &registry[..]].concat()).unwrap();
        let user_only = [&registry[..], &["--schema-registry-user", "key"][..]].concat();
        assert_eq!(
            check(&user_only).unwrap_err().flag,
            "--schema-registry-user"
        );
        let both = [
            &user_only[..],
            &["--schema-registry-password", "secret"][..],
        ]
        .concat();
        check(&both).unwrap();
    }

    #[test]
    fn lists_and_pairs_parse() {
        let cli = parse(&[
            "--source-topics",
            "a,b",
            "--entity-map",
            "orders=order,customers=customer",
            "--kafka-property",
            "security.protocol=SASL_SSL",
            "--kafka-property",
            "sasl.mechanism=PLAIN",
        ])
        .unwrap();
        assert_eq!(cli.config.source_topics, vec!["a", "b"]);
        assert_eq!(cli.config.entity_renames()["orders"], "order");
        assert_eq!(cli.config.kafka_properties.len(), 2);
    }

    #[test]
    fn kafka_properties_keep_their_commas_and_secrets_come_from_files() {
        let jaas = r#"sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="a,b" password="c=d";"#;
        let dir = std::env::temp_dir().join(format!("cdc-gateway-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kafka.properties");
        std::fs::write(
            &file,
            "# from a Secret\nsasl.password = s3cr,et\n\ndebug=all\n",
        )
        .unwrap();
        let mut cli = parse(&[
            "--kafka-property",
            "debug=broker,topic",
            "--kafka-property",
            jaas,
            "--kafka-property-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        cli.config.load_kafka_property_files().unwrap();
        let props = &cli.config.kafka_properties;
        assert_eq!(
            props,
            &vec![
                ("sasl.password".to_owned(), "s3cr,et".to_owned()),
                ("debug".to_owned(), "all".to_owned()),
                ("debug".to_owned(), "broker,topic".to_owned()),
                (
                    "sasl.jaas.config".to_owned(),
                    jaas.split_once('=').unwrap().1.to_owned()
                ),
            ],
            "files first, so the flags win; commas kept"
        );
        std::fs::write(&file, "sasl.password\n").unwrap();
        let mut cli = parse(&["--kafka-property-file", file.to_str().unwrap()]).unwrap();
        let e = cli.config.load_kafka_property_files().unwrap_err();
        assert!(
            e.to_string().contains("line 1") && !e.to_string().contains("sasl"),
            "{e}"
        );
        let mut cli = parse(&["--kafka-property-file", "/nonexistent/kafka.properties"]).unwrap();
        assert_eq!(
            cli.config.load_kafka_property_files().unwrap_err().flag,
            "--kafka-property-file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_instance_commits_under_its_own_group_id() {
        let cli = parse(&["--group-id", "gw", "--instance", "cdc-gateway-7f9c-x2"]).unwrap();
        cli.config.validate().unwrap();
        assert_eq!(cli.config.consumer_group(), "gw-cdc-gateway-7f9c-x2");
        assert_eq!(
            parse(&["--group-id", "gw"])
                .unwrap()
                .config
                .consumer_group(),
            "gw"
        );
        let cli = parse(&["--instance", "pod/1"]).unwrap();
        assert_eq!(cli.config.validate().unwrap_err().flag, "--instance");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["--slow-client-grace", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--slow-client-grace"), "{err}");
        let err = parse(&["--kafka-property", "novalue"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--kafka-property"), "{err}");
        let cli = parse(&["--entity-map", "orders=or.der"]).unwrap();
        assert_eq!(cli.config.validate().unwrap_err().flag, "--entity-map");
        let cli = parse(&["--ping-interval", "90s"]).unwrap();
        assert_eq!(cli.config.validate().unwrap_err().flag, "--ping-interval");
    }

    #[test]
    fn a_dead_letter_topic_the_sources_would_read_back_is_refused() {
        let refused = |args: &[&str]| parse(args).unwrap().config.validate().unwrap_err();
        let error = refused(&[
            "--source-topics",
            r"^cdc\..*",
            "--dead-letter-topic",
            "cdc.dlq",
        ]);
        assert!(error.to_string().contains("--dead-letter-topic"), "{error}");
        refused(&["--source-topics", "a,b", "--dead-letter-topic", "b"]);
        let error = refused(&["--source-topics", "^(", "--dead-letter-topic", "x"]);
        assert!(error.to_string().contains("--source-topics"), "{error}");
        assert!(parse(&[
            "--source-topics",
            r"^cdc\..*",
            "--dead-letter-topic",
            "dlq.cdc"
        ])
        .unwrap()
        .config
        .validate()
        .is_ok());
    }
}
