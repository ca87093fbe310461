//! `cdc-gateway demo`: the real gateway on librdkafka's embedded mock cluster, fed by a
//! generator of order and customer changes in both envelopes, so a new user sees live events
//! with one command and no Kafka installed. The page it serves (`src/demo/`, routed by
//! [`crate::http`]) is a live table drawn by cdc-gateway-client.

use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::config::{Config, DemoArgs, OffsetReset};

const TOPIC: &str = "cdc.events";
const STATUSES: [&str; 4] = ["new", "paid", "shipped", "delivered"];
const COUNTRIES: [&str; 5] = ["NZ", "DE", "US", "JP", "BR"];
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

pub async fn run(mut config: Config, args: DemoArgs) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1).context("cannot start the embedded mock Kafka cluster")?;
    cluster
        .create_topic(TOPIC, 3, 1)
        .context("cannot create the demo topic")?;
    config.brokers = cluster.bootstrap_servers();
    config.source_topics = vec![TOPIC.to_owned()];
    config.auto_offset_reset = OffsetReset::Earliest;
    config.group_id = "cdc-gateway-demo".to_owned();
    config.listen = args.listen;
    if config.entity_map.is_empty() {
        config.entity_map = vec![
            ("orders".into(), "order".into()),
            ("customers".into(), "customer".into()),
        ];
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .context("cannot create the demo producer")?;
    let port = config.listen.port();
    println!(
        "cdc-gateway demo: a mock Kafka cluster at {}, {} change events/s on `{TOPIC}`\n\
         \n  open   http://127.0.0.1:{port}/           live table in the browser\n  \
         or     websocat ws://127.0.0.1:{port}/ws   and send {{\"action\":\"subscribe\",\"topic\":\"cdc.order\"}}\n  \
         also   http://127.0.0.1:{port}/metrics and /health\n\nCtrl-C stops it.",
        config.brokers, args.events_per_second
    );
    let generator = tokio::spawn(generate(producer, args.events_per_second.max(1)));
    let outcome = async {
        let gateway = crate::gateway::Gateway::new(config.clone(), crate::gateway::Pages::Demo)?;
        let listener = crate::gateway::bind(&config).await?;
        gateway.run(listener, crate::shutdown::signal()).await
    }
    .await;
    generator.abort();
    let _ = generator.await;
    // The mock cluster is never stopped: the process ends next. Dropped here, it went before
    // some client whose last reference a finishing blocking task still held, and librdkafka
    // logged errors about the vanished broker after "shutdown complete" (issue 20). Kept
    // until the process exits, no client can see it go, in any order of events.
    std::mem::forget(cluster);
    outcome
}

/// Produces a plausible stream of shop changes forever (until the process stops).
async fn generate(producer: FutureProducer, per_second: u32) {
    let mut rng = StdRng::from_entropy();
    let mut orders: Vec<(u32, usize, u32)> = Vec::new();
    let mut next_order = 1000;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut sequence: u64 = 0;
    loop {
        tick.tick().await;
        sequence += 1;
        let now_ms = crate::clock::now_millis();
        let (key, value) = match rng.gen_range(0..10) {
            0..=3 => {
                next_order += 1;
                let customer = rng.gen_range(1..=20);
                orders.push((next_order, 0, customer));
                let row = order_row(next_order, 0, customer, rng.gen_range(5..500));
                simple_or_debezium(
                    sequence,
                    "orders",
                    next_order,
                    "c",
                    Value::Null,
                    row,
                    now_ms,
                )
            }
            4..=7 if !orders.is_empty() => {
                let i = rng.gen_range(0..orders.len());
                let (id, status, customer) = orders[i];
                let amount = rng.gen_range(5..500);
                let before = order_row(id, status, customer, amount);
                if status + 1 >= STATUSES.len() {
                    orders.swap_remove(i);
                    simple_or_debezium(sequence, "orders", id, "d", before, Value::Null, now_ms)
                } else {
                    orders[i].1 = status + 1;
                    let after = order_row(id, status + 1, customer, amount);
                    simple_or_debezium(sequence, "orders", id, "u", before, after, now_ms)
                }
            }
            _ => {
                let id = rng.gen_range(1..=20);
                let row = json!({"id": id, "name": format!("Customer {id}"),
                    "country": COUNTRIES[rng.gen_range(0..COUNTRIES.len())], "tenant": TENANTS[id as usize % TENANTS.len()]});
                // Customers come as Debezium with the JSON converter's schema/payload wrapper.
                let envelope = debezium("customers", "u", row.clone(), row, now_ms);
                (
                    json!({"schema": {"type": "struct", "name": "customers.Envelope"}, "payload": {"id": id}}),
                    json!({"schema": {"type": "struct"}, "payload": envelope}),
                )
            }
        };
        let (key, value) = (key.to_string(), value.to_string());
        let record = FutureRecord::to(TOPIC).key(&key).payload(&value);
        if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
            tracing::warn!("demo producer: {e}");
        }
    }
}

fn order_row(id: u32, status: usize, customer: u32, amount: u32) -> Value {
    json!({"id": id, "status": STATUSES[status], "customer_id": customer, "amount": amount,
           "tenant": TENANTS[customer as usize % TENANTS.len()]})
}

/// Alternates the simple envelope and plain Debezium for orders, so both decoders run.
fn simple_or_debezium(
    sequence: u64,
    table: &str,
    id: u32,
    op: &str,
    before: Value,
    after: Value,
    now_ms: i64,
) -> (Value, Value) {
    if sequence % 2 == 0 {
        let operation = match op {
            "c" => "insert",
            "u" => "update",
            _ => "delete",
        };
        let data = if after.is_null() { Value::Null } else { after };
        let value = json!({"entity_type": "order", "entity_id": id.to_string(), "operation": operation,
                           "data": data, "before": before, "timestamp": now_ms});
        // The same key as the Debezium records of the row: one row, one partition, so its
        // changes stay in order (a table that applies them in arrival order ends right).
        (json!({"id": id}), value)
    } else {
        (
            json!({"id": id}),
            debezium(table, op, before, after, now_ms),
        )
    }
}

fn debezium(table: &str, op: &str, before: Value, after: Value, now_ms: i64) -> Value {
    json!({"before": before, "after": after, "op": op, "ts_ms": now_ms,
           "source": {"connector": "postgresql", "db": "shop", "schema": "public", "table": table, "ts_ms": now_ms}})
}
