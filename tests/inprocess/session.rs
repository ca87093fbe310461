//! Protocol section 3 and 4 through a real connection: actions, replies, every error code
//! reachable without auth, heartbeats, close codes 1008, 1009, 4003, and filters end to end.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn every_error_code_without_auth_and_the_connection_stays_open() {
    let (_tansu, gateway, _producer, _topic) = start_stack(&[
        "--max-subscriptions",
        "2",
        "--client-rate-limit",
        "1",
        "--client-rate-burst",
        "30",
    ])
    .await;
    let mut client = Client::connect(&gateway).await;
    let cases: Vec<(Message, &str, Value)> = vec![
        (Message::text("not json"), "INVALID_MESSAGE", Value::Null),
        (Message::text("[1, 2]"), "INVALID_MESSAGE", Value::Null),
        (
            Message::text(r#"{"id": 1, "topic": "cdc.order"}"#),
            "INVALID_MESSAGE",
            json!(1),
        ),
        (
            Message::text(r#"{"id": 2, "action": "subscribe"}"#),
            "INVALID_MESSAGE",
            json!(2),
        ),
        (
            Message::binary(b"{}".to_vec()),
            "INVALID_MESSAGE",
            Value::Null,
        ),
        (
            Message::text(r#"{"id": "u", "action": "dance"}"#),
            "UNKNOWN_ACTION",
            json!("u"),
        ),
        (
            Message::text(r#"{"id": 3, "action": "subscribe", "topic": "orders"}"#),
            "INVALID_TOPIC",
            json!(3),
        ),
        (
            Message::text(
                r#"{"id": 4, "action": "subscribe", "topic": "cdc.ord er", "filters": {}}"#,
            ),
            "INVALID_TOPIC",
            json!(4),
        ),
        (
            Message::text(
                r#"{"id": 5, "action": "subscribe", "topic": "cdc.order", "filters": {"data.x": {"near": 1}}}"#,
            ),
            "INVALID_FILTER",
            json!(5),
        ),
        (
            Message::text(r#"{"id": 6, "action": "unsubscribe", "topic": "cdc.order"}"#),
            "NOT_SUBSCRIBED",
            json!(6),
        ),
    ];
    for (message, code, id) in cases {
        client.send_raw(message).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        assert_eq!(
            reply.get("id").cloned().unwrap_or(Value::Null),
            id,
            "{reply}"
        );
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    client.subscribe("cdc.a", json!({})).await;
    client.subscribe("cdc.b", json!({})).await;
    client
        .subscribe("cdc.a", json!({"operation": "insert"}))
        .await;
    client
        .send(json!({"action": "subscribe", "topic": "cdc.c", "id": 9}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_i64()),
        (Some("TOO_MANY_SUBSCRIPTIONS"), Some(9))
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_error_replies_total{code="INVALID_MESSAGE"}"#)
            .await,
        5.0
    );

    for _ in 0..40 {
        client.send(json!({"action": "ping"})).await;
    }
    let mut limited = 0;
    for _ in 0..40 {
        let reply = client.recv().await;
        if reply["code"] == "RATE_LIMITED" {
            limited += 1;
        } else {
            assert_eq!(reply["type"], "pong");
        }
    }
    assert!(
        limited >= 20,
        "a flood beyond the burst is rate limited ({limited} of 40)"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .send(json!({"action": "ping", "timestamp": 1234, "id": "still-open"}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "pong", "timestamp": 1234, "id": "still-open"})
    );
}

#[tokio::test]
async fn acks_pings_and_resubscribe_replace_filters() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut client = Client::connect(&gateway).await;
    client
        .send(json!({"action": "auth", "token": "ignored", "id": 1}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "ack", "action": "auth", "id": 1})
    );
    client.send(json!({"action": "subscribe", "topic": "cdc.order", "filters": {"operation": "insert"}, "id": "s1"})).await;
    let ack = client.recv().await;
    assert_eq!(
        (
            ack["action"].as_str(),
            ack["topic"].as_str(),
            ack["id"].as_str()
        ),
        (Some("subscribe"), Some("cdc.order"), Some("s1"))
    );
    assert!(ack["position"].is_object());

    producer
        .send_json(
            &topic,
            None,
            &order("1", "insert", json!({"v": 1}), Value::Null),
        )
        .await;
    producer
        .send_json(
            &topic,
            None,
            &order("1", "update", json!({"v": 2}), json!({"v": 1})),
        )
        .await;
    assert_eq!(client.data().await["payload"]["operation"], "insert");

    client.send(json!({"action": "subscribe", "topic": "cdc.order", "filters": {"operation": "update"}})).await;
    let ack = client.recv().await;
    assert_eq!(ack["type"], "ack");
    // The insert (offset 0) was delivered, so it was dispatched; the update (offset 1) may be.
    let position = ack["position"][format!("{topic}:0")].as_i64();
    assert!(
        matches!(position, Some(0 | 1)),
        "position = highest dispatched offset per partition: {ack}"
    );
    producer
        .send_json(
            &topic,
            None,
            &order("2", "insert", json!({"v": 1}), Value::Null),
        )
        .await;
    producer
        .send_json(
            &topic,
            None,
            &order("2", "update", json!({"v": 2}), json!({"v": 1})),
        )
        .await;
    // The update of row 1 may have been dispatched after the filter changed; then it comes
    // first. The insert of row 2 must not come at all.
    let mut message = client.data().await;
    if message["payload"]["entity_id"] == "1" {
        assert_eq!(message["payload"]["operation"], "update");
        message = client.data().await;
    }
    assert_eq!(
        (
            message["payload"]["operation"].as_str(),
            message["payload"]["entity_id"].as_str()
        ),
        (Some("update"), Some("2"))
    );

    client
        .send(json!({"action": "unsubscribe", "topic": "cdc.order", "id": 3}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "ack", "action": "unsubscribe", "topic": "cdc.order", "id": 3})
    );
    producer
        .send_json(
            &topic,
            None,
            &order("3", "update", json!({"v": 2}), Value::Null),
        )
        .await;
    client.expect_silence(Duration::from_millis(500)).await;

    client
        .send_raw(Message::Ping(b"hello".to_vec().into()))
        .await;
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Pong(payload))) = client.ws.next().await {
                return payload;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        &pong[..],
        b"hello",
        "RFC 6455 ping is answered with the same payload"
    );
    client.send(json!({"action": "ping", "id": 8})).await;
    let pong = client.recv().await;
    assert_eq!(pong["type"], "pong");
    assert!(
        pong["timestamp"].is_i64(),
        "without a timestamp, the server's time"
    );
}

#[tokio::test]
async fn resume_is_answered_honestly_and_snapshots_send_the_last_event_of_each_row() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut client = Client::connect(&gateway).await;
    client.send(json!({"action": "subscribe", "topic": "cdc.order.1", "since": {"0": 5}, "snapshot": true})).await;
    let ack = client.recv().await;
    assert_eq!(
        ack["recovered"], false,
        "no history yet: the client must reload"
    );
    assert_eq!(
        ack["snapshot"],
        json!({"rows": 0, "complete": true}),
        "no event of the row yet"
    );
    assert_eq!(
        client.recv().await,
        json!({"type": "synced", "topic": "cdc.order.1"}),
        "after the (no) snapshot rows, live events"
    );

    let change = |id: &str, operation: &str, status: &str| {
        let data = if operation == "delete" {
            Value::Null
        } else {
            json!({"id": id, "status": status})
        };
        json!({"entity_type": "order", "entity_id": id, "operation": operation, "data": data,
               "before": {"id": id, "status": "old"}})
    };
    // The watcher sees every event: once it has them, they are dispatched (and cached).
    let mut watcher = Client::connect(&gateway).await;
    watcher.subscribe("cdc.order", json!({})).await;
    let changes = [
        ("1", "insert", "new"),
        ("2", "insert", "new"),
        ("1", "update", "paid"),
        ("3", "insert", "new"),
        ("3", "delete", ""),
        ("3", "insert", "again"),
    ];
    for (id, operation, status) in changes {
        producer
            .send_json(&topic, None, &change(id, operation, status))
            .await;
    }
    for _ in changes {
        watcher.data().await;
    }
    for _ in 0..2 {
        assert_eq!(client.data().await["payload"]["entity_id"], "1");
    }

    let mut dashboard = Client::connect(&gateway).await;
    dashboard
        .send(
            json!({"action": "subscribe", "topic": "cdc.order", "snapshot": true,
                     "filters": {"row.status": {"ne": "new"}}}),
        )
        .await;
    let ack = dashboard.recv().await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["snapshot"], json!({"rows": 2, "complete": true}));
    let mut rows = Vec::new();
    for _ in 0..2 {
        let row = dashboard.data().await;
        assert_eq!(row["snapshot"], true);
        rows.push((
            row["payload"]["entity_id"].as_str().unwrap().to_owned(),
            row["payload"]["operation"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        rows,
        [("1", "update"), ("3", "insert")].map(|(i, o)| (i.to_owned(), o.to_owned())),
        "the latest event of each row that passes the filter, in key order"
    );
    assert_eq!(
        dashboard.recv().await,
        json!({"type": "synced", "topic": "cdc.order"})
    );
    producer
        .send_json(&topic, None, &change("2", "update", "shipped"))
        .await;
    let live = dashboard.data().await;
    assert_eq!(
        (live["payload"]["entity_id"].as_str(), live.get("snapshot")),
        (Some("2"), None),
        "then live events"
    );

    // The tables hold every row: a fourth one is in the next snapshot, which is complete.
    producer
        .send_json(&topic, None, &change("4", "insert", "paid"))
        .await;
    assert_eq!(dashboard.data().await["payload"]["entity_id"], "4");
    let mut late = Client::connect(&gateway).await;
    late.send(json!({"action": "subscribe", "topic": "cdc.order", "snapshot": true}))
        .await;
    assert_eq!(
        late.recv().await["snapshot"],
        json!({"rows": 4, "complete": true})
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            late.data().await["payload"]["entity_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids, ["1", "2", "3", "4"]);

    // A resume from the beginning is recovered; one naming a partition not read is not.
    let mut resumed = Client::connect(&gateway).await;
    resumed
        .send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": -1}}))
        .await;
    assert_eq!(resumed.recv().await["recovered"], true);
    let mut unknown = Client::connect(&gateway).await;
    unknown
        .send(json!({"action": "subscribe", "topic": "cdc.customer", "since": {"0": -1, "1": 0}}))
        .await;
    assert_eq!(unknown.recv().await["recovered"], false);
    // What the caches hold, evict and answer is in the metrics.
    for (series, value) in [
        ("cdc_gateway_table_rows", 4.0),
        ("cdc_gateway_table_store_failing", 0.0),
        (r#"cdc_gateway_snapshots_total{complete="true"}"#, 3.0),
        (r#"cdc_gateway_snapshots_total{complete="false"}"#, 0.0),
        ("cdc_gateway_history_events", 8.0),
        ("cdc_gateway_history_evictions_total", 0.0),
        (r#"cdc_gateway_resumes_total{recovered="true"}"#, 1.0),
        (r#"cdc_gateway_resumes_total{recovered="false"}"#, 1.0),
        // One observation of the gateway's own share per dispatched event.
        ("cdc_gateway_dispatch_latency_seconds_count", 8.0),
    ] {
        assert_eq!(gateway.metric(series).await, value, "{series}");
    }
    assert!(gateway.metric("cdc_gateway_history_bytes").await > 8.0 * 256.0);
    assert!(gateway.metric("cdc_gateway_table_disk_bytes").await > 0.0);
    // Batches written to sockets, each timed from its oldest message queued.
    assert!(
        gateway
            .metric("cdc_gateway_write_latency_seconds_count")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn filters_end_to_end_including_row_paths_on_deletes() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut tenant = Client::connect(&gateway).await;
    let mut data_tenant = Client::connect(&gateway).await;
    let mut big = Client::connect(&gateway).await;
    tenant
        .subscribe("cdc.order", json!({"row.tenant": "acme"}))
        .await;
    data_tenant
        .subscribe("cdc.order", json!({"data.tenant": "acme"}))
        .await;
    big.subscribe(
        "cdc.order",
        json!({"operation": ["insert", "update"], "data.amount": {"gte": 100}, "data.region": {"in": ["eu", "us"]},
               "before.status": {"ne": "cancelled"}, "data.coupon": {"exists": false}}),
    )
    .await;
    let events = [
        order(
            "1",
            "insert",
            json!({"tenant": "acme", "amount": 150, "region": "eu"}),
            Value::Null,
        ),
        order(
            "2",
            "insert",
            json!({"tenant": "globex", "amount": 50, "region": "eu"}),
            Value::Null,
        ),
        order(
            "3",
            "update",
            json!({"tenant": "acme", "amount": 100, "region": "us"}),
            json!({"status": "new"}),
        ),
        order(
            "4",
            "update",
            json!({"tenant": "acme", "amount": 500, "region": "us"}),
            json!({"status": "cancelled"}),
        ),
        order(
            "5",
            "insert",
            json!({"tenant": "acme", "amount": "150", "region": "eu"}),
            Value::Null,
        ),
        order(
            "6",
            "insert",
            json!({"tenant": "acme", "amount": 150, "region": "eu", "coupon": "X"}),
            Value::Null,
        ),
        order(
            "1",
            "delete",
            Value::Null,
            json!({"tenant": "acme", "amount": 150, "region": "eu"}),
        ),
    ];
    for event in &events {
        producer.send_json(&topic, None, event).await;
    }
    async fn ids(client: &mut Client, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let m = client.data().await;
            out.push(format!(
                "{}:{}",
                m["payload"]["entity_id"].as_str().unwrap(),
                m["payload"]["operation"].as_str().unwrap()
            ));
        }
        client.expect_silence(Duration::from_millis(300)).await;
        out
    }
    assert_eq!(
        ids(&mut tenant, 6).await,
        ["1:insert", "3:update", "4:update", "5:insert", "6:insert", "1:delete"],
        "row.tenant keeps the delete"
    );
    assert_eq!(
        ids(&mut data_tenant, 5).await,
        ["1:insert", "3:update", "4:update", "5:insert", "6:insert"],
        "data.* never matches a delete"
    );
    assert_eq!(
        ids(&mut big, 2).await,
        ["1:insert", "3:update"],
        "number compare, in, ne (missing before satisfies it), mixed types never match, exists:false"
    );
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let (_tansu, gateway, _producer, _topic) = start_stack(&["--max-message-size", "1024"]).await;
    let mut client = Client::connect(&gateway).await;
    client
        .send(json!({"action": "ping", "pad": "x".repeat(900)}))
        .await;
    assert_eq!(
        client.recv().await["type"],
        "pong",
        "just under the limit is fine"
    );
    client
        .send(json!({"action": "ping", "pad": "x".repeat(2000)}))
        .await;
    assert_eq!(client.closed().await.0, 1009);
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_connections_closed_total{code="1009"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn silent_clients_close_with_4003_and_heartbeats_flow() {
    let (_tansu, gateway, _producer, _topic) = start_stack(&[
        "--idle-timeout",
        "1500ms",
        "--ping-interval",
        "300ms",
        "--app-ping-interval",
        "200ms",
    ])
    .await;

    // A client that reads nothing (so answers no ping) is closed after the idle timeout...
    let mut silent = Client::connect(&gateway).await;

    // ...while one that answers pings (tungstenite does while reading) and heartbeats stays.
    let mut live = Client::connect(&gateway).await;
    let mut app_pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout_at(deadline, live.ws.next()).await
        {
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["type"], "ping");
            assert!(value["timestamp"].is_i64());
            app_pings += 1;
            live.send(json!({"action": "pong"})).await;
        }
    }
    assert!(
        app_pings >= 5,
        "application heartbeats arrive ({app_pings})"
    );
    assert_eq!(silent.closed().await, (4003, "idle timeout".to_string()));
    live.send(json!({"action": "ping", "id": 1})).await;
    assert_eq!(
        live.recv().await["type"],
        "pong",
        "the responsive client is still open"
    );
}

#[tokio::test]
async fn connection_limit_and_origin_policy_close_with_1008() {
    let (_tansu, gateway, _producer, _topic) = start_stack(&[
        "--max-connections",
        "1",
        "--allowed-origins",
        "https://dash.example",
    ])
    .await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = gateway.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://dash.example".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut first = Client { ws };
    first.send(json!({"action": "ping", "id": 1})).await;
    assert_eq!(first.recv().await["type"], "pong");

    let mut request = gateway.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://dash.example".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        Client { ws }.closed().await,
        (1008, "too many connections".to_string())
    );

    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut request = gateway.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        Client { ws }.closed().await,
        (1008, "origin not allowed".to_string())
    );
}

#[tokio::test]
async fn a_client_that_comes_back_with_its_position_gets_what_it_missed_then_live() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let order = |id: &str, n: u64| json!({"entity_type": "order", "entity_id": id, "operation": "update", "data": {"n": n}});
    // The watcher sees every event: once it has them, they are dispatched (and in history).
    let mut watcher = Client::connect(&gateway).await;
    watcher.subscribe("cdc.order", json!({})).await;
    let mut offsets = Vec::new();
    for n in 0..5 {
        let id = if n % 2 == 0 { "1" } else { "2" };
        producer.send_json(&topic, None, &order(id, n)).await;
        offsets.push(watcher.data().await["offset"].as_i64().unwrap());
    }

    // Back with the position of the third event: the fourth and fifth follow the ack.
    let mut back = Client::connect(&gateway).await;
    back.send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": offsets[2]}}))
        .await;
    let ack = back.recv().await;
    assert_eq!(
        (ack["type"].as_str(), &ack["recovered"]),
        (Some("ack"), &json!(true))
    );
    let mut row = Client::connect(&gateway).await;
    row.send(json!({"action": "subscribe", "topic": "cdc.order.1", "since": {"0": offsets[0]}}))
        .await;
    assert_eq!(row.recv().await["recovered"], true);
    producer.send_json(&topic, None, &order("1", 5)).await;
    offsets.push(watcher.data().await["offset"].as_i64().unwrap());
    let mut got = Vec::new();
    for _ in 0..3 {
        let message = back.data().await;
        assert!(message.get("snapshot").is_none());
        got.push(message["offset"].as_i64().unwrap());
    }
    assert_eq!(
        got,
        offsets[3..],
        "missed events in order, then live: no gap, no repeat"
    );
    let mut row_got = Vec::new();
    for _ in 0..3 {
        row_got.push(row.data().await["payload"]["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(
        row_got,
        [2, 4, 5],
        "only its row's events after its position"
    );

    // A position that is not one: an error, and no subscription.
    let mut garbage = Client::connect(&gateway).await;
    garbage
        .send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": -5}}))
        .await;
    assert_eq!(garbage.recv().await["code"], "INVALID_MESSAGE");
    // A position history cannot vouch for (a partition this gateway does not read): recovered
    // false, and live delivery starts.
    let mut lost = Client::connect(&gateway).await;
    lost.send(json!({"action": "subscribe", "topic": "cdc.order", "since": {format!("{topic}:0"): offsets[0], format!("{topic}:7"): 0}}))
        .await;
    assert_eq!(lost.recv().await["recovered"], false);
    // A position ahead of this gateway: nothing at or below it is sent again.
    let mut ahead = Client::connect(&gateway).await;
    ahead
        .send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": 1000}}))
        .await;
    assert_eq!(ahead.recv().await["recovered"], true);
    producer.send_json(&topic, None, &order("2", 6)).await;
    assert_eq!(lost.data().await["payload"]["data"]["n"], 6);
    ahead.expect_silence(Duration::from_millis(500)).await;
}

/// Issue 11: a snapshot is queued as one backlog that the connection's writer renders as the
/// client reads, so a client that subscribes with a 3,000-row snapshot and reads nothing for
/// three grace periods neither holds the consumer back (another client gets live events
/// meanwhile) nor is closed as slow: later it reads every row, `synced`, then the live events.
/// A WebSocket and an SSE stream, each behind a 4 KiB receive buffer and a 16-message queue
/// (3 MB of rows: more than the kernel buffers between them and the gateway, and within the
/// 5 MiB a mock cluster's partition keeps before it deletes the oldest records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_read_late_holds_nobody_back_and_arrives_whole() {
    const ROWS: usize = 3000;
    let (_broker, gateway, producer, topic) =
        start_stack(&["--outbound-queue", "16", "--slow-client-grace", "1s"]).await;
    let mut watcher = Client::connect(&gateway).await;
    watcher.subscribe("cdc.order", json!({})).await;
    let pad = "x".repeat(1000);
    let rows: Vec<String> = (0..ROWS)
        .map(|i| {
            order(
                &i.to_string(),
                "insert",
                json!({"id": i, "pad": pad}),
                Value::Null,
            )
            .to_string()
        })
        .collect();
    producer.send_many(&topic, &rows).await;
    for _ in 0..ROWS {
        watcher.data().await;
    }

    let mut late = Client::connect_small_buffer(&gateway).await;
    late.send(json!({"action": "subscribe", "topic": "cdc.order", "snapshot": true}))
        .await;
    let mut late_sse =
        SseClient::open_small_buffer(gateway.addr(), "/sse?topic=cdc.order&snapshot=1").await;
    assert_eq!(late_sse.status, 200);
    // Neither reads for three grace periods, while live events flow to the watcher.
    let live: Vec<String> = (0..5)
        .map(|i| {
            order(
                &format!("live-{i}"),
                "insert",
                json!({"pad": "y"}),
                Value::Null,
            )
            .to_string()
        })
        .collect();
    producer.send_many(&topic, &live).await;
    for i in 0..5 {
        let event = watcher.data().await;
        assert_eq!(event["payload"]["entity_id"], format!("live-{i}"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let ack = late.recv().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["snapshot"], json!({"rows": ROWS, "complete": true}));
    // Rows come in key order: the ids sorted as text.
    let mut expected: Vec<String> = (0..ROWS).map(|i| i.to_string()).collect();
    expected.sort();
    for (i, id) in expected.iter().enumerate() {
        let row = late.data().await;
        assert_eq!(row["snapshot"], true, "row {i}: {row}");
        assert_eq!(row["payload"]["entity_id"], id.as_str());
    }
    assert_eq!(
        late.recv().await,
        json!({"type": "synced", "topic": "cdc.order"})
    );
    for i in 0..5 {
        let event = late.data().await;
        assert_eq!(event["payload"]["entity_id"], format!("live-{i}"));
        assert_eq!(event.get("snapshot"), None);
    }

    let (event, _, ack) = late_sse.next_event(WAIT).await.expect("the ack");
    assert_eq!(
        (event.as_str(), &ack["snapshot"]["rows"]),
        ("ack", &json!(ROWS))
    );
    for (i, id) in expected.iter().enumerate() {
        let (event, _, row) = late_sse.next_event(WAIT).await.expect("a row");
        assert_eq!(event, "data", "row {i}: {row}");
        assert_eq!(row["payload"]["entity_id"], id.as_str());
    }
    let (event, _, _) = late_sse.next_event(WAIT).await.expect("synced");
    assert_eq!(event, "synced");
    for i in 0..5 {
        let (_, _, event) = late_sse.next_event(WAIT).await.expect("a live event");
        assert_eq!(event["payload"]["entity_id"], format!("live-{i}"));
    }
}

/// The filter and `since` bounds are flags: past each, the subscribe gets its error (and the
/// refusal is counted); within each, it is served; the connection's subscriptions stay.
#[tokio::test]
async fn filter_and_since_bounds_follow_their_flags() {
    let (_broker, gateway, _producer, topic) = start_stack(&[
        "--max-filter-clauses",
        "2",
        "--max-filter-values",
        "3",
        "--max-filter-depth",
        "2",
        "--since-margin",
        "1",
    ])
    .await;
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.kept", json!({})).await;
    let refused = [
        json!({"data.a": 1, "data.b": 2, "data.c": 3}),
        json!({"data.a": {"in": [1, 2, 3, 4]}}),
        json!({"data.a.b": 1}),
    ];
    for (id, filters) in refused.iter().enumerate() {
        client
            .send(
                json!({"action": "subscribe", "topic": "cdc.order", "filters": filters, "id": id}),
            )
            .await;
        let reply = client.recv().await;
        assert_eq!(
            (reply["code"].as_str(), reply["id"].as_u64()),
            (Some("INVALID_FILTER"), Some(id as u64)),
            "{filters}: {reply}"
        );
        assert!(
            reply["message"].as_str().unwrap().contains("at most"),
            "{reply}"
        );
    }
    client
        .subscribe(
            "cdc.order",
            json!({"data.a": [1, 2, 3], "data": {"exists": true}}),
        )
        .await;
    // One partition is read: one unknown entry is within the margin, two are not.
    let within = json!({format!("{topic}:0"): -1, format!("{topic}:1"): -1});
    client
        .send(json!({"action": "subscribe", "topic": "cdc.other", "since": within}))
        .await;
    assert_eq!(client.recv().await["type"], "ack");
    let beyond =
        json!({format!("{topic}:0"): -1, format!("{topic}:1"): -1, format!("{topic}:2"): -1});
    client
        .send(json!({"action": "subscribe", "topic": "cdc.third", "since": beyond}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["code"], "INVALID_MESSAGE", "{reply}");
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_error_replies_total{code="INVALID_FILTER"}"#)
            .await,
        3.0
    );
    client
        .send(json!({"action": "unsubscribe", "topic": "cdc.kept"}))
        .await;
    assert_eq!(client.recv().await["type"], "ack", "cdc.kept was kept");
}
