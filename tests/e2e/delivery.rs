//! Named regressions for the delivery guarantee (protocol 7 and 8). Each counts deliveries by
//! (source topic, partition, offset) against an independent read of the broker's log: every
//! record after the position resumed from arrives, once, and nothing at or below it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::checker::clients::{ack_position, Position};
use crate::checker::sse::SseStream;
use crate::checker::verdict::read_log;
use crate::support::*;

/// A source record: topic, partition, offset.
type Key = (String, i64, i64);

/// How long a test waits for what it expects.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long it keeps reading after that, to catch a repeat.
const AFTERWARDS: Duration = Duration::from_secs(1);

fn order(id: usize) -> String {
    json!({"entity_type": "order", "entity_id": id.to_string(), "operation": "update",
           "data": {"id": id, "status": "paid"}, "before": null,
           "timestamp": "2026-11-22T10:00:00Z"})
    .to_string()
}

/// Records produced per `topic:partition`.
type Counts = BTreeMap<String, usize>;

/// Produces `count` order records to one partition, all in flight at once.
async fn produce(
    producer: &Producer,
    counts: &mut Counts,
    topic: &str,
    partition: i32,
    count: usize,
) {
    let values: Vec<(String, String)> = (0..count).map(|i| (i.to_string(), order(i))).collect();
    let sends = values
        .iter()
        .map(|(key, value)| producer.send_to(topic, Some(partition), Some(key), Some(value)));
    futures_util::future::join_all(sends).await;
    *counts.entry(format!("{topic}:{partition}")).or_default() += count;
}

/// Every record in the broker's log with an offset above `since` in its partition (a
/// partition `since` does not name counts from the beginning).
async fn after(brokers: &str, counts: &Counts, since: &Position) -> BTreeSet<Key> {
    let (brokers, counts) = (brokers.to_owned(), counts.clone());
    let log = tokio::task::spawn_blocking(move || read_log(&brokers, &counts))
        .await
        .unwrap();
    let mut out = BTreeSet::new();
    for (key, records) in log.partitions {
        let from = since.get(&key).copied().unwrap_or(-1);
        let (topic, partition) = key.rsplit_once(':').unwrap();
        for offset in records.keys().filter(|offset| **offset > from) {
            out.insert((topic.to_owned(), partition.parse().unwrap(), *offset));
        }
    }
    out
}

/// No records yet on any partition of `topics`.
fn empty(topics: &[&str], partitions: i64) -> Counts {
    keys(topics, partitions)
        .into_iter()
        .map(|k| (k, 0))
        .collect()
}

fn keys(topics: &[&str], partitions: i64) -> Vec<String> {
    topics
        .iter()
        .flat_map(|topic| (0..partitions).map(move |p| format!("{topic}:{p}")))
        .collect()
}

/// What a client received, counted by source record, and the position it keeps.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<Key, usize>,
    position: Position,
    /// The last SSE `id:`.
    last_id: Option<String>,
}

impl Tally {
    fn data(&mut self, message: &Value) {
        let source = message["source"].as_str().expect("data names its source");
        let partition = message["partition"]
            .as_i64()
            .expect("data names its partition");
        let offset = message["offset"].as_i64().expect("data names its offset");
        *self
            .counts
            .entry((source.to_owned(), partition, offset))
            .or_default() += 1;
        let kept = self
            .position
            .entry(format!("{source}:{partition}"))
            .or_insert(offset);
        *kept = (*kept).max(offset);
    }

    fn has(&self, want: &BTreeSet<Key>) -> bool {
        want.iter().all(|key| self.counts.contains_key(key))
    }

    /// Asserts that exactly `want` arrived, each once.
    fn assert_exactly(&self, want: &BTreeSet<Key>, what: &str) {
        let got: BTreeSet<Key> = self.counts.keys().cloned().collect();
        let missed: Vec<&Key> = want.difference(&got).collect();
        let extra: Vec<&Key> = got.difference(want).collect();
        let twice: Vec<(&Key, &usize)> = self.counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            missed.is_empty() && extra.is_empty() && twice.is_empty(),
            "{what}: {} expected; missed {missed:?}; not expected {extra:?}; more than once {twice:?}",
            want.len()
        );
    }
}

type Ws = WsStream;

async fn connect(gateway: &Gateway) -> Ws {
    tokio_tungstenite::connect_async(gateway.ws_url())
        .await
        .expect("WebSocket connects")
        .0
}

/// The next JSON message (heartbeats skipped); `None` on timeout, close or a failure.
async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()?? {
            Ok(Message::Text(text)) => {
                let message: Value = serde_json::from_str(&text).expect("JSON");
                if message["type"] != "ping" {
                    return Some(message);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Subscribes to `cdc.order`, from `since` if given; returns the ack.
async fn subscribe(ws: &mut Ws, since: Option<&Position>) -> Value {
    let mut request = json!({"action": "subscribe", "topic": "cdc.order", "id": 1});
    if let Some(since) = since {
        request["since"] = json!(since);
    }
    ws.send(Message::text(request.to_string())).await.unwrap();
    let ack = next(ws, PATIENCE).await.expect("an ack");
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_i64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    ack
}

/// Reads until `want` has arrived (or the patience runs out), then a little longer.
async fn ws_collect(ws: &mut Ws, tally: &mut Tally, want: &BTreeSet<Key>) {
    let deadline = Instant::now() + PATIENCE;
    // Nothing to wait for: only the repeats and extras a short read would catch.
    let mut until = if tally.has(want) {
        Instant::now() + AFTERWARDS
    } else {
        deadline
    };
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Some(message) = next(ws, left).await else {
            return;
        };
        assert_ne!(message["type"], "error", "{message}");
        if message["type"] == "data" {
            tally.data(&message);
        }
        if until == deadline && tally.has(want) {
            until = Instant::now() + AFTERWARDS;
        }
    }
}

async fn sse_open(gateway: &Gateway, last_id: Option<&str>) -> (SseStream, Value) {
    let headers: Vec<(&str, &str)> = last_id
        .map(|id| ("Last-Event-ID", id))
        .into_iter()
        .collect();
    let mut stream = SseStream::open(gateway.addr(), "/sse?topic=cdc.order", &headers)
        .await
        .expect("the stream opens");
    assert_eq!(stream.status, 200);
    let ack = tokio::time::timeout(PATIENCE, stream.next_event())
        .await
        .expect("an ack in time")
        .expect("a readable stream")
        .expect("an ack");
    assert_eq!(ack.event, "ack", "{:?}", ack.data);
    (stream, ack.data)
}

async fn sse_collect(stream: &mut SseStream, tally: &mut Tally, want: &BTreeSet<Key>) {
    let deadline = Instant::now() + PATIENCE;
    let mut until = deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Ok(Some(event))) = tokio::time::timeout(left, stream.next_event()).await else {
            return;
        };
        assert_ne!(event.event, "error", "{:?}", event.data);
        if event.event == "data" {
            tally.data(&event.data);
            tally.last_id = Some(event.id.expect("every data event has an id"));
        }
        if until == deadline && tally.has(want) {
            until = Instant::now() + AFTERWARDS;
        }
    }
}

#[tokio::test]
async fn a_resume_replays_every_partition_even_those_nothing_was_dispatched_from() {
    let tansu = Tansu::start();
    let topic = unique("delivery-three");
    tansu.create_topic(&topic, 3).await;
    let mut counts = empty(&[&topic], 3);
    let gateway = Gateway::start(&tansu.brokers(), &topic, &[]).await;
    let producer = tansu.producer();

    // Subscribed before anything was dispatched: every partition is named, at -1.
    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, None).await;
    let position = ack_position(&ack);
    let expected: Position = keys(&[&topic], 3).into_iter().map(|k| (k, -1)).collect();
    assert_eq!(position, expected, "{ack}");
    let (mut sse, _) = sse_open(&gateway, None).await;

    // Records on partition 0 only, then both clients leave.
    produce(&producer, &mut counts, &topic, 0, 5).await;
    let first = after(&tansu.brokers(), &counts, &position).await;
    let mut ws_tally = Tally {
        position: position.clone(),
        ..Tally::default()
    };
    ws_collect(&mut ws, &mut ws_tally, &first).await;
    ws_tally.assert_exactly(&first, "live on the WebSocket");
    let mut sse_tally = Tally::default();
    sse_collect(&mut sse, &mut sse_tally, &first).await;
    sse_tally.assert_exactly(&first, "live on the stream");
    drop((ws, sse));

    // Missed on every partition, including the two the clients never saw a record from.
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 4).await;
    }
    let kept = ws_tally.position.clone();
    let missed = after(&tansu.brokers(), &counts, &kept).await;
    assert_eq!(missed.len(), 12);

    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, Some(&kept)).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut tally = Tally::default();
    ws_collect(&mut ws, &mut tally, &missed).await;
    tally.assert_exactly(&missed, "WebSocket resume");

    let last_id = sse_tally.last_id.clone().expect("the stream saw an id");
    let (mut sse, ack) = sse_open(&gateway, Some(&last_id)).await;
    assert_eq!(ack["recovered"], true, "Last-Event-ID {last_id}: {ack}");
    let mut tally = Tally::default();
    sse_collect(&mut sse, &mut tally, &missed).await;
    tally.assert_exactly(&missed, "SSE resume with Last-Event-ID");
}

#[tokio::test]
async fn a_resume_replays_what_it_missed_of_a_second_source_topic() {
    let tansu = Tansu::start();
    let topics = [unique("delivery-first"), unique("delivery-second")];
    for topic in &topics {
        tansu.create_topic(topic, 2).await;
    }
    let mut counts = empty(&[&topics[0], &topics[1]], 2);
    let gateway = Gateway::start(&tansu.brokers(), &topics.join(","), &[]).await;
    let producer = tansu.producer();

    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, None).await;
    let position = ack_position(&ack);
    let names: Vec<String> = position.keys().cloned().collect();
    assert_eq!(
        names,
        keys(&[&topics[0], &topics[1]], 2),
        "the ack names every partition of both source topics: {ack}"
    );

    produce(&producer, &mut counts, &topics[0], 0, 3).await;
    let first = after(&tansu.brokers(), &counts, &position).await;
    let mut tally = Tally {
        position,
        ..Tally::default()
    };
    ws_collect(&mut ws, &mut tally, &first).await;
    tally.assert_exactly(&first, "live");
    drop(ws);

    produce(&producer, &mut counts, &topics[1], 0, 3).await;
    produce(&producer, &mut counts, &topics[1], 1, 3).await;
    produce(&producer, &mut counts, &topics[0], 1, 2).await;
    let kept = tally.position.clone();
    let missed = after(&tansu.brokers(), &counts, &kept).await;
    assert_eq!(missed.len(), 8);

    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, Some(&kept)).await;
    assert_eq!(ack["recovered"], true, "since {kept:?}: {ack}");
    let mut tally = Tally::default();
    ws_collect(&mut ws, &mut tally, &missed).await;
    tally.assert_exactly(&missed, "resume across two source topics");
}

#[tokio::test]
async fn a_gateway_with_a_new_group_delivers_each_record_once_to_a_live_subscriber() {
    let tansu = Tansu::start();
    let topic = unique("delivery-backlog");
    tansu.create_topic(&topic, 3).await;
    let mut counts = empty(&[&topic], 3);
    let producer = tansu.producer();
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 100).await;
    }

    // A new group reads from the earliest offset; the subscriber joins while it does.
    let gateway = Gateway::start(&tansu.brokers(), &topic, &[]).await;
    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, None).await;
    let position = ack_position(&ack);
    assert_eq!(position.len(), 3, "{ack}");
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 10).await;
    }
    let want = after(&tansu.brokers(), &counts, &position).await;
    assert!(want.len() >= 30);
    let mut tally = Tally::default();
    ws_collect(&mut ws, &mut tally, &want).await;
    tally.assert_exactly(&want, &format!("after the ack's position {position:?}"));
}

#[tokio::test]
async fn a_gateway_killed_mid_burst_is_back_within_ten_seconds_and_a_resume_misses_nothing() {
    let tansu = Tansu::start();
    let topic = unique("delivery-kill");
    tansu.create_topic(&topic, 3).await;
    let mut counts = empty(&[&topic], 3);
    let group = unique("delivery-kill-group");
    let mut gateway = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &group]).await;

    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, None).await;
    let mut tally = Tally {
        position: ack_position(&ack),
        ..Tally::default()
    };
    assert_eq!(tally.position.len(), 3, "{ack}");

    let burst = {
        let producer = tansu.producer();
        let topic = topic.clone();
        tokio::spawn(async move {
            let values: Vec<(i32, String)> =
                (0..2000).map(|i| ((i % 3) as i32, order(i))).collect();
            let sends = values.iter().map(|(partition, value)| {
                producer.send_to(&topic, Some(*partition), None, Some(value))
            });
            futures_util::future::join_all(sends).await;
        })
    };
    // Kill it once the client has some of the burst.
    let deadline = Instant::now() + PATIENCE;
    while tally.counts.len() < 200 && Instant::now() < deadline {
        if let Some(message) = next(&mut ws, Duration::from_secs(1)).await {
            if message["type"] == "data" {
                tally.data(&message);
            }
        }
    }
    assert!(tally.counts.len() >= 200, "the burst reached the client");
    gateway.signal("KILL");
    // What was already on its way still counts: the client keeps what it received.
    while let Some(message) = next(&mut ws, Duration::from_secs(2)).await {
        if message["type"] == "data" {
            tally.data(&message);
        }
    }
    gateway.wait_exit(Duration::from_secs(10));
    burst.await.unwrap();
    // On a busy machine the whole burst may have reached the client before the kill: records
    // produced while the gateway is down leave something to resume whatever the timing.
    let producer = tansu.producer();
    for i in 2000..2300 {
        producer
            .send_to(&topic, Some((i % 3) as i32), None, Some(&order(i)))
            .await;
    }
    for partition in 0..3 {
        // Record i went to partition i % 3.
        *counts.get_mut(&format!("{topic}:{partition}")).unwrap() +=
            (0..2300).filter(|i| i % 3 == partition).count();
    }
    assert!(
        tally.counts.values().all(|n| *n == 1),
        "before the kill, a record arrived twice"
    );

    let restarted = Instant::now();
    let gateway = Gateway::spawn(&tansu.brokers(), &topic, &["--group-id", &group]);
    loop {
        if let Ok((200, _)) = http_get(gateway.addr(), "/readyz").await {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "not ready within 10 s of the restart:\n{}",
            gateway.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let kept = tally.position.clone();
    let missed = after(&tansu.brokers(), &counts, &kept).await;
    assert!(!missed.is_empty(), "the kill left records to resume");
    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, Some(&kept)).await;
    assert_eq!(ack["recovered"], true, "since {kept:?}: {ack}");
    let mut tally = Tally::default();
    ws_collect(&mut ws, &mut tally, &missed).await;
    tally.assert_exactly(&missed, &format!("resume after the kill from {kept:?}"));
}

/// A client that reconnects the moment a restarted gateway opens its port, before the gateway
/// has listed its partitions, resumes all the same (its position is checked once they are
/// known) instead of being told its source topic is unknown.
#[tokio::test]
async fn a_resume_sent_before_the_gateway_lists_its_partitions_waits_for_them() {
    let tansu = Tansu::start();
    let topic = unique("early");
    tansu.create_topic(&topic, 1).await;
    let producer = tansu.producer();
    producer
        .send_json(
            &topic,
            Some("1"),
            &crate::support::order("1", "insert", json!({"id": 1}), Value::Null),
        )
        .await;
    let gateway = Gateway::spawn(&tansu.brokers(), &topic, &[]);
    let deadline = Instant::now() + WAIT;
    let mut client = loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(gateway.ws_url()).await {
            break Client { ws };
        }
        assert!(Instant::now() < deadline, "the port never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    client
        .send(json!({"action": "subscribe", "topic": "cdc.order", "since": {format!("{topic}:0"): -1}}))
        .await;
    let ack = client.recv().await;
    assert_eq!(
        (ack["type"].as_str(), &ack["recovered"]),
        (Some("ack"), &json!(true)),
        "{ack}"
    );
    assert_eq!(client.data().await["offset"], 0);
}

/// Issue 14: three replicas on one broker, each committing under its own group id
/// (`--group-id` + `--instance`), with records in the topic before any starts. Four clients
/// on each receive every event; one replica is SIGKILLed while a burst is under way, and its
/// clients resume on the other two from the positions they kept: every record after each
/// client's first ack arrives exactly once, counted against an independent read of the log.
#[tokio::test]
async fn three_replicas_share_the_clients_and_a_killed_ones_resume_on_the_others() {
    let tansu = Tansu::start();
    let topic = unique("replicas");
    tansu.create_topic(&topic, 3).await;
    let mut counts = empty(&[&topic], 3);
    let producer = tansu.producer();
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 20).await;
    }
    let base = unique("gw");
    let mut replicas = Vec::new();
    for i in 0..3 {
        let instance = format!("r{i}");
        let flags = ["--group-id", base.as_str(), "--instance", instance.as_str()];
        replicas.push(Gateway::start(&tansu.brokers(), &topic, &flags).await);
    }
    // (replica, socket, what arrived, the position of the first ack)
    let mut clients = Vec::new();
    for i in 0..12 {
        let replica = i % 3;
        let mut ws = connect(&replicas[replica]).await;
        let position = ack_position(&subscribe(&mut ws, None).await);
        let tally = Tally {
            position: position.clone(),
            ..Tally::default()
        };
        clients.push((replica, ws, tally, position));
    }

    // A burst; the doomed replica's clients read part of it before it is killed.
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 30).await;
    }
    for (replica, ws, tally, _) in clients.iter_mut().filter(|c| c.0 == 1) {
        for _ in 0..25 {
            let message = next(ws, PATIENCE).await.expect("data from replica 1");
            assert_eq!(message["type"], "data", "replica {replica}: {message}");
            tally.data(&message);
        }
    }
    replicas[1].signal("KILL");
    assert_eq!(replicas[1].wait_exit(PATIENCE), None, "killed by a signal");
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 30).await;
    }
    // Its clients resume on the others, from what they kept.
    for (at, (replica, ws, tally, _)) in clients.iter_mut().enumerate() {
        if *replica != 1 {
            continue;
        }
        *replica = if at % 2 == 0 { 0 } else { 2 };
        *ws = connect(&replicas[*replica]).await;
        let ack = subscribe(ws, Some(&tally.position)).await;
        assert_eq!(ack["recovered"], true, "{ack}");
    }
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 30).await;
    }

    for (at, (replica, ws, tally, start)) in clients.iter_mut().enumerate() {
        let want = after(&tansu.brokers(), &counts, start).await;
        ws_collect(ws, tally, &want).await;
        tally.assert_exactly(&want, &format!("client {at}, last on replica {replica}"));
    }
    for (i, replica) in replicas.iter().enumerate() {
        if i != 1 {
            let log = replica.log_tail();
            assert!(
                log.contains(&format!("{base}-r{i}")),
                "group id in the log: {log}"
            );
        }
    }
}

/// Issue 18, item 5: a gateway stopped with SIGTERM, three records produced at once while
/// none runs (to the partitions `down` names), then a replica that joins with a new group id
/// (`--auto-offset-reset reset`). A client resumes there from the position it kept: either
/// `recovered: true` and exactly the three records, each once, or `recovered: false`; never
/// `recovered: true` with records missing.
async fn a_replica_with_a_new_group_resumes_what_was_produced_while_none_ran(
    reset: &str,
    down: [i32; 3],
) {
    let tansu = Tansu::start();
    let topic = unique("delivery-down");
    tansu.create_topic(&topic, 3).await;
    let mut counts = empty(&[&topic], 3);
    let producer = tansu.producer();
    // A few records on each partition before any gateway starts, a few more after: each
    // round one record batch per partition.
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 4).await;
    }
    let first_group = unique("gw-first");
    let mut first = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &first_group]).await;
    let mut ws = connect(&first).await;
    let ack = subscribe(&mut ws, None).await;
    let start = ack_position(&ack);
    assert_eq!(start.len(), 3, "{ack}");
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 3).await;
    }
    let want = after(&tansu.brokers(), &counts, &start).await;
    let mut tally = Tally {
        position: start.clone(),
        ..Tally::default()
    };
    ws_collect(&mut ws, &mut tally, &want).await;
    tally.assert_exactly(&want, "live on the first gateway");
    drop(ws);
    first.signal("TERM");
    assert_eq!(first.wait_exit(PATIENCE), Some(0), "SIGTERM exits 0");

    let sends = down
        .iter()
        .enumerate()
        .map(|(i, partition)| (*partition, order(100 + i)))
        .collect::<Vec<_>>();
    futures_util::future::join_all(
        sends.iter().map(|(partition, value)| {
            producer.send_to(&topic, Some(*partition), None, Some(value))
        }),
    )
    .await;
    for partition in down {
        *counts.get_mut(&format!("{topic}:{partition}")).unwrap() += 1;
    }
    let kept = tally.position.clone();
    let missed = after(&tansu.brokers(), &counts, &kept).await;
    assert_eq!(missed.len(), 3, "three records after {kept:?}");

    let second_group = unique("gw-second");
    let second = Gateway::start(
        &tansu.brokers(),
        &topic,
        &["--group-id", &second_group, "--auto-offset-reset", reset],
    )
    .await;
    let mut ws = connect(&second).await;
    let ack = subscribe(&mut ws, Some(&kept)).await;
    let mut tally = Tally::default();
    if ack["recovered"] == true {
        ws_collect(&mut ws, &mut tally, &missed).await;
        tally.assert_exactly(
            &missed,
            &format!("recovered: true on a new replica ({reset}) from {kept:?}"),
        );
    } else {
        assert_eq!(ack["recovered"], false, "{ack}");
        eprintln!("a replica ({reset}) answered recovered: false from {kept:?}");
        ws_collect(&mut ws, &mut tally, &BTreeSet::new()).await;
        let twice: Vec<_> = tally.counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "more than once: {twice:?}");
    }
}

#[tokio::test]
async fn a_replica_with_a_new_group_reading_from_the_end_resumes_what_was_produced_while_none_ran()
{
    a_replica_with_a_new_group_resumes_what_was_produced_while_none_ran("latest", [0, 1, 2]).await;
}

/// The same, with the three records in one record batch of one partition.
#[tokio::test]
async fn a_replica_with_a_new_group_reading_from_the_end_resumes_one_batch_produced_while_none_ran()
{
    a_replica_with_a_new_group_resumes_what_was_produced_while_none_ran("latest", [1, 1, 1]).await;
}

#[tokio::test]
async fn a_replica_with_a_new_group_reading_from_the_beginning_resumes_what_was_produced_while_none_ran(
) {
    a_replica_with_a_new_group_resumes_what_was_produced_while_none_ran("earliest", [0, 1, 2])
        .await;
}

/// A Debezium change of order `id` (`op` c, u or d) in `round`.
fn debezium_order(op: &str, id: usize, round: usize) -> String {
    let row = json!({"id": id, "round": round});
    let (before, after) = match op {
        "c" => (Value::Null, row),
        "u" => (json!({"id": id, "round": round - 1}), row),
        _ => (row, Value::Null),
    };
    json!({"before": before, "after": after, "op": op, "ts_ms": 1_763_805_600_000_i64,
           "source": {"table": "order", "db": "shop", "schema": "public"}})
    .to_string()
}

/// Produces, all in flight at once (one record batch per partition), the changes of rows
/// `ids` (row `id` on partition `id % 3`, keyed by it): a delete is followed by its tombstone,
/// as Debezium writes them.
async fn produce_changes(
    producer: &Producer,
    counts: &mut Counts,
    topic: &str,
    changes: &[(&str, usize)],
    round: usize,
) {
    let mut records: Vec<(i32, String, Option<String>)> = Vec::new();
    for (op, id) in changes {
        let key = json!({"id": id}).to_string();
        let partition = (*id % 3) as i32;
        records.push((partition, key.clone(), Some(debezium_order(op, *id, round))));
        if *op == "d" {
            records.push((partition, key, None));
        }
    }
    let sends = records.iter().map(|(partition, key, value)| {
        producer.send_to(topic, Some(*partition), Some(key), value.as_deref())
    });
    futures_util::future::join_all(sends).await;
    for (partition, _, _) in &records {
        *counts.entry(format!("{topic}:{partition}")).or_default() += 1;
    }
}

/// The row id of a Debezium change read back from the log; `None` for a tombstone.
fn row_id(value: &Value) -> Option<String> {
    let row = if value["after"].is_object() {
        &value["after"]
    } else {
        &value["before"]
    };
    row["id"].as_u64().map(|id| id.to_string())
}

/// A gateway restarted with its group id after SIGTERM, on a topic of Debezium changes whose
/// last record batches hold deletes and their tombstones (the second report of issue 18,
/// item 5). A snapshot taken on the restarted gateway may say `complete: true` only when its
/// rows are exactly the last change of every row as of the ack's position (a deleted row as
/// its delete event, or absent), judged against an independent read of the topic. And a
/// client that resumes from a position inside the last batch gets what followed it, or
/// `recovered: false`.
#[tokio::test]
async fn a_restart_with_the_same_group_snapshots_every_row_of_a_topic_with_tombstones_or_says_incomplete(
) {
    let tansu = Tansu::start();
    let topic = unique("delivery-tombstones");
    tansu.create_topic(&topic, 3).await;
    let mut counts = empty(&[&topic], 3);
    let producer = tansu.producer();
    let group = unique("gw-same");
    let mut first = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &group]).await;
    let mut ws = connect(&first).await;
    let ack = subscribe(&mut ws, None).await;
    let start = ack_position(&ack);

    // 30 rows: inserted, updated twice, a third of them deleted, some of those inserted
    // again, the rest updated, then a last round that deletes a few more and updates others.
    let ids: Vec<usize> = (0..30).collect();
    let inserts: Vec<(&str, usize)> = ids.iter().map(|id| ("c", *id)).collect();
    produce_changes(&producer, &mut counts, &topic, &inserts, 0).await;
    for round in 1..3 {
        let updates: Vec<(&str, usize)> = ids.iter().map(|id| ("u", *id)).collect();
        produce_changes(&producer, &mut counts, &topic, &updates, round).await;
    }
    let third: Vec<(&str, usize)> = ids
        .iter()
        .map(|id| (if id % 3 == 1 { "d" } else { "u" }, *id))
        .collect();
    produce_changes(&producer, &mut counts, &topic, &third, 3).await;
    let fourth: Vec<(&str, usize)> = ids
        .iter()
        .filter(|id| *id % 6 == 1 || *id % 3 != 1)
        .map(|id| (if id % 6 == 1 { "c" } else { "u" }, *id))
        .collect();
    produce_changes(&producer, &mut counts, &topic, &fourth, 4).await;
    let last: Vec<(&str, usize)> = ids
        .iter()
        .filter(|id| *id % 3 != 1 || *id % 6 == 1)
        .map(|id| (if id % 5 == 0 || id % 6 == 1 { "d" } else { "u" }, *id))
        .collect();
    produce_changes(&producer, &mut counts, &topic, &last, 5).await;

    // Everything after the ack's position that is not a tombstone reaches the live client.
    let log = {
        let (brokers, counts) = (tansu.brokers(), counts.clone());
        tokio::task::spawn_blocking(move || read_log(&brokers, &counts))
            .await
            .unwrap()
    };
    let want = after(&tansu.brokers(), &counts, &start).await;
    let changes: BTreeSet<Key> = want
        .iter()
        .filter(|(_, partition, offset)| {
            log.partitions[&format!("{topic}:{partition}")][offset].value != Value::Null
        })
        .cloned()
        .collect();
    let mut tally = Tally {
        position: start,
        ..Tally::default()
    };
    ws_collect(&mut ws, &mut tally, &changes).await;
    tally.assert_exactly(&changes, "live on the first gateway");
    let tombstones = (want.len() - changes.len()) as f64;
    let deadline = Instant::now() + PATIENCE;
    while first
        .metric("cdc_gateway_events_consumed_total{result=\"tombstone\"}")
        .await
        < tombstones
    {
        assert!(
            Instant::now() < deadline,
            "the tombstones were not all read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);
    first.signal("TERM");
    assert_eq!(first.wait_exit(PATIENCE), Some(0), "SIGTERM exits 0");

    let second = Gateway::start(&tansu.brokers(), &topic, &["--group-id", &group]).await;
    let mut ws = connect(&second).await;
    ws.send(Message::text(
        json!({"action": "subscribe", "topic": "cdc.order", "id": 2, "snapshot": true}).to_string(),
    ))
    .await
    .unwrap();
    let ack = next(&mut ws, PATIENCE).await.expect("an ack");
    assert_eq!(ack["type"], "ack", "{ack}");
    let position = ack_position(&ack);
    let mut rows: BTreeMap<String, (String, i64, String)> = BTreeMap::new();
    loop {
        let message = next(&mut ws, PATIENCE).await.expect("rows, then synced");
        if message["type"] == "synced" {
            break;
        }
        assert_eq!(message["type"], "data", "{message}");
        assert_eq!(message["snapshot"], true, "{message}");
        let id = message["payload"]["entity_id"].as_str().unwrap().to_owned();
        let row = (
            format!(
                "{}:{}",
                message["source"].as_str().unwrap(),
                message["partition"]
            ),
            message["offset"].as_i64().unwrap(),
            message["payload"]["operation"].as_str().unwrap().to_owned(),
        );
        assert!(rows.insert(id.clone(), row).is_none(), "row {id} twice");
    }
    assert_eq!(
        ack["snapshot"]["rows"].as_u64(),
        Some(rows.len() as u64),
        "{ack}"
    );

    // The last change of every row as of the ack's position, from the log.
    let mut expected: BTreeMap<String, (String, i64, bool)> = BTreeMap::new();
    for (key, records) in &log.partitions {
        let upto = position.get(key).copied().unwrap_or(i64::MAX);
        for (offset, record) in records.range(..=upto) {
            if let Some(id) = row_id(&record.value) {
                let deleted = record.value["op"] == "d";
                expected.insert(id, (key.clone(), *offset, deleted));
            }
        }
    }
    let log_end = log.last_offsets();
    let mut problems = Vec::new();
    for (id, (key, offset, deleted)) in &expected {
        match rows.get(id) {
            Some((k, o, _)) if k == key && o == offset => {}
            Some((k, o, op)) => problems.push(format!(
                "row {id} is {k}@{o} ({op}), its last change is {key}@{offset}"
            )),
            None if *deleted => {}
            None => problems.push(format!("row {id} ({key}@{offset}) is missing")),
        }
    }
    for (id, (k, o, _)) in &rows {
        if !expected.contains_key(id) {
            problems.push(format!("row {id} ({k}@{o}) is not in the topic"));
        }
    }
    if ack["snapshot"]["complete"] == true {
        assert!(
            problems.is_empty(),
            "complete: true, but {problems:?}; ack position {position:?}, log ends {log_end:?}"
        );
    } else {
        eprintln!("the restarted gateway's snapshot said complete: false ({problems:?})");
    }
    // Then every change after the ack's position, live: with the snapshot, the table as the
    // topic holds it (nothing is produced any more).
    let live: BTreeSet<Key> = after(&tansu.brokers(), &counts, &position)
        .await
        .into_iter()
        .filter(|(_, partition, offset)| {
            log.partitions[&format!("{topic}:{partition}")][offset].value != Value::Null
        })
        .collect();
    let mut tally = Tally::default();
    ws_collect(&mut ws, &mut tally, &live).await;
    tally.assert_exactly(
        &live,
        &format!("after the snapshot at {position:?} (the log ends at {log_end:?})"),
    );

    // A resume from inside the last batch of each partition: three records before its end.
    let since: Position = log_end
        .iter()
        .map(|(key, last)| (key.clone(), last - 3))
        .collect();
    let missed = after(&tansu.brokers(), &counts, &since).await;
    let missed: BTreeSet<Key> = missed
        .into_iter()
        .filter(|(_, partition, offset)| {
            log.partitions[&format!("{topic}:{partition}")][offset].value != Value::Null
        })
        .collect();
    let mut ws = connect(&second).await;
    let ack = subscribe(&mut ws, Some(&since)).await;
    if ack["recovered"] == true {
        let mut tally = Tally::default();
        ws_collect(&mut ws, &mut tally, &missed).await;
        tally.assert_exactly(&missed, &format!("recovered: true from {since:?}"));
    } else {
        eprintln!("a resume from {since:?} answered recovered: false");
    }
}

/// A new group reading from the end (the default) on partitions that are empty, or whose
/// newest record batch holds several records: it starts at their ends, read rather than
/// taken from the broker's report, and delivers what comes next, each record once.
#[tokio::test]
async fn a_new_group_reading_from_the_end_starts_at_the_end_of_empty_and_batched_partitions() {
    let tansu = Tansu::start();
    let topic = unique("delivery-end");
    tansu.create_topic(&topic, 3).await;
    let mut counts = empty(&[&topic], 3);
    let producer = tansu.producer();
    produce(&producer, &mut counts, &topic, 1, 5).await;
    let gateway =
        Gateway::start(&tansu.brokers(), &topic, &["--auto-offset-reset", "latest"]).await;
    let mut ws = connect(&gateway).await;
    let ack = subscribe(&mut ws, None).await;
    let position = ack_position(&ack);
    let ends: Position = [(0, -1), (1, 4), (2, -1)]
        .into_iter()
        .map(|(p, o)| (format!("{topic}:{p}"), o))
        .collect();
    assert_eq!(position, ends, "{ack}");
    for partition in 0..3 {
        produce(&producer, &mut counts, &topic, partition, 2).await;
    }
    let want = after(&tansu.brokers(), &counts, &position).await;
    assert_eq!(want.len(), 6);
    let mut tally = Tally::default();
    ws_collect(&mut ws, &mut tally, &want).await;
    tally.assert_exactly(&want, "live from the ends");
}
