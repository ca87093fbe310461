//! Avro records built with apache-avro, written as Confluent's AvroConverter writes
//! Debezium's: the schemas below carry the `connect.name`/`connect.parameters` annotations it
//! adds, and a second schema uses Avro's own logical types only.

use std::collections::HashMap;

use apache_avro::types::Value as Avro;
use apache_avro::{Decimal, Schema};
use serde_json::{json, Value};

use super::*;
use crate::event::Operation;

const VALUE_ID: u32 = 7;
const KEY_ID: u32 = 8;
const PLAIN_ID: u32 = 9;

/// A Debezium `Envelope` for `public.items`, as Debezium 3 with the AvroConverter registers it.
fn envelope_schema() -> String {
    json!({
        "type": "record", "name": "Envelope", "namespace": "pg.public.items",
        "connect.name": "pg.public.items.Envelope", "connect.version": 2,
        "fields": [
            {"name": "before", "default": null, "type": ["null", {
                "type": "record", "name": "Value", "connect.name": "pg.public.items.Value",
                "fields": [
                    {"name": "id", "type": "int"},
                    {"name": "amount", "default": null, "type": ["null", {
                        "type": "bytes", "scale": 2, "precision": 12, "connect.version": 1,
                        "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
                        "connect.name": "org.apache.kafka.connect.data.Decimal",
                        "logicalType": "decimal"}]},
                    {"name": "ship_date", "default": null, "type": ["null", {
                        "type": "int", "connect.version": 1,
                        "connect.name": "io.debezium.time.Date"}]},
                    {"name": "opens", "default": null, "type": ["null", {
                        "type": "long", "connect.version": 1,
                        "connect.name": "io.debezium.time.MicroTime"}]},
                    {"name": "placed", "default": null, "type": ["null", {
                        "type": "long", "connect.version": 1,
                        "connect.name": "io.debezium.time.MicroTimestamp"}]},
                    {"name": "paid", "default": null, "type": ["null", {
                        "type": "string", "connect.version": 1,
                        "connect.name": "io.debezium.time.ZonedTimestamp"}]},
                    {"name": "meta", "default": null, "type": ["null", {
                        "type": "string", "connect.version": 1,
                        "connect.name": "io.debezium.data.Json"}]},
                    {"name": "note", "default": null, "type": ["null", "string"]},
                    {"name": "urgent", "default": null, "type": ["null", "boolean"]},
                    {"name": "qty", "default": null, "type": ["null",
                        {"type": "int", "connect.type": "int16"}]}
                ]}]},
            {"name": "after", "default": null, "type": ["null", "Value"]},
            {"name": "source", "type": {
                "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
                "fields": [
                    {"name": "db", "type": "string"},
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "ts_ms", "type": "long"},
                    {"name": "lsn", "default": null, "type": ["null", "long"]}
                ]}},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "default": null, "type": ["null", "long"]}
        ]
    })
    .to_string()
}

fn key_schema() -> String {
    json!({"type": "record", "name": "Key", "namespace": "pg.public.items",
           "fields": [{"name": "id", "type": "int"}]})
    .to_string()
}

fn framed(id: u32, schema: &str, value: Avro) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap();
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(apache_avro::to_avro_datum(&schema, value).unwrap());
    bytes
}

fn some(value: Avro) -> Avro {
    Avro::Union(1, Box::new(value))
}

fn row(id: i32, amount: &[u8]) -> Avro {
    Avro::Record(vec![
        ("id".into(), Avro::Int(id)),
        ("amount".into(), some(Avro::Decimal(Decimal::from(amount)))),
        ("ship_date".into(), some(Avro::Int(20_811))),
        ("opens".into(), some(Avro::Long(36_000_500_000))),
        ("placed".into(), some(Avro::Long(1_766_570_400_123_456))),
        (
            "paid".into(),
            some(Avro::String("2026-12-24T10:00:00Z".into())),
        ),
        (
            "meta".into(),
            some(Avro::String(r#"{"plan": "pro", "seats": [1, 2]}"#.into())),
        ),
        (
            "note".into(),
            some(Avro::String("a \"quoted\"\nline".into())),
        ),
        ("urgent".into(), some(Avro::Boolean(true))),
        ("qty".into(), Avro::Union(0, Box::new(Avro::Null))),
    ])
}

fn envelope(op: &str, before: Option<Avro>, after: Option<Avro>) -> Avro {
    let optional = |row: Option<Avro>| match row {
        Some(row) => some(row),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    Avro::Record(vec![
        ("before".into(), optional(before)),
        ("after".into(), optional(after)),
        (
            "source".into(),
            Avro::Record(vec![
                ("db".into(), Avro::String("shop".into())),
                ("schema".into(), Avro::String("public".into())),
                ("table".into(), Avro::String("items".into())),
                ("ts_ms".into(), Avro::Long(1_763_805_600_000)),
                ("lsn".into(), some(Avro::Long(123_456))),
            ]),
        ),
        ("op".into(), Avro::String(op.into())),
        ("ts_ms".into(), some(Avro::Long(1_763_805_600_500))),
    ])
}

fn key(id: i32) -> Vec<u8> {
    framed(
        KEY_ID,
        &key_schema(),
        Avro::Record(vec![("id".into(), Avro::Int(id))]),
    )
}

/// A decoder that has been handed the registry's schemas.
fn decoder(format: InputFormat) -> Decoder {
    let decoder = Decoder::new(format, HashMap::new());
    decoder.add_schema(VALUE_ID, Some(&envelope_schema()));
    decoder.add_schema(KEY_ID, Some(&key_schema()));
    decoder
}

fn raw<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> RawRecord<'a> {
    RawRecord {
        key,
        value,
        position: SourcePosition::new("pg.public.items", 0, 5),
        timestamp_ms: None,
    }
}

fn event(decoder: &Decoder, key: Option<&[u8]>, value: &[u8]) -> ChangeEvent {
    match decoder.decode(&raw(key, Some(value))) {
        Ok(Decoded::Event(event)) => *event,
        other => panic!("{other:?}"),
    }
}

fn data(row: &Option<Row>) -> Value {
    serde_json::from_str(row.as_ref().expect("a row").text()).unwrap()
}

#[test]
fn debeziums_avro_envelope_decodes_like_its_json_one() {
    // 123456 = 0x01E240: 1234.56 at scale 2.
    let value = framed(
        VALUE_ID,
        &envelope_schema(),
        envelope(
            "u",
            Some(row(3, &[0x01, 0xE2, 0x40])),
            Some(row(3, &[0xFB])),
        ),
    );
    for format in [InputFormat::Avro, InputFormat::Auto] {
        let decoder = decoder(format);
        let e = event(&decoder, Some(&key(3)), &value);
        assert_eq!(
            (e.entity_type.as_str(), e.entity_id.as_deref(), e.operation),
            ("items", Some("3"), Operation::Update)
        );
        assert_eq!(e.timestamp, "2025-11-22T10:00:00Z", "source.ts_ms");
        assert_eq!(e.source_lsn, Some(123_456));
        let after = data(&e.data);
        assert_eq!(
            after,
            json!({"id": 3, "amount": -0.05, "ship_date": "2026-12-24", "opens": "10:00:00.5",
                   "placed": "2025-12-24T10:00:00.123456", "paid": "2026-12-24T10:00:00Z",
                   "meta": {"plan": "pro", "seats": [1, 2]}, "note": "a \"quoted\"\nline",
                   "urgent": true, "qty": null})
        );
        // The decimal's digits exactly as the database holds them, trailing zero and all.
        assert!(e
            .data
            .as_ref()
            .unwrap()
            .text()
            .contains(r#""amount":-0.05"#));
        assert!(e
            .before
            .as_ref()
            .unwrap()
            .text()
            .contains(r#""amount":1234.56"#));
    }
}

#[test]
fn avro_and_json_rows_of_one_change_are_the_same_values() {
    // The same row as the JSON converter with schemas writes it.
    let connect = json!({"type": "struct", "name": "pg.public.items.Envelope", "fields": [
        {"field": "after", "type": "struct", "optional": true, "name": "pg.public.items.Value",
         "fields": [
            {"field": "id", "type": "int32"},
            {"field": "amount", "type": "bytes", "optional": true,
             "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}},
            {"field": "ship_date", "type": "int32", "optional": true, "name": "io.debezium.time.Date"},
            {"field": "opens", "type": "int64", "optional": true, "name": "io.debezium.time.MicroTime"},
            {"field": "placed", "type": "int64", "optional": true,
             "name": "io.debezium.time.MicroTimestamp"},
            {"field": "paid", "type": "string", "optional": true,
             "name": "io.debezium.time.ZonedTimestamp"},
            {"field": "meta", "type": "string", "optional": true, "name": "io.debezium.data.Json"},
            {"field": "note", "type": "string", "optional": true},
            {"field": "urgent", "type": "boolean", "optional": true},
            {"field": "qty", "type": "int16", "optional": true}]},
        {"field": "source", "type": "struct", "fields": []},
        {"field": "op", "type": "string"}]});
    let payload = json!({"before": null, "op": "c",
        "after": {"id": 4, "amount": "AeJA", "ship_date": 20811, "opens": 36000500000_i64,
                  "placed": 1766570400123456_i64, "paid": "2026-12-24T10:00:00Z",
                  "meta": "{\"plan\": \"pro\", \"seats\": [1, 2]}", "note": "a \"quoted\"\nline",
                  "urgent": true, "qty": null},
        "source": {"db": "shop", "schema": "public", "table": "items", "ts_ms": 1763805600000_i64}});
    let json_bytes = serde_json::to_vec(&json!({"schema": connect, "payload": payload})).unwrap();
    let avro_bytes = framed(
        VALUE_ID,
        &envelope_schema(),
        envelope("c", None, Some(row(4, &[0x01, 0xE2, 0x40]))),
    );
    let decoder = decoder(InputFormat::Auto);
    let from_json = event(&decoder, Some(b"4"), &json_bytes);
    let from_avro = event(&decoder, Some(&key(4)), &avro_bytes);
    assert_eq!(data(&from_avro.data), data(&from_json.data));
    assert_eq!(from_avro.entity_id, from_json.entity_id);
}

#[test]
fn avro_logical_types_without_connect_names_are_decoded() {
    let schema = json!({"type": "record", "name": "Change", "fields": [
        {"name": "entity_type", "type": "string"},
        {"name": "entity_id", "type": "string"},
        {"name": "operation", "type": "string"},
        {"name": "data", "type": {"type": "record", "name": "Row", "fields": [
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal",
                                       "precision": 10, "scale": 3}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "at", "type": {"type": "long", "logicalType": "time-micros"}},
            {"name": "when", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
            {"name": "ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "size", "type": {"type": "enum", "name": "Size", "symbols": ["S", "M"]}},
            {"name": "ratio", "type": "double"}
        ]}}
    ]})
    .to_string();
    let value = Avro::Record(vec![
        ("entity_type".into(), Avro::String("order".into())),
        ("entity_id".into(), Avro::String("42".into())),
        ("operation".into(), Avro::String("insert".into())),
        (
            "data".into(),
            Avro::Record(vec![
                ("price".into(), Avro::Decimal(Decimal::from([0x30, 0x39]))),
                ("day".into(), Avro::Date(-1)),
                ("at".into(), Avro::TimeMicros(86_399_000_001)),
                ("when".into(), Avro::TimestampMicros(1_766_570_400_000_010)),
                (
                    "local".into(),
                    Avro::LocalTimestampMicros(1_766_570_400_000_000),
                ),
                ("ms".into(), Avro::TimestampMillis(1_766_570_400_120)),
                (
                    "tags".into(),
                    Avro::Array(vec![Avro::String("a".into()), Avro::String("b".into())]),
                ),
                ("size".into(), Avro::Enum(1, "M".into())),
                ("ratio".into(), Avro::Double(0.25)),
            ]),
        ),
    ]);
    let bytes = framed(PLAIN_ID, &schema, value);
    let decoder = Decoder::new(InputFormat::Avro, HashMap::new());
    decoder.add_schema(PLAIN_ID, Some(&schema));
    let e = event(&decoder, None, &bytes);
    assert_eq!(
        (e.entity_type.as_str(), e.operation),
        ("order", Operation::Insert)
    );
    assert_eq!(
        data(&e.data),
        json!({"price": 12.345, "day": "1969-12-31", "at": "23:59:59.000001",
               "when": "2025-12-24T10:00:00.00001Z", "local": "2025-12-24T10:00:00",
               "ms": "2025-12-24T10:00:00.12Z", "tags": ["a", "b"], "size": "M", "ratio": 0.25})
    );
}

#[test]
fn schema_ids_are_asked_for_once_and_unknown_ones_are_named_errors() {
    let decoder = Decoder::new(InputFormat::Auto, HashMap::new());
    let value = framed(
        VALUE_ID,
        &envelope_schema(),
        envelope("c", None, Some(row(1, &[1]))),
    );
    let key = key(1);
    let mut missing = decoder.missing_schemas(Some(&key), Some(&value));
    missing.sort();
    assert_eq!(missing, vec![VALUE_ID, KEY_ID]);
    // JSON values need no schema; a JSON key beside an Avro value is not asked for.
    assert!(decoder.missing_schemas(Some(&key), Some(b"{}")).is_empty());
    assert!(decoder.missing_schemas(None, None).is_empty());
    assert_eq!(
        decoder.missing_schemas(Some(b"1"), Some(&value)),
        vec![VALUE_ID]
    );

    decoder.add_schema(VALUE_ID, None);
    decoder.add_schema(KEY_ID, Some(&key_schema()));
    assert!(
        decoder.missing_schemas(Some(&key), Some(&value)).is_empty(),
        "a not-found answer is kept for a while, not asked again per record"
    );
    let err = decoder.decode(&raw(Some(&key), Some(&value))).unwrap_err();
    assert_eq!(err, DecodeError::UnknownSchemaId(VALUE_ID));
    assert_eq!(err.reason(), "unknown_schema_id");
    assert!(err.to_string().contains("schema id 7"), "{err}");
}

#[test]
fn bad_avro_is_a_decode_error_never_a_panic() {
    let decoder = decoder(InputFormat::Avro);
    let value = framed(
        VALUE_ID,
        &envelope_schema(),
        envelope("c", None, Some(row(1, &[1]))),
    );
    let reason = |bytes: &[u8]| {
        let err = decoder
            .decode(&raw(Some(&key(1)), Some(bytes)))
            .unwrap_err();
        (err.reason(), err.to_string())
    };
    // Every cut of the body, the header included.
    for end in 0..value.len() {
        let (reason, message) = reason(&value[..end]);
        assert_eq!(
            reason,
            "invalid_avro",
            "cut at {end} of {}: {message}",
            value.len()
        );
    }
    let (_, message) = reason(&value[..value.len() / 2]);
    assert!(message.contains("schema id 7"), "{message}");
    let mut wrong = value.clone();
    wrong[0] = 1;
    let (why, message) = reason(&wrong);
    assert_eq!(why, "invalid_avro");
    assert!(message.contains("magic byte 0x01"), "{message}");
    // JSON under --input-format avro.
    assert_eq!(reason(br#"{"op":"c"}"#).0, "invalid_avro");
    let mut longer = value.clone();
    longer.push(0);
    assert!(reason(&longer).1.contains("1 bytes left"));
    // A registry schema that is not Avro.
    decoder.add_schema(11, Some(r#"{"type": "nonsense"}"#));
    let mut other = value.clone();
    other[1..5].copy_from_slice(&11u32.to_be_bytes());
    assert_eq!(reason(&other).0, "invalid_schema");
    // The value decodes, the key's bytes do not.
    let mut bad_key = key(1);
    bad_key.truncate(5);
    let err = decoder
        .decode(&raw(Some(&bad_key), Some(&value)))
        .unwrap_err();
    assert_eq!(err.reason(), "invalid_avro");
    // A tombstone is a tombstone.
    assert_eq!(
        decoder.decode(&raw(Some(&key(1)), None)),
        Ok(Decoded::Tombstone)
    );
}

/// The events of one fixture file (tests/fixtures/debezium), decoded.
fn fixture_events(decoder: &Decoder, file: &str) -> Vec<ChangeEvent> {
    use base64::Engine as _;
    let path = format!(
        "{}/tests/fixtures/debezium/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut events = Vec::new();
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        let kafka: Value = serde_json::from_str(line).unwrap();
        let bytes = |field: &str| -> Option<Vec<u8>> {
            if let Some(text) = kafka[field].as_str() {
                return Some(text.as_bytes().to_vec());
            }
            kafka[format!("{field}_base64")].as_str().map(|b64| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
            })
        };
        let (key, value) = (bytes("key"), bytes("value"));
        match decoder.decode(&raw(key.as_deref(), value.as_deref())) {
            Ok(Decoded::Event(event)) => events.push(*event),
            Ok(Decoded::Tombstone) => {}
            Err(e) => panic!("{file}: {e}: {line}"),
        }
    }
    events
}

/// Real Debezium (Postgres 15, Debezium 3.6.3) wrote the same SQL through Confluent's
/// AvroConverter (avro.jsonl, its registry's schemas in avro-schemas.json) and through the
/// JSON converter with schemas (schemas.jsonl): every row reaches clients as the same values.
#[test]
fn real_avro_records_decode_to_the_same_rows_as_real_json_ones() {
    let dir = format!("{}/tests/fixtures/debezium", env!("CARGO_MANIFEST_DIR"));
    let schemas: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/avro-schemas.json")).unwrap())
            .unwrap();
    let avro = Decoder::new(InputFormat::Avro, HashMap::new());
    for (id, text) in &schemas {
        avro.add_schema(id.parse().unwrap(), Some(text));
    }
    let json = Decoder::new(InputFormat::Debezium, HashMap::new());
    let mut from_avro = fixture_events(&avro, "avro.jsonl");
    let mut from_json = fixture_events(&json, "schemas.jsonl");
    // The position in the file is the only order the two runs share per key: the partitions
    // differ (the key bytes do), so compare per entity and id, in offset order.
    let order = |events: &mut Vec<ChangeEvent>| {
        events.sort_by_key(|e| {
            (
                e.entity_type.clone(),
                e.entity_id.clone(),
                e.position.offset,
            )
        });
    };
    order(&mut from_avro);
    order(&mut from_json);
    assert_eq!(from_avro.len(), from_json.len());
    assert!(from_avro.len() >= 20);
    // A `gen_random_uuid()` differs between the runs (the fixtures' README).
    let comparable = |row: &Option<Row>| {
        row.as_ref().map(|row| {
            let mut value: Value = serde_json::from_str(row.text()).unwrap();
            if let Some(object) = value.as_object_mut() {
                object.remove("ref");
            }
            value
        })
    };
    for (a, j) in from_avro.iter().zip(&from_json) {
        let what = format!("{} {:?} {:?}", a.entity_type, a.entity_id, a.operation);
        assert_eq!(
            (&a.entity_type, &a.entity_id, a.operation),
            (&j.entity_type, &j.entity_id, j.operation),
            "{what}"
        );
        assert_eq!(comparable(&a.data), comparable(&j.data), "{what}");
        assert_eq!(comparable(&a.before), comparable(&j.before), "{what}");
    }
}

#[test]
fn the_schema_cache_is_bounded_and_forgets_the_oldest_id_first() {
    let decoder = Decoder::new(InputFormat::Avro, HashMap::new());
    let limit = avro::CACHED_IDS as u32;
    for id in 0..=limit {
        decoder.add_schema(id, None);
    }
    assert_eq!(decoder.schemas_held(), avro::CACHED_IDS);
    let framed = |id: u32| {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes
    };
    assert_eq!(decoder.missing_schemas(None, Some(&framed(0))), vec![0]);
    assert!(decoder
        .missing_schemas(None, Some(&framed(limit)))
        .is_empty());
    // An id answered again keeps one place.
    decoder.add_schema(limit, Some(&key_schema()));
    assert_eq!(decoder.schemas_held(), avro::CACHED_IDS);
}
