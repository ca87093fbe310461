//! Records the broker deletes before the gateway reads them (retention): the mock cluster
//! keeps 5 MiB per partition and deletes its oldest record batches past that, so a gateway
//! held back by a stalled client while 8 MB arrive finds its next offset gone, and librdkafka
//! moves it to the log's new start. Nothing can deliver those records any more; what the
//! gateway must not do is hide it: the skipped offsets are counted, every subscription gets a
//! `reset` message (an extension) where the records are missing, and a resume from before
//! them is answered `recovered: false` (protocol section 7: `recovered: true` is a promise).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_unread_are_counted_and_never_claimed_as_recovered() {
    deleted_unread("earliest").await;
}

/// Issue 20.5: under the default `--auto-offset-reset latest`, librdkafka's own reset once
/// jumped to the end of the log, and the records Kafka still held were counted as deleted and
/// never delivered. The gateway picks its start offsets itself; librdkafka's reset is always
/// `earliest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_unread_under_the_default_reset_lose_only_what_is_deleted() {
    deleted_unread("latest").await;
}

async fn deleted_unread(reset: &str) {
    let (_broker, gateway, producer, topic) = start_stack(&[
        "--auto-offset-reset",
        reset,
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
    let mut row_reader = Client::connect(&gateway).await;
    row_reader.subscribe("cdc.order.7", json!({})).await;
    let mut dashboard = SseClient::open(gateway.addr(), "/sse?topic=cdc.order", &[]).await;
    assert_eq!(dashboard.next_event(WAIT).await.unwrap().0, "ack");

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

    // The reader gets what the gateway read, in order, up to the last record, and a reset
    // where records are missing.
    let mut offsets = Vec::new();
    let mut resets = Vec::new();
    loop {
        let message = reader.recv().await;
        if message["type"] == "reset" {
            resets.push((offsets.len(), message));
            continue;
        }
        assert_eq!(message["type"], "data", "{message}");
        offsets.push(message["offset"].as_i64().unwrap());
        if message["payload"]["data"]["seq"] == json!(COUNT - 1) {
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
    let expected_reset = |subscribed: &str| {
        json!({"type": "reset", "topic": subscribed, "reason": "records_lost", "source": topic,
               "partition": 0, "from": before + 1, "to": after - 1})
    };
    let gap_at = offsets.iter().position(|o| *o == after).unwrap();
    assert_eq!(
        resets,
        vec![(gap_at, expected_reset("cdc.order"))],
        "one reset, between the last record before the gap and the first after it"
    );
    assert_valid_server_message(&resets[0].1);
    // Every subscription is told, whatever its topic: a row topic's subscriber cannot know
    // which rows the lost records changed.
    let last_of_row = (0..COUNT).rev().find(|seq| seq % 50 == 7).unwrap();
    let mut row_messages = Vec::new();
    loop {
        let message = row_reader.recv().await;
        let last = message["payload"]["data"]["seq"] == json!(last_of_row);
        row_messages.push(message);
        if last {
            break;
        }
    }
    assert_eq!(
        row_messages
            .iter()
            .filter(|m| m["type"] == "reset")
            .collect::<Vec<_>>(),
        vec![&expected_reset("cdc.order.7")]
    );
    // And over SSE, as an event of its own.
    loop {
        let (event, _, message) = dashboard
            .next_event(WAIT)
            .await
            .expect("the stream goes on");
        if event == "reset" {
            assert_eq!(message, expected_reset("cdc.order"));
            break;
        }
        assert_eq!(event, "data");
        assert!(
            message["offset"].as_i64().unwrap() <= before,
            "the reset comes first: {message}"
        );
    }

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

/// The message against schemas/server-message.schema.json.
fn assert_valid_server_message(message: &Value) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/server-message.schema.json"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(message)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{message}: {errors:?}");
}

/// Issue 20.6: a replica down for longer than retention restarts at a committed offset the
/// broker no longer holds. It once started at the new low watermark in silence; the records
/// in between are lost to its clients, and the gateway says so: counted at startup, and a
/// resume from before them answers `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_an_outage_longer_than_retention_counts_what_it_lost() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let broker = MockBroker::start();
    let topic = unique("cdc-events");
    broker.create_topic(&topic, 1);
    let group = unique("gw-outage");
    let producer = broker.producer();
    let pad = "x".repeat(2000);
    let event = |seq: usize| {
        json!({"entity_type": "order", "entity_id": (seq % 50).to_string(),
               "operation": "update", "data": {"seq": seq, "pad": pad}})
        .to_string()
    };
    const READ: usize = 100;
    const COUNT: usize = 4500;
    let mut first = Gateway::start(&broker.brokers(), &topic, &["--group-id", &group]).await;
    let mut reader = Client::connect(&first).await;
    reader.subscribe("cdc.order", json!({})).await;
    producer
        .send_many(&topic, &(0..READ).map(event).collect::<Vec<_>>())
        .await;
    for seq in 0..READ {
        let message = reader.data().await;
        assert_eq!(message["payload"]["data"]["seq"], json!(seq));
    }
    // A graceful stop commits what was dispatched: offset READ is next.
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)), Some(0));
    drop(reader);

    // While it is down, 9 MB arrive: the mock cluster keeps 5 MiB, the oldest batches go.
    producer
        .send_many(&topic, &(READ..COUNT).map(event).collect::<Vec<_>>())
        .await;
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let (low, high) = probe
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(high, COUNT as i64);
    assert!(
        low > READ as i64,
        "retention deleted past the committed offset (low watermark {low})"
    );
    let mut committed = rdkafka::TopicPartitionList::new();
    committed.add_partition(&topic, 0);
    let committed = probe
        .committed_offsets(committed, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        committed.find_partition(&topic, 0).unwrap().offset(),
        rdkafka::Offset::Offset(READ as i64),
        "the group committed what it dispatched"
    );

    let second = Gateway::start(&broker.brokers(), &topic, &["--group-id", &group]).await;
    assert_eq!(
        second.metric("cdc_gateway_source_offsets_lost_total").await,
        (low - READ as i64) as f64,
        "every offset deleted between the commit and the low watermark is counted"
    );
    let mut back = Client::connect(&second).await;
    back.send(json!({"action": "subscribe", "topic": "cdc.order", "since": {"0": READ - 1}}))
        .await;
    let ack = back.recv().await;
    assert_eq!(ack["recovered"], false, "{ack}");
    // What the broker still holds is delivered: the last record reaches a live client.
    let mut live = Client::connect(&second).await;
    live.subscribe("cdc.order.7", json!({})).await;
    let last = COUNT + 7 - COUNT % 50;
    producer.send(&topic, None, Some(&event(last))).await;
    // Records still being caught up on may come first; each is one the broker holds.
    loop {
        let message = live.data().await;
        assert!(message["offset"].as_i64().unwrap() >= low, "{message}");
        if message["payload"]["data"]["seq"] == json!(last) {
            break;
        }
    }
}
