//! Protocol sections 1 and 2 through a real broker: envelopes, key rules, ops, tombstones, bad
//! records, dead letters, entity and row topics, committed offsets.

use serde_json::{json, Value};

use crate::support::*;

fn simple(id: &str, operation: &str, data: Value) -> Value {
    json!({"entity_type": "order", "entity_id": id, "operation": operation, "data": data,
           "before": null, "timestamp": "2026-11-22T10:00:00Z"})
}

fn debezium(op: &str, before: Value, after: Value) -> Value {
    json!({"before": before, "after": after, "op": op, "ts_ms": 1_763_805_600_000_i64,
           "source": {"table": "orders", "db": "shop", "schema": "public"}})
}

#[tokio::test]
async fn simple_envelope_every_operation_reaches_the_entity_topic() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.order", json!({})).await;
    for op in ["insert", "update", "delete", "snapshot"] {
        producer
            .send_json(&topic, Some("k"), &simple("42", op, json!({"n": op})))
            .await;
    }
    producer
        .send_json(
            &topic,
            None,
            &json!({"entity_type": "order", "operation": "truncate"}),
        )
        .await;
    for op in ["insert", "update", "delete", "snapshot", "truncate"] {
        let message = client.data().await;
        assert_eq!(message["topic"], "cdc.order");
        assert_eq!(message["payload"]["operation"], op);
        assert_eq!(message["payload"]["entity_type"], "order");
        assert_eq!(message["partition"], 0);
        assert!(message["offset"].is_i64());
        assert!(message["timestamp"].as_str().unwrap().ends_with('Z'));
        if op == "truncate" {
            assert_eq!(message["payload"]["entity_id"], Value::Null);
        } else {
            assert_eq!(message["payload"]["entity_id"], "42");
            assert_eq!(message["payload"]["data"], json!({"n": op}));
            assert_eq!(message["payload"]["timestamp"], "2026-11-22T10:00:00Z");
        }
    }
}

#[tokio::test]
async fn debezium_both_forms_ops_keys_and_renames() {
    let (_tansu, gateway, producer, topic) = start_stack(&["--entity-map", "orders=order"]).await;
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.order", json!({})).await;
    let wrapped = |v: Value| json!({"schema": {"type": "struct", "optional": false}, "payload": v});
    let cases: Vec<(Option<&str>, Value, &str, Value)> = vec![
        (
            Some(r#"{"id": 5}"#),
            debezium("c", Value::Null, json!({"id": 5, "s": "new"})),
            "insert",
            json!("5"),
        ),
        (
            Some(r#"{"schema": {"type": "struct"}, "payload": {"id": 6}}"#),
            wrapped(debezium("u", json!({"id": 6}), json!({"id": 6}))),
            "update",
            json!("6"),
        ),
        (
            Some(r#"{"tenant": "acme", "id": 7}"#),
            debezium("r", Value::Null, json!({"id": 7})),
            "snapshot",
            json!("acme:7"),
        ),
        (
            None,
            debezium("c", Value::Null, json!({"id": 8})),
            "insert",
            json!("8"),
        ),
        (
            None,
            debezium("d", json!({"id": 9}), Value::Null),
            "delete",
            json!("9"),
        ),
        (
            None,
            debezium("t", Value::Null, Value::Null),
            "truncate",
            Value::Null,
        ),
    ];
    for (key, value, _, _) in &cases {
        producer.send_json(&topic, *key, value).await;
    }
    for (_, value, operation, id) in &cases {
        let message = client.data().await;
        let payload = &message["payload"];
        assert_eq!(payload["entity_type"], "order", "rename map applied");
        assert_eq!(payload["operation"], *operation);
        assert_eq!(payload["entity_id"], *id, "{value}");
        assert_eq!(payload["timestamp"], "2025-11-22T10:00:00Z");
        if *operation == "delete" {
            assert_eq!(payload["data"], Value::Null);
            assert_eq!(payload["before"], json!({"id": 9}));
        }
    }
}

#[tokio::test]
async fn bad_records_and_tombstones_are_skipped_counted_and_dead_lettered() {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    let dead = unique("cdc-dead");
    tansu.create_topic(&topic, 1).await;
    tansu.create_topic(&dead, 1).await;
    let gateway = Gateway::start(&tansu.brokers(), &topic, &["--dead-letter-topic", &dead]).await;
    let producer = tansu.producer();
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.order", json!({})).await;

    producer.send(&topic, Some(r#"{"id": 1}"#), None).await;
    producer
        .send(&topic, Some("bad-1"), Some("{this is not json"))
        .await;
    producer
        .send(&topic, Some("bad-2"), Some(r#"{"hello": "world"}"#))
        .await;
    producer
        .send(
            &topic,
            Some("bad-3"),
            Some(r#"{"entity_type": "order", "entity_id": "1", "operation": "upsert"}"#),
        )
        .await;
    producer
        .send_json(&topic, None, &simple("1", "insert", json!({"ok": true})))
        .await;

    let message = client.data().await;
    assert_eq!(
        message["payload"]["data"],
        json!({"ok": true}),
        "the good record after bad ones arrives"
    );
    assert_eq!(message["offset"], 4);
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_events_consumed_total{result="tombstone"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_events_consumed_total{result="decode_error"}"#)
            .await,
        3.0
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_events_consumed_total{result="dispatched"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_decode_errors_total{reason="invalid_json"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_decode_errors_total{reason="unknown_envelope"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_decode_errors_total{reason="invalid_operation"}"#)
            .await,
        1.0
    );

    use rdkafka::message::Headers;
    use rdkafka::Message as _;
    let copies = producer.consume_all(&tansu.brokers(), &dead, 3).await;
    let keys: Vec<&[u8]> = copies.iter().map(|m| m.key().unwrap()).collect();
    assert_eq!(keys, vec![&b"bad-1"[..], b"bad-2", b"bad-3"]);
    assert_eq!(
        copies[0].payload().unwrap(),
        b"{this is not json",
        "the value is copied unchanged"
    );
    let headers = copies[0].headers().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("cdc-gateway-error").as_deref(), Some("invalid_json"));
    assert_eq!(
        header("cdc-gateway-source-topic").as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(header("cdc-gateway-source-offset").as_deref(), Some("1"));
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_dead_letter_total{result="written"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn row_topics_get_one_row_entity_topics_get_all() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut row = Client::connect(&gateway).await;
    let mut entity = Client::connect(&gateway).await;
    row.subscribe("cdc.order.1", json!({})).await;
    entity.subscribe("cdc.order", json!({})).await;
    producer
        .send_json(&topic, None, &simple("2", "insert", json!({"id": 2})))
        .await;
    producer
        .send_json(&topic, None, &simple("1", "insert", json!({"id": 1})))
        .await;
    producer
        .send_json(
            &topic,
            None,
            &json!({"entity_type": "order", "operation": "truncate"}),
        )
        .await;
    producer
        .send_json(&topic, None, &simple("1", "update", json!({"id": 1})))
        .await;

    let first = row.data().await;
    assert_eq!(first["topic"], "cdc.order.1");
    assert_eq!(first["payload"]["operation"], "insert");
    let second = row.data().await;
    assert_eq!(
        second["payload"]["operation"], "update",
        "the truncate is not on row topics"
    );
    row.expect_silence(std::time::Duration::from_millis(300))
        .await;

    let ops: Vec<(Value, Value)> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let m = entity.data().await;
            assert_eq!(m["topic"], "cdc.order");
            out.push((
                m["payload"]["entity_id"].clone(),
                m["payload"]["operation"].clone(),
            ));
        }
        out
    };
    assert_eq!(
        ops,
        vec![
            (json!("2"), json!("insert")),
            (json!("1"), json!("insert")),
            (Value::Null, json!("truncate")),
            (json!("1"), json!("update"))
        ]
    );
}

#[tokio::test]
async fn offsets_are_committed_and_a_restarted_gateway_resumes_after_them() {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 1).await;
    let group = unique("group");
    let mut first = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &group]).await;
    let producer = tansu.producer();
    let mut client = Client::connect(&first).await;
    client.subscribe("cdc.order", json!({})).await;
    for i in 0..3 {
        producer
            .send_json(
                &topic,
                None,
                &simple(&i.to_string(), "insert", json!({"i": i})),
            )
            .await;
    }
    for _ in 0..3 {
        client.data().await;
    }
    first.signal("TERM");
    assert_eq!(first.wait_exit(std::time::Duration::from_secs(20)), Some(0));

    let second = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &group]).await;
    let mut client = Client::connect(&second).await;
    client.subscribe("cdc.order", json!({})).await;
    producer
        .send_json(&topic, None, &simple("new", "insert", json!({"i": 3})))
        .await;
    let message = client.data().await;
    assert_eq!(
        message["payload"]["entity_id"], "new",
        "records dispatched before the restart are not replayed"
    );
    assert_eq!(message["offset"], 3);
}

#[tokio::test]
async fn a_restarted_gateway_reads_history_back_so_clients_resume_and_snapshot_on_it() {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 1).await;
    let group = unique("group");
    let mut first = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &group]).await;
    let producer = tansu.producer();
    let mut client = Client::connect(&first).await;
    client.subscribe("cdc.order", json!({})).await;
    let mut offsets = Vec::new();
    for i in 0..4 {
        producer
            .send_json(
                &topic,
                None,
                &simple(&i.to_string(), "insert", json!({"i": i})),
            )
            .await;
        offsets.push(client.data().await["offset"].as_i64().unwrap());
    }
    first.signal("TERM");
    assert_eq!(first.wait_exit(std::time::Duration::from_secs(20)), Some(0));

    // The client kept the position of the second event, and reconnects to a new process.
    let second = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &group]).await;
    let mut back = Client::connect(&second).await;
    back.send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": offsets[1]}}))
        .await;
    let ack = back.recv().await;
    assert_eq!(
        ack["recovered"], true,
        "history read back from Kafka: {ack}"
    );
    for expected in &offsets[2..] {
        assert_eq!(back.data().await["offset"], *expected);
    }
    let mut dashboard = Client::connect(&second).await;
    dashboard
        .send(json!({"action": "subscribe", "topic": "cdc.order", "snapshot": true}))
        .await;
    assert_eq!(
        dashboard.recv().await["snapshot"],
        json!({"rows": 4, "complete": true}),
        "the snapshot cache is warmed too"
    );
    producer
        .send_json(&topic, None, &simple("new", "insert", json!({"i": 4})))
        .await;
    let live = back.data().await;
    assert_eq!(
        (
            live["payload"]["entity_id"].as_str(),
            live["offset"].as_i64()
        ),
        (Some("new"), Some(offsets[3] + 1)),
        "then live, once"
    );
    back.expect_silence(std::time::Duration::from_millis(300))
        .await;
}
