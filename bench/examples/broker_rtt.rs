//! The broker's share of produce-to-receive latency, without the gateway: one producer sends
//! timestamped records at a set rate and one consumer, configured as the gateway's consumer
//! is, receives them; the latency of each record is receive time minus send time. The
//! gateway cannot deliver faster than this, so BENCHMARKS.md subtracts it when it asks how
//! much latency the gateway adds.
//!
//! ```sh
//! tansu broker --storage-engine memory://tansu/ --listener-url tcp://127.0.0.1:9092 \
//!     --advertised-listener-url tcp://127.0.0.1:9092 &
//! cargo run --release -p cdc-gateway-bench --example broker_rtt -- \
//!     --brokers 127.0.0.1:9092 --rate 100 --records 1000
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
struct Args {
    /// Kafka bootstrap servers (loopback).
    #[arg(long)]
    brokers: String,
    /// Records per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Records to send.
    #[arg(long, default_value_t = 1000)]
    records: u32,
    /// Producer `linger.ms` (the bench's default is 5; 0 sends each record at once).
    #[arg(long, default_value = "0")]
    linger_ms: String,
    /// Consumer `fetch.wait.max.ms` (the gateway's default is 10).
    #[arg(long, default_value = "10")]
    fetch_wait_max_ms: String,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = format!("broker-rtt-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .context("creating the topic")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", &args.linger_ms)
        .create()?;
    // The gateway's consumer settings (src/ingest/mod.rs) that bear on latency.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &topic)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", &args.fetch_wait_max_ms)
        .create()?;
    consumer.subscribe(&[&topic])?;

    // Warm up: one record end to end, so the group join and the first fetch are not timed.
    producer
        .send(
            FutureRecord::to(&topic).key("warm-up").payload("0"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("sending the warm-up record")?;
    tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .context("no warm-up record within 30 s")??;

    let (records, rate) = (args.records, args.rate.max(1));
    let sending = tokio::spawn({
        let topic = topic.clone();
        async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut tick = tokio::time::interval(period);
            for i in 0..records {
                tick.tick().await;
                let sent = now_us().to_string();
                let record = FutureRecord::to(&topic).key(&sent).payload(&sent);
                if let Err((e, _)) = producer.send_result(record) {
                    eprintln!("record {i} not sent: {e}");
                }
            }
            producer
        }
    });

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(u64::from(records / rate) + 30);
    while latency.len() < u64::from(records) {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .context("records missing at the deadline")??;
        let sent: u64 = std::str::from_utf8(message.payload().unwrap_or_default())?.parse()?;
        latency.saturating_record(now_us().saturating_sub(sent).max(1));
    }
    drop(sending.await?);
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} records at {}/s: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        latency.len(),
        rate,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
    Ok(())
}
