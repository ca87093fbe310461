//! Protocol section 5 and shutdown: the HTTP endpoints on the WebSocket port, metrics that
//! move, readiness that follows the broker, and the SIGTERM drain.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

async fn get_json(gateway: &Gateway, path: &str) -> (u16, Value) {
    let (status, body) = http_get(gateway.addr(), path).await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

#[tokio::test]
async fn endpoints_answer_on_the_same_port() {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 2).await;
    let gateway = Gateway::start(&tansu.brokers(), &topic, &[]).await;
    assert_eq!(
        get_json(&gateway, "/healthz").await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        get_json(&gateway, "/readyz").await,
        (200, json!({"ready": true}))
    );
    let (status, health) = get_json(&gateway, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["active_connections"], 0);
    assert_eq!(health["kafka"]["connected"], true);
    assert_eq!(
        health["kafka"]["assigned_partitions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (status, missing) = get_json(&gateway, "/nope").await;
    assert_eq!((status, missing["code"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(
        get_json(&gateway, "/ws").await.0,
        426,
        "a plain GET on /ws asks for an upgrade"
    );
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 1).await;
    let gateway = Gateway::start(&tansu.brokers(), &topic, &[]).await;
    let before = gateway.metrics().await;
    for name in [
        "cdc_gateway_connections_active",
        "cdc_gateway_subscriptions_active",
        "cdc_gateway_topics_active",
        "cdc_gateway_events_consumed_total",
        "cdc_gateway_decode_errors_total",
        "cdc_gateway_deliveries_total",
        "cdc_gateway_drops_total",
        "cdc_gateway_enqueue_latency_seconds_bucket",
        "cdc_gateway_error_replies_total",
        "cdc_gateway_kafka_connected",
        "cdc_gateway_ready",
        "process_resident_memory_bytes",
    ] {
        assert!(before.contains(name), "{name} is exported from the start");
    }
    let mut a = Client::connect(&gateway).await;
    let mut b = Client::connect(&gateway).await;
    a.subscribe("cdc.order", json!({})).await;
    a.subscribe("cdc.order.1", json!({})).await;
    b.subscribe("cdc.order", json!({})).await;
    b.send(json!({"action": "nope"})).await;
    b.recv().await;
    tansu
        .producer()
        .send_json(
            &topic,
            None,
            &json!({"entity_type": "order", "entity_id": "1", "operation": "insert", "data": {}}),
        )
        .await;
    a.data().await;
    a.data().await;
    b.data().await;

    let after = gateway.metrics().await;
    assert_eq!(metric_value(&after, "cdc_gateway_connections_active"), 2.0);
    assert_eq!(metric_value(&after, "cdc_gateway_connections_total"), 2.0);
    assert_eq!(
        metric_value(&after, "cdc_gateway_subscriptions_active"),
        3.0
    );
    assert_eq!(metric_value(&after, "cdc_gateway_topics_active"), 2.0);
    assert_eq!(
        metric_value(
            &after,
            r#"cdc_gateway_events_consumed_total{result="dispatched"}"#
        ),
        1.0
    );
    assert_eq!(metric_value(&after, "cdc_gateway_deliveries_total"), 3.0);
    assert_eq!(
        metric_value(&after, "cdc_gateway_enqueue_latency_seconds_count"),
        1.0
    );
    assert_eq!(
        metric_value(
            &after,
            r#"cdc_gateway_error_replies_total{code="UNKNOWN_ACTION"}"#
        ),
        1.0
    );
    assert_eq!(metric_value(&after, "cdc_gateway_kafka_connected"), 1.0);
    assert_eq!(metric_value(&after, "cdc_gateway_assigned_partitions"), 1.0);

    // Lag comes from librdkafka statistics (every second in tests).
    let series = format!(r#"cdc_gateway_consumer_lag{{partition="0",topic="{topic}"}}"#);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gateway.metrics().await.contains(&series) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer lag per partition is exported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.metric("cdc_gateway_subscriptions_active").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection's subscriptions are removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gateway.metric("cdc_gateway_topics_active").await, 1.0);
}

#[tokio::test]
async fn readiness_follows_the_broker() {
    let relay_port = free_port();
    let tansu = Tansu::start_advertising(free_port(), relay_port);
    let mut relay = Relay::start(relay_port, tansu.port);
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 1).await;
    let gateway = Gateway::start(&tansu.brokers(), &topic, &[]).await;
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.order", json!({})).await;

    relay.cut();
    gateway.wait_ready(false).await;
    let (status, body) = get_json(&gateway, "/readyz").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("Kafka is unreachable"))
    );
    assert_eq!(
        get_json(&gateway, "/healthz").await.0,
        200,
        "liveness does not depend on Kafka"
    );
    assert_eq!(gateway.metric("cdc_gateway_ready").await, 0.0);

    relay.restore();
    gateway.wait_ready(true).await;
    client.send(json!({"action": "ping", "id": 1})).await;
    assert_eq!(
        client.recv().await["type"],
        "pong",
        "clients stay connected through a broker outage"
    );
    tansu
        .producer()
        .send_json(
            &topic,
            None,
            &json!({"entity_type": "order", "entity_id": "1", "operation": "insert", "data": {}}),
        )
        .await;
    assert_eq!(
        client.data().await["payload"]["entity_id"],
        "1",
        "events flow again after the broker returns"
    );
}

#[tokio::test]
async fn sigterm_turns_readyz_503_closes_clients_with_1001_and_exits_0() {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 1).await;
    let mut gateway = Gateway::start(&tansu.brokers(), &topic, &["--shutdown-delay", "1s"]).await;
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.order", json!({})).await;

    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get_json(&gateway, "/readyz").await,
        (503, json!({"ready": false, "reason": "shutting down"}))
    );
    assert_eq!(
        client.closed().await,
        (1001, "server shutting down".to_string())
    );
    assert_eq!(gateway.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        http_get(gateway.addr(), "/healthz").await.is_err(),
        "the listener is closed"
    );
}

/// Issue 22.8, as it was tried: tansu stopped (SIGSTOP) in the middle of a stream. The
/// connections stay up, so `connected: true` and lag 0 said nothing; now /health says which
/// broker is stalled, the metric counts it, and readiness stays (every replica shares the
/// brokers: docs/operating.md). Nothing is lost or repeated across the hang.
#[tokio::test]
async fn a_hung_broker_shows_in_health_and_metrics_and_nothing_is_lost() {
    let mut tansu = Tansu::start();
    let topic = unique("hang");
    tansu.create_topic(&topic, 1).await;
    let gateway = Gateway::start(&tansu.brokers(), &topic, &["--kafka-stall-timeout", "2s"]).await;
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.order", json!({})).await;
    let producer = tansu.producer();
    for n in 0..5 {
        producer
            .update_order(&topic, &n.to_string(), json!({"id": n.to_string(), "n": n}))
            .await;
    }
    let mut offsets = Vec::new();
    for _ in 0..5 {
        offsets.push(client.data().await["offset"].as_i64().unwrap());
    }
    let (_, health) = get_json(&gateway, "/health").await;
    assert_eq!(health["kafka"]["stalled"], false, "{health}");

    tansu.signal("STOP");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let health = loop {
        let (_, health) = get_json(&gateway, "/health").await;
        if health["kafka"]["stalled"] == true {
            break health;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a broker stopped for 30 s was never called stalled: {health}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    let brokers = health["kafka"]["brokers"].as_array().unwrap();
    assert!(
        brokers
            .iter()
            .any(|b| b["stalled"] == true && b["awaiting_responses"].as_i64() > Some(0)),
        "{health}"
    );
    assert_eq!(
        gateway.metric("cdc_gateway_kafka_brokers_stalled").await,
        1.0
    );
    assert_eq!(
        get_json(&gateway, "/readyz").await.0,
        200,
        "a hang of the brokers every replica shares does not empty the load balancer"
    );

    tansu.signal("CONT");
    for n in 5..10 {
        producer
            .update_order(&topic, &n.to_string(), json!({"id": n.to_string(), "n": n}))
            .await;
    }
    for _ in 5..10 {
        offsets.push(client.data().await["offset"].as_i64().unwrap());
    }
    assert_eq!(
        offsets,
        (0..10).collect::<Vec<i64>>(),
        "each record once, in order"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = get_json(&gateway, "/health").await;
        if health["kafka"]["stalled"] == false && health["status"] == "ok" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still stalled: {health}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        gateway.metric("cdc_gateway_kafka_brokers_stalled").await,
        0.0
    );
    tansu.stop();
}
