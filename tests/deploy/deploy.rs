//! The deployable stack (Dockerfile, docker-compose.kafka.yml, deploy/, grafana/, the
//! operating docs) checked without a Docker engine but against the real gateway: every path
//! compose mounts exists, every variable and value it sets is one the binary accepts, and
//! every metric, label, port, datasource and runbook the dashboard, alerts and scrape config
//! name is one the gateway and the docs really have. A rename on either side fails here rather
//! than as an empty panel or a silent alert in production.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

use crate::support::*;

const COMPOSE: &str = "docker-compose.kafka.yml";
const DASHBOARDS: &str = "grafana/dashboards";
const PROVISIONING: &str = "grafana/provisioning";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const CONNECTOR: &str = "deploy/debezium/postgres-connector.json";
const INIT_SQL: &str = "deploy/postgres/init.sql";
const RUNBOOKS: &str = "docs/operating.md";

/// Labels Prometheus adds to every scraped series, beside those of the scrape config.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

#[test]
fn compose_paths_exist_variables_are_real_and_the_listen_port_is_published() {
    let compose = Compose::load();
    for path in compose.host_paths() {
        assert!(
            repo().join(&path).exists(),
            "{COMPOSE} refers to ./{path}, which does not exist"
        );
    }

    let known = config_variables();
    let mut assigned = Vec::new();
    for (service, definition) in compose.services() {
        for (name, _) in environment(definition) {
            assigned.push((format!("{COMPOSE} service {service}"), name));
        }
    }
    for (name, _) in image_env(&compose) {
        assigned.push(("Dockerfile ENV".to_owned(), name));
    }
    for (source, name) in assigned
        .iter()
        .filter(|(_, n)| n.starts_with("CDC_GATEWAY_"))
    {
        assert!(
            known.contains(name),
            "{source} sets {name}, which `cdc-gateway --help` does not list"
        );
    }

    // Published and probed where the gateway listens.
    let (_, gateway) = compose.gateway();
    let port = listen_port(&gateway_env(&compose));
    let published: Vec<u16> = gateway["ports"]
        .as_sequence()
        .map(|ports| ports.iter().map(container_port).collect())
        .unwrap_or_default();
    assert!(
        published.contains(&port),
        "the gateway listens on {port} but compose publishes {published:?}"
    );
    let probe = words(&gateway["healthcheck"]["test"]).join(" ");
    assert!(
        probe.contains(&format!(":{port}/")),
        "the compose healthcheck `{probe}` does not probe port {port}"
    );
}

#[tokio::test]
async fn the_gateway_starts_and_becomes_ready_with_the_compose_environment() {
    let compose = Compose::load();
    let (_tansu, gateway) = compose_gateway(&compose).await;
    gateway.wait_ready(true).await;
}

#[test]
fn the_image_is_multi_stage_non_root_and_health_checked_on_its_port() {
    let compose = Compose::load();
    let (context, dockerfile) = compose.build();
    let instructions = parse_dockerfile(&read(&dockerfile));
    let stages = instructions.iter().filter(|i| i.keyword == "FROM").count();
    assert!(
        stages >= 2,
        "{dockerfile}: {stages} FROM, want a multi-stage build"
    );
    let last_from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .unwrap();
    let last = |keyword: &str| {
        instructions[last_from..]
            .iter()
            .rev()
            .find(|i| i.keyword == keyword)
            .map(|i| i.args.clone())
            .unwrap_or_else(|| panic!("{dockerfile}: no {keyword} in the final stage"))
    };

    let user = last("USER");
    let user = user.split(':').next().unwrap();
    assert!(
        user != "root" && user != "0",
        "{dockerfile}: the final stage runs as {user}"
    );

    let port = listen_port(&image_env(&compose));
    let exposed: Vec<&str> = instructions[last_from..]
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    assert!(
        exposed
            .iter()
            .any(|e| e.split('/').next() == Some(&port.to_string())),
        "{dockerfile}: CDC_GATEWAY_LISTEN is on {port}, EXPOSE says {exposed:?}"
    );
    let healthcheck = last("HEALTHCHECK");
    assert!(
        healthcheck.contains(&format!(":{port}/healthz")),
        "{dockerfile}: HEALTHCHECK `{healthcheck}` does not hit /healthz on {port}"
    );

    let ignore = read(&format!("{context}/.dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        dockerignored(&patterns, "target"),
        ".dockerignore does not exclude target/"
    );
    let mut sources: Vec<String> = ["Cargo.toml", "Cargo.lock", "src"]
        .map(String::from)
        .to_vec();
    for copy in instructions.iter().filter(|i| i.keyword == "COPY") {
        let args: Vec<&str> = copy.args.split_whitespace().collect();
        if args.iter().any(|a| a.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        assert!(paths.len() >= 2, "{dockerfile}: COPY {}", copy.args);
        sources.extend(paths[..paths.len() - 1].iter().map(|p| normalize(p)));
    }
    for source in sources {
        assert!(
            repo().join(&context).join(&source).exists(),
            "{dockerfile}: {source} is not in the build context"
        );
        assert!(
            !dockerignored(&patterns, &source),
            "{dockerfile}: .dockerignore keeps {source} out of the build"
        );
    }
}

#[test]
fn grafana_provisions_the_datasource_and_the_dashboards_compose_mounts() {
    let compose = Compose::load();
    let (grafana, service, provisioning) = compose.mount_of(PROVISIONING);
    let env: BTreeMap<String, String> = environment(service)
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
    let expected = env
        .get("GF_PATHS_PROVISIONING")
        .map_or("/etc/grafana/provisioning", String::as_str);
    assert_eq!(
        provisioning, expected,
        "{COMPOSE}: {grafana} mounts ./{PROVISIONING} where Grafana does not look"
    );

    let (_, _, dashboards_dir) = compose.mount_of(DASHBOARDS);
    let mut providers = Vec::new();
    for file in yaml_files(&format!("{PROVISIONING}/dashboards")) {
        let doc = yaml(&file);
        providers.extend(doc["providers"].as_sequence().cloned().unwrap_or_default());
    }
    assert!(
        !providers.is_empty(),
        "no dashboard provider is provisioned"
    );
    for provider in &providers {
        let path = provider["options"]["path"].as_str().expect("provider path");
        assert_eq!(
            path.trim_end_matches('/'),
            dashboards_dir,
            "the dashboard provider reads {path}, compose mounts ./{DASHBOARDS} at {dashboards_dir}"
        );
    }
    if let Some(home) = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let host = host_path(service, home)
            .unwrap_or_else(|| panic!("{grafana}: home dashboard {home} is not mounted"));
        assert!(
            repo().join(&host).is_file(),
            "home dashboard ./{host} is missing"
        );
    }

    let services: BTreeSet<&str> = compose.services().into_iter().map(|(n, _)| n).collect();
    let mut datasources = BTreeMap::new();
    for file in yaml_files(&format!("{PROVISIONING}/datasources")) {
        for source in yaml(&file)["datasources"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let uid = source["uid"].as_str().expect("datasource uid").to_owned();
            let kind = source["type"].as_str().expect("datasource type").to_owned();
            let url = source["url"].as_str().expect("datasource url");
            let address = url.split_once("://").map_or(url, |(_, rest)| rest);
            let host = address.split([':', '/']).next().unwrap();
            assert!(
                services.contains(host),
                "datasource {uid} points at {url}, not at a compose service"
            );
            datasources.insert(uid, kind);
        }
    }

    for file in json_files(DASHBOARDS) {
        let dashboard = json_file(&file);
        let mut used = Vec::new();
        datasource_refs(&dashboard, &mut used);
        assert!(!used.is_empty(), "{file} uses no datasource");
        for (uid, kind) in used {
            assert_eq!(
                datasources.get(&uid),
                Some(&kind),
                "{file} uses datasource {uid} ({kind}); provisioned: {datasources:?}"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_the_gateway_and_every_alert_has_a_runbook() {
    let compose = Compose::load();
    let (target, _) = gateway_scrape(&compose);
    let (gateway, _) = compose.gateway();
    let port = listen_port(&gateway_env(&compose));
    assert_eq!(
        target,
        format!("{gateway}:{port}"),
        "{PROMETHEUS_CONFIG} scrapes {target}, the gateway is service {gateway} on port {port}"
    );

    let headings = anchors(&read(RUNBOOKS));
    for file in rule_files(&compose) {
        for rule in alert_rules(&file) {
            let name = rule["alert"].as_str().unwrap();
            let field = |path: [&str; 2]| {
                rule[path[0]][path[1]]
                    .as_str()
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| panic!("{file}: {name} has no {}.{}", path[0], path[1]))
            };
            field(["labels", "severity"]);
            field(["annotations", "summary"]);
            let runbook = field(["annotations", "runbook_url"]);
            let (page, anchor) = runbook
                .split_once('#')
                .unwrap_or_else(|| panic!("{file}: {name} runbook {runbook} has no anchor"));
            if !page.contains("://") {
                assert!(
                    repo().join(page).is_file(),
                    "{file}: {name} runbook ./{page} is missing"
                );
            }
            assert!(
                headings.contains(anchor),
                "{file}: {name} runbook anchor #{anchor} is no heading of {RUNBOOKS}"
            );
        }
    }
}

#[tokio::test]
async fn dashboard_and_alerts_query_metrics_and_labels_the_gateway_exports() {
    let compose = Compose::load();
    let mut queries = Vec::new();
    for file in json_files(DASHBOARDS) {
        let dashboard = json_file(&file);
        let mut exprs = Vec::new();
        string_fields(&dashboard, "expr", &mut exprs);
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let query = &variable["query"];
            let definition = variable["definition"].as_str();
            exprs.extend(query.as_str().or(query["query"].as_str()).map(String::from));
            exprs.extend(definition.map(String::from));
        }
        queries.extend(exprs.into_iter().map(|e| (file.clone(), e)));
    }
    for file in rule_files(&compose) {
        for rule in alert_rules(&file) {
            let name = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().expect("alert expr").to_owned();
            queries.push((format!("{file} {name}"), expr));
        }
    }

    let (tansu, gateway, topic) = metrics_stack().await;
    move_every_metric(&tansu, &gateway, &topic).await;

    let (_, metrics_path) = gateway_scrape(&compose);
    let (status, text) = http_get(gateway.addr(), &metrics_path).await.unwrap();
    assert_eq!(status, 200, "{PROMETHEUS_CONFIG} scrapes {metrics_path}");
    let exported = exposition(&text);
    let target_labels = target_labels();
    for (source, expr) in &queries {
        let query = PromQl::parse(expr);
        assert!(
            !query.selectors.is_empty(),
            "{source}: `{expr}` selects no metric"
        );
        let mut labels = target_labels.clone();
        for selector in &query.selectors {
            let Some(series) = exported.get(&selector.metric) else {
                panic!(
                    "{source}: {} is not exported by the gateway",
                    selector.metric
                );
            };
            labels.extend(series.keys().cloned());
            for (label, op, value) in &selector.matchers {
                assert!(
                    target_labels.contains(label) || series.contains_key(label),
                    "{source}: {} has no label {label}",
                    selector.metric
                );
                if matches!(op.as_str(), "=" | "!=") && !value.contains('$') {
                    if let Some(values) = series.get(label) {
                        assert!(
                            values.contains(value),
                            "{source}: {}{{{label}{op}\"{value}\"}}: values are {values:?}",
                            selector.metric
                        );
                    }
                }
            }
        }
        for label in &query.grouping {
            assert!(
                labels.contains(label),
                "{source}: groups by {label}, which none of its metrics has"
            );
        }
    }
}

#[tokio::test]
async fn the_connector_routes_every_captured_table_to_the_gateway_under_its_entity_name() {
    let compose = Compose::load();
    let connector = Connector::load();
    let env = gateway_env(&compose);
    let renames: BTreeMap<String, String> = env
        .get("CDC_GATEWAY_ENTITY_MAP")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(from, to)| (from.trim().to_owned(), to.trim().to_owned()))
        .collect();
    let captured = connector.captured(&init_sql_tables());
    for table in renames.keys() {
        assert!(
            captured.iter().any(|(_, t)| t == table),
            "CDC_GATEWAY_ENTITY_MAP renames {table}, which the connector does not capture"
        );
    }

    let (tansu, gateway) = compose_gateway(&compose).await;
    gateway.wait_ready(true).await;
    let producer = tansu.producer();
    for (schema, table) in &captured {
        let entity = renames.get(table).unwrap_or_else(|| {
            panic!("CDC_GATEWAY_ENTITY_MAP has no entity name for captured table {table}")
        });
        let mut client = Client::connect(&gateway).await;
        client.subscribe(&format!("cdc.{entity}"), json!({})).await;
        let topic = connector.topic(schema, table);
        let (key, value) = connector.record(schema, table);
        producer.send_json(&topic, Some(&key), &value).await;
        let message = client.recv_within(WAIT).await.unwrap_or_else(|| {
            panic!(
                "a change of {schema}.{table}, routed to {topic}, did not reach cdc.{entity} \
                 (CDC_GATEWAY_SOURCE_TOPICS={})",
                env["CDC_GATEWAY_SOURCE_TOPICS"]
            )
        });
        assert_eq!(message["type"], "data", "{message}");
        assert_eq!(message["payload"]["entity_type"], entity.as_str());
        assert_eq!(
            message["payload"]["entity_id"], "1",
            "the record key is the primary key alone"
        );
    }
}

/// A broker and a gateway configured so that [`move_every_metric`] can move every metric
/// (the drop policy with a one-message queue, a dead-letter topic); returns the source topic.
pub(crate) async fn metrics_stack() -> (Tansu, Gateway, String) {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    let dead = unique("cdc-dead");
    tansu.create_topic(&topic, 1).await;
    tansu.create_topic(&dead, 1).await;
    let flags = [
        "--slow-client-policy",
        "drop",
        "--outbound-queue",
        "1",
        "--slow-client-grace",
        "100ms",
        "--dead-letter-topic",
        &dead,
    ];
    let gateway = Gateway::start(&tansu.brokers(), &topic, &flags).await;
    (tansu, gateway, topic)
}

/// Makes every gateway metric move: a subscription, a delivery, an error reply, a bad record
/// (decode error and dead letter), a close by the gateway, and drops from a client that does
/// not read; waits until the asynchronous ones (dead letter, lag, drops) show.
pub(crate) async fn move_every_metric(tansu: &Tansu, gateway: &Gateway, topic: &str) {
    let producer = tansu.producer();
    let mut reader = Client::connect(gateway).await;
    reader.subscribe("cdc.order", json!({})).await;
    reader
        .send(json!({"action": "no-such-action", "id": 1}))
        .await;
    assert_eq!(reader.recv().await["type"], "error");
    producer.send(topic, Some("bad"), Some("{not json")).await;
    producer.send_json(topic, None, &order(0, 16)).await;
    reader.data().await;
    drop(reader);

    let mut oversized = Client::connect(gateway).await;
    oversized.send(json!({"pad": "x".repeat(128 * 1024)})).await;
    assert_eq!(oversized.closed().await.0, 1009);

    let mut stalled = Client::connect_small_buffer(gateway).await;
    stalled.subscribe("cdc.order", json!({})).await;
    let burst: Vec<String> = (1..=3000).map(|i| order(i, 2048).to_string()).collect();
    producer.send_many(topic, &burst).await;

    for series in [
        "cdc_gateway_connections_active",
        "cdc_gateway_subscriptions_active",
        "cdc_gateway_topics_active",
        "cdc_gateway_deliveries_total",
        r#"cdc_gateway_events_consumed_total{result="dispatched"}"#,
        r#"cdc_gateway_decode_errors_total{reason="invalid_json"}"#,
        r#"cdc_gateway_dead_letter_total{result="written"}"#,
        r#"cdc_gateway_error_replies_total{code="UNKNOWN_ACTION"}"#,
        r#"cdc_gateway_connections_closed_total{code="1009"}"#,
        r#"cdc_gateway_drops_total{reason="queue_full"}"#,
        "cdc_gateway_enqueue_latency_seconds_count",
    ] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while gateway.metric(series).await <= 0.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} never moved"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gateway
        .metrics()
        .await
        .contains("cdc_gateway_consumer_lag{")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer lag never reported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn order(seq: usize, pad: usize) -> Value {
    json!({"entity_type": "order", "entity_id": seq.to_string(), "operation": "update",
           "data": {"seq": seq, "pad": "x".repeat(pad)}})
}

/// Spawns the gateway with exactly the environment the stack gives it (image ENV, then the
/// compose service's), except that it reaches a tansu broker and listens on loopback. The
/// topics the stack creates before the gateway starts (source, dead-letter, the connector's)
/// exist.
async fn compose_gateway(compose: &Compose) -> (Tansu, Gateway) {
    let tansu = Tansu::start();
    let mut env = gateway_env(compose);
    let mut topics: BTreeSet<String> = env
        .get("CDC_GATEWAY_SOURCE_TOPICS")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.starts_with('^'))
        .map(String::from)
        .collect();
    topics.extend(env.get("CDC_GATEWAY_DEAD_LETTER_TOPIC").cloned());
    let connector = Connector::load();
    for (schema, table) in connector.captured(&init_sql_tables()) {
        topics.insert(connector.topic(&schema, &table));
    }
    for topic in &topics {
        tansu.create_topic(topic, 1).await;
    }
    env.insert("CDC_GATEWAY_BROKERS".into(), tansu.brokers());
    let vars: Vec<(String, String)> = env.into_iter().collect();
    (tansu, Gateway::spawn_with_env(&vars))
}

/// Every `CDC_GATEWAY_*` variable the binary reads, as its own `--help` lists them.
fn config_variables() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_cdc-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        // `[env: NAME=value]`, or `[env: NAME]` where the value is hidden (a key file).
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("CDC_GATEWAY_") && !n.contains(' ')),
        "{names:?}"
    );
    names
}

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub(crate) fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

pub(crate) fn json_file(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

/// Files in a repo directory with one of the extensions, as repo paths; at least one.
fn files(dir: &str, extensions: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
        })
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {extensions:?} file in {dir}");
    out
}

fn yaml_files(dir: &str) -> Vec<String> {
    files(dir, &["yml", "yaml"])
}

pub(crate) fn json_files(dir: &str) -> Vec<String> {
    files(dir, &["json"])
}

/// A compose path relative to the repo root (compose resolves them against its own
/// directory, which is the root).
fn normalize(path: &str) -> String {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    if path.is_empty() {
        ".".into()
    } else {
        path.into()
    }
}

pub(crate) fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string or a list of strings (a healthcheck `test`, a `command`, an `env_file`).
pub(crate) fn words(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::Sequence(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// docker-compose.kafka.yml, parsed.
struct Compose {
    doc: Yaml,
}

impl Compose {
    fn load() -> Self {
        Compose { doc: yaml(COMPOSE) }
    }

    fn services(&self) -> Vec<(&str, &Yaml)> {
        self.doc["services"]
            .as_mapping()
            .expect("compose has services")
            .iter()
            .map(|(name, service)| (name.as_str().expect("service name"), service))
            .collect()
    }

    /// The one service built from this repository: the gateway.
    fn gateway(&self) -> (&str, &Yaml) {
        let built: Vec<_> = self
            .services()
            .into_iter()
            .filter(|(_, s)| !s["build"].is_null())
            .collect();
        assert_eq!(built.len(), 1, "{COMPOSE}: one service builds the gateway");
        built[0]
    }

    /// The gateway's build context and Dockerfile, as repo paths.
    fn build(&self) -> (String, String) {
        let build = &self.gateway().1["build"];
        let context = normalize(build.as_str().or(build["context"].as_str()).unwrap_or("."));
        let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
        let dockerfile = normalize(&format!("{context}/{dockerfile}"));
        (context, dockerfile)
    }

    /// The service that bind-mounts the repo path `host`, and where in its container.
    fn mount_of(&self, host: &str) -> (&str, &Yaml, String) {
        self.services()
            .into_iter()
            .find_map(|(name, service)| {
                binds(service)
                    .into_iter()
                    .find(|(from, _)| from == host)
                    .map(|(_, target)| (name, service, target))
            })
            .unwrap_or_else(|| panic!("{COMPOSE}: no service mounts ./{host}"))
    }

    /// Every repo path compose reads: build contexts and Dockerfiles, bind mounts, env files,
    /// config and secret files.
    fn host_paths(&self) -> Vec<String> {
        let (context, dockerfile) = self.build();
        let mut paths = vec![context, dockerfile];
        for (_, service) in self.services() {
            paths.extend(binds(service).into_iter().map(|(host, _)| host));
            let env_files = match &service["env_file"] {
                Yaml::Sequence(items) => items
                    .iter()
                    .filter_map(|i| i.as_str().or(i["path"].as_str()))
                    .map(String::from)
                    .collect(),
                other => words(other),
            };
            paths.extend(env_files.iter().map(|p| normalize(p)));
        }
        for section in ["configs", "secrets"] {
            for (_, item) in self.doc[section].as_mapping().into_iter().flatten() {
                paths.extend(item["file"].as_str().map(normalize));
            }
        }
        paths
    }
}

/// A service's `environment`, map or list form; a name without a value passes the host's.
fn environment(service: &Yaml) -> Vec<(String, Option<String>)> {
    match &service["environment"] {
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| (scalar(k).expect("variable name"), scalar(v)))
            .collect(),
        Yaml::Sequence(items) => items
            .iter()
            .filter_map(Yaml::as_str)
            .map(|item| match item.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (item.to_owned(), None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A service's bind mounts as (repo path, container path); named volumes are left out.
fn binds(service: &Yaml) -> Vec<(String, String)> {
    let is_host = |s: &str| s.starts_with('.') || s.starts_with('/');
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|volume| match volume.as_str() {
            Some(short) => {
                let mut parts = short.split(':');
                let (source, target) = (parts.next()?, parts.next()?);
                is_host(source).then(|| (normalize(source), target.to_owned()))
            }
            None => {
                let source = volume["source"].as_str()?;
                let bind = volume["type"].as_str() == Some("bind") || is_host(source);
                let target = volume["target"].as_str()?;
                bind.then(|| (normalize(source), target.to_owned()))
            }
        })
        .collect()
}

/// The repo path a container path of the service comes from, through its bind mounts.
fn host_path(service: &Yaml, container: &str) -> Option<String> {
    binds(service)
        .into_iter()
        .filter_map(|(host, target)| {
            let rest = container.strip_prefix(target.trim_end_matches('/'))?;
            (rest.is_empty() || rest.starts_with('/'))
                .then(|| (target.len(), normalize(&format!("{host}{rest}"))))
        })
        .max()
        .map(|(_, path)| path)
}

/// The container side of a `ports` entry: "8080", "8080:8080", "127.0.0.1:80:8080/tcp",
/// or the long form.
fn container_port(entry: &Yaml) -> u16 {
    let port = match entry.as_mapping() {
        Some(_) => scalar(&entry["target"]).expect("ports target"),
        None => scalar(entry).expect("ports entry"),
    };
    let port = port.rsplit(':').next().unwrap().split('/').next().unwrap();
    port.parse()
        .unwrap_or_else(|_| panic!("ports entry {port}"))
}

fn listen_port(env: &BTreeMap<String, String>) -> u16 {
    let listen = env
        .get("CDC_GATEWAY_LISTEN")
        .expect("CDC_GATEWAY_LISTEN is set");
    listen
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("CDC_GATEWAY_LISTEN={listen}: {e}"))
        .port()
}

/// One Dockerfile instruction, continuation lines joined.
struct Instruction {
    keyword: String,
    args: String,
}

fn parse_dockerfile(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push(Instruction {
                    keyword: keyword.to_uppercase(),
                    args: args.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                current.clear();
            }
        }
    }
    out
}

/// The ENV of the image's final stage (`ENV A=1 B=2` or the old `ENV A 1`).
fn image_env(compose: &Compose) -> BTreeMap<String, String> {
    let instructions = parse_dockerfile(&read(&compose.build().1));
    let last_from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("a FROM");
    let mut env = BTreeMap::new();
    for i in instructions[last_from..]
        .iter()
        .filter(|i| i.keyword == "ENV")
    {
        let unquote = |s: &str| s.trim_matches('"').to_owned();
        let first = i.args.split_whitespace().next().unwrap_or_default();
        if first.contains('=') {
            for pair in i.args.split_whitespace() {
                let (name, value) = pair.split_once('=').expect("ENV name=value");
                env.insert(name.to_owned(), unquote(value));
            }
        } else if let Some((name, value)) = i.args.split_once(' ') {
            env.insert(name.to_owned(), unquote(value));
        }
    }
    env
}

/// The gateway's environment in the stack: the image's ENV, overridden by compose's.
fn gateway_env(compose: &Compose) -> BTreeMap<String, String> {
    let mut env = image_env(compose);
    for (name, value) in environment(compose.gateway().1) {
        if let Some(value) = value {
            env.insert(name, value);
        }
    }
    env
}

/// Whether .dockerignore keeps `path` (or a directory above it) out of the build context;
/// the last matching pattern wins, as in Docker.
fn dockerignored(patterns: &[&str], path: &str) -> bool {
    let mut candidates = vec![path.to_owned()];
    let mut parent = path;
    while let Some((dir, _)) = parent.rsplit_once('/') {
        candidates.push(dir.to_owned());
        parent = dir;
    }
    let mut ignored = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, *pattern),
        };
        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
        let matches = |name: &str| match pattern.strip_prefix("**/") {
            Some(tail) => {
                glob(tail.as_bytes(), name.as_bytes())
                    || name
                        .match_indices('/')
                        .any(|(i, _)| glob(tail.as_bytes(), &name.as_bytes()[i + 1..]))
            }
            None => glob(pattern.as_bytes(), name.as_bytes()),
        };
        if candidates.iter().any(|c| matches(c)) {
            ignored = !negated;
        }
    }
    ignored
}

/// Go's filepath.Match for `*` and `?` (neither crosses a `/`).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], name)
                || (name.first().is_some_and(|c| *c != b'/') && glob(pattern, &name[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &name[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Every datasource the dashboard refers to, as (uid, type); Grafana's built-in annotation
/// source and datasource variables are left out.
fn datasource_refs(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if let Some(source) = map.get("datasource") {
                let uid = source["uid"].as_str().unwrap_or_default();
                let kind = source["type"].as_str().unwrap_or_default();
                if kind != "grafana" && !uid.is_empty() && !uid.starts_with('$') {
                    out.push((uid.to_owned(), kind.to_owned()));
                }
            }
            map.values().for_each(|v| datasource_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| datasource_refs(v, out)),
        _ => {}
    }
}

/// Every string value of `key` anywhere in the document.
fn string_fields(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            out.extend(map.get(key).and_then(Value::as_str).map(String::from));
            map.values().for_each(|v| string_fields(v, key, out));
        }
        Value::Array(items) => items.iter().for_each(|v| string_fields(v, key, out)),
        _ => {}
    }
}

/// The gateway's scrape target (`host:port`) and metrics path in the Prometheus config.
fn gateway_scrape(compose: &Compose) -> (String, String) {
    let (gateway, _) = compose.gateway();
    let config = yaml(PROMETHEUS_CONFIG);
    for job in config["scrape_configs"].as_sequence().into_iter().flatten() {
        for target in job["static_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|s| words(&s["targets"]))
        {
            if target.split(':').next() == Some(gateway) {
                let path = job["metrics_path"].as_str().unwrap_or("/metrics");
                return (target, path.to_owned());
            }
        }
    }
    panic!("{PROMETHEUS_CONFIG} has no target on service {gateway}")
}

/// Labels a scraped series carries besides its own: job, instance and static labels.
fn target_labels() -> BTreeSet<String> {
    let config = yaml(PROMETHEUS_CONFIG);
    let mut labels: BTreeSet<String> = TARGET_LABELS.map(String::from).into();
    for job in config["scrape_configs"].as_sequence().into_iter().flatten() {
        for statics in job["static_configs"].as_sequence().into_iter().flatten() {
            for (name, _) in statics["labels"].as_mapping().into_iter().flatten() {
                labels.insert(name.as_str().unwrap().to_owned());
            }
        }
    }
    labels
}

/// The rule files Prometheus loads, as repo paths: the config compose mounts names them
/// relative to its own container path, and compose must mount each of them too.
fn rule_files(compose: &Compose) -> Vec<String> {
    let (prometheus, service, config_path) = compose.mount_of(PROMETHEUS_CONFIG);
    let flag = words(&service["command"])
        .into_iter()
        .find_map(|arg| arg.strip_prefix("--config.file=").map(String::from))
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".into());
    assert_eq!(
        flag, config_path,
        "{COMPOSE}: {prometheus} reads {flag}, ./{PROMETHEUS_CONFIG} is mounted at {config_path}"
    );
    let dir = Path::new(&config_path).parent().unwrap();
    let rules = words(&yaml(PROMETHEUS_CONFIG)["rule_files"]);
    assert!(!rules.is_empty(), "{PROMETHEUS_CONFIG} loads no rule file");
    rules
        .iter()
        .map(|rule| {
            let container = dir.join(rule);
            let container = container.to_str().unwrap();
            let host = host_path(service, container).unwrap_or_else(|| {
                panic!("{COMPOSE}: {prometheus} does not mount rule file {container}")
            });
            assert!(
                repo().join(&host).is_file(),
                "rule file ./{host} is missing"
            );
            host
        })
        .collect()
}

/// The alerting rules of a rule file (recording rules are left out).
fn alert_rules(file: &str) -> Vec<Yaml> {
    let doc = yaml(file);
    let rules: Vec<Yaml> = doc["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_sequence().cloned().unwrap_or_default())
        .filter(|rule| rule["alert"].is_string())
        .collect();
    assert!(!rules.is_empty(), "{file} has no alert");
    rules
}

/// The anchors GitHub gives a Markdown file's headings: lower case, spaces to `-`,
/// punctuation dropped. Headings inside code fences do not count.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let Some(heading) = line.strip_prefix('#').filter(|_| !fenced) else {
            continue;
        };
        let text = heading.trim_start_matches('#');
        if text.starts_with(' ') {
            let anchor = text
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect();
            out.insert(anchor);
        }
    }
    out
}

/// Series names in a text exposition, each with its labels and their values.
fn exposition(text: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let chars: Vec<char> = line[end..].chars().collect();
            for (name, _, value) in matchers(&chars, &mut 0) {
                labels.entry(name).or_default().insert(value);
            }
        }
    }
    out
}

/// What a PromQL expression refers to: metric selectors and grouping labels.
struct PromQl {
    selectors: Vec<Selector>,
    /// Labels of `by`, `without`, `on` and `ignoring` clauses.
    grouping: Vec<String>,
}

struct Selector {
    metric: String,
    /// (label, operator, value).
    matchers: Vec<(String, String, String)>,
}

impl PromQl {
    /// A metric is an identifier followed by `{` or `[`, or one with a gateway or process
    /// prefix followed by `)`, `,`, whitespace or the end. Functions (followed by `(`),
    /// keywords and label names are neither; quoted strings are skipped.
    fn parse(expr: &str) -> Self {
        let chars: Vec<char> = expr.chars().collect();
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let mut query = PromQl {
            selectors: Vec::new(),
            grouping: Vec::new(),
        };
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '"' || c == '\'' {
                quoted(&chars, &mut i);
                continue;
            }
            if !ident(c) || c.is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars.get(i).copied();
            let after_space = chars[i..].iter().copied().find(|c| !c.is_whitespace());
            if matches!(word.as_str(), "by" | "without" | "on" | "ignoring")
                && after_space == Some('(')
            {
                let open = i + chars[i..].iter().position(|c| *c == '(').unwrap();
                let close = open + chars[open..].iter().position(|c| *c == ')').unwrap();
                let list: String = chars[open + 1..close].iter().collect();
                query.grouping.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
                i = close + 1;
                continue;
            }
            let prefixed = word.starts_with("cdc_gateway_") || word.starts_with("process_");
            let selects = matches!(next, Some('{' | '['))
                || (prefixed && next.is_none_or(|c| c.is_whitespace() || c == ')' || c == ','));
            if selects {
                let matchers = if next == Some('{') {
                    matchers(&chars, &mut i)
                } else {
                    Vec::new()
                };
                query.selectors.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        }
        query
    }
}

/// Reads `{name op "value", ...}` starting at the `{`; leaves `i` after the `}`.
fn matchers(chars: &[char], i: &mut usize) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    *i += 1;
    loop {
        while chars
            .get(*i)
            .is_some_and(|c| c.is_whitespace() || *c == ',')
        {
            *i += 1;
        }
        if chars.get(*i).is_none_or(|c| *c == '}') {
            *i += 1;
            return out;
        }
        let start = *i;
        while chars[*i].is_ascii_alphanumeric() || chars[*i] == '_' {
            *i += 1;
        }
        let name: String = chars[start..*i].iter().collect();
        let start = *i;
        while matches!(chars[*i], '=' | '!' | '~' | ' ') {
            *i += 1;
        }
        let op: String = chars[start..*i].iter().filter(|c| **c != ' ').collect();
        let value = quoted(chars, i);
        out.push((name, op, value));
    }
}

/// Reads a quoted string starting at its opening quote; leaves `i` after the closing one.
fn quoted(chars: &[char], i: &mut usize) -> String {
    let quote = chars[*i];
    let mut value = String::new();
    *i += 1;
    while let Some(&c) = chars.get(*i) {
        *i += 1;
        match c {
            '\\' => {
                value.extend(chars.get(*i));
                *i += 1;
            }
            c if c == quote => break,
            c => value.push(c),
        }
    }
    value
}

/// Tables deploy/postgres/init.sql creates, as (schema, table).
fn init_sql_tables() -> Vec<(String, String)> {
    let sql: String = read(INIT_SQL)
        .lines()
        .map(|line| line.split("--").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let words: Vec<&str> = sql.split_whitespace().collect();
    let mut tables = Vec::new();
    for (i, pair) in words.windows(2).enumerate() {
        if !(pair[0].eq_ignore_ascii_case("create") && pair[1].eq_ignore_ascii_case("table")) {
            continue;
        }
        let mut name = words[i + 2];
        if name.eq_ignore_ascii_case("if") {
            name = words[i + 5];
        }
        let name = name.split('(').next().unwrap().to_lowercase();
        let (schema, table) = name.split_once('.').unwrap_or(("public", &name));
        tables.push((schema.to_owned(), table.to_owned()));
    }
    assert!(!tables.is_empty(), "{INIT_SQL} creates no table");
    tables
}

/// deploy/debezium/postgres-connector.json: which tables it captures, where it writes their
/// changes, and what those records look like.
struct Connector {
    config: serde_json::Map<String, Value>,
}

impl Connector {
    fn load() -> Self {
        let doc = json_file(CONNECTOR);
        let config = doc["config"]
            .as_object()
            .unwrap_or_else(|| panic!("{CONNECTOR} has no config"))
            .clone();
        Connector { config }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(Value::as_str)
    }

    /// The tables of `tables` the include lists select. Every list entry must select one:
    /// an entry that selects nothing is a misspelt table.
    fn captured(&self, tables: &[(String, String)]) -> Vec<(String, String)> {
        let list = |key: &str| -> Option<Vec<JavaRegex>> {
            self.get(key)
                .map(|v| v.split(',').map(|r| JavaRegex::new(r.trim())).collect())
        };
        let schemas = list("schema.include.list");
        let names = list("table.include.list");
        let captured: Vec<(String, String)> = tables
            .iter()
            .filter(|(schema, table)| {
                schemas
                    .as_ref()
                    .is_none_or(|l| l.iter().any(|r| r.full_match(schema).is_some()))
                    && names.as_ref().is_none_or(|l| {
                        l.iter()
                            .any(|r| r.full_match(&format!("{schema}.{table}")).is_some())
                    })
            })
            .cloned()
            .collect();
        for regex in names.iter().flatten() {
            assert!(
                captured
                    .iter()
                    .any(|(s, t)| regex.full_match(&format!("{s}.{t}")).is_some()),
                "{CONNECTOR}: table.include.list entry {} names no table of {INIT_SQL}",
                regex.source
            );
        }
        assert!(!captured.is_empty(), "{CONNECTOR} captures no table");
        captured
    }

    /// The topic Debezium names `<topic.prefix>.<schema>.<table>`, after the topic routers.
    fn topic(&self, schema: &str, table: &str) -> String {
        let prefix = self.get("topic.prefix").expect("topic.prefix");
        let mut topic = format!("{prefix}.{schema}.{table}");
        for alias in self.transforms() {
            let kind = self.get(&format!("transforms.{alias}.type")).unwrap();
            let (regex, replacement) = match kind {
                "io.debezium.transforms.ByLogicalTableRouter" => {
                    ("topic.regex", "topic.replacement")
                }
                "org.apache.kafka.connect.transforms.RegexRouter" => ("regex", "replacement"),
                other => panic!("{CONNECTOR}: transform {other}: teach this test what it does"),
            };
            let setting = |key: &str| self.get(&format!("transforms.{alias}.{key}")).unwrap();
            if let Some(groups) = JavaRegex::new(setting(regex)).full_match(&topic) {
                topic = substitute(setting(replacement), &groups);
            }
        }
        topic
    }

    fn transforms(&self) -> Vec<&str> {
        self.get("transforms")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The key and value Debezium writes for a snapshot read of row `id = 1`, through the
    /// connector's converters and the router's key field.
    fn record(&self, schema: &str, table: &str) -> (String, Value) {
        let physical = format!("{}.{schema}.{table}", self.get("topic.prefix").unwrap());
        let mut key = json!({"id": 1});
        for alias in self.transforms() {
            let router = self.get(&format!("transforms.{alias}.type"))
                == Some("io.debezium.transforms.ByLogicalTableRouter");
            let unique = self.get(&format!("transforms.{alias}.key.enforce.uniqueness"));
            if router && unique != Some("false") {
                key["__dbz__physicalTableIdentifier"] = json!(physical);
            }
        }
        let value = json!({
            "before": null,
            "after": {"id": 1},
            "source": {"connector": "postgresql", "name": self.get("topic.prefix"),
                       "db": self.get("database.dbname"), "schema": schema, "table": table,
                       "snapshot": "true", "ts_ms": 1_763_805_600_000_i64},
            "op": "r",
            "ts_ms": 1_763_805_600_000_i64,
        });
        let convert = |side: &str, payload: Value| {
            let converter = self.get(&format!("{side}.converter")).unwrap_or_default();
            assert_eq!(
                converter, "org.apache.kafka.connect.json.JsonConverter",
                "{CONNECTOR}: the gateway decodes JSON, {side}.converter is {converter}"
            );
            match self.get(&format!("{side}.converter.schemas.enable")) {
                Some("false") => payload,
                _ => json!({"schema": {"type": "struct", "optional": false}, "payload": payload}),
            }
        };
        (convert("key", key).to_string(), convert("value", value))
    }
}

/// Java's `$n` group references in a replacement.
fn substitute(replacement: &str, groups: &[String]) -> String {
    let mut out = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '$' => {
                let mut n = String::new();
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    n.push(d);
                }
                out.push_str(&groups[n.parse::<usize>().expect("$ then a group number")]);
            }
            c => out.push(c),
        }
    }
    out
}

/// The part of Java's regex syntax connector configs use here: literals, `\` escapes, `.`,
/// `*` `+` `?` on one character, and capture groups. Anything else panics, so that a new form
/// is added here rather than misread.
struct JavaRegex {
    source: String,
    nodes: Vec<Node>,
    groups: usize,
}

enum Node {
    /// A character (`None`: any), repeated min..=max times.
    Atom(Option<char>, usize, usize),
    Open(usize),
    Close(usize),
}

impl JavaRegex {
    fn new(source: &str) -> Self {
        let mut nodes = Vec::new();
        let (mut groups, mut open) = (1, Vec::new());
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            let node = match c {
                '\\' => match chars.next() {
                    Some(e) if !e.is_ascii_alphanumeric() => Node::Atom(Some(e), 1, 1),
                    other => panic!("regex {source}: escape {other:?} is not supported"),
                },
                '.' => Node::Atom(None, 1, 1),
                '(' => {
                    open.push(groups);
                    groups += 1;
                    Node::Open(groups - 1)
                }
                ')' => Node::Close(open.pop().expect("balanced parentheses")),
                '*' | '+' | '?' => match nodes.last_mut() {
                    Some(Node::Atom(_, min, max)) if (*min, *max) == (1, 1) => {
                        (*min, *max) = match c {
                            '*' => (0, usize::MAX),
                            '+' => (1, usize::MAX),
                            _ => (0, 1),
                        };
                        continue;
                    }
                    _ => panic!("regex {source}: {c} is only supported after one character"),
                },
                '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                    panic!("regex {source}: {c} is not supported")
                }
                c => Node::Atom(Some(c), 1, 1),
            };
            nodes.push(node);
        }
        JavaRegex {
            source: source.to_owned(),
            nodes,
            groups,
        }
    }

    /// The groups (0 is the whole text) if the regex matches all of `text`.
    fn full_match(&self, text: &str) -> Option<Vec<String>> {
        let text: Vec<char> = text.chars().collect();
        let mut spans = vec![(0, text.len()); self.groups];
        self.run(0, &text, 0, &mut spans).then(|| {
            spans
                .iter()
                .map(|&(start, end)| text[start..end].iter().collect())
                .collect()
        })
    }

    fn run(&self, node: usize, text: &[char], pos: usize, spans: &mut [(usize, usize)]) -> bool {
        match self.nodes.get(node) {
            None => pos == text.len(),
            Some(Node::Open(g)) => {
                spans[*g].0 = pos;
                self.run(node + 1, text, pos, spans)
            }
            Some(Node::Close(g)) => {
                spans[*g].1 = pos;
                self.run(node + 1, text, pos, spans)
            }
            Some(Node::Atom(c, min, max)) => {
                let available = text[pos..]
                    .iter()
                    .take(*max)
                    .take_while(|t| c.is_none_or(|c| c == **t))
                    .count();
                (*min..=available)
                    .rev()
                    .any(|n| self.run(node + 1, text, pos + n, spans))
            }
        }
    }
}

#[test]
fn the_regex_subset_matches_like_java() {
    let router = JavaRegex::new(r"shop\.public\.(.*)");
    assert_eq!(
        router.full_match("shop.public.orders").unwrap()[1],
        "orders"
    );
    assert!(router.full_match("shopXpublic.orders").is_none());
    assert!(JavaRegex::new("public.orders")
        .full_match("public.orders")
        .is_some());
    assert!(JavaRegex::new("public.orders")
        .full_match("public.orders2")
        .is_none());
    assert_eq!(
        substitute("cdc.$1", &["shop.public.x".into(), "x".into()]),
        "cdc.x"
    );
}
