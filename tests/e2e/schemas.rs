//! The JSON Schemas in schemas/ against real traffic: messages the gateway sent, messages the
//! tests sent, and the example files (valid ones must pass, invalid ones must fail).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn validator(name: &str) -> jsonschema::Validator {
    let path = schema_dir().join(format!("{name}.schema.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} {instance} does not match its schema: {errors:?}"
    );
}

#[test]
fn example_files_pass_or_fail_as_named() {
    let mut checked = 0;
    for (folder, should_pass) in [("valid", true), ("invalid", false)] {
        let dir = schema_dir().join("examples").join(folder);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let schema = name.split("--").next().unwrap();
            let instance: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(
                validator(schema).is_valid(&instance),
                should_pass,
                "{folder}/{name}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "the examples are there ({checked})");
}

#[tokio::test]
async fn real_messages_match_the_schemas() {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 1).await;
    let gateway = Gateway::start(&tansu.brokers(), &topic, &["--app-ping-interval", "100ms"]).await;
    let (client_schema, server_schema) = (validator("client-message"), validator("server-message"));
    let (simple_schema, debezium_schema) = (validator("cdc-simple"), validator("cdc-debezium"));

    let mut client = Client::connect(&gateway).await;
    let requests = [
        json!({"action": "auth", "token": "t", "id": 1}),
        json!({"action": "subscribe", "topic": "cdc.order", "filters": {"row.amount": {"gte": 1}, "operation": ["insert", "update", "delete"]}, "id": "a"}),
        json!({"action": "subscribe", "topic": "cdc.order.7", "since": {"0": 3}, "snapshot": true}),
        json!({"action": "subscribe", "topic": "bad"}),
        json!({"action": "unsubscribe", "topic": "cdc.order.7", "id": 2}),
        json!({"action": "ping", "timestamp": 17}),
        json!({"action": "pong"}),
    ];
    for request in &requests {
        assert_valid(&client_schema, request, "client message");
        client.send(request.clone()).await;
    }
    let simple = json!({"entity_type": "order", "entity_id": "7", "operation": "update", "data": {"amount": 5},
                        "before": {"amount": 4}, "timestamp": "2026-11-22T10:00:00Z"});
    let debezium = json!({"schema": {"type": "struct"}, "payload": {"before": {"id": 8, "amount": 9}, "after": null,
                          "source": {"table": "order", "db": "shop", "schema": "public"}, "op": "d", "ts_ms": 1_763_805_600_000_i64}});
    assert_valid(&simple_schema, &simple, "simple envelope");
    assert_valid(&debezium_schema, &debezium, "Debezium envelope");
    let producer = tansu.producer();
    producer.send_json(&topic, None, &simple).await;
    producer
        .send_json(&topic, Some(r#"{"id": 8}"#), &debezium)
        .await;

    let mut kinds = std::collections::HashSet::new();
    let mut data = 0;
    while data < 2 || !kinds.contains("ping") {
        let message =
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut client.ws))
                .await
                .unwrap()
            {
                Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("unexpected {other:?}"),
            };
        assert_valid(&server_schema, &message, "server message");
        let kind = message["type"].as_str().unwrap().to_owned();
        if kind == "data" {
            data += 1;
        }
        kinds.insert(kind);
    }
    for kind in ["ack", "error", "pong", "data", "ping"] {
        assert!(kinds.contains(kind), "saw a {kind} message");
    }
}
