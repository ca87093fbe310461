//! Bursts, slow consumers and the two slow-client policies (protocol section 3): every client
//! that keeps reading gets every event in order; one that stalls past the grace period is
//! closed with 4004 (or skipped with a count under the drop policy) and holds nobody back
//! for longer than that.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn events(count: usize, pad: usize) -> Vec<String> {
    let padding = "x".repeat(pad);
    (0..count)
        .map(|i| {
            json!({"entity_type": "order", "entity_id": (i % 500).to_string(), "operation": "update",
                   "data": {"seq": i, "pad": padding}})
            .to_string()
        })
        .collect()
}

async fn read_all(client: &mut Client, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        let message = client.data().await;
        seqs.push(message["payload"]["data"]["seq"].as_u64().unwrap());
    }
    seqs
}

#[tokio::test]
async fn a_ten_thousand_row_burst_reaches_every_reading_client_in_order() {
    let (_tansu, gateway, producer, topic) = start_stack(&["--outbound-queue", "16"]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&gateway).await;
        client.subscribe("cdc.order", json!({})).await;
        clients.push(client);
    }
    const BURST: usize = 10_000;
    let produce = async { producer.send_many(&topic, &events(BURST, 64)).await };
    let readers = futures_util::future::join_all(clients.iter_mut().map(|c| read_all(c, BURST)));
    let ((), received) = tokio::join!(produce, readers);
    let expected: Vec<u64> = (0..BURST as u64).collect();
    for seqs in received {
        assert_eq!(seqs, expected, "every event, in order");
    }
    let metrics = gateway.metrics().await;
    for reason in ["queue_full", "slow_consumer_closed", "connection_closed"] {
        assert_eq!(
            metric_value(
                &metrics,
                &format!(r#"cdc_gateway_drops_total{{reason="{reason}"}}"#)
            ),
            0.0
        );
    }
    assert_eq!(
        metric_value(
            &metrics,
            r#"cdc_gateway_connections_closed_total{code="4004"}"#
        ),
        0.0
    );
    assert_eq!(
        metric_value(&metrics, "cdc_gateway_deliveries_total"),
        (3 * BURST) as f64
    );
}

#[tokio::test]
async fn a_stalled_client_is_closed_with_4004_and_the_others_get_everything() {
    let (_tansu, gateway, producer, topic) =
        start_stack(&["--outbound-queue", "8", "--slow-client-grace", "1s"]).await;
    let mut stalled = Client::connect_small_buffer(&gateway).await;
    stalled.subscribe("cdc.order", json!({})).await;
    let mut reader = Client::connect(&gateway).await;
    reader.subscribe("cdc.order", json!({})).await;

    const COUNT: usize = 3000;
    producer.send_many(&topic, &events(COUNT, 2048)).await;
    let seqs = read_all(&mut reader, COUNT).await;
    assert_eq!(seqs, (0..COUNT as u64).collect::<Vec<_>>());

    let (code, reason) = stalled.closed().await;
    assert_eq!((code, reason.as_str()), (4004, "slow consumer"));
    assert!(
        gateway
            .metric(r#"cdc_gateway_drops_total{reason="slow_consumer_closed"}"#)
            .await
            >= 1.0
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_connections_closed_total{code="4004"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_drop_policy_skips_with_a_count_and_keeps_the_connection() {
    let extra = [
        "--outbound-queue",
        "8",
        "--slow-client-grace",
        "500ms",
        "--slow-client-policy",
        "drop",
    ];
    let (_tansu, gateway, producer, topic) = start_stack(&extra).await;
    let mut stalled = Client::connect_small_buffer(&gateway).await;
    stalled.subscribe("cdc.order", json!({})).await;
    let mut reader = Client::connect(&gateway).await;
    reader.subscribe("cdc.order", json!({})).await;

    const COUNT: usize = 3000;
    producer.send_many(&topic, &events(COUNT, 2048)).await;
    assert_eq!(read_all(&mut reader, COUNT).await.len(), COUNT);
    let dropped = gateway
        .metric(r#"cdc_gateway_drops_total{reason="queue_full"}"#)
        .await;
    assert!(dropped > 0.0, "skipped messages are counted");

    // The stalled client is still connected: it gets what was queued, and answers a ping.
    stalled.send(json!({"action": "ping", "id": "alive"})).await;
    let (mut received, mut pong) = (0, false);
    while let Some(message) = stalled.recv_within(Duration::from_secs(2)).await {
        match message["type"].as_str() {
            Some("pong") => pong = true,
            Some("data") => received += 1,
            _ => panic!("unexpected {message}"),
        }
    }
    assert!(pong, "the connection stayed open");
    assert_eq!(
        received as f64 + dropped,
        COUNT as f64,
        "every event was either delivered or counted as dropped"
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_connections_closed_total{code="4004"}"#)
            .await,
        0.0
    );
}
