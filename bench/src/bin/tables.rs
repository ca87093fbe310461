//! The table store's benchmark (issue 19): a table of N rows of ~500 bytes produced to a real
//! broker (tansu), then the gateway binary: how fast a new replica builds its tables from the
//! topic, how soon a restart with the table on disk is ready, how fast one client's
//! unfiltered snapshot streams, how soon a snapshot filtered to 1% of the rows sends its first
//! row and `synced`, the gateway's memory with the table, and the store's disk against the
//! row bytes. Prints one line per figure; BENCHMARKS.md records them with this command:
//!
//! ```text
//! cargo build --release --bin cdc-gateway
//! cargo run --release -p cdc-gateway-bench --bin tables -- \
//!     --tansu-bin ~/.cache/cdc-gateway/tansu/bin/tansu --gateway-bin target/release/cdc-gateway --rows 1000000
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    tansu_bin: PathBuf,
    #[arg(long)]
    gateway_bin: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One row: ~500 bytes of JSON data, 1% of them in each `bucket` (a number) and each
/// `segment` (a string, as a tenant or a status is).
fn row(i: usize, seed: &mut u64) -> (String, String, usize) {
    let mut hex = String::with_capacity(400);
    while hex.len() < 380 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        hex.push_str(&format!("{:016x}", *seed));
    }
    let data = json!({"id": i, "bucket": i % 100, "segment": format!("segment-{:02}", i % 100), "name": format!("customer {i}"), "notes": hex});
    let text = data.to_string();
    let bytes = text.len();
    let value = json!({"entity_type": "customer", "entity_id": i.to_string(), "operation": "snapshot", "data": data});
    (i.to_string(), value.to_string(), bytes)
}

async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

async fn metric(addr: &str, name: &str) -> f64 {
    let Some((_, body)) = get(addr, "/metrics").await else {
        return f64::NAN;
    };
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn wait_ready(addr: &str, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Some((200, _)) = get(addr, "/readyz").await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("{addr} not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn gateway(
    args: &Args,
    brokers: &str,
    topic: &str,
    port: u16,
    store: &Path,
    log: &Path,
) -> anyhow::Result<Process> {
    let child = Command::new(&args.gateway_bin)
        .args([
            "--brokers",
            brokers,
            "--source-topics",
            topic,
            "--group-id",
            "tables-bench",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--auto-offset-reset",
            "latest",
        ])
        .arg("--table-store-path")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting the gateway")?;
    Ok(Process(child))
}

/// Subscribes with a snapshot; returns (rows, time to the ack, to the first row, to synced).
async fn snapshot(
    addr: &str,
    filters: Value,
) -> anyhow::Result<(u64, Duration, Duration, Duration)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
    let started = Instant::now();
    ws.send(Message::text(
        json!({"action": "subscribe", "topic": "cdc.customer", "snapshot": true, "filters": filters}).to_string(),
    ))
    .await?;
    let (mut rows, mut ack, mut first) = (0u64, None, None);
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        // Only the type is looked at: parsing each row would measure this client.
        if text.starts_with(r#"{"type":"data""#) {
            rows += 1;
            first.get_or_insert_with(|| started.elapsed());
        } else if text.contains(r#""type":"synced""#) {
            return Ok((
                rows,
                ack.unwrap_or_default(),
                first.unwrap_or_default(),
                started.elapsed(),
            ));
        } else if text.contains(r#""type":"ack""#) {
            ack = Some(started.elapsed());
            let v: Value = serde_json::from_str(&text)?;
            println!("  ack: {}", v["snapshot"]);
        } else if text.contains(r#""type":"error""#) {
            bail!("{text}");
        }
    }
    bail!("closed before synced")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work =
        std::env::temp_dir().join(format!("cdc-gateway-tables-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let kafka_port = free_port();
    let brokers = format!("127.0.0.1:{kafka_port}");
    let _tansu = Process(
        Command::new(&args.tansu_bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{kafka_port}"),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{kafka_port}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?,
    );
    let topic = "bench.public.customer";
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let started = Instant::now();
    loop {
        let created = admin
            .create_topics(
                &[NewTopic::new(
                    topic,
                    args.partitions,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
            )
            .await;
        if matches!(created.as_deref(), Ok([Ok(_)])) {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("cannot create the topic: {created:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The table, produced before any gateway runs (Debezium's initial snapshot).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()?;
    let (mut seed, mut row_bytes, mut payload_bytes) = (0x9E37_79B9_7F4A_7C15u64, 0usize, 0usize);
    let started = Instant::now();
    for chunk in (0..args.rows).collect::<Vec<_>>().chunks(20_000) {
        let records: Vec<(String, String)> = chunk
            .iter()
            .map(|i| {
                let (key, value, bytes) = row(*i, &mut seed);
                row_bytes += bytes;
                payload_bytes += value.len();
                (key, value)
            })
            .collect();
        let sends = records.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(60),
            )
        });
        for result in futures_util::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    println!(
        "produced {} rows ({:.0} MiB of row data, {:.0} bytes per row, {:.0} MiB of records) in {:.1} s",
        args.rows,
        row_bytes as f64 / 1048576.0,
        row_bytes as f64 / args.rows as f64,
        payload_bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    // What the broker itself gives one reader: the bound on any build rate here.
    if std::env::var_os("BENCH_RAW_READ").is_some() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::Message as _;
        for fetch in ["1048576", "8388608"] {
            let reader: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "raw")
                .set("enable.auto.commit", "false")
                .set("max.partition.fetch.bytes", fetch)
                .create()?;
            let mut list = rdkafka::TopicPartitionList::new();
            for p in 0..args.partitions {
                list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
            }
            reader.assign(&list)?;
            let started = Instant::now();
            let mut n = 0usize;
            while n < args.rows && started.elapsed() < Duration::from_secs(120) {
                if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                    n += usize::from(m.payload().is_some());
                }
            }
            println!(
                "raw read (max.partition.fetch.bytes {fetch}): {n} records in {:.2} s: {:.0} records/s",
                started.elapsed().as_secs_f64(),
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }

    // A new replica: builds its tables from the topic, then says it is ready.
    let store = work.join("tables");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = work.join("gateway-build.log");
    let gw = gateway(&args, &brokers, topic, port, &store, &log)?;
    let build = wait_ready(&addr, Duration::from_secs(600)).await?;
    let rows = metric(&addr, "cdc_gateway_table_rows").await;
    println!(
        "build: {rows} rows ready in {:.2} s from the process start: {:.0} records/s",
        build.as_secs_f64(),
        args.rows as f64 / build.as_secs_f64()
    );
    let pid = gw.0.id();
    println!(
        "memory after the build: RSS {} MiB, peak {} MiB",
        status_kib(pid, "VmRSS:") / 1024,
        status_kib(pid, "VmHWM:") / 1024
    );

    let (n, ack, _, synced) = snapshot(&addr, Value::Null).await?;
    println!(
        "unfiltered snapshot: {n} rows, ack after {:.0} ms, synced after {:.2} s: {:.0} rows/s",
        ack.as_secs_f64() * 1000.0,
        synced.as_secs_f64(),
        n as f64 / synced.as_secs_f64()
    );
    // A filter on a number parses every row; one on a string passes over the rows whose text
    // lacks it (the scan's needles) and parses the 1% that have it.
    for (what, filter) in [
        ("on a number", json!({"data.bucket": 7})),
        ("on a string", json!({"data.segment": "segment-07"})),
    ] {
        let (n, _, first, synced) = snapshot(&addr, filter).await?;
        println!(
            "1% filtered snapshot ({what}): {n} rows, first row after {:.0} ms, synced after {:.0} ms",
            first.as_secs_f64() * 1000.0,
            synced.as_secs_f64() * 1000.0
        );
    }
    println!(
        "memory after the snapshots: RSS {} MiB, peak {} MiB",
        status_kib(pid, "VmRSS:") / 1024,
        status_kib(pid, "VmHWM:") / 1024
    );

    // A clean stop, then a restart with the table on disk.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut gw = gw;
    gw.0.wait()?;
    let disk = allocated(&store);
    println!(
        "disk: {:.0} MiB for {:.0} MiB of row data ({:.2}x; {:.0} bytes per row)",
        disk as f64 / 1048576.0,
        row_bytes as f64 / 1048576.0,
        disk as f64 / row_bytes as f64,
        disk as f64 / args.rows as f64
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let gw = gateway(
        &args,
        &brokers,
        topic,
        port,
        &store,
        &work.join("gateway-restart.log"),
    )?;
    let restart = wait_ready(&addr, Duration::from_secs(120)).await?;
    println!(
        "restart: ready in {:.2} s with {} rows on disk",
        restart.as_secs_f64(),
        metric(&addr, "cdc_gateway_table_rows").await
    );
    let (n, _, _, synced) = snapshot(&addr, Value::Null).await?;
    println!(
        "after the restart: snapshot of {n} rows in {:.2} s",
        synced.as_secs_f64()
    );
    println!(
        "memory after the restart and a snapshot: RSS {} MiB, peak {} MiB",
        status_kib(gw.0.id(), "VmRSS:") / 1024,
        status_kib(gw.0.id(), "VmHWM:") / 1024
    );
    drop(gw);
    // The gateways' logs stay (BENCH_KEEP=1 keeps the store too).
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&store);
    }
    println!("logs: {}", work.display());
    Ok(())
}
