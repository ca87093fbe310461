//! Criterion benches of each per-event stage: decode (both envelopes), filter matching, index
//! lookup plus fan-out enqueue to 10,000 subscribers, and serialization. Figures and the
//! command that reproduces them are in BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;

use cdc_gateway::config::{InputFormat, SlowClientPolicy};
use cdc_gateway::event::{ChangeEvent, Operation, SourcePosition};
use cdc_gateway::fanout::FanOut;
use cdc_gateway::index::{Filter, TopicIndex};
use cdc_gateway::ingest::decode::{Decoded, Decoder, RawRecord};
use cdc_gateway::metrics::Metrics;
use cdc_gateway::outbound::Outbound;
use cdc_gateway::position::Dispatched;
use cdc_gateway::protocol::data::{data_message, Kind};

fn decode(c: &mut Criterion) {
    let decoder = Decoder::new(
        InputFormat::Auto,
        HashMap::from([("orders".into(), "order".into())]),
    );
    let simple = json!({"entity_type": "order", "entity_id": "42", "operation": "update",
               "data": {"id": 42, "status": "shipped", "amount": 150.5, "customer": {"id": 7, "country": "NZ"}},
               "before": {"id": 42, "status": "paid", "amount": 150.5, "customer": {"id": 7, "country": "NZ"}},
               "timestamp": "2026-11-22T10:00:00Z"})
    .to_string()
    .into_bytes();
    let debezium = json!({"before": {"id": 42, "status": "paid", "amount": 150.5},
                          "after": {"id": 42, "status": "shipped", "amount": 150.5},
                          "source": {"version": "2.7.0", "connector": "postgresql", "name": "shop", "ts_ms": 1_763_805_600_000_i64,
                                     "db": "shop", "schema": "public", "table": "orders", "txId": 1234, "lsn": 56789},
                          "op": "u", "ts_ms": 1_763_805_600_123_i64});
    let wrapped = json!({"schema": {"type": "struct", "fields": [], "name": "shop.public.orders.Envelope"}, "payload": debezium.clone()});
    let (debezium, wrapped) = (
        debezium.to_string().into_bytes(),
        wrapped.to_string().into_bytes(),
    );
    let position = SourcePosition::new("cdc.events", 0, 1);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, value, key) in [
        ("simple", &simple, None),
        ("debezium", &debezium, Some(&br#"{"id": 42}"#[..])),
        (
            "debezium_wrapped",
            &wrapped,
            Some(&br#"{"schema": {"type": "struct"}, "payload": {"id": 42}}"#[..]),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let raw = RawRecord {
                    key,
                    value: Some(value),
                    position,
                    timestamp_ms: Some(1),
                };
                match decoder.decode(&raw).unwrap() {
                    Decoded::Event(event) => event,
                    Decoded::Tombstone => unreachable!(),
                }
            })
        });
    }
    group.finish();
}

/// A Kafka record's key and value bytes.
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Real Debezium records (Postgres 15, Debezium 3.6.3, tests/fixtures/debezium/README.md),
/// as Kafka Connect's JSON converter wrote them with and without the schema, and as
/// Confluent's AvroConverter did (binary, base64 in the file): the same SQL.
fn fixture(name: &str) -> Vec<KeyValue> {
    let path = format!(
        "{}/tests/fixtures/debezium/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let bytes = |field: &str| match record[field].as_str() {
                Some(text) => Some(text.as_bytes().to_vec()),
                None => record[format!("{field}_base64")]
                    .as_str()
                    .map(|b64| BASE64.decode(b64).unwrap()),
            };
            (bytes("key"), bytes("value"))
        })
        .filter(|(_, value)| value.is_some())
        .collect()
}

fn decode_real(c: &mut Criterion) {
    let decoder = Decoder::new(InputFormat::Auto, HashMap::new());
    // The registry's schemas, as the consumer hands them in after fetching them once.
    let schemas: HashMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/debezium/avro-schemas.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    for (id, text) in &schemas {
        decoder.add_schema(id.parse().unwrap(), Some(text));
    }
    let mut group = c.benchmark_group("decode_real");
    for (name, file) in [
        ("schemas", "schemas.jsonl"),
        ("plain", "plain.jsonl"),
        ("avro", "avro.jsonl"),
    ] {
        let records = fixture(file);
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                for (key, value) in &records {
                    let raw = RawRecord {
                        key: key.as_deref(),
                        value: value.as_deref(),
                        position: SourcePosition::new("shop.public.orders", 0, 1),
                        timestamp_ms: Some(1),
                    };
                    criterion::black_box(decoder.decode(&raw).unwrap());
                }
            })
        });
    }
    group.finish();
}

fn event(id: u32) -> ChangeEvent {
    ChangeEvent {
        entity_type: "order".into(),
        entity_id: Some(id.to_string()),
        operation: Operation::Update,
        data: Some(
            json!({"id": id, "status": "shipped", "amount": 150, "region": "eu", "bucket": id % 100})
                .into(),
        ),
        before: Some(json!({"id": id, "status": "paid", "amount": 150, "region": "eu"}).into()),
        timestamp: "2026-11-22T10:00:00Z".into(),
        position: SourcePosition::new("cdc.events", 0, i64::from(id)),
        kafka_timestamp_ms: None,
        source_lsn: None,
    }
}

fn filters(c: &mut Criterion) {
    let filter = Filter::compile(Some(&json!({
        "operation": "update", "data.bucket": {"lt": 10}, "data.region": {"in": ["eu", "us"]}
    })))
    .unwrap();
    let (hit, miss) = (event(5), event(50));
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(1));
    group.bench_function("three_predicates_match", |b| {
        b.iter(|| filter.matches(&hit))
    });
    group.bench_function("three_predicates_miss", |b| {
        b.iter(|| filter.matches(&miss))
    });
    group.bench_function("compile", |b| {
        let spec = json!({"operation": "update", "data.bucket": {"lt": 10}, "data.region": {"in": ["eu", "us"]}});
        b.iter(|| Filter::compile(Some(&spec)).unwrap())
    });
    group.finish();
}

fn serialize(c: &mut Criterion) {
    let e = event(42);
    let payload = e.payload_json();
    let mut group = c.benchmark_group("serialize");
    group.throughput(Throughput::Elements(1));
    group.bench_function("payload", |b| b.iter(|| e.payload_json()));
    group.bench_function("data_message", |b| {
        b.iter(|| data_message("cdc.order.42", &payload, e.position, Kind::Live))
    });
    group.finish();
}

/// One event dispatched to `subscribers` connections on its entity topic: index lookup,
/// filter, one serialization, and one enqueue per subscriber. Queues are drained between
/// iterations, outside the measured time.
fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    for (subscribers, filtered) in [(10_000usize, false), (10_000, true)] {
        let index = Arc::new(TopicIndex::new());
        let metrics = Arc::new(Metrics::new());
        let engine = FanOut::new(
            Arc::clone(&index),
            metrics,
            Arc::new(Dispatched::default()),
            SlowClientPolicy::Close,
            Duration::from_secs(5),
        );
        let filter = if filtered {
            Filter::compile(Some(&json!({"operation": "update", "data.bucket": {"lt": 10}, "data.region": {"in": ["eu", "us"]}})))
                .unwrap()
        } else {
            Filter::default()
        };
        let filter = Arc::new(filter);
        let mut receivers = Vec::with_capacity(subscribers);
        for id in 0..subscribers as u64 {
            let (outbound, receiver) = Outbound::new(id, 64);
            index.subscribe("cdc.order", &outbound, Arc::clone(&filter));
            receivers.push(receiver);
        }
        let name = if filtered {
            "dispatch_10k_subscribers_3_predicates"
        } else {
            "dispatch_10k_subscribers"
        };
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let e = event(i as u32 % 100);
                    let started = Instant::now();
                    runtime.block_on(engine.dispatch(e));
                    total += started.elapsed();
                    for receiver in &mut receivers {
                        while receiver.try_recv().is_some() {}
                    }
                }
                total
            })
        });
    }
    group.finish();
}

fn index(c: &mut Criterion) {
    let index = TopicIndex::new();
    let mut keep = Vec::new();
    for id in 0..10_000u64 {
        let (outbound, receiver) = Outbound::new(id, 4);
        index.subscribe(
            &format!("cdc.order.{id}"),
            &outbound,
            Arc::new(Filter::default()),
        );
        keep.push(receiver);
    }
    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lookup_among_10k_row_topics", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 10_000;
            index
                .subscribers(&format!("cdc.order.{i}"))
                .map(|s| s.len())
        })
    });
    group.bench_function("subscribe_unsubscribe", |b| {
        b.iter_batched(
            || Outbound::new(u64::MAX, 4),
            |(outbound, _receiver)| {
                index.subscribe("cdc.order.hot", &outbound, Arc::new(Filter::default()));
                index.unsubscribe("cdc.order.hot", u64::MAX)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The gateway's own cost of building a table (issue 19): records of ~500-byte rows decoded
/// and applied to the table store as the start-up read applies them, commits included; the
/// broker's fetch is left out (tansu serves one reader ~35,000 records/s here: the end-to-end
/// figure is the `tables` bench binary's).
fn tables(c: &mut Criterion) {
    use cdc_gateway::tables::Tables;
    const ROWS: usize = 100_000;
    let decoder = Decoder::new(InputFormat::Auto, HashMap::new());
    let records: Vec<Vec<u8>> = (0..ROWS)
        .map(|i| {
            let notes: String = (0..24).map(|k| format!("{:016x}", (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(k))).collect();
            json!({"entity_type": "customer", "entity_id": i.to_string(), "operation": "snapshot",
                   "data": {"id": i, "bucket": i % 100, "segment": format!("s{}", i % 100), "name": format!("customer {i}"), "notes": notes}})
            .to_string()
            .into_bytes()
        })
        .collect();
    let mut group = c.benchmark_group("tables");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS as u64));
    // The table as the start-up read builds it, and how long that took.
    let build = || {
        let tables = Arc::new(Tables::temporary());
        let engine = FanOut::new(
            Arc::new(TopicIndex::new()),
            Arc::new(Metrics::new()),
            Arc::new(Dispatched::default()),
            SlowClientPolicy::Close,
            Duration::from_secs(5),
        )
        .with_tables(Arc::clone(&tables));
        let started = Instant::now();
        for (offset, value) in records.iter().enumerate() {
            let raw = RawRecord {
                key: None,
                value: Some(value),
                position: SourcePosition::new("bench.public.customer", 0, offset as i64),
                timestamp_ms: Some(1),
            };
            if let Ok(Decoded::Event(event)) = decoder.decode(&raw) {
                engine.remember(*event, false, &mut cdc_gateway::fanout::Earlier::new());
            }
            if tables.should_flush() {
                tables.flush().unwrap();
            }
        }
        tables.flush().unwrap();
        (tables, started.elapsed())
    };
    group.bench_function("build_100k_rows", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| build().1).sum())
    });
    // A snapshot's scan for the rows a filter matches (1% of them): on a number every row is
    // parsed as far as the field; on a string most rows are passed over by their text.
    let (tables, _) = build();
    let view = tables.view().unwrap();
    for (name, spec) in [
        ("filtered_scan_number_100k_rows", json!({"data.bucket": 7})),
        (
            "filtered_scan_string_100k_rows",
            json!({"data.segment": "s7"}),
        ),
    ] {
        let filter = Filter::compile(Some(&spec)).unwrap();
        assert_eq!(view.keys_matching("customer", &filter).len(), ROWS / 100);
        group.bench_function(name, |b| b.iter(|| view.keys_matching("customer", &filter)));
    }
    group.finish();
}

criterion_group!(
    benches,
    tables,
    decode,
    decode_real,
    filters,
    serialize,
    fanout,
    index
);
criterion_main!(benches);
