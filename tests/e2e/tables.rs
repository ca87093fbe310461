//! Issue 19: the tables on disk, tried the way an unlucky operator would break them. Every
//! snapshot is judged against the table an independent read of the broker gives (each key's
//! last record), never against what the gateway said before: records already in the topic
//! before the first start, several partitions, a SIGKILL and more records while the gateway
//! is down, a store deleted or corrupted under a stopped gateway, a replica that joins late,
//! and a disk that fills up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::message::Message;
use serde_json::{json, Value};

use crate::support::*;

/// Each id's last record in the broker: its operation and data.
async fn broker_table(tansu: &Tansu, topic: &str, records: usize) -> BTreeMap<String, Value> {
    let producer = tansu.producer();
    let mut table = BTreeMap::new();
    let mut messages = producer.consume_all(&tansu.brokers(), topic, records).await;
    // Per partition in offset order: each key lives on one partition.
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    for message in messages {
        let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let id = value["entity_id"].as_str().unwrap().to_owned();
        table.insert(
            id,
            json!({"operation": value["operation"], "data": value["data"]}),
        );
    }
    table
}

/// A snapshot of `cdc.order`: the ack's `snapshot` and each id's operation and data.
async fn snapshot(gateway: &Gateway) -> (Value, BTreeMap<String, Value>) {
    let mut client = Client::connect(gateway).await;
    client
        .send(json!({"action": "subscribe", "topic": "cdc.order", "snapshot": true}))
        .await;
    let ack = client.recv().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut rows = BTreeMap::new();
    loop {
        let message = client.recv().await;
        if message["type"] == "synced" {
            break;
        }
        assert_eq!(message["snapshot"], true, "{message}");
        let payload = &message["payload"];
        let id = payload["entity_id"].as_str().unwrap().to_owned();
        let row = json!({"operation": payload["operation"], "data": payload["data"]});
        assert!(
            rows.insert(id.clone(), row).is_none(),
            "row {id} sent twice"
        );
    }
    assert_eq!(
        ack["snapshot"]["rows"].as_u64(),
        Some(rows.len() as u64),
        "the ack said how many rows would come"
    );
    (ack["snapshot"].clone(), rows)
}

/// `n` changes over `ids` rows (inserts first, then updates and some deletes), keyed by id.
fn changes(from: usize, n: usize, ids: usize) -> Vec<(String, String)> {
    (from..from + n)
        .map(|i| {
            let id = (i % ids).to_string();
            let operation = match i {
                i if i < ids => "insert",
                i if i % 7 == 0 => "delete",
                _ => "update",
            };
            let data = if operation == "delete" {
                Value::Null
            } else {
                json!({"id": id, "v": i, "pad": "p".repeat(200)})
            };
            (
                id.clone(),
                order(&id, operation, data, Value::Null).to_string(),
            )
        })
        .collect()
}

fn store_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("cdc-gateway-tests").join(format!(
        "{}-{}",
        name,
        unique("store")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start_on(
    tansu: &Tansu,
    topic: &str,
    group: &str,
    store: &Path,
    extra: &[&str],
) -> Gateway {
    let store = store.to_str().unwrap();
    // A new group starts at the end of the log: the tables are built by the start-up read.
    let mut args = vec![
        "--group-id",
        group,
        "--table-store-path",
        store,
        "--auto-offset-reset",
        "latest",
    ];
    args.extend_from_slice(extra);
    Gateway::start(&tansu.brokers(), topic, &args).await
}

/// The gateway's table equals `expected` (the broker's, read to its end). A snapshot is as
/// of the ack's position: right after a start, records the consumer has not reached yet are
/// not in it, so snapshots are taken again (up to 60 s) until its position reaches the end.
async fn assert_table(gateway: &Gateway, expected: &BTreeMap<String, Value>, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (ack, rows) = loop {
        let (ack, rows) = snapshot(gateway).await;
        if rows.len() >= expected.len() || std::time::Instant::now() > deadline {
            break (ack, rows);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ack["complete"], true, "{what}: {ack}");
    assert_eq!(
        rows.len(),
        expected.len(),
        "{what}: row count\n{}",
        gateway.log_tail()
    );
    for (id, row) in expected {
        assert_eq!(rows.get(id), Some(row), "{what}: row {id}");
    }
}

#[tokio::test]
async fn the_tables_survive_sigkill_deletion_and_corruption_and_equal_the_broker() {
    let tansu = Tansu::start();
    let topic = unique("tables");
    tansu.create_topic(&topic, 3).await;
    let producer = tansu.producer();
    // Records already in the topic before any gateway starts.
    let first = changes(0, 3000, 1000);
    producer.send_keyed_many(&topic, &first).await;
    let store = store_dir("restarts");
    let group = unique("tables-group");

    let mut gateway = start_on(&tansu, &topic, &group, &store, &[]).await;
    assert_table(
        &gateway,
        &broker_table(&tansu, &topic, 3000).await,
        "first start",
    )
    .await;
    assert_eq!(
        gateway
            .metric("cdc_gateway_table_rebuild_records_total")
            .await,
        3000.0
    );

    // SIGKILL, with more changes (updates and deletes) while it is down.
    gateway.signal("KILL");
    gateway.wait_exit(Duration::from_secs(10));
    producer
        .send_keyed_many(&topic, &changes(3000, 700, 1000))
        .await;
    // A short history window: what the restart reads is the store's catch-up.
    let gateway = start_on(&tansu, &topic, &group, &store, &["--history-warmup", "10"]).await;
    let expected = broker_table(&tansu, &topic, 3700).await;
    assert_table(&gateway, &expected, "after SIGKILL").await;
    let reread = gateway
        .metric("cdc_gateway_table_rebuild_records_total")
        .await;
    assert!(
        reread < 1000.0,
        "the restart read on from the store's offsets, not the whole topic ({reread} records)"
    );
    assert!(gateway.log().contains("table store opened"));
    drop(gateway);

    // The store deleted under a stopped gateway: rebuilt from the topic.
    std::fs::remove_dir_all(&store).unwrap();
    let mut gateway = start_on(&tansu, &topic, &group, &store, &[]).await;
    assert_table(&gateway, &expected, "store deleted").await;
    assert_eq!(
        gateway
            .metric("cdc_gateway_table_rebuild_records_total")
            .await,
        3700.0
    );
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(20));

    // Every file of the store overwritten: the gateway says so and rebuilds.
    corrupt(&store.join("data"));
    let gateway = start_on(&tansu, &topic, &group, &store, &[]).await;
    assert_table(&gateway, &expected, "store corrupted").await;
    let log = gateway.log();
    assert!(
        log.contains("could not be used") && log.contains("rebuilding"),
        "the rebuild is said; log:\n{}",
        gateway.log_tail()
    );

    // A second process on the same store is refused with a clear error.
    let mut second = Gateway::spawn(
        &tansu.brokers(),
        &topic,
        &["--table-store-path", store.to_str().unwrap()],
    );
    assert_ne!(second.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        second.log().contains("in use by another process"),
        "{}",
        second.log_tail()
    );
    drop(gateway);
    let _ = std::fs::remove_dir_all(&store);
}

fn corrupt(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            corrupt(&entry.path());
        } else {
            let len = entry.metadata().unwrap().len() as usize;
            std::fs::write(entry.path(), vec![0x5A; len.clamp(16, 1 << 20)]).unwrap();
        }
    }
}

/// A replica that starts after 20,000 records builds its tables from the topic before it
/// says it is ready, while one already running keeps serving; both then hold the same table
/// as the broker, and so does every snapshot after more changes.
#[tokio::test]
async fn a_late_replica_builds_the_tables_before_it_is_ready() {
    let tansu = Tansu::start();
    let topic = unique("late");
    tansu.create_topic(&topic, 2).await;
    let producer = tansu.producer();
    let early = start_on(&tansu, &topic, &unique("early"), &store_dir("early"), &[]).await;
    producer
        .send_keyed_many(&topic, &changes(0, 20_000, 5000))
        .await;

    let late_store = store_dir("late");
    let late = Gateway::spawn(
        &tansu.brokers(),
        &topic,
        &[
            "--group-id",
            &unique("late"),
            "--table-store-path",
            late_store.to_str().unwrap(),
            "--auto-offset-reset",
            "latest",
        ],
    );
    // Not ready before the read of 20,000 records ends (or has ended already: then ready).
    let mut saw_reason = false;
    loop {
        match http_get(late.addr(), "/readyz").await {
            Ok((200, _)) => break,
            Ok((503, body)) => saw_reason |= body.contains("reading the tables"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let remaining = late
        .metric("cdc_gateway_table_rebuild_remaining_records")
        .await;
    assert_eq!(remaining, 0.0);
    eprintln!("late replica: readyz said why while building: {saw_reason}");
    let expected = broker_table(&tansu, &topic, 20_000).await;
    assert_table(&late, &expected, "late replica").await;
    assert_table(&early, &expected, "early replica").await;
    producer
        .send_keyed_many(&topic, &changes(20_000, 1000, 5000))
        .await;
    let expected = broker_table(&tansu, &topic, 21_000).await;
    wait_dispatched(&early, 21_000.0).await;
    wait_dispatched(&late, 1000.0).await;
    assert_table(&late, &expected, "late replica, live").await;
    assert_table(&early, &expected, "early replica, live").await;
}

async fn wait_dispatched(gateway: &Gateway, records: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while gateway
        .metric(r#"cdc_gateway_events_consumed_total{result="dispatched"}"#)
        .await
        < records
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gateway.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A store at its bound (--table-store-max-mib) refuses the commit: the consumer reads no
/// further record (no client gets a change the tables miss), /readyz says why, the metric and
/// the log say it; a restart with a larger bound reads on and loses nothing. Then the same
/// with a real full disk: a tmpfs of a few MiB.
#[tokio::test]
async fn a_full_store_pauses_consumption_and_loses_nothing() {
    let tansu = Tansu::start();
    let topic = unique("full");
    tansu.create_topic(&topic, 1).await;
    let producer = tansu.producer();
    let store = store_dir("bound");
    let group = unique("full-group");
    let mut gateway = start_on(
        &tansu,
        &topic,
        &group,
        &store,
        &["--table-store-max-mib", "1"],
    )
    .await;
    let mut watcher = Client::connect(&gateway).await;
    watcher.subscribe("cdc.order", json!({})).await;
    // ~3 MiB of rows for a 1 MiB bound.
    let pad = "f".repeat(1000);
    let records: Vec<(String, String)> = (0..3000)
        .map(|i| {
            let id = i.to_string();
            (
                id.clone(),
                order(&id, "insert", json!({"id": i, "pad": pad}), Value::Null).to_string(),
            )
        })
        .collect();
    producer.send_keyed_many(&topic, &records).await;
    gateway.wait_ready(false).await;
    let (status, body) = http_get(gateway.addr(), "/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("table store cannot be written"), "{body}");
    assert_eq!(gateway.metric("cdc_gateway_table_store_failing").await, 1.0);
    assert!(
        gateway.log().contains("table store full"),
        "{}",
        gateway.log_tail()
    );
    // The consumer waits: what the watcher gets stops short of the records produced.
    let mut delivered = 0;
    while watcher.recv_within(Duration::from_secs(2)).await.is_some() {
        delivered += 1;
    }
    assert!(
        delivered < 3000,
        "consumption went on past a full store ({delivered})"
    );
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(30));

    let gateway = start_on(
        &tansu,
        &topic,
        &group,
        &store,
        &["--table-store-max-mib", "64"],
    )
    .await;
    let expected = broker_table(&tansu, &topic, 3000).await;
    assert_table(&gateway, &expected, "after the bound was raised").await;
    drop(gateway);
    let _ = std::fs::remove_dir_all(&store);

    // A real full disk, where this machine lets the test mount a tmpfs.
    let mount = store_dir("tmpfs");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "tmpfs",
            mount.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPING the tmpfs half: cannot mount a tmpfs here (not root?)");
        return;
    }
    let unmount = Unmount(mount.clone());
    let topic = unique("tmpfs");
    tansu.create_topic(&topic, 1).await;
    let group = unique("tmpfs-group");
    let store = mount.join("tables");
    let mut gateway = start_on(&tansu, &topic, &group, &store, &[]).await;
    producer.send_keyed_many(&topic, &records).await;
    gateway.wait_ready(false).await;
    assert_eq!(gateway.metric("cdc_gateway_table_store_failing").await, 1.0);
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(30));
    // The disk grows (an operator resizes the volume); the restart reads on from the offsets
    // committed with the rows and the table is whole.
    assert!(std::process::Command::new("mount")
        .args(["-o", "remount,size=64m", mount.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let gateway = start_on(&tansu, &topic, &group, &store, &[]).await;
    let expected = broker_table(&tansu, &topic, 3000).await;
    assert_table(&gateway, &expected, "after the disk grew").await;
    drop(gateway);
    drop(unmount);
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
