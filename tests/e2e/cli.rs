//! Protocol section 9: flags and their environment variables, startup errors that name the
//! flag, and the demo that needs no Kafka.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_cdc-gateway");

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[test]
fn help_lists_every_flag_with_its_variable_and_default() {
    let (code, help) = run(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for (flag, env) in [
        ("--brokers", "CDC_GATEWAY_BROKERS"),
        ("--source-topics", "CDC_GATEWAY_SOURCE_TOPICS"),
        ("--group-id", "CDC_GATEWAY_GROUP_ID"),
        ("--listen", "CDC_GATEWAY_LISTEN"),
        ("--input-format", "CDC_GATEWAY_INPUT_FORMAT"),
        ("--entity-map", "CDC_GATEWAY_ENTITY_MAP"),
        ("--dead-letter-topic", "CDC_GATEWAY_DEAD_LETTER_TOPIC"),
        ("--kafka-property", "CDC_GATEWAY_KAFKA_PROPERTY"),
        ("--slow-client-grace", "CDC_GATEWAY_SLOW_CLIENT_GRACE"),
        ("--slow-client-policy", "CDC_GATEWAY_SLOW_CLIENT_POLICY"),
        ("--max-subscriptions", "CDC_GATEWAY_MAX_SUBSCRIPTIONS"),
        ("--idle-timeout", "CDC_GATEWAY_IDLE_TIMEOUT"),
    ] {
        assert!(
            help.contains(flag) && help.contains(&format!("env: {env}")),
            "{flag} / {env} in --help"
        );
    }
    for default in [
        "[default: cdc.events]",
        "[default: cdc-gateway]",
        "[default: 0.0.0.0:8080]",
        "[default: 5s]",
    ] {
        assert!(help.contains(default), "{default} in --help");
    }
    let (code, version) = run(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert!(version.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_demo_offers_only_the_flags_it_uses_and_listens_on_loopback() {
    let (code, help) = run(&["demo", "--help"], &[]);
    assert_eq!(code, Some(0));
    for replaced in [
        "--brokers",
        "--group-id",
        "--source-topics",
        "--auto-offset-reset",
    ] {
        assert!(!help.contains(replaced), "demo --help offers {replaced}");
    }
    assert!(help.contains("[default: 127.0.0.1:8080]"), "{help}");
    assert!(help.contains("--events-per-second"));
}

#[test]
fn bad_values_fail_at_startup_naming_the_flag() {
    for (args, env, flag) in [
        (
            vec!["--slow-client-grace", "soon"],
            vec![],
            "--slow-client-grace",
        ),
        (vec!["--listen", "everywhere"], vec![], "--listen"),
        (vec!["--input-format", "xml"], vec![], "--input-format"),
        (
            vec!["--entity-map", "orders=or.der"],
            vec![],
            "--entity-map",
        ),
        (
            vec![],
            vec![("CDC_GATEWAY_MAX_CONNECTIONS", "lots")],
            "--max-connections",
        ),
        (
            vec!["--kafka-property", "no-equals-sign"],
            vec![],
            "--kafka-property",
        ),
        (vec!["--listen", "0.0.0.0:0"], vec![], "--auth"),
        (vec!["--listen", "[::]:0"], vec![], "--auth"),
        (
            vec!["--listen", "0.0.0.0:0"],
            vec![("CDC_GATEWAY_ALLOW_UNAUTHENTICATED", "false")],
            "--auth",
        ),
        (vec!["--auth", "jwt"], vec![], "--auth"),
        (vec!["--jwt-secret", "s"], vec![], "--auth"),
        (
            vec!["--auth", "jwt", "--jwt-public-key", "/nonexistent.pem"],
            vec![],
            "--jwt-public-key",
        ),
        (
            vec!["--auth", "jwt", "--jwt-public-key", "Cargo.toml"],
            vec![],
            "--jwt-public-key",
        ),
        (
            vec![],
            vec![("CDC_GATEWAY_AUTH", "jwt"), ("CDC_GATEWAY_JWT_SECRET", "")],
            "--jwt-secret",
        ),
    ] {
        let (code, text) = run(&args, &env);
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?} {env:?} must fail"
        );
        assert!(
            text.contains(flag),
            "{args:?}: message names {flag}: {text}"
        );
    }
}

#[test]
fn an_unusable_listen_address_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, text) = run(&["--listen", &addr, "--brokers", "127.0.0.1:1"], &[]);
    assert_eq!(code, Some(1));
    assert!(text.contains("--listen"), "{text}");
}

#[tokio::test]
async fn the_demo_shows_live_events_without_kafka() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["demo", "--events-per-second", "50", "--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends.
    struct Demo(std::process::Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _demo = Demo(child);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(addr, "/readyz").await.map(|r| r.0).ok() != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo becomes ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, page) = http_get(addr, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/demo.js"), "the demo page is served");
    for (script, needle) in [("/demo.js", "/client.js"), ("/client.js", "createClient")] {
        let (status, body) = http_get(addr, script).await.unwrap();
        assert_eq!(status, 200, "{script}");
        assert!(body.contains(needle), "{script} holds {needle}");
    }

    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{listen}/ws"))
        .await
        .unwrap();
    let mut client = Client { ws };
    // Events flow all the time, so data of the first subscription may precede the second ack.
    for topic in ["cdc.order", "cdc.customer"] {
        client
            .send(json!({"action": "subscribe", "topic": topic}))
            .await;
    }
    let (mut acks, mut seen) = (0, std::collections::HashSet::new());
    while acks < 2 || seen.len() < 2 {
        let message = client.recv().await;
        match message["type"].as_str() {
            Some("ack") => acks += 1,
            Some("data") => {
                seen.insert(
                    message["payload"]["entity_type"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            _ => panic!("unexpected {message}"),
        }
    }
}
