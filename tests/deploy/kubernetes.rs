//! deploy/kubernetes/, checked without a cluster but against the real gateway: every file the
//! kustomization lists parses and every manifest in the directory is listed; every flag and
//! `CDC_GATEWAY_*` variable the pod gets is one `cdc-gateway --help` lists; the selectors of
//! the Service, the disruption budget, the autoscaler and the ServiceMonitor pick the
//! Deployment's pods; probes and scrapes name ports that exist; the preStop sleep and the
//! grace period fit the gateway's own shutdown delay and drain timeout; and a gateway started
//! with exactly the pod's configuration (brokers and listen address aside) answers every
//! probe and the scrape, then shuts down within the grace period the pod leaves it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::Value as Yaml;

use crate::deploy::{repo, scalar, words};
use crate::support::*;

const DIR: &str = "deploy/kubernetes";
const KUSTOMIZATION: &str = "kustomization.yaml";

/// What the live test calls the pod (`metadata.name` through the downward API).
const POD_NAME: &str = "cdc-gateway-7f9c8d6b5-x2x7q";

/// Variables a pod may set that are not the gateway's settings.
const PROCESS_VARIABLES: [&str; 3] = ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "TZ"];

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[test]
fn the_kustomization_lists_every_manifest_and_each_parses() {
    let kustomization = yaml_docs(&format!("{DIR}/{KUSTOMIZATION}"));
    assert_eq!(kustomization.len(), 1, "{KUSTOMIZATION}: one document");
    let kustomization = &kustomization[0];
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    let listed = resources(kustomization);
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "{KUSTOMIZATION} lists {listed:?}"
    );
    for file in &listed {
        assert!(
            repo().join(DIR).join(file).is_file(),
            "{KUSTOMIZATION} lists {file}, which does not exist in {DIR}"
        );
    }
    for file in manifest_files() {
        assert!(
            listed.contains(&file),
            "{DIR}/{file} is not in {KUSTOMIZATION}'s resources: `kubectl apply -k` leaves it out"
        );
    }

    let manifests = Manifests::load();
    for (file, doc) in &manifests.docs {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].is_string(), "{file}: a document without {field}");
        }
        assert!(
            doc["metadata"]["name"].is_string(),
            "{file}: a {} without metadata.name",
            doc["kind"].as_str().unwrap()
        );
    }
    for (kind, api) in [
        ("Deployment", "apps/v1"),
        ("Service", "v1"),
        ("ConfigMap", "v1"),
        ("PodDisruptionBudget", "policy/v1"),
        ("HorizontalPodAutoscaler", "autoscaling/v2"),
        ("ServiceMonitor", "monitoring.coreos.com/v1"),
    ] {
        let doc = manifests.one(kind);
        assert_eq!(
            doc["apiVersion"].as_str(),
            Some(api),
            "the {kind} is not {api}"
        );
    }

    // The kustomization's image rename applies to the image the Deployment runs.
    let images: Vec<String> = manifests
        .containers()
        .iter()
        .map(|c| c["image"].as_str().expect("container image").to_owned())
        .collect();
    for image in kustomization["images"].as_sequence().into_iter().flatten() {
        let name = image["name"].as_str().expect("images[].name");
        for (key, _) in image.as_mapping().unwrap() {
            let key = key.as_str().unwrap();
            assert!(
                ["name", "newName", "newTag", "digest"].contains(&key),
                "{KUSTOMIZATION}: images[].{key} is not a kustomize field"
            );
        }
        assert!(
            images
                .iter()
                .any(|i| i == name || i.starts_with(&format!("{name}:"))),
            "{KUSTOMIZATION} sets image {name}, the Deployment runs {images:?}"
        );
    }
}

#[test]
fn every_flag_and_variable_the_pod_sets_is_one_the_binary_accepts() {
    let help = Help::load();
    let manifests = Manifests::load();
    let container = manifests.container();

    for arg in args(container) {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = format!("--{}", flag.split('=').next().unwrap());
            assert!(
                help.option(&flag).is_some(),
                "the container passes {flag}, which `cdc-gateway --help` does not list"
            );
        }
    }

    let config_maps = manifests.config_maps();
    let mut names = Vec::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or_default();
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let optional = source["configMapRef"]["optional"].as_bool() == Some(true);
            match config_maps.get(name) {
                Some(data) => names.extend(
                    data.keys()
                        .map(|key| (format!("ConfigMap {name}"), format!("{prefix}{key}"))),
                ),
                None => assert!(
                    optional,
                    "envFrom names ConfigMap {name}, which the kustomization does not create"
                ),
            }
        } else {
            assert!(
                source["secretRef"]["optional"].as_bool() == Some(true),
                "envFrom {source:?}: only ConfigMaps, or optional Secrets, are resolvable"
            );
        }
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let reference = &var["valueFrom"]["configMapKeyRef"];
        if let Some(map) = reference["name"].as_str() {
            let key = reference["key"].as_str().expect("configMapKeyRef.key");
            assert!(
                config_maps.get(map).is_some_and(|d| d.contains_key(key))
                    || reference["optional"].as_bool() == Some(true),
                "{name} reads key {key} of ConfigMap {map}, which does not exist"
            );
        }
        names.push(("the container's env".to_owned(), name));
    }
    assert!(!names.is_empty(), "the container sets no variable");
    for (source, name) in &names {
        assert!(
            help.variables().contains(name.as_str()) || PROCESS_VARIABLES.contains(&name.as_str()),
            "{source} sets {name}, which `cdc-gateway --help` does not list"
        );
    }

    // The replica's name is the pod's, so each pod commits under its own group id.
    let instance = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"].as_str() == Some("CDC_GATEWAY_INSTANCE"))
        .expect("the container sets CDC_GATEWAY_INSTANCE");
    assert_eq!(
        instance["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name"),
        "CDC_GATEWAY_INSTANCE must be the pod's name (downward API), so that replicas never \
         share a group id"
    );
    // Where the cluster's brokers are is configuration, not part of the pod spec.
    let pod = PodConfig::of(&manifests, &help);
    let brokers = pod
        .sources
        .get("CDC_GATEWAY_BROKERS")
        .expect("the pod sets CDC_GATEWAY_BROKERS");
    assert!(
        brokers.starts_with("ConfigMap"),
        "CDC_GATEWAY_BROKERS comes from {brokers}, not from a ConfigMap"
    );

    // Service links put <SERVICE>_PORT=tcp://..., <SERVICE>_SERVICE_HOST and the like into the
    // environment: for a Service called cdc-gateway, variables in the gateway's own namespace.
    assert_eq!(
        manifests.pod_spec()["enableServiceLinks"].as_bool(),
        Some(false),
        "service links are on: Service cdc-gateway would set CDC_GATEWAY_PORT, \
         CDC_GATEWAY_SERVICE_HOST, ... in the gateway's environment"
    );
}

#[test]
fn the_selectors_pick_the_deployments_pods() {
    let manifests = Manifests::load();
    let deployment = manifests.one("Deployment");
    let name = deployment["metadata"]["name"].as_str().unwrap();
    let selector = match_labels(&deployment["spec"]["selector"], "the Deployment's selector");
    let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
    assert!(
        is_subset(&selector, &pod_labels),
        "the Deployment selects {selector:?}, its pods are labelled {pod_labels:?}"
    );

    // The same labels as the Deployment's selector: these pods, and no other.
    let service = manifests.one("Service");
    let service_selector = labels(&service["spec"]["selector"]);
    assert_eq!(
        service_selector, selector,
        "the Service selects {service_selector:?}, the Deployment {selector:?}"
    );
    let budget = match_labels(
        &manifests.one("PodDisruptionBudget")["spec"]["selector"],
        "the PodDisruptionBudget's selector",
    );
    assert_eq!(
        budget, selector,
        "the PodDisruptionBudget selects {budget:?}, the Deployment {selector:?}"
    );
    for constraint in manifests.pod_spec()["topologySpreadConstraints"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let spread = match_labels(&constraint["labelSelector"], "a topology spread selector");
        assert_eq!(
            spread, selector,
            "a topology spread constraint counts {spread:?}, the Deployment's pods are {selector:?}"
        );
    }

    let target = &manifests.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"];
    assert_eq!(
        (
            target["apiVersion"].as_str(),
            target["kind"].as_str(),
            target["name"].as_str()
        ),
        (Some("apps/v1"), Some("Deployment"), Some(name)),
        "the HorizontalPodAutoscaler scales {target:?}, not Deployment {name}"
    );

    let monitor = manifests.one("ServiceMonitor");
    let wanted = match_labels(
        &monitor["spec"]["selector"],
        "the ServiceMonitor's selector",
    );
    let service_labels = labels(&service["metadata"]["labels"]);
    assert!(
        is_subset(&wanted, &service_labels),
        "the ServiceMonitor selects Services labelled {wanted:?}, the Service has {service_labels:?}"
    );
    let namespaces = &monitor["spec"]["namespaceSelector"];
    assert!(
        namespaces.is_null() || namespaces["any"].as_bool() == Some(true),
        "the ServiceMonitor looks in {namespaces:?}; without a namespaceSelector it finds the \
         Service in its own namespace, where the kustomization puts both"
    );
}

#[test]
fn probes_service_and_scrape_name_ports_the_pod_declares() {
    let help = Help::load();
    let manifests = Manifests::load();
    let container = manifests.container();
    let pod = PodConfig::of(&manifests, &help);

    let listen = pod.effective("CDC_GATEWAY_LISTEN", &help);
    let listen_port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("CDC_GATEWAY_LISTEN={listen}"));
    let http = container_port(container, &Yaml::from("http"));
    assert_eq!(
        http, listen_port,
        "the container port named http is {http}, the gateway listens on {listen_port}"
    );

    let tls = pod.setting("CDC_GATEWAY_TLS_CERT").is_some();
    let probes = probes(container);
    for (kind, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let probe = probes
            .iter()
            .find(|(k, _, _)| k == kind)
            .unwrap_or_else(|| panic!("the container has no {kind}"));
        assert_eq!(probe.1, path, "{kind} GETs {}", probe.1);
    }
    for (kind, path, get) in &probes {
        if kind != "readinessProbe" {
            assert_ne!(
                path, "/readyz",
                "{kind} on /readyz restarts a gateway that is only waiting for Kafka"
            );
        }
        let port = container_port(container, &get["port"]);
        assert_eq!(port, listen_port, "{kind} probes port {port}");
        let scheme = get["scheme"].as_str().unwrap_or("HTTP");
        assert_eq!(
            scheme,
            if tls { "HTTPS" } else { "HTTP" },
            "{kind} uses {scheme}; TLS on the port: {tls}"
        );
    }

    let service = manifests.one("Service");
    let ports = service["spec"]["ports"]
        .as_sequence()
        .expect("Service ports");
    let service_port = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("a Service port named http");
    let target = &service_port["targetPort"];
    let target = if target.is_null() {
        &service_port["port"]
    } else {
        target
    };
    assert_eq!(
        container_port(container, target),
        listen_port,
        "the Service's http port reaches {target:?}"
    );

    let monitor = manifests.one("ServiceMonitor");
    let endpoints = monitor["spec"]["endpoints"]
        .as_sequence()
        .expect("ServiceMonitor endpoints");
    assert!(!endpoints.is_empty(), "the ServiceMonitor scrapes nothing");
    for endpoint in endpoints {
        match (endpoint["port"].as_str(), &endpoint["targetPort"]) {
            (Some(name), _) => assert!(
                ports.iter().any(|p| p["name"].as_str() == Some(name)),
                "the ServiceMonitor scrapes port {name}, which the Service does not name"
            ),
            (None, target) if !target.is_null() => {
                container_port(container, target);
            }
            _ => panic!("a ServiceMonitor endpoint names no port"),
        }
        assert_eq!(
            endpoint["path"].as_str().unwrap_or("/metrics"),
            "/metrics",
            "the ServiceMonitor scrapes another path than the gateway's /metrics"
        );
    }
}

#[test]
fn prestop_and_grace_period_fit_the_gateways_shutdown_and_rollouts_keep_capacity() {
    let help = Help::load();
    let manifests = Manifests::load();
    let pod = PodConfig::of(&manifests, &help);
    let delay = pod.duration("CDC_GATEWAY_SHUTDOWN_DELAY", &help);
    let drain = pod.duration("CDC_GATEWAY_DRAIN_TIMEOUT", &help);
    let pre_stop = pre_stop_sleep(manifests.container());
    assert!(
        pre_stop >= delay,
        "the preStop hook sleeps {pre_stop:?}, less than the shutdown delay of {delay:?}"
    );
    assert!(
        !pre_stop.is_zero(),
        "no preStop sleep: endpoints are still being removed when SIGTERM arrives"
    );
    // Kubernetes counts the preStop hook into the grace period; SIGTERM comes after it.
    let grace = manifests.pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .map_or(DEFAULT_GRACE, Duration::from_secs);
    assert!(
        grace > pre_stop + delay + drain,
        "terminationGracePeriodSeconds {grace:?} is not above preStop {pre_stop:?} + \
         --shutdown-delay {delay:?} + --drain-timeout {drain:?}: the drain ends in a SIGKILL"
    );

    let deployment = manifests.one("Deployment");
    let strategy = &deployment["spec"]["strategy"];
    assert_eq!(
        strategy["type"].as_str().unwrap_or("RollingUpdate"),
        "RollingUpdate"
    );
    let rolling = &strategy["rollingUpdate"];
    assert!(
        matches!(
            scalar(&rolling["maxUnavailable"]).as_deref(),
            Some("0" | "0%")
        ),
        "maxUnavailable is {:?}: a rollout would stop a replica before its successor is ready",
        rolling["maxUnavailable"]
    );
    assert_eq!(
        scalar(&rolling["maxSurge"]).as_deref(),
        Some("1"),
        "maxSurge: one new replica at a time"
    );

    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    assert_eq!(replicas, 3, "the Deployment runs {replicas} replicas");
    let autoscaler = &manifests.one("HorizontalPodAutoscaler")["spec"];
    let min = autoscaler["minReplicas"].as_u64().unwrap_or(1);
    let max = autoscaler["maxReplicas"].as_u64().expect("maxReplicas");
    assert!(
        min <= replicas && replicas <= max,
        "the autoscaler's {min}..={max} does not hold the Deployment's {replicas}"
    );
    let budget = &manifests.one("PodDisruptionBudget")["spec"];
    let allows = match (
        scalar(&budget["maxUnavailable"]),
        scalar(&budget["minAvailable"]),
    ) {
        (Some(unavailable), None) => unavailable != "0" && unavailable != "0%",
        (None, Some(available)) => available
            .parse::<u64>()
            .is_ok_and(|available| available < min),
        other => panic!("the PodDisruptionBudget sets {other:?}"),
    };
    assert!(
        allows,
        "the PodDisruptionBudget lets no pod go at {min} replicas: node drains would hang"
    );
}

#[test]
fn the_pod_runs_unprivileged_and_is_sized_for_its_limits() {
    let help = Help::load();
    let manifests = Manifests::load();
    let pod_spec = manifests.pod_spec();
    let container = manifests.container();
    let setting = |field: &str| {
        let own = &container["securityContext"][field];
        if own.is_null() {
            pod_spec["securityContext"][field].clone()
        } else {
            own.clone()
        }
    };
    assert_eq!(
        setting("runAsNonRoot").as_bool(),
        Some(true),
        "runAsNonRoot"
    );
    if let Some(user) = setting("runAsUser").as_u64() {
        assert_ne!(user, 0, "runAsUser 0");
    }
    let security = &container["securityContext"];
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "allowPrivilegeEscalation"
    );
    assert!(
        words(&security["capabilities"]["drop"]).contains(&"ALL".to_owned()),
        "capabilities are not dropped"
    );

    let resources = &container["resources"];
    let quantity = |section: &str, resource: &str| {
        let value = scalar(&resources[section][resource])
            .unwrap_or_else(|| panic!("no {section}.{resource}"));
        parse_quantity(&value)
    };
    for resource in ["cpu", "memory"] {
        assert!(
            quantity("requests", resource) <= quantity("limits", resource),
            "{resource}: the request is above the limit"
        );
    }
    let uses_cpu = manifests.one("HorizontalPodAutoscaler")["spec"]["metrics"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|m| m["resource"]["name"].as_str() == Some("cpu"));
    assert!(uses_cpu, "the autoscaler does not scale on CPU");

    // What the settings the pod runs with need, from docs/operating.md's memory estimate: a
    // base, librdkafka's prefetch queue, idle connections (BENCHMARKS.md (c): 3.6 KiB), the
    // history budget, and the table store's cache and write buffers (its rows are on disk).
    // Messages in flight come on top.
    let pod = PodConfig::of(&manifests, &help);
    let number = |name: &str| -> f64 {
        let value = pod.effective(name, &help);
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number"))
    };
    const MIB: f64 = 1024.0 * 1024.0;
    let prefetch_kib = pod
        .setting("CDC_GATEWAY_KAFKA_PROPERTY")
        .into_iter()
        .flat_map(|p| p.split(',').map(str::to_owned).collect::<Vec<_>>())
        .find_map(|p| {
            p.trim()
                .strip_prefix("queued.max.messages.kbytes=")
                .map(|v| v.parse::<f64>().unwrap())
        })
        .unwrap_or(65536.0);
    let parts = [
        ("base", 30.0 * MIB),
        ("prefetch", prefetch_kib * 1024.0),
        (
            "connections",
            number("CDC_GATEWAY_MAX_CONNECTIONS") * 3.6 * 1024.0,
        ),
        ("history", number("CDC_GATEWAY_HISTORY_BUDGET_MIB") * MIB),
        // The table store's block cache and fjall's write buffers (its rows are on disk).
        (
            "tables",
            (number("CDC_GATEWAY_TABLE_STORE_CACHE_MIB") + 64.0) * MIB,
        ),
    ];
    let floor: f64 = parts.iter().map(|(_, bytes)| bytes).sum();
    let request = quantity("requests", "memory");
    assert!(
        request >= floor,
        "the memory request is {:.0} MiB, the pod's settings need at least {:.0} MiB before \
         messages in flight: {}",
        request / MIB,
        floor / MIB,
        parts
            .iter()
            .map(|(what, bytes)| format!("{what} {:.0} MiB", bytes / MIB))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Issue 19: the tables live on a volume of the pod (not the read-only root), and the
/// gateway's own bound stops it before the volume's limit would get the pod evicted.
#[test]
fn the_table_store_is_on_a_volume_larger_than_its_bound() {
    let help = Help::load();
    let manifests = Manifests::load();
    let pod = PodConfig::of(&manifests, &help);
    let path = pod
        .setting("CDC_GATEWAY_TABLE_STORE_PATH")
        .expect("the pod sets CDC_GATEWAY_TABLE_STORE_PATH: without it every start rebuilds");
    let container = manifests.container();
    let mount = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(path.as_str()))
        .unwrap_or_else(|| panic!("no volume is mounted at {path}"));
    let name = mount["name"].as_str().expect("a named mount");
    let volume = manifests.pod_spec()["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"));
    let limit = scalar(&volume["emptyDir"]["sizeLimit"])
        .map(|q| parse_quantity(&q))
        .expect("the emptyDir has a sizeLimit");
    let bound: f64 = pod
        .effective("CDC_GATEWAY_TABLE_STORE_MAX_MIB", &help)
        .parse()
        .unwrap();
    assert!(
        bound * 1024.0 * 1024.0 * 1.1 <= limit,
        "--table-store-max-mib {bound} MiB leaves less than 10% below the volume's {limit} bytes"
    );
}

#[tokio::test]
async fn a_gateway_with_the_pods_configuration_answers_its_probes_and_scrape() {
    let help = Help::load();
    let manifests = Manifests::load();
    let pod = PodConfig::of(&manifests, &help);
    let container = manifests.container();

    let tansu = Tansu::start();
    let mut topics: BTreeSet<String> = pod
        .effective("CDC_GATEWAY_SOURCE_TOPICS", &help)
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.starts_with('^'))
        .map(String::from)
        .collect();
    assert!(
        !topics.is_empty(),
        "teach this test a topic that the pod's ^regex source topics match"
    );
    topics.extend(pod.setting("CDC_GATEWAY_DEAD_LETTER_TOPIC"));
    for topic in &topics {
        tansu.create_topic(topic, 3).await;
    }
    let mut env = pod.values.clone();
    env.insert("CDC_GATEWAY_BROKERS".into(), tansu.brokers());
    let vars: Vec<(String, String)> = env.into_iter().collect();
    let mut gateway = Gateway::spawn_with_env(&vars);

    gateway.wait_ready(true).await;
    let mut paths: Vec<(String, String)> = probes(container)
        .into_iter()
        .map(|(kind, path, _)| (kind, path))
        .collect();
    for endpoint in manifests.one("ServiceMonitor")["spec"]["endpoints"]
        .as_sequence()
        .unwrap()
    {
        let path = endpoint["path"].as_str().unwrap_or("/metrics");
        paths.push(("the ServiceMonitor".into(), path.to_owned()));
    }
    for (source, path) in &paths {
        let (status, body) = http_get(gateway.addr(), path).await.unwrap();
        assert_eq!(status, 200, "{source} GETs {path}: {status} {body}");
        if source == "the ServiceMonitor" {
            assert!(
                body.lines().any(|l| l.starts_with("cdc_gateway_")),
                "{path} has no cdc_gateway_ series"
            );
        }
    }
    let group = format!(
        "{}-{POD_NAME}",
        pod.effective("CDC_GATEWAY_GROUP_ID", &help)
    );
    assert!(
        gateway.log_tail().contains(&group),
        "the gateway does not say it commits under {group}; log:\n{}",
        gateway.log_tail()
    );

    // Termination: after the preStop sleep, SIGTERM; the gateway must be done within what is
    // left of the grace period.
    let pre_stop = pre_stop_sleep(container);
    let grace = manifests.pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .map_or(DEFAULT_GRACE, Duration::from_secs);
    let started = Instant::now();
    gateway.signal("TERM");
    gateway.wait_ready(false).await;
    let code = gateway.wait_exit(grace - pre_stop);
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGTERM, {:?} in",
        started.elapsed()
    );
}

#[test]
fn the_operating_guide_lists_every_flag_with_its_variable_and_default() {
    const GUIDE: &str = "docs/operating.md";
    let help = Help::load();
    let text = std::fs::read_to_string(repo().join(GUIDE)).unwrap();
    // Table rows whose first cell is a flag: flag -> (variable cell, default cell).
    let mut rows: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let flag = cells[0].trim_matches('`').to_owned();
        rows.insert(flag, (cells[1].to_owned(), cells[2].to_owned()));
    }
    for option in help.options.iter().filter(|o| o.env.is_some()) {
        let (variable, default) = rows
            .get(&option.flag)
            .unwrap_or_else(|| panic!("{GUIDE}'s flags table has no row for {}", option.flag));
        let env = option.env.as_deref().unwrap();
        assert_eq!(
            variable,
            &format!("`{env}`"),
            "{GUIDE}: {} reads {env}",
            option.flag
        );
        match &option.default {
            Some(value) => assert!(
                default.contains(&format!("`{value}`")),
                "{GUIDE}: {} defaults to {value}, the table says {default}",
                option.flag
            ),
            None => assert!(
                default == "—" || default == "any",
                "{GUIDE}: {} has no default, the table says {default}",
                option.flag
            ),
        }
    }
    for flag in rows.keys() {
        assert!(
            help.option(flag).is_some(),
            "{GUIDE}'s flags table lists {flag}, which `cdc-gateway --help` does not"
        );
    }
}

/// Every manifest the kustomization lists, each document with its file.
struct Manifests {
    docs: Vec<(String, Yaml)>,
}

impl Manifests {
    fn load() -> Self {
        let kustomization = &yaml_docs(&format!("{DIR}/{KUSTOMIZATION}"))[0];
        let docs = resources(kustomization)
            .into_iter()
            .flat_map(|file| {
                yaml_docs(&format!("{DIR}/{file}"))
                    .into_iter()
                    .map(move |doc| (file.clone(), doc))
            })
            .collect();
        Manifests { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Yaml> {
        self.docs
            .iter()
            .map(|(_, doc)| doc)
            .filter(|doc| doc["kind"].as_str() == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str) -> &Yaml {
        let all = self.all(kind);
        assert_eq!(
            all.len(),
            1,
            "want one {kind}, the kustomization has {}",
            all.len()
        );
        all[0]
    }

    fn pod_spec(&self) -> &Yaml {
        &self.one("Deployment")["spec"]["template"]["spec"]
    }

    fn containers(&self) -> Vec<&Yaml> {
        self.pod_spec()["containers"]
            .as_sequence()
            .expect("the pod has containers")
            .iter()
            .collect()
    }

    /// The gateway's container: the pod's only one.
    fn container(&self) -> &Yaml {
        let containers = self.containers();
        assert_eq!(containers.len(), 1, "the pod runs the gateway alone");
        containers[0]
    }

    /// Each ConfigMap's data by name.
    fn config_maps(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.all("ConfigMap")
            .into_iter()
            .map(|map| {
                let name = map["metadata"]["name"].as_str().unwrap().to_owned();
                let data = map["data"]
                    .as_mapping()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| {
                        let key = k.as_str().expect("ConfigMap key").to_owned();
                        let value = v.as_str().unwrap_or_else(|| {
                            panic!("ConfigMap {name}: {key} is not a string (quote it)")
                        });
                        (key, value.to_owned())
                    })
                    .collect();
                (name, data)
            })
            .collect()
    }
}

/// The environment the gateway process gets in the pod, its flags folded in as the variables
/// they override, and where each came from.
struct PodConfig {
    values: BTreeMap<String, String>,
    sources: BTreeMap<String, String>,
}

impl PodConfig {
    fn of(manifests: &Manifests, help: &Help) -> Self {
        let container = manifests.container();
        let config_maps = manifests.config_maps();
        let mut pod = PodConfig {
            values: BTreeMap::new(),
            sources: BTreeMap::new(),
        };
        // Kubernetes: envFrom first, then env (which wins); the binary: flags over variables.
        for source in container["envFrom"].as_sequence().into_iter().flatten() {
            let prefix = source["prefix"].as_str().unwrap_or_default();
            if let Some(name) = source["configMapRef"]["name"].as_str() {
                for (key, value) in config_maps.get(name).into_iter().flatten() {
                    pod.set(
                        &format!("{prefix}{key}"),
                        value,
                        &format!("ConfigMap {name}"),
                    );
                }
            }
        }
        for var in container["env"].as_sequence().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name");
            let from = &var["valueFrom"];
            if let Some(value) = scalar(&var["value"]) {
                pod.set(name, &value, "the container's env");
            } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
                assert_eq!(path, "metadata.name", "{name}: teach this test {path}");
                pod.set(name, POD_NAME, "the downward API");
            } else if let Some(map) = from["configMapKeyRef"]["name"].as_str() {
                let key = from["configMapKeyRef"]["key"].as_str().unwrap();
                if let Some(value) = config_maps.get(map).and_then(|d| d.get(key)) {
                    pod.set(name, value, &format!("ConfigMap {map}"));
                }
            } else if from["secretKeyRef"]["optional"].as_bool() != Some(true) {
                panic!("{name}: teach this test a value for {from:?}");
            }
        }
        let args = args(container);
        let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let (flag, value) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), value.to_owned()),
                None => {
                    i += 1;
                    let value = args
                        .get(i)
                        .unwrap_or_else(|| panic!("container arg {arg} has no value"));
                    (arg.clone(), value.clone())
                }
            };
            i += 1;
            let option = help
                .option(&flag)
                .unwrap_or_else(|| panic!("the container passes {flag}, which --help lacks"));
            let variable = option.env.clone().expect("every flag has a variable");
            flags.entry(variable).or_default().push(value);
        }
        for (variable, values) in flags {
            pod.set(&variable, &values.join(","), "the container's args");
        }
        pod
    }

    fn set(&mut self, name: &str, value: &str, source: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
        self.sources.insert(name.to_owned(), source.to_owned());
    }

    fn setting(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// The value the gateway runs with: the pod's, else the binary's default.
    fn effective(&self, name: &str, help: &Help) -> String {
        self.setting(name).unwrap_or_else(|| {
            help.by_variable(name)
                .and_then(|o| o.default.clone())
                .unwrap_or_else(|| panic!("{name} is not set and has no default"))
        })
    }

    fn duration(&self, name: &str, help: &Help) -> Duration {
        let value = self.effective(name, help);
        humantime::parse_duration(&value).unwrap_or_else(|e| panic!("{name}={value}: {e}"))
    }
}

/// One option of `cdc-gateway --help`.
struct CliOption {
    flag: String,
    env: Option<String>,
    default: Option<String>,
}

/// `cdc-gateway --help`, parsed: every option with its variable and default.
struct Help {
    options: Vec<CliOption>,
}

impl Help {
    fn load() -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cdc-gateway"));
        // A variable set here would show as the option's value in the help text.
        for (name, _) in std::env::vars() {
            if name.starts_with("CDC_GATEWAY_") {
                command.env_remove(name);
            }
        }
        let output = command.arg("--help").output().unwrap();
        assert!(output.status.success(), "cdc-gateway --help failed");
        Self::parse(&String::from_utf8(output.stdout).unwrap())
    }

    fn parse(text: &str) -> Self {
        let mut blocks: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if trimmed.starts_with('-') && indent <= 6 {
                blocks.push((trimmed.to_owned(), String::new()));
            } else if let Some((_, body)) = blocks.last_mut() {
                body.push(' ');
                body.push_str(trimmed);
            }
        }
        let bracket = |body: &str, key: &str| -> Option<String> {
            let rest = body.split(&format!("[{key}: ")).nth(1)?;
            Some(rest.split(']').next().unwrap().to_owned())
        };
        let options: Vec<CliOption> = blocks
            .into_iter()
            .filter_map(|(head, body)| {
                let flag = head
                    .split([' ', ','])
                    .find(|w| w.starts_with("--"))?
                    .to_owned();
                let env = bracket(&body, "env").map(|e| e.split('=').next().unwrap().to_owned());
                let default = bracket(&body, "default");
                Some(CliOption { flag, env, default })
            })
            .collect();
        assert!(
            options.iter().any(|o| o.flag == "--brokers")
                && options.iter().any(|o| o.flag == "--shutdown-delay"),
            "--help was not parsed: {text}"
        );
        Help { options }
    }

    fn option(&self, flag: &str) -> Option<&CliOption> {
        self.options.iter().find(|o| o.flag == flag)
    }

    fn by_variable(&self, name: &str) -> Option<&CliOption> {
        self.options.iter().find(|o| o.env.as_deref() == Some(name))
    }

    fn variables(&self) -> BTreeSet<&str> {
        self.options
            .iter()
            .filter_map(|o| o.env.as_deref())
            .collect()
    }
}

#[test]
fn help_parsing_reads_variables_and_defaults() {
    let help = Help::parse(
        "Options:\n      --brokers <BROKERS>\n          Kafka\n          \n          \
         [env: CDC_GATEWAY_BROKERS=]\n          [default: localhost:9092]\n\n      \
         --tls-key <TLS_KEY>\n          PEM\n          [env: CDC_GATEWAY_TLS_KEY]\n\n      \
         --shutdown-delay <SHUTDOWN_DELAY>\n          On shutdown, /readyz reports 503 this \
         long\n          [env: CDC_GATEWAY_SHUTDOWN_DELAY=]\n          [default: 0s]\n\n  \
         -h, --help\n          Print help\n",
    );
    let brokers = help.option("--brokers").unwrap();
    assert_eq!(brokers.env.as_deref(), Some("CDC_GATEWAY_BROKERS"));
    assert_eq!(brokers.default.as_deref(), Some("localhost:9092"));
    let key = help.option("--tls-key").unwrap();
    assert_eq!(key.env.as_deref(), Some("CDC_GATEWAY_TLS_KEY"));
    assert_eq!(key.default, None);
    assert_eq!(
        help.by_variable("CDC_GATEWAY_SHUTDOWN_DELAY")
            .unwrap()
            .default
            .as_deref(),
        Some("0s")
    );
    assert!(help.option("--help").unwrap().env.is_none());
}

/// The container's arguments after the binary: `args`, and `command` when it runs the
/// binary itself.
fn args(container: &Yaml) -> Vec<String> {
    let mut out = Vec::new();
    let command = words(&container["command"]);
    if let Some((binary, rest)) = command.split_first() {
        assert!(
            binary.ends_with("cdc-gateway"),
            "the container runs {binary}: teach this test what it passes on"
        );
        out.extend(rest.iter().cloned());
    }
    out.extend(words(&container["args"]));
    out
}

/// The container's HTTP probes: (kind, path, httpGet).
fn probes(container: &Yaml) -> Vec<(String, String, Yaml)> {
    ["startupProbe", "readinessProbe", "livenessProbe"]
        .into_iter()
        .filter(|kind| !container[*kind].is_null())
        .map(|kind| {
            let get = &container[kind]["httpGet"];
            let path = get["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{kind} is not an HTTP GET with a path"));
            (kind.to_owned(), path.to_owned(), get.clone())
        })
        .collect()
}

/// The container port a probe or a Service names: by name or by number, declared either way.
fn container_port(container: &Yaml, port: &Yaml) -> u16 {
    let ports = container["ports"].as_sequence().expect("container ports");
    let number = |p: &Yaml| p["containerPort"].as_u64().expect("containerPort") as u16;
    match port {
        Yaml::String(name) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .map(number)
            .unwrap_or_else(|| panic!("port {name} is not a port the container declares")),
        Yaml::Number(n) => {
            let n = n.as_u64().expect("a port number") as u16;
            assert!(
                ports.iter().any(|p| number(p) == n),
                "port {n} is not a port the container declares"
            );
            n
        }
        other => panic!("port {other:?}"),
    }
}

/// How long the container's preStop hook sleeps: the `sleep` action, or `sleep N` run by
/// `exec` (directly or in a shell).
fn pre_stop_sleep(container: &Yaml) -> Duration {
    let hook = &container["lifecycle"]["preStop"];
    if let Some(seconds) = hook["sleep"]["seconds"].as_u64() {
        return Duration::from_secs(seconds);
    }
    let command = words(&hook["exec"]["command"]);
    let tokens: Vec<&str> = command.iter().flat_map(|w| w.split_whitespace()).collect();
    tokens
        .windows(2)
        .find(|pair| pair[0] == "sleep" || pair[0].ends_with("/sleep"))
        .map(|pair| {
            let seconds: f64 = pair[1]
                .trim_end_matches('s')
                .parse()
                .unwrap_or_else(|_| panic!("preStop: sleep {}", pair[1]));
            Duration::from_secs_f64(seconds)
        })
        .unwrap_or_else(|| panic!("the container has no preStop sleep: {hook:?}"))
}

/// A `matchLabels` selector; `matchExpressions` are not used here and would need teaching.
fn match_labels(selector: &Yaml, what: &str) -> BTreeMap<String, String> {
    assert!(
        selector["matchExpressions"].is_null(),
        "{what}: teach this test matchExpressions"
    );
    let labels = labels(&selector["matchLabels"]);
    assert!(!labels.is_empty(), "{what} selects every pod");
    labels
}

fn labels(map: &Yaml) -> BTreeMap<String, String> {
    map.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (scalar(k).unwrap(), scalar(v).expect("a label value")))
        .collect()
}

fn is_subset(part: &BTreeMap<String, String>, whole: &BTreeMap<String, String>) -> bool {
    part.iter().all(|(k, v)| whole.get(k) == Some(v))
}

/// A Kubernetes quantity: cores for CPU (`500m`, `2`), bytes for memory (`1Gi`, `512M`).
fn parse_quantity(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("quantity {text}"));
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("quantity {text}: teach this test the suffix {other}"),
    };
    number * scale
}

#[test]
fn quantities_and_prestop_commands_parse() {
    assert_eq!(parse_quantity("1536Mi"), 1536.0 * 1024.0 * 1024.0);
    assert_eq!(parse_quantity("500m"), 0.5);
    assert_eq!(parse_quantity("2"), 2.0);
    let exec: Yaml =
        serde_yaml::from_str("lifecycle: {preStop: {exec: {command: [/bin/sh, -c, sleep 7]}}}")
            .unwrap();
    assert_eq!(pre_stop_sleep(&exec), Duration::from_secs(7));
    let native: Yaml = serde_yaml::from_str("lifecycle: {preStop: {sleep: {seconds: 4}}}").unwrap();
    assert_eq!(pre_stop_sleep(&native), Duration::from_secs(4));
}

/// The kustomization's `resources`, as file names in DIR.
fn resources(kustomization: &Yaml) -> Vec<String> {
    let listed = words(&kustomization["resources"]);
    assert!(!listed.is_empty(), "{KUSTOMIZATION} lists no resources");
    listed
}

/// The YAML files of DIR besides the kustomization.
fn manifest_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join(DIR))
        .unwrap_or_else(|e| panic!("{DIR}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| (name.ends_with(".yaml") || name.ends_with(".yml")) && name != KUSTOMIZATION)
        .collect();
    files.sort();
    files
}

/// Every document of a (multi-document) YAML file; empty documents are left out.
fn yaml_docs(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{path} does not parse: {e}")))
        .filter(|doc| !doc.is_null())
        .collect();
    assert!(!docs.is_empty(), "{path} is empty");
    docs
}
