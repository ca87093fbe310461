use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::event::Operation;

fn record<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> RawRecord<'a> {
    RawRecord {
        key,
        value,
        position: SourcePosition::new("cdc.events", 2, 99),
        timestamp_ms: Some(1_763_805_600_000),
    }
}

fn decoder(format: InputFormat) -> Decoder {
    let renames = HashMap::from([("orders".to_string(), "order".to_string())]);
    Decoder::new(format, renames)
}

fn decode_with(
    format: InputFormat,
    key: Option<&str>,
    value: Value,
) -> Result<ChangeEvent, DecodeError> {
    let bytes = serde_json::to_vec(&value).unwrap();
    match decoder(format).decode(&record(key.map(str::as_bytes), Some(&bytes)))? {
        Decoded::Event(event) => Ok(*event),
        Decoded::Tombstone => panic!("unexpected tombstone"),
    }
}

fn decode(key: Option<&str>, value: Value) -> Result<ChangeEvent, DecodeError> {
    decode_with(InputFormat::Auto, key, value)
}

fn debezium(op: &str, before: Value, after: Value) -> Value {
    json!({"before": before, "after": after, "op": op, "ts_ms": 1_763_805_600_123_i64,
           "source": {"table": "orders", "db": "shop", "schema": "public"}})
}

#[test]
fn the_timestamp_is_the_commit_time_not_debeziums_processing_time() {
    let mut value = debezium("c", Value::Null, json!({"id": 1}));
    value["source"]["ts_ms"] = json!(1_763_805_500_000_i64);
    let e = decode(None, value.clone()).unwrap();
    assert_eq!(e.timestamp, "2025-11-22T09:58:20Z");
    value["source"]["ts_ms"] = Value::Null;
    assert_eq!(
        decode(None, value).unwrap().timestamp,
        "2025-11-22T10:00:00.123Z"
    );
}

#[test]
fn simple_envelope_decodes_every_field() {
    let e = decode(
        None,
        json!({"entity_type": "order", "entity_id": "42", "operation": "update",
               "data": {"status": "shipped"}, "before": {"status": "new"}, "timestamp": "2026-11-22T10:00:00Z"}),
    )
    .unwrap();
    assert_eq!(e.entity_type, "order");
    assert_eq!(e.entity_id.as_deref(), Some("42"));
    assert_eq!(e.operation, Operation::Update);
    assert_eq!(e.data, Some(json!({"status": "shipped"}).into()));
    assert_eq!(e.before, Some(json!({"status": "new"}).into()));
    assert_eq!(e.timestamp, "2026-11-22T10:00:00Z");
    assert_eq!(e.position, SourcePosition::new("cdc.events", 2, 99));
}

#[test]
fn simple_envelope_accepts_numeric_ids_and_epoch_timestamps() {
    let e = decode(None, json!({"entity_type": "orders", "entity_id": 7, "operation": "insert", "data": {}, "timestamp": 1_763_805_600_000_i64})).unwrap();
    assert_eq!(
        e.entity_type, "order",
        "rename map applies to the simple envelope too"
    );
    assert_eq!(e.entity_id.as_deref(), Some("7"));
    assert_eq!(e.timestamp, "2025-11-22T10:00:00Z");
}

#[test]
fn simple_envelope_without_timestamp_uses_the_kafka_timestamp() {
    let e = decode(None, json!({"entity_type": "order", "entity_id": "1", "operation": "delete", "before": {"id": 1}})).unwrap();
    assert_eq!(e.timestamp, "2025-11-22T10:00:00Z");
    assert_eq!(e.data, None);
}

#[test]
fn simple_truncate_needs_no_id() {
    let e = decode(
        None,
        json!({"entity_type": "order", "operation": "truncate"}),
    )
    .unwrap();
    assert_eq!(e.entity_id, None);
    assert_eq!(e.row_topic(), None);
}

#[test]
fn debezium_ops_map_to_operations() {
    for (op, expected) in [
        ("c", Operation::Insert),
        ("u", Operation::Update),
        ("d", Operation::Delete),
        ("r", Operation::Snapshot),
        ("t", Operation::Truncate),
    ] {
        let (before, after) = match op {
            "c" | "r" => (Value::Null, json!({"id": 5})),
            "u" => (json!({"id": 5}), json!({"id": 5})),
            "d" => (json!({"id": 5}), Value::Null),
            _ => (Value::Null, Value::Null),
        };
        let e = decode(None, debezium(op, before, after)).unwrap();
        assert_eq!(e.operation, expected, "op {op}");
        assert_eq!(e.entity_type, "order");
        assert_eq!(e.timestamp, "2025-11-22T10:00:00.123Z");
        if op == "t" {
            assert_eq!(e.entity_id, None);
        } else {
            assert_eq!(
                e.entity_id.as_deref(),
                Some("5"),
                "op {op}: id from after, or before for deletes"
            );
        }
    }
}

#[test]
fn debezium_schema_payload_wrapper_is_unwrapped() {
    let wrapped = json!({"schema": {"type": "struct"}, "payload": debezium("c", Value::Null, json!({"id": 9, "total": 3}))});
    let e = decode(None, wrapped).unwrap();
    assert_eq!(e.entity_id.as_deref(), Some("9"));
    assert_eq!(e.data, Some(json!({"id": 9, "total": 3}).into()));
}

#[test]
fn debezium_key_rules() {
    let value = debezium("u", json!({"id": 1}), json!({"id": 1}));
    let id = |key: &str| decode(Some(key), value.clone()).unwrap().entity_id.unwrap();
    assert_eq!(id(r#"{"id": 42}"#), "42", "one field: its value");
    assert_eq!(
        id(r#"{"tenant": "acme", "id": 42}"#),
        "acme:42",
        "several: joined in key order"
    );
    assert_eq!(id(r#"{"id": 42, "tenant": "acme"}"#), "42:acme");
    assert_eq!(
        id(r#"{"schema": {"type": "struct"}, "payload": {"id": "a-1"}}"#),
        "a-1",
        "wrapped key"
    );
    assert_eq!(id(r#""plain""#), "plain");
    assert_eq!(id("raw-key"), "raw-key", "a non-JSON key is used as text");
    assert_eq!(id(""), "1", "an empty key counts as no key");
    assert_eq!(
        decode(Some(r#"{"id": null}"#), value.clone()).unwrap_err(),
        DecodeError::InvalidId
    );
}

#[test]
fn tombstones_are_not_errors() {
    assert_eq!(
        decoder(InputFormat::Auto)
            .decode(&record(Some(b"{\"id\":1}"), None))
            .unwrap(),
        Decoded::Tombstone
    );
    let wrapped = br#"{"schema": null, "payload": null}"#;
    assert_eq!(
        decoder(InputFormat::Auto)
            .decode(&record(None, Some(wrapped)))
            .unwrap(),
        Decoded::Tombstone
    );
}

#[test]
fn forced_formats_reject_the_other_envelope() {
    let simple = json!({"entity_type": "order", "entity_id": "1", "operation": "insert"});
    assert_eq!(
        decode_with(InputFormat::Debezium, None, simple.clone()).unwrap_err(),
        DecodeError::MissingField("op")
    );
    assert!(decode_with(InputFormat::Simple, None, simple).is_ok());
    let dbz = debezium("c", Value::Null, json!({"id": 1}));
    assert_eq!(
        decode_with(InputFormat::Simple, None, dbz).unwrap_err(),
        DecodeError::MissingField("entity_type")
    );
}

#[test]
fn bad_records_fail_with_a_reason() {
    let cases: Vec<(Option<&str>, &[u8], &str)> = vec![
        (None, b"{not json", "invalid_json"),
        (None, b"[1,2]", "not_an_object"),
        (None, b"\"text\"", "not_an_object"),
        (None, b"12", "not_an_object"),
        (None, br#"{"schema": {}, "payload": [1]}"#, "not_an_object"),
        (None, br#"{"op": "c", "source": "t", "after": {"id": 1}}"#, "invalid_field"),
        (None, b"{\"hello\": 1}", "unknown_envelope"),
        (None, br#"{"entity_type": "order", "operation": "insert"}"#, "missing_field"),
        (None, br#"{"entity_type": "order", "entity_id": "1", "operation": "upsert"}"#, "invalid_operation"),
        (None, br#"{"entity_type": "or.der", "entity_id": "1", "operation": "insert"}"#, "invalid_entity"),
        (None, br#"{"entity_type": "order", "entity_id": "", "operation": "insert"}"#, "invalid_id"),
        (None, br#"{"entity_type": "order", "entity_id": "1", "operation": "insert", "timestamp": "noon"}"#, "invalid_timestamp"),
        (None, br#"{"entity_type": "order", "entity_id": "1", "operation": "insert", "data": [1]}"#, "invalid_field"),
        (None, br#"{"op": "c", "after": {"id": 1}}"#, "missing_field"),
        (None, br#"{"op": "x", "source": {"table": "t"}, "after": {"id": 1}}"#, "invalid_operation"),
        (None, br#"{"op": "c", "source": {"table": "t"}, "after": {"name": "no id"}}"#, "missing_field"),
    ];
    for (key, value, reason) in cases {
        let err = decoder(InputFormat::Auto)
            .decode(&record(key.map(str::as_bytes), Some(value)))
            .unwrap_err();
        assert_eq!(err.reason(), reason, "{}", String::from_utf8_lossy(value));
        assert!(DecodeError::REASONS.contains(&err.reason()));
    }
    let long_id =
        json!({"entity_type": "order", "entity_id": "x".repeat(513), "operation": "insert"});
    assert_eq!(decode(None, long_id).unwrap_err(), DecodeError::InvalidId);
}

#[test]
fn rows_pass_through_as_written() {
    let value = br#"{"entity_typ\u0065": "order", "entity_id": "1", "operation": "update",
        "data": {"z": 1, "a": [1.50, "x"], "n": {"deep": true}}, "before": {
            "z": 0
        }}"#;
    let Decoded::Event(event) = decoder(InputFormat::Auto)
        .decode(&record(None, Some(value)))
        .unwrap()
    else {
        panic!("an event");
    };
    assert_eq!(
        event.entity_type, "order",
        "an escaped field name still counts"
    );
    let data = event.data.as_ref().unwrap();
    assert_eq!(
        data.text(),
        r#"{"z": 1, "a": [1.50, "x"], "n": {"deep": true}}"#,
        "field order, spacing and number text are the producer's"
    );
    assert_eq!(
        event.before.as_ref().unwrap().text(),
        r#"{"z":0}"#,
        "line breaks compacted"
    );
    let payload: Value = serde_json::from_slice(&event.payload_json()).unwrap();
    assert_eq!(payload["data"]["n"]["deep"], true);
    assert!(!event.payload_json().contains(&b'\n'));
}

/// A Debezium record as Kafka Connect's JSON converter writes it with `schemas.enable=true`.
fn wrapped(after: &str) -> String {
    let row = r#"{"type":"struct","optional":true,"name":"dbz.public.orders.Value","fields":[{"type":"int64","optional":false,"field":"id"},{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"12"},"field":"amount"},{"type":"int32","optional":true,"name":"io.debezium.time.Date","version":1,"field":"ship_date"},{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,"field":"meta"}]}"#;
    let schema = format!(
        r#"{{"type":"struct","fields":[{},{},{{"type":"struct","fields":[{{"type":"string","optional":false,"field":"table"}}],"optional":false,"name":"io.debezium.connector.postgresql.Source","field":"source"}},{{"type":"string","optional":false,"field":"op"}},{{"type":"int64","optional":true,"field":"ts_ms"}}],"optional":false,"name":"dbz.public.orders.Envelope","version":2}}"#,
        row.replacen(r#""fields""#, r#""field":"before","fields""#, 1),
        row.replacen(r#""fields""#, r#""field":"after","fields""#, 1),
    );
    format!(
        r#"{{"schema":{schema},"payload":{{"before":null,"after":{after},"source":{{"table":"orders"}},"op":"c","ts_ms":1766570400000}}}}"#
    )
}

#[test]
fn schema_wrapped_values_are_what_the_database_holds() {
    let decoder = decoder(InputFormat::Auto);
    let value = wrapped(r#"{"id":1,"amount":"AeJA","ship_date":20811,"meta":"{\"vip\": true}"}"#);
    let key = br#"{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"}],"optional":false,"name":"dbz.public.orders.Key"},"payload":{"id":1}}"#;
    // Twice: the second time the schema is known and not parsed again.
    for _ in 0..2 {
        let Decoded::Event(e) = decoder
            .decode(&record(Some(key), Some(value.as_bytes())))
            .unwrap()
        else {
            panic!("tombstone")
        };
        assert_eq!(e.entity_id.as_deref(), Some("1"));
        assert_eq!(
            e.data.as_ref().unwrap().text(),
            r#"{"id":1,"amount":1234.56,"ship_date":"2026-12-24","meta":{"vip": true}}"#
        );
        assert_eq!(
            e.data.as_ref().unwrap().value()["amount"].as_f64(),
            Some(1234.56)
        );
    }
    let strings = super::Decoder::new(InputFormat::Auto, HashMap::new())
        .with_decimal_format(DecimalFormat::String);
    let Decoded::Event(e) = strings
        .decode(&record(Some(key), Some(value.as_bytes())))
        .unwrap()
    else {
        panic!("tombstone")
    };
    assert_eq!(e.data.unwrap().value()["amount"], "1234.56");
    // A wrapped tombstone, then bad values and a bad schema: errors, never panics.
    let tombstone = br#"{"schema":null,"payload":null}"#;
    assert_eq!(
        decoder.decode(&record(Some(key), Some(tombstone))),
        Ok(Decoded::Tombstone)
    );
    let bad = wrapped(r#"{"id":2,"amount":"%%%","ship_date":1,"meta":null}"#);
    assert_eq!(
        decoder
            .decode(&record(Some(key), Some(bad.as_bytes())))
            .unwrap_err()
            .reason(),
        "invalid_value"
    );
    let bad_schema = wrapped(r#"{"id":3}"#).replace(r#""scale":"2","#, "");
    assert_eq!(
        decoder
            .decode(&record(Some(key), Some(bad_schema.as_bytes())))
            .unwrap_err()
            .reason(),
        "invalid_schema"
    );
    let cut = &value[..value.len() - 1];
    assert!(decoder.decode(&record(None, Some(cut.as_bytes()))).is_err());
}

#[test]
fn tables_of_one_name_in_two_schemas_are_kept_apart_or_reported() {
    let in_schema = |schema: &str| {
        let mut value = debezium("c", Value::Null, json!({"id": 1}));
        value["source"]["schema"] = json!(schema);
        serde_json::to_vec(&value).unwrap()
    };
    let (a, b) = (in_schema("tenant_a"), in_schema("tenant_b"));
    let entity = |decoder: &Decoder, bytes: &[u8]| match decoder
        .decode(&record(Some(b"1"), Some(bytes)))
        .unwrap()
    {
        Decoded::Event(e) => e.entity_type,
        Decoded::Tombstone => unreachable!(),
    };
    let metrics = crate::metrics::Metrics::new();
    let merged = Decoder::new(InputFormat::Auto, HashMap::new())
        .with_collisions(metrics.entity_collisions.clone());
    assert_eq!(entity(&merged, &a), "orders");
    assert_eq!(entity(&merged, &a), "orders");
    assert_eq!(entity(&merged, &b), "orders");
    assert_eq!(
        metrics
            .entity_collisions
            .with_label_values(&["orders"])
            .get(),
        1,
        "the second source is counted"
    );
    let apart = Decoder::new(
        InputFormat::Auto,
        HashMap::from([("tenant_b-orders".to_string(), "orders_b".to_string())]),
    )
    .with_entity_naming(EntityNaming::Schema);
    assert_eq!(entity(&apart, &a), "tenant_a-orders");
    assert_eq!(entity(&apart, &b), "orders_b", "renamed after naming");
    let full =
        Decoder::new(InputFormat::Auto, HashMap::new()).with_entity_naming(EntityNaming::Database);
    assert_eq!(entity(&full, &a), "shop-tenant_a-orders");
}

/// Every record real Debezium wrote (tests/fixtures/debezium) decodes; with the schema the
/// values are what Postgres holds.
#[test]
fn real_debezium_records_decode_to_what_postgres_holds() {
    let decoder = Decoder::new(InputFormat::Debezium, HashMap::new());
    for (file, schemas) in [("schemas.jsonl", true), ("plain.jsonl", false)] {
        let path = format!(
            "{}/tests/fixtures/debezium/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let (mut events, mut tombstones) = (0, 0);
        for line in text.lines() {
            let kafka: Value = serde_json::from_str(line).unwrap();
            let bytes = |field: &str| kafka[field].as_str().map(str::as_bytes);
            let decoded = decoder
                .decode(&record(bytes("key"), bytes("value")))
                .unwrap_or_else(|e| panic!("{file}: {e}: {line}"));
            let Decoded::Event(event) = decoded else {
                tombstones += 1;
                continue;
            };
            events += 1;
            assert!(event.entity_id.is_some(), "{line}");
            let Some(row) = event.data.as_ref().map(Row::value) else {
                continue;
            };
            if !schemas || event.entity_type != "orders" {
                continue;
            }
            if let Some(amount) = row.get("amount").filter(|a| !a.is_null()) {
                assert!(amount.is_number(), "decimal as a number: {amount}");
            }
            if let Some(Value::String(date)) = row.get("ship_date") {
                assert!(
                    crate::clock::is_rfc3339(&format!("{date}T00:00:00Z")),
                    "{date}"
                );
            }
            if let Some(meta) = row.get("meta").filter(|m| !m.is_null()) {
                let text = meta.as_str().unwrap_or_default();
                assert!(
                    !text.starts_with('{') && !text.starts_with('['),
                    "jsonb as its value, not as text: {meta}"
                );
            }
        }
        assert!(events >= 20 && tombstones >= 2, "{file}: {events} events");
    }
    // The insert of row 1 (amount 1234.56, see the fixtures' README).
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/debezium/schemas.jsonl",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(r#"\"amount\":\"AeJA\""#))
        .expect("the fixture holds 1234.56");
    let kafka: Value = serde_json::from_str(line).unwrap();
    let Decoded::Event(e) = decoder
        .decode(&record(
            kafka["key"].as_str().map(str::as_bytes),
            kafka["value"].as_str().map(str::as_bytes),
        ))
        .unwrap()
    else {
        panic!("tombstone")
    };
    let row = e.data.unwrap();
    assert!(row.text().contains(r#""amount":1234.56"#), "{}", row.text());
}

#[test]
fn a_streamed_change_keeps_its_log_position_a_snapshot_read_does_not() {
    let mut value = debezium("u", Value::Null, json!({"id": 1}));
    value["source"]["lsn"] = json!(24_023_128_i64);
    assert_eq!(
        decode(None, value.clone()).unwrap().source_lsn,
        Some(24_023_128)
    );
    value["op"] = json!("r");
    assert_eq!(decode(None, value).unwrap().source_lsn, None);
    let plain = debezium("u", Value::Null, json!({"id": 1}));
    assert_eq!(decode(None, plain).unwrap().source_lsn, None);
}
