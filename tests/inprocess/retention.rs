//! Records the broker deletes before the gateway reads them (retention): the mock cluster
//! keeps 5 MiB per partition and deletes its oldest record batches past that, so a gateway
//! held back by a stalled client while 8 MB arrive finds its next offset gone, and librdkafka
//! moves it to the log's new start. Nothing can deliver those records any more; what the
//! gateway must not do is hide it: the skipped offsets are counted, and a resume from before
//! them is answered `recovered: false` (protocol section 7: `recovered: true` is a promise).

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_unread_are_counted_and_never_claimed_as_recovered() {
    let (_broker, gateway, producer, topic) = start_stack(&[
        "--outbound-queue",
        "8",
        "--slow-client-grace",
        "3s",
        // A small prefetch, so that librdkafka does not read ahead past what is deleted.
        "--kafka-property",
        "queued.max.messages.kbytes=256",
    ])
    .await;
    let mut stalled = SseClient::open_small_buffer(gateway.addr(), "/sse?topic=cdc.order").await;
    assert_eq!(stalled.next_event(WAIT).await.unwrap().0, "ack");
    let mut reader = Client::connect(&gateway).await;
    reader.subscribe("cdc.order", json!({})).await;

    let pad = "x".repeat(2000);
    let event = |seq: usize| {
        json!({"entity_type": "order", "entity_id": (seq % 50).to_string(),
               "operation": "update", "data": {"seq": seq, "pad": pad}})
        .to_string()
    };
    // 400 KB that stall the stream (and with it the consumer, for the grace period), then
    // 8 MB while it is stalled: the partition's first 3 MB or so are deleted unread.
    const FIRST: usize = 200;
    const COUNT: usize = 4200;
    let first: Vec<String> = (0..FIRST).map(event).collect();
    producer.send_many(&topic, &first).await;
    let rest: Vec<String> = (FIRST..COUNT).map(event).collect();
    producer.send_many(&topic, &rest).await;

    // The reader gets what the gateway read, in order, up to the last record.
    let mut offsets = Vec::new();
    loop {
        let data = reader.data().await;
        offsets.push(data["offset"].as_i64().unwrap());
        if data["payload"]["data"]["seq"] == json!(COUNT - 1) {
            break;
        }
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in offset order");
    let gaps: Vec<(i64, i64)> = offsets
        .windows(2)
        .filter(|w| w[1] > w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert_eq!(
        gaps.len(),
        1,
        "one stretch of records was deleted before the gateway read it: {gaps:?}"
    );
    let (before, after) = gaps[0];
    assert_eq!(
        *offsets.last().unwrap() as usize,
        COUNT - 1,
        "the last record has the last offset"
    );
    assert_eq!(
        gateway
            .metric("cdc_gateway_source_offsets_lost_total")
            .await,
        (after - before - 1) as f64,
        "every offset skipped unread is counted"
    );

    // A resume from before the deleted records cannot be served whole, on any entity topic.
    for since in [before, (before + after) / 2] {
        let mut back = Client::connect(&gateway).await;
        back.send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": since}}))
            .await;
        let ack = back.recv().await;
        assert_eq!(
            (ack["type"].as_str(), &ack["recovered"]),
            (Some("ack"), &json!(false)),
            "since {since}: {ack}"
        );
    }
    // One from the last deleted offset on is: a client that got those records from a replica
    // that read them in time misses nothing here.
    let mut back = Client::connect(&gateway).await;
    back.send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": after - 1}}))
        .await;
    let ack = back.recv().await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let replayed: Value = back.data().await;
    assert_eq!(replayed["offset"], after);
    // Snapshots say they may lack rows.
    let mut snapshot = Client::connect(&gateway).await;
    snapshot
        .send(json!({"action": "subscribe", "topic": "cdc.order", "snapshot": true}))
        .await;
    let ack = snapshot.recv().await;
    assert_eq!(ack["snapshot"]["complete"], false, "{ack}");
    drop(stalled);
}
