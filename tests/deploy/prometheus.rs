//! The monitoring, run by Prometheus itself rather than read by parsers: promtool checks the
//! scrape config (laid out as compose mounts it) and the alert rules and runs their unit tests
//! (deploy/prometheus/alerts.test.yml, which must make every alert fire once and stay quiet
//! once), and the real `prometheus` binary scrapes a live gateway every second and answers
//! every dashboard query and every alert expression over its HTTP API.
//!
//! Prometheus and promtool come from Debian's `prometheus` package (scripts/install-deps.sh);
//! without them these tests fail, they do not skip.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_yaml::Value as Yaml;

use crate::deploy::{json_file, json_files, metrics_stack, move_every_metric, repo, yaml};
use crate::support::*;

const COMPOSE: &str = "docker-compose.kafka.yml";
const CONFIG: &str = "deploy/prometheus/prometheus.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const DASHBOARDS: &str = "grafana/dashboards";
const INSTALL: &str = "scripts/install-deps.sh";
/// Where the prometheus image reads its configuration when compose passes no --config.file.
const DEFAULT_CONFIG_FILE: &str = "/etc/prometheus/prometheus.yml";
/// How often the test's Prometheus scrapes and evaluates rules.
const INTERVAL: &str = "1s";
/// The smallest `$__rate_interval` Grafana computes: four scrape intervals.
const MIN_RATE_INTERVAL: &str = "4s";

#[test]
fn promtool_accepts_the_scrape_config_as_the_container_sees_it() {
    let layout = Layout::new();
    let config = layout.config.to_str().unwrap();
    let output = promtool(&["check", "config", config]);
    for rule_file in layout.rule_files() {
        let checked = layout
            .root
            .path
            .join(rule_file.container.trim_start_matches('/'));
        assert!(
            output.contains(&format!("Checking {}", checked.display())),
            "promtool check config did not check rule file {} (./{}):\n{output}",
            rule_file.container,
            rule_file.repo
        );
    }
}

#[test]
fn promtool_accepts_every_rule_file() {
    for rule_file in Layout::new().rule_files() {
        let output = promtool(&["check", "rules", &rule_file.repo]);
        let rules: usize = yaml(&rule_file.repo)["groups"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|g| g["rules"].as_sequence().map_or(0, Vec::len))
            .sum();
        assert!(
            output.contains(&format!("SUCCESS: {rules} rules found")),
            "promtool check rules {}: want {rules} rules:\n{output}",
            rule_file.repo
        );
    }
}

#[test]
fn promtool_runs_the_alert_unit_tests() {
    let output = promtool(&["test", "rules", RULE_TESTS]);
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet() {
    let loaded: BTreeSet<String> = Layout::new()
        .rule_files()
        .into_iter()
        .map(|r| r.repo)
        .collect();
    let tests = yaml(RULE_TESTS);
    let dir = Path::new(RULE_TESTS).parent().unwrap();
    let tested: BTreeSet<String> = strings(&tests["rule_files"])
        .iter()
        .map(|file| normalize(dir.join(file).to_str().unwrap()))
        .collect();
    assert_eq!(
        tested, loaded,
        "{RULE_TESTS} must test the rule files {CONFIG} loads"
    );

    let alerts: BTreeSet<String> = loaded.iter().flat_map(|f| alert_names(f)).collect();
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    let cases = tests["tests"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|test| test["alert_rule_test"].as_sequence().into_iter().flatten());
    for case in cases {
        let name = case["alertname"]
            .as_str()
            .unwrap_or_else(|| panic!("{RULE_TESTS}: a case without alertname"));
        assert!(
            alerts.contains(name),
            "{RULE_TESTS} tests {name}, which no rule file defines (promtool passes such a case)"
        );
        let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
        if expected > 0 {
            firing.insert(name.to_owned());
        } else {
            quiet.insert(name.to_owned());
        }
    }
    for alert in &alerts {
        assert!(
            firing.contains(alert),
            "{RULE_TESTS} has no case where {alert} fires"
        );
        assert!(
            quiet.contains(alert),
            "{RULE_TESTS} has no case where {alert} stays quiet"
        );
    }
}

/// A real Prometheus, configured from deploy/prometheus/prometheus.yml (its gateway job, with
/// the gateway on loopback and 1 s intervals) and loading the real rule files, scrapes a live
/// gateway before, during and after traffic that moves every metric. Then: the target is up,
/// every rule is healthy, the drop and decode-error alerts are pending, every dashboard query
/// (variables substituted as Grafana does, for one instance and for All) returns series, and
/// every alert expression evaluates and, with its comparisons made `bool`, selects series.
#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway_and_answers_every_dashboard_query_and_alert() {
    let started = Instant::now();
    let binary = tool("prometheus");
    let (tansu, gateway, topic) = metrics_stack().await;
    let instance = gateway.addr().to_string();

    let layout = Layout::new();
    let job = layout.scrape_gateway(&instance);
    let prometheus = Prometheus::start(&binary, layout).await;
    let up = format!("up{{job=\"{job}\", instance=\"{instance}\"}}");

    // Scraped before the traffic: the counters' zeros are stored, so rates see the rise.
    prometheus
        .wait_for(&format!("count_over_time({up}[1m]) >= 2 and {up} == 1"))
        .await;
    move_every_metric(&tansu, &gateway, &topic).await;
    let traffic_done = Instant::now();
    loop {
        let seconds = traffic_done.elapsed().as_secs();
        if seconds >= 3 {
            let after = format!("count_over_time({up}[{seconds}s]) >= 3");
            if !prometheus.query(&after).await["result"]
                .as_array()
                .unwrap()
                .is_empty()
            {
                break;
            }
        }
        assert!(
            traffic_done.elapsed() < Duration::from_secs(20),
            "Prometheus did not scrape the gateway 3 times in 20 s after the traffic"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let targets = prometheus.api("/api/v1/targets").await;
    let gateway_targets: Vec<&Value> = targets["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["labels"]["instance"] == instance.as_str())
        .collect();
    assert_eq!(gateway_targets.len(), 1, "targets: {targets}");
    let target = gateway_targets[0];
    assert_eq!(target["labels"]["job"], job.as_str(), "{target}");
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");

    let rule_files = prometheus.layout.rule_files();
    let alerts: Vec<Yaml> = rule_files.iter().flat_map(|f| rules(&f.repo)).collect();
    let alert_names: BTreeSet<String> = rule_files
        .iter()
        .flat_map(|f| alert_names(&f.repo))
        .collect();
    prometheus.wait_rules_healthy(&alert_names).await;
    prometheus
        .wait_alerts_pending(
            &[
                ("CdcGatewayDrops", "reason", "queue_full"),
                ("CdcGatewayDecodeErrors", "reason", "invalid_json"),
            ],
            &["CdcGatewayNotReady", "CdcGatewayNoEventsConsumed"],
            &instance,
        )
        .await;

    let mut failures = Vec::new();
    let whole = format!("{}s", prometheus.started.elapsed().as_secs() + 5);
    let mut evaluated = 0;
    for file in json_files(DASHBOARDS) {
        let dashboard = json_file(&file);
        let mut exprs = Vec::new();
        target_exprs(&dashboard, &mut exprs);
        assert!(!exprs.is_empty(), "{file} has no query");
        let variables = prometheus
            .resolve_variables(&file, &dashboard, &mut failures)
            .await;
        for (selection, values) in &variables {
            for (window, finite) in [(MIN_RATE_INTERVAL, false), (whole.as_str(), true)] {
                let mut values = values.clone();
                values.extend(grafana_builtins(window));
                for expr in &exprs {
                    let query = match interpolate(expr, &values) {
                        Ok(query) => query,
                        Err(e) => {
                            failures.push(format!("{file}: `{expr}`: {e}"));
                            continue;
                        }
                    };
                    evaluated += 1;
                    let context = format!("{file} ({selection}, window {window}): `{query}`");
                    match prometheus.try_query(&query).await {
                        Err(e) => failures.push(format!("{context}: {e}")),
                        Ok(data) if samples(&data).is_empty() => {
                            failures.push(format!("{context}: no series"))
                        }
                        Ok(data) if finite && !samples(&data).iter().any(|v| v.is_finite()) => {
                            failures.push(format!("{context}: only {:?}", samples(&data)))
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    for rule in &alerts {
        let name = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap().trim();
        if let Err(e) = prometheus.try_query(expr).await {
            failures.push(format!("alert {name}: `{expr}`: {e}"));
        }
        let series = with_bool(expr);
        match prometheus.try_query(&series).await {
            Err(e) => failures.push(format!("alert {name}: `{series}`: {e}")),
            Ok(data) if samples(&data).is_empty() => failures.push(format!(
                "alert {name}: `{series}` selects no series: its condition can never hold \
                 for this gateway"
            )),
            Ok(_) => {}
        }
        evaluated += 2;
    }
    assert!(
        failures.is_empty(),
        "{} of {evaluated} queries failed against the real Prometheus:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{evaluated} queries answered by Prometheus in a test of {:.1?}",
        started.elapsed()
    );
}

#[test]
fn comparisons_become_bool_outside_selectors_and_strings() {
    assert_eq!(
        with_bool(r#"sum(rate(x{reason!="a>b"}[5m])) > 0"#),
        r#"sum(rate(x{reason!="a>b"}[5m])) > bool 0"#
    );
    assert_eq!(
        with_bool("(max(a) > 1000)\nand\n(deriv(a[10m]) >= bool 0)"),
        "(max(a) > bool 1000)\nand\n(deriv(a[10m]) >= bool 0)"
    );
    assert_eq!(with_bool("max(x) == 0"), "max(x) == bool 0");
    assert_eq!(with_bool("a != b < c"), "a != bool b < bool c");
    let vars = BTreeMap::from([
        ("job".to_owned(), "cdc".to_owned()),
        ("__rate_interval".to_owned(), "4s".to_owned()),
    ]);
    assert_eq!(
        interpolate(
            r#"rate(x{job=~"$job"}[$__rate_interval]) + ${job} + [[job]]"#,
            &vars
        ),
        Ok(r#"rate(x{job=~"cdc"}[4s]) + cdc + cdc"#.to_owned())
    );
    assert!(interpolate("x{a=\"$nope\"}", &vars).is_err());
    assert_eq!(
        interpolate(r#"label_replace(x, "a", "$1", "b", "(.*)")"#, &vars),
        Ok(r#"label_replace(x, "a", "$1", "b", "(.*)")"#.to_owned())
    );
    assert_eq!(regex_escape("127.0.0.1:80"), r"127\\.0\\.0\\.1:80");
}

/// A Prometheus child process on a free loopback port, killed (and its directory removed)
/// when dropped.
struct Prometheus {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    started: Instant,
    layout: Layout,
}

impl Prometheus {
    async fn start(binary: &Path, layout: Layout) -> Self {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = layout.root.path.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", layout.config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                layout.root.path.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let mut prometheus = Prometheus {
            child: Some(child),
            addr,
            log,
            started: Instant::now(),
            layout,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = prometheus.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "prometheus exited with {status}:\n{}",
                    prometheus.log_tail()
                );
            }
            if matches!(get(addr, "/-/ready").await, Ok((200, _))) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus is not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The `data` of a successful API answer, or Prometheus' error.
    async fn try_api(&self, target: &str) -> Result<Value, String> {
        let (status, body) = get(self.addr, target)
            .await
            .map_err(|e| format!("GET {target}: {e}"))?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {target}: HTTP {status}, not JSON ({e}): {body}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!(
                "HTTP {status}, {}: {}",
                answer["errorType"], answer["error"]
            ));
        }
        Ok(answer["data"].clone())
    }

    async fn api(&self, target: &str) -> Value {
        self.try_api(target)
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"))
    }

    async fn try_query(&self, promql: &str) -> Result<Value, String> {
        self.try_api(&format!("/api/v1/query?query={}", encode(promql)))
            .await
    }

    async fn query(&self, promql: &str) -> Value {
        self.try_query(promql)
            .await
            .unwrap_or_else(|e| panic!("`{promql}`: {e}"))
    }

    /// Waits until the query returns a series.
    async fn wait_for(&self, promql: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while samples(&self.query(promql).await).is_empty() {
            assert!(
                Instant::now() < deadline,
                "`{promql}` returned nothing for 20 s; prometheus log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every rule has been evaluated; fails on a rule in error, or when an alert
    /// of the rule files is not loaded.
    async fn wait_rules_healthy(&self, alerts: &BTreeSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let data = self.api("/api/v1/rules").await;
            let rules: Vec<&Value> = data["groups"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap())
                .collect();
            let loaded: BTreeSet<String> = rules
                .iter()
                .filter(|r| r["type"] == "alerting")
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(&loaded, alerts, "alerts loaded by Prometheus");
            for rule in &rules {
                assert_ne!(
                    rule["health"], "err",
                    "rule {} fails: {}",
                    rule["name"], rule["lastError"]
                );
            }
            if rules.iter().all(|r| r["health"] == "ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rules not evaluated in 10 s: {data}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until each (alert, label, value) is pending or firing for the instance; then
    /// none of `quiet` may be.
    async fn wait_alerts_pending(
        &self,
        active: &[(&str, &str, &str)],
        quiet: &[&str],
        instance: &str,
    ) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let data = self.api("/api/v1/alerts").await;
            let alerts: Vec<&Value> = data["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["labels"]["instance"] == instance)
                .collect();
            let missing: Vec<_> = active
                .iter()
                .filter(|(name, label, value)| {
                    !alerts
                        .iter()
                        .any(|a| a["labels"]["alertname"] == *name && a["labels"][label] == *value)
                })
                .collect();
            if missing.is_empty() {
                for name in quiet {
                    assert!(
                        !alerts.iter().any(|a| a["labels"]["alertname"] == *name),
                        "{name} is active for a ready gateway that consumed events: {data}"
                    );
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "alerts {missing:?} did not become pending after the gateway reported them: \
                 {data}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each way the dashboard's variables are tried (one value each, and All), with the
    /// replacement of every variable. Query variables are asked of Prometheus in order, so
    /// later ones see earlier ones substituted.
    async fn resolve_variables(
        &self,
        file: &str,
        dashboard: &Value,
        failures: &mut Vec<String>,
    ) -> Vec<(String, BTreeMap<String, String>)> {
        let mut one = BTreeMap::new();
        let mut all = BTreeMap::new();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = variable["name"].as_str().expect("variable name");
            let kind = variable["type"].as_str().unwrap_or_default();
            let definition = variable["query"]
                .as_str()
                .or(variable["query"]["query"].as_str())
                .or(variable["definition"].as_str())
                .unwrap_or_default();
            assert_eq!(
                kind, "query",
                "{file}: variable {name} is a {kind}: teach this test its values"
            );
            let (selector, label) = label_values(definition).unwrap_or_else(|| {
                panic!("{file}: variable {name} = `{definition}`: teach this test that query")
            });
            let mut target = format!("/api/v1/label/{label}/values");
            if let Some(selector) = selector {
                let selector = interpolate(&selector, &one)
                    .unwrap_or_else(|e| panic!("{file}: variable {name} = `{definition}`: {e}"));
                target.push_str(&format!("?match%5B%5D={}", encode(&selector)));
            }
            let values: Vec<String> = match self.try_api(&target).await {
                Ok(data) => data
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect(),
                Err(e) => {
                    failures.push(format!("{file}: variable {name} `{definition}`: {e}"));
                    Vec::new()
                }
            };
            if values.is_empty() {
                failures.push(format!(
                    "{file}: variable {name} `{definition}` has no value"
                ));
            }
            let regex = variable["multi"] == true || variable["includeAll"] == true;
            let format = |values: &[String]| match (regex, values) {
                (false, [first, ..]) => first.clone(),
                (false, []) => String::new(),
                (true, [only]) => regex_escape(only),
                (true, many) => format!(
                    "({})",
                    many.iter()
                        .map(|v| regex_escape(v))
                        .collect::<Vec<_>>()
                        .join("|")
                ),
            };
            one.insert(name.to_owned(), format(&values[..values.len().min(1)]));
            let all_value = match variable["allValue"].as_str() {
                Some(value) if variable["includeAll"] == true => value.to_owned(),
                _ => format(&values),
            };
            all.insert(name.to_owned(), all_value);
        }
        vec![("one value per variable".into(), one), ("All".into(), all)]
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if std::thread::panicking() {
                eprintln!(
                    "--- prometheus log ({}) ---\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The files compose bind-mounts into the Prometheus container, copied into a temporary
/// directory at their container paths, so that the config's rule_files resolve as they do
/// in the container.
struct Layout {
    root: TempDir,
    /// The config inside `root`.
    config: PathBuf,
    /// Container path of the config.
    container_config: String,
    /// (repo path, container path) of every bind mount.
    binds: Vec<(String, String)>,
}

/// A rule file the config loads: where the container sees it and where it is in the repo.
struct RuleFile {
    container: String,
    repo: String,
}

impl Layout {
    fn new() -> Self {
        let compose = yaml(COMPOSE);
        let services = compose["services"].as_mapping().expect("compose services");
        let (name, service) = services
            .iter()
            .find(|(_, s)| binds(s).iter().any(|(host, _)| host == CONFIG))
            .unwrap_or_else(|| panic!("{COMPOSE}: no service mounts ./{CONFIG}"));
        let name = name.as_str().unwrap();
        let binds = binds(service);
        let container_config = strings(&service["command"])
            .into_iter()
            .chain(strings(&service["entrypoint"]))
            .find_map(|arg| arg.strip_prefix("--config.file=").map(String::from))
            .unwrap_or_else(|| DEFAULT_CONFIG_FILE.into());
        let mounted = binds
            .iter()
            .find(|(host, _)| host == CONFIG)
            .map(|(_, target)| target.clone())
            .unwrap();
        assert_eq!(
            mounted, container_config,
            "{COMPOSE}: {name} reads {container_config}, ./{CONFIG} is mounted at {mounted}"
        );
        let root = TempDir::new("prometheus");
        for (host, target) in &binds {
            copy(&repo().join(host), &root.container(target));
        }
        let config = root.container(&container_config);
        let layout = Layout {
            root,
            config,
            container_config,
            binds,
        };
        // Absolute rule file paths point into the container: into the copy, here.
        let mut doc = yaml(CONFIG);
        if let Some(files) = doc["rule_files"].as_sequence_mut() {
            if files
                .iter()
                .any(|f| f.as_str().is_some_and(|f| f.starts_with('/')))
            {
                for file in files.iter_mut() {
                    let path = file.as_str().unwrap();
                    if path.starts_with('/') {
                        *file = Yaml::from(layout.root.container(path).to_str().unwrap());
                    }
                }
                layout.write_config(&doc);
            }
        }
        layout
    }

    fn write_config(&self, doc: &Yaml) {
        std::fs::write(&self.config, serde_yaml::to_string(doc).unwrap()).unwrap();
    }

    /// The config's rule files; each must be mounted and exist in the repo.
    fn rule_files(&self) -> Vec<RuleFile> {
        let dir = Path::new(&self.container_config).parent().unwrap();
        let files = strings(&yaml(CONFIG)["rule_files"]);
        assert!(!files.is_empty(), "{CONFIG} loads no rule file");
        files
            .iter()
            .map(|file| {
                assert!(
                    !file.contains(['*', '?', '[']),
                    "{CONFIG}: rule file glob {file}: teach this test to expand it"
                );
                let container = normalize(dir.join(file).to_str().unwrap());
                let repo_path = self
                    .binds
                    .iter()
                    .filter_map(|(host, target)| {
                        let rest = container.strip_prefix(target.trim_end_matches('/'))?;
                        (rest.is_empty() || rest.starts_with('/'))
                            .then(|| (target.len(), normalize(&format!("{host}{rest}"))))
                    })
                    .max()
                    .map(|(_, path)| path)
                    .unwrap_or_else(|| {
                        panic!("{COMPOSE}: Prometheus loads {container}, which is not mounted")
                    });
                assert!(
                    repo().join(&repo_path).is_file(),
                    "rule file ./{repo_path} is missing"
                );
                RuleFile {
                    container,
                    repo: repo_path,
                }
            })
            .collect()
    }

    /// Rewrites the copied config for the test: its gateway job alone, scraping `instance`
    /// every second (as every other setting of the job: path, labels, relabelling), rules
    /// evaluated every second, no Alertmanager. Returns the job name.
    fn scrape_gateway(&self, instance: &str) -> String {
        let compose = yaml(COMPOSE);
        let gateway = compose["services"]
            .as_mapping()
            .unwrap()
            .iter()
            .find(|(_, s)| !s["build"].is_null())
            .map(|(n, _)| n.as_str().unwrap().to_owned())
            .expect("a compose service builds the gateway");
        let mut doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(&self.config).unwrap())
            .expect("the copied config parses");
        let global = doc
            .as_mapping_mut()
            .unwrap()
            .entry("global".into())
            .or_insert(Yaml::Mapping(Default::default()));
        for key in ["scrape_interval", "scrape_timeout", "evaluation_interval"] {
            global[key] = INTERVAL.into();
        }
        doc.as_mapping_mut().unwrap().remove("alerting");
        let jobs = doc["scrape_configs"]
            .as_sequence_mut()
            .expect("scrape_configs");
        let on_gateway = |job: &Yaml| {
            job["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|s| strings(&s["targets"]))
                .any(|t| t.split(':').next() == Some(gateway.as_str()))
        };
        jobs.retain(on_gateway);
        assert_eq!(
            jobs.len(),
            1,
            "{CONFIG}: want one job scraping service {gateway}"
        );
        let job = &mut jobs[0];
        for key in ["scrape_interval", "scrape_timeout"] {
            job[key] = INTERVAL.into();
        }
        let statics = job["static_configs"].as_sequence_mut().unwrap();
        for statics in statics.iter_mut() {
            let targets: Vec<Yaml> = strings(&statics["targets"])
                .iter()
                .filter(|t| t.split(':').next() == Some(gateway.as_str()))
                .map(|_| Yaml::from(instance))
                .collect();
            statics["targets"] = Yaml::Sequence(targets);
        }
        statics.retain(|s| !s["targets"].as_sequence().unwrap().is_empty());
        let name = job["job_name"].as_str().expect("job_name").to_owned();
        self.write_config(&doc);
        name
    }
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "cdc-gateway-{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    /// Where a container path lies in this directory.
    fn container(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// The installed tool: a clear failure, not a skip, when Prometheus is not installed.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run {INSTALL} (Debian's prometheus package provides \
                 /usr/bin/prometheus and /usr/bin/promtool)"
            )
        })
}

/// Runs promtool in the repo; its output, asserting success.
fn promtool(args: &[&str]) -> String {
    let output = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

/// An HTTP/1.0 GET (the body ends with the connection: no chunked encoding).
async fn get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let target = target.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
    .unwrap()
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sample values of an instant query's result (a vector or a scalar).
fn samples(data: &Value) -> Vec<f64> {
    let value = |v: &Value| v[1].as_str().unwrap().parse::<f64>().unwrap();
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| value(&s["value"]))
            .collect(),
        Some("scalar") => vec![value(&data["result"])],
        other => panic!("result type {other:?}: {data}"),
    }
}

/// Every `expr` of a panel target, in panels and in rows' panels.
fn target_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for target in map.get("targets").and_then(Value::as_array).into_iter() {
                out.extend(
                    target
                        .iter()
                        .filter_map(|t| t["expr"].as_str())
                        .map(String::from),
                );
            }
            map.values().for_each(|v| target_exprs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| target_exprs(v, out)),
        _ => {}
    }
}

/// `label_values(selector, label)` or `label_values(label)`.
fn label_values(query: &str) -> Option<(Option<String>, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    Some(match inner.rsplit_once(',') {
        Some((selector, label)) => (Some(selector.trim().to_owned()), label.trim().to_owned()),
        None => (None, inner.trim().to_owned()),
    })
}

/// Grafana's interval variables for a query whose rate window is `window`.
fn grafana_builtins(window: &str) -> BTreeMap<String, String> {
    let seconds: u64 = window.trim_end_matches('s').parse().unwrap();
    BTreeMap::from([
        ("__rate_interval".into(), window.into()),
        ("__interval".into(), INTERVAL.into()),
        ("__interval_ms".into(), "1000".into()),
        ("__range".into(), window.into()),
        ("__range_s".into(), seconds.to_string()),
        ("__range_ms".into(), (seconds * 1000).to_string()),
    ])
}

/// Substitutes `$name`, `${name}` and `[[name]]`; an unknown variable is an error.
fn interpolate(expr: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find(['$', '[']) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let (name, used) = if let Some(braced) = tail.strip_prefix("${") {
            let end = braced.find('}').ok_or("unclosed ${")?;
            (&braced[..end], end + 3)
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            let end = bracketed.find("]]").ok_or("unclosed [[")?;
            (&bracketed[..end], end + 4)
        } else if let Some(after) = tail.strip_prefix('$') {
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                // `$1` is a label_replace group, not a variable.
                out.push('$');
                rest = after;
                continue;
            }
            let end = after.find(|c| !ident(c)).unwrap_or(after.len());
            (&after[..end], end + 1)
        } else {
            out.push('[');
            rest = &tail[1..];
            continue;
        };
        let value = values
            .get(name)
            .ok_or_else(|| format!("unknown variable {name}: teach this test its value"))?;
        out.push_str(value);
        rest = &tail[used..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value as Grafana puts a multi-value or All variable into a PromQL regex matcher: regex
/// characters escaped, and the escape itself escaped for the string literal.
fn regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\\\"),
            '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                out.push_str(r"\\");
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The expression with `bool` after every comparison operator (outside label matchers,
/// range brackets and strings): instead of keeping the series that meet the condition, it
/// returns 0 or 1 for every series the condition looks at. Empty means the alert watches no
/// series at all.
fn with_bool(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let (mut braces, mut brackets, mut i) = (0, 0, 0);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    i += 1;
                    match chars[i - 1] {
                        '\\' if c != '`' && i < chars.len() => {
                            out.push(chars[i]);
                            i += 1;
                        }
                        q if q == c => break,
                        _ => {}
                    }
                }
                continue;
            }
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            _ => {}
        }
        let next = chars.get(i + 1).copied();
        let op = match (c, next) {
            ('=', Some('=')) | ('!', Some('=')) | ('>', Some('=')) | ('<', Some('=')) => 2,
            ('>' | '<', _) => 1,
            _ => 0,
        };
        if op > 0 && braces == 0 && brackets == 0 {
            out.extend(&chars[i..i + op]);
            i += op;
            let rest: String = chars[i..].iter().collect();
            let rest = rest.trim_start();
            let has_bool = rest.starts_with("bool")
                && !rest[4..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            if !has_bool {
                out.push_str(" bool");
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A string or a list of strings.
fn strings(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::Sequence(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect(),
        Yaml::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// A path without `./`, `..` resolved lexically, no trailing `/`.
fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// A compose service's bind mounts as (repo path, container path).
fn binds(service: &Yaml) -> Vec<(String, String)> {
    let is_host = |s: &str| s.starts_with('.') || s.starts_with('/');
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|volume| {
            let (source, target) = match volume.as_str() {
                Some(short) => {
                    let mut parts = short.split(':');
                    (parts.next()?.to_owned(), parts.next()?.to_owned())
                }
                None => (
                    volume["source"].as_str()?.to_owned(),
                    volume["target"].as_str()?.to_owned(),
                ),
            };
            is_host(&source).then(|| (normalize(&source), target))
        })
        .collect()
}

/// The rules of a rule file that are alerts.
fn rules(file: &str) -> Vec<Yaml> {
    yaml(file)["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter(|r| r["alert"].is_string())
        .collect()
}

fn alert_names(file: &str) -> Vec<String> {
    let names: Vec<String> = rules(file)
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.is_empty(), "{file} has no alert");
    names
}
