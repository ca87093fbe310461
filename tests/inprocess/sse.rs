//! Protocol section 8: `GET /sse`, read by a minimal HTTP/1.1 client written here (request
//! line, headers, chunked transfer decoding, event-stream parsing), independent of the
//! gateway's code.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn a_stream_acks_then_carries_data_with_its_position() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut sse = SseClient::open(
        gateway.addr(),
        "/sse?topic=cdc.order&topic=cdc.order.7",
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("*"),
        "no --allowed-origins: any page may read the stream"
    );
    for expected in ["cdc.order", "cdc.order.7"] {
        let (event, _, ack) = sse.next_event(WAIT).await.unwrap();
        assert_eq!(event, "ack");
        assert_eq!(
            (ack["action"].as_str(), ack["topic"].as_str()),
            (Some("subscribe"), Some(expected))
        );
        assert!(ack["position"].is_object());
    }
    producer
        .update_order(&topic, "7", json!({"id": "7", "status": "paid"}))
        .await;
    producer
        .update_order(&topic, "8", json!({"id": "8", "status": "new"}))
        .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (event, id, data) = sse.next_event(WAIT).await.unwrap();
        assert_eq!(event, "data");
        assert_eq!(data["type"], "data");
        let offset = data["offset"].as_i64().unwrap();
        assert_eq!(
            id.as_deref(),
            Some(format!("{topic}:0:{offset}").as_str()),
            "id is the position"
        );
        seen.push((
            data["topic"].as_str().unwrap().to_owned(),
            data["payload"]["entity_id"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [("cdc.order", "7"), ("cdc.order", "8"), ("cdc.order.7", "7")]
            .map(|(t, i)| (t.to_owned(), i.to_owned()))
    );
    let health = http_get(gateway.addr(), "/health").await.unwrap().1;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        (
            health["active_connections"].as_i64(),
            health["subscriptions"].as_i64()
        ),
        (Some(1), Some(2))
    );
    drop(sse);
    // The stream ends with its client: its subscriptions leave the index.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        producer
            .update_order(&topic, "7", json!({"id": "7", "status": "again"}))
            .await;
        if gateway.metric("cdc_gateway_subscriptions_active").await == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn filters_apply_and_bad_requests_are_refused_before_the_stream() {
    let (_tansu, gateway, producer, topic) = start_stack(&[
        "--max-subscriptions",
        "2",
        "--allowed-origins",
        "https://ok.example",
    ])
    .await;
    let filters = "%7B%22data.status%22%3A%22paid%22%7D"; // {"data.status":"paid"}
    let mut sse = SseClient::open(
        gateway.addr(),
        &format!("/sse?topic=cdc.order&filters={filters}"),
        &[("Origin", "https://ok.example")],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("https://ok.example")
    );
    assert_eq!(sse.next_event(WAIT).await.unwrap().0, "ack");
    producer
        .update_order(&topic, "1", json!({"id": "1", "status": "new"}))
        .await;
    producer
        .update_order(&topic, "2", json!({"id": "2", "status": "paid"}))
        .await;
    let (_, _, data) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(
        data["payload"]["entity_id"], "2",
        "the filter held back order 1"
    );

    for (target, headers, status, code) in [
        ("/sse", vec![], 400, "INVALID_MESSAGE"),
        ("/sse?topic=orders", vec![], 400, "INVALID_TOPIC"),
        (
            "/sse?topic=cdc.order&filters=%7Bnope",
            vec![],
            400,
            "INVALID_FILTER",
        ),
        (
            "/sse?topic=cdc.order&filters=%7B%22data.x%22%3A%7B%22near%22%3A1%7D%7D",
            vec![],
            400,
            "INVALID_FILTER",
        ),
        (
            "/sse?topic=cdc.order&since=zero",
            vec![],
            400,
            "INVALID_MESSAGE",
        ),
        (
            "/sse?topic=cdc.order",
            vec![("Last-Event-ID", "0:x")],
            400,
            "INVALID_MESSAGE",
        ),
        (
            "/sse?topic=cdc.a&topic=cdc.b&topic=cdc.c",
            vec![],
            400,
            "TOO_MANY_SUBSCRIPTIONS",
        ),
        (
            "/sse?topic=cdc.order",
            vec![("Origin", "https://evil.example")],
            403,
            "FORBIDDEN",
        ),
    ] {
        let refused = SseClient::open(gateway.addr(), target, &headers).await;
        assert_eq!(refused.status, status, "{target} {headers:?}");
        let body = refused.error_body().await;
        assert_eq!(body["code"], code, "{target}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The refusals subscribed nothing; the one live stream still has its one topic.
    assert_eq!(
        gateway.metric("cdc_gateway_subscriptions_active").await,
        1.0
    );
}

#[tokio::test]
async fn a_resumed_stream_keeps_its_position_sends_heartbeats_and_ends_at_shutdown() {
    let (_tansu, mut gateway, producer, topic) = start_stack(&["--ping-interval", "1s"]).await;
    let mut sse = SseClient::open(
        gateway.addr(),
        "/sse?topic=cdc.order.5&snapshot=1",
        &[("Last-Event-ID", "0:1000")],
    )
    .await;
    assert_eq!(sse.status, 200);
    let (_, _, ack) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(
        ack["recovered"], false,
        "a snapshot is the reload: nothing is replayed"
    );
    assert_eq!(
        ack["snapshot"],
        json!({"rows": 0, "complete": true}),
        "no event of the row yet"
    );
    let (event, _, synced) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(
        (event.as_str(), synced),
        ("synced", json!({"type": "synced", "topic": "cdc.order.5"}))
    );
    assert_eq!(
        sse.next(Duration::from_secs(5)).await,
        Some(Item::Comment("keep-alive".into())),
        "an idle stream sends a heartbeat comment"
    );
    producer
        .update_order(&topic, "5", json!({"id": "5", "status": "paid"}))
        .await;
    let (_, id, data) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(data["payload"]["entity_id"], "5");
    assert_eq!(
        id.as_deref(),
        Some(format!("{topic}:0:0").as_str()),
        "after a reload the position is the ack's, raised by each event"
    );
    // A second stream's snapshot holds the row's last event, marked as such.
    let mut second =
        SseClient::open(gateway.addr(), "/sse?topic=cdc.order.5&snapshot=1", &[]).await;
    let (event, _, ack) = second.next_event(WAIT).await.unwrap();
    assert_eq!(
        (event.as_str(), &ack["snapshot"]),
        ("ack", &json!({"rows": 1, "complete": true}))
    );
    let (event, id, row) = second.next_event(WAIT).await.unwrap();
    assert_eq!((event.as_str(), &row["snapshot"]), ("data", &json!(true)));
    assert_eq!(row["payload"]["entity_id"], "5");
    assert_eq!(id, None, "a snapshot row carries no event id before synced");
    let (event, id, _) = second.next_event(WAIT).await.unwrap();
    assert_eq!(event, "synced");
    assert!(id.is_some_and(|id| id.starts_with(&format!("{topic}:0:"))));
    drop(second);

    gateway.signal("TERM");
    assert_eq!(
        sse.next_event(WAIT).await,
        None,
        "the stream ends at shutdown"
    );
    assert_eq!(gateway.wait_exit(WAIT), Some(0));
}

#[tokio::test]
async fn a_stalled_stream_is_closed_and_holds_nobody_back() {
    let (tansu, gateway, producer, topic) =
        start_stack(&["--outbound-queue", "8", "--slow-client-grace", "1s"]).await;
    let mut stalled = SseClient::open_small_buffer(gateway.addr(), "/sse?topic=cdc.order").await;
    assert_eq!(stalled.next_event(WAIT).await.unwrap().0, "ack");
    let mut reader = Client::connect(&gateway).await;
    reader.subscribe("cdc.order", json!({})).await;

    // 3000 records of about 1.1 KiB: far more than the stalled stream's socket buffers, and
    // within the 5 MiB a mock cluster's partition keeps (more, and it deletes the oldest
    // records before the gateway, held back by the stalled stream, reads them).
    const COUNT: usize = 3000;
    let pad = "x".repeat(1024);
    let events: Vec<String> = (0..COUNT)
        .map(|i| {
            json!({"entity_type": "order", "entity_id": (i % 500).to_string(),
                   "operation": "update", "data": {"seq": i, "pad": pad}})
            .to_string()
        })
        .collect();
    producer.send_many(&topic, &events).await;
    // Counted by offset against an independent read of the broker: every record once, in
    // offset order, each with the broker's content at that offset.
    let mut got = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        let data = reader.data().await;
        got.push((
            data["offset"].as_i64().unwrap(),
            data["payload"]["data"]["seq"].clone(),
        ));
    }
    let stored: Vec<(i64, Value)> = producer
        .consume_all(&tansu.brokers(), &topic, COUNT)
        .await
        .iter()
        .map(|record| {
            use rdkafka::Message;
            let value: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
            (record.offset(), value["data"]["seq"].clone())
        })
        .collect();
    assert_eq!(stored.len(), COUNT);
    if let Some(at) = (0..COUNT).find(|&i| got[i] != stored[i]) {
        panic!(
            "the reader's message {at} is (offset, seq) {:?}, the broker's record is {:?}; \
             the reader's first five: {:?}",
            got[at],
            stored[at],
            &got[..5]
        );
    }
    assert!(
        gateway
            .metric(r#"cdc_gateway_drops_total{reason="slow_consumer_closed"}"#)
            .await
            >= 1.0
    );
    // The stalled stream's subscription goes; the reader's remains.
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.metric("cdc_gateway_subscriptions_active").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream ends"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
}

#[tokio::test]
async fn a_reconnecting_event_source_resumes_from_last_event_id() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut first = SseClient::open(gateway.addr(), "/sse?topic=cdc.order", &[]).await;
    assert_eq!(first.next_event(WAIT).await.unwrap().0, "ack");
    for n in 0..4 {
        producer
            .send_json(
                &topic,
                None,
                &order(
                    &n.to_string(),
                    "update",
                    json!({"id": n.to_string(), "status": "new"}),
                    Value::Null,
                ),
            )
            .await;
    }
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(first.next_event(WAIT).await.unwrap().1.unwrap());
    }
    drop(first);
    let mut again = SseClient::open(
        gateway.addr(),
        "/sse?topic=cdc.order",
        &[("Last-Event-ID", ids[1].as_str())],
    )
    .await;
    let (event, _, ack) = again.next_event(WAIT).await.unwrap();
    assert_eq!((event.as_str(), &ack["recovered"]), ("ack", &json!(true)));
    for expected in &ids[2..] {
        let (_, id, _) = again.next_event(WAIT).await.unwrap();
        assert_eq!(
            id.as_ref(),
            Some(expected),
            "the missed events, with their ids"
        );
    }
}

/// Issue 20.2: endless streams once held a pre-session HTTP slot for their whole life, so 60
/// of them under `--max-http-connections 50` left `/healthz` unanswered and new WebSocket
/// sessions failing. Streams count against `--max-connections`, like sessions.
#[tokio::test]
async fn open_streams_leave_health_probes_and_sessions_their_sockets() {
    let (_tansu, gateway, _producer, _topic) = start_stack(&[
        "--max-http-connections",
        "4",
        "--max-connections",
        "13",
        "--max-connections-per-ip",
        "0",
    ])
    .await;
    let mut streams = Vec::new();
    for _ in 0..12 {
        let mut sse = SseClient::open(gateway.addr(), "/sse?topic=cdc.order", &[]).await;
        assert_eq!(sse.status, 200);
        assert_eq!(sse.next_event(WAIT).await.unwrap().0, "ack");
        streams.push(sse);
    }
    for _ in 0..6 {
        let (status, _) = http_get(gateway.addr(), "/healthz").await.unwrap();
        assert_eq!(
            status, 200,
            "12 streams over 4 HTTP slots: probes still answered"
        );
    }
    let mut session = Client::connect(&gateway).await;
    let ack = session.subscribe("cdc.order", json!({})).await;
    assert_eq!(
        ack["type"], "ack",
        "the 13th connection is a session: {ack}"
    );
    // The 14th stream or session is over --max-connections, and says so.
    let refused = SseClient::open(gateway.addr(), "/sse?topic=cdc.order", &[]).await;
    assert_eq!(refused.status, 429);
    let body = refused.error_body().await;
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    let (status, _) = http_get(gateway.addr(), "/healthz").await.unwrap();
    assert_eq!(status, 200);
    // Closing a stream gives its slot back.
    drop(streams.pop());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut sse = SseClient::open(gateway.addr(), "/sse?topic=cdc.order", &[]).await;
        if sse.status == 200 {
            assert_eq!(sse.next_event(WAIT).await.unwrap().0, "ack");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A browser's EventSource that drops mid-snapshot reconnects with the last `id:` it saw.
/// Snapshot rows once carried the ack's position as theirs, so that reconnect resumed past
/// the rows not yet sent (`recovered: true`, half a table). Until every topic's `synced`, data
/// carries no `id:` (a reconnect then sends no Last-Event-ID and gets the snapshot again);
/// `synced` carries the position the stream resumes from.
#[tokio::test]
async fn snapshot_rows_carry_no_event_id_until_synced() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    for n in 0..3 {
        producer
            .update_order(&topic, &n.to_string(), json!({"id": n.to_string()}))
            .await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while gateway.metric("cdc_gateway_table_rows").await < 3.0 {
        assert!(std::time::Instant::now() < deadline, "rows never cached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sse = SseClient::open(gateway.addr(), "/sse?topic=cdc.order&snapshot=true", &[]).await;
    assert_eq!(sse.next_event(WAIT).await.unwrap().0, "ack");
    for _ in 0..3 {
        let (event, id, data) = sse.next_event(WAIT).await.unwrap();
        assert_eq!((event.as_str(), &data["snapshot"]), ("data", &json!(true)));
        assert_eq!(id, None, "a snapshot row has no event id: {data}");
    }
    let (event, id, _) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(event, "synced");
    let synced_at = id.expect("synced carries the position to resume from");
    assert_eq!(synced_at, format!("{topic}:0:2"));
    producer.update_order(&topic, "9", json!({"id": "9"})).await;
    let (event, id, _) = sse.next_event(WAIT).await.unwrap();
    assert_eq!((event.as_str(), id), ("data", Some(format!("{topic}:0:3"))));
}
