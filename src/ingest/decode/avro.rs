//! Avro in the Confluent wire format: a magic byte 0, the schema's registry id (4 bytes, big
//! endian), then the Avro binary body. The decoder never fetches: the consumer asks which ids
//! a record needs ([`AvroSchemas::missing`]), fetches them from the schema registry, hands
//! them in ([`AvroSchemas::insert`]) and decodes then, so decoding stays synchronous and a
//! registry that is down makes the consumer wait instead of losing records.
//!
//! An Avro value becomes the JSON text Kafka Connect's JSON converter would have written for
//! it (a decimal as base64 of its unscaled bytes, a date as its day count), and the Avro
//! schema becomes the Connect schema it was made from: Confluent's AvroConverter keeps
//! Connect's type names in the Avro schema (`connect.name`, `connect.parameters`), and
//! Avro's own logical types map to Connect's. From there the JSON decoder's plan
//! ([`super::connect`]) turns every value into what the database holds, so an Avro row and a
//! JSON row of the same change reach clients as the same values.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use apache_avro::types::Value as AvroValue;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::connect::{push_key, Plan, Schemas};
use super::DecodeError;

/// The Confluent wire format's first byte.
pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
const HEADER: usize = 5;
/// Schema ids held at most; the oldest is forgotten first (and fetched again if it returns).
pub const CACHED_IDS: usize = 10_000;
/// How long an id the registry did not know is taken as unknown before it is asked again.
const UNKNOWN_FOR: Duration = Duration::from_secs(30);

/// The schema id of a record in the Confluent wire format, `None` for anything else.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// A registry schema, read once.
struct Compiled {
    /// The schema with its named types resolved once, reading a record from its magic byte
    /// on (`apache_avro::from_avro_datum` resolves them again for every record).
    reader: apache_avro::GenericSingleObjectReader,
    /// How the rows of the value this schema writes change (empty for a key's schema).
    plan: Arc<Plan>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("plan", &self.plan)
            .finish()
    }
}

/// The Confluent wire format's header as apache-avro's single-object reader checks it.
struct ConfluentHeader(u32);

impl apache_avro::headers::HeaderBuilder for ConfluentHeader {
    fn build_header(&self) -> Vec<u8> {
        let mut header = vec![MAGIC];
        header.extend_from_slice(&self.0.to_be_bytes());
        header
    }
}

#[derive(Debug)]
enum Entry {
    Known(Arc<Compiled>),
    /// The registry answered that it does not hold the id.
    Unknown(Instant),
    /// The registry's schema cannot be read: every record written with it is an error.
    Invalid(String),
}

/// The schemas fetched from the registry, by id, shared by the clones of a decoder.
#[derive(Debug, Default)]
pub struct AvroSchemas {
    state: Mutex<Ids>,
}

#[derive(Debug, Default)]
struct Ids {
    entries: HashMap<u32, Entry>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<u32>,
}

impl AvroSchemas {
    fn lock(&self) -> MutexGuard<'_, Ids> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids among `ids` that must be fetched before a record can be decoded.
    pub fn missing(&self, ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let state = self.lock();
        let mut missing: Vec<u32> = Vec::new();
        for id in ids {
            let fetch = match state.entries.get(&id) {
                None => true,
                Some(Entry::Unknown(at)) => at.elapsed() >= UNKNOWN_FOR,
                Some(_) => false,
            };
            if fetch && !missing.contains(&id) {
                missing.push(id);
            }
        }
        missing
    }

    /// The registry's schema text for `id`, or `None` when the registry does not hold it.
    pub fn insert(&self, id: u32, text: Option<&str>, connect: &Schemas) {
        let entry = match text {
            None => Entry::Unknown(Instant::now()),
            Some(text) => match compile(id, text, connect) {
                Ok(compiled) => Entry::Known(Arc::new(compiled)),
                Err(problem) => Entry::Invalid(problem),
            },
        };
        let mut state = self.lock();
        if state.entries.insert(id, entry).is_none() {
            state.order.push_back(id);
            while state.order.len() > CACHED_IDS {
                if let Some(oldest) = state.order.pop_front() {
                    state.entries.remove(&oldest);
                }
            }
        }
    }

    /// The ids held, for the metric.
    pub fn held(&self) -> usize {
        self.lock().entries.len()
    }

    fn get(&self, id: u32) -> Result<Arc<Compiled>, DecodeError> {
        match self.lock().entries.get(&id) {
            Some(Entry::Known(compiled)) => Ok(Arc::clone(compiled)),
            Some(Entry::Invalid(problem)) => Err(DecodeError::InvalidSchema(format!(
                "registry schema id {id}: {problem}"
            ))),
            Some(Entry::Unknown(_)) | None => Err(DecodeError::UnknownSchemaId(id)),
        }
    }

    /// A framed record's body as the JSON converter's text, and the plan of its schema.
    pub fn decode(&self, bytes: &[u8]) -> Result<(String, Arc<Plan>), DecodeError> {
        let id = match bytes {
            [MAGIC, ..] if bytes.len() >= HEADER => {
                u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
            }
            [MAGIC, ..] => {
                return Err(DecodeError::InvalidAvro(format!(
                    "{} bytes: shorter than the magic byte and schema id",
                    bytes.len()
                )))
            }
            [other, ..] => {
                return Err(DecodeError::InvalidAvro(format!(
                    "magic byte {other:#04x}, not 0: not the Confluent wire format"
                )))
            }
            [] => return Err(DecodeError::InvalidAvro("empty".to_owned())),
        };
        let compiled = self.get(id)?;
        // apache-avro reads a string, boolean or union cut off by the end of its input as
        // null. A guard byte after the body turns every such cut into a read of the guard,
        // which a whole value never makes (an Avro value's length follows from its bytes).
        let mut reader = std::io::Read::chain(bytes, &[0u8][..]);
        let value = compiled
            .reader
            .read_value(&mut reader)
            .map_err(|e| DecodeError::InvalidAvro(format!("schema id {id}: {e}")))?;
        match reader.into_inner() {
            ([], [_guard]) => {}
            ([], _) => {
                return Err(DecodeError::InvalidAvro(format!(
                    "schema id {id}: the value is cut short"
                )))
            }
            (rest, _) => {
                return Err(DecodeError::InvalidAvro(format!(
                    "schema id {id}: {} bytes left after the value",
                    rest.len()
                )))
            }
        }
        let mut out = String::with_capacity(bytes.len() * 2);
        write_json(&mut out, &value)
            .map_err(|e| DecodeError::InvalidAvro(format!("schema id {id}: {e}")))?;
        Ok((out, Arc::clone(&compiled.plan)))
    }
}

/// Reads a registry schema: the Avro schema for decoding, the Connect schema for the plan.
fn compile(id: u32, text: &str, connect: &Schemas) -> Result<Compiled, String> {
    let schema = apache_avro::Schema::parse_str(text).map_err(|e| e.to_string())?;
    let reader = apache_avro::GenericSingleObjectReader::new_with_header_builder(
        schema,
        ConfluentHeader(id),
    )
    .map_err(|e| e.to_string())?;
    let avro: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let translated = connect_schema(&avro, None, &mut HashMap::new())?;
    let plan = connect
        .plan(&translated.to_string())
        .map_err(|e| e.to_string())?;
    Ok(Compiled { reader, plan })
}

/// The Connect schema (as the JSON converter writes it) an Avro schema stands for.
/// `named` holds the named types defined so far, by full name, for later references.
fn connect_schema(
    avro: &Value,
    namespace: Option<&str>,
    named: &mut HashMap<String, Value>,
) -> Result<Value, String> {
    match avro {
        Value::String(name) => match primitive(name) {
            Some(kind) => Ok(json!({ "type": kind })),
            None => {
                let full = full_name(name, namespace);
                named
                    .get(&full)
                    .or_else(|| named.get(name.as_str()))
                    .cloned()
                    .ok_or_else(|| format!("type `{name}` is not defined before its use"))
            }
        },
        Value::Array(branches) => {
            let mut types: Vec<&Value> = branches
                .iter()
                .filter(|b| b.as_str() != Some("null"))
                .collect();
            let mut schema = match (types.pop(), types.is_empty()) {
                (Some(only), true) => connect_schema(only, namespace, named)?,
                // Connect writes optional types only; other unions pass through, their
                // branches' values as written.
                (Some(_), false) | (None, _) => {
                    for branch in branches {
                        connect_schema(branch, namespace, named)?;
                    }
                    json!({ "type": "string" })
                }
            };
            if branches.len() > 1 {
                schema["optional"] = Value::Bool(true);
            }
            Ok(schema)
        }
        Value::Object(object) => {
            let kind = object.get("type").ok_or("a schema has no `type`")?;
            let kind = match kind {
                Value::String(kind) => kind.as_str(),
                // `{"type": {...}}`: the type is the inner schema.
                nested => return connect_schema(nested, namespace, named),
            };
            let connect_name = object.get("connect.name").and_then(Value::as_str);
            let mut schema = match kind {
                "record" | "error" => {
                    let full = defined_name(object, namespace)?;
                    let inner = full.rsplit_once('.').map(|(ns, _)| ns.to_owned());
                    let fields = object
                        .get("fields")
                        .and_then(Value::as_array)
                        .ok_or("a record has no `fields`")?;
                    let mut translated = Vec::with_capacity(fields.len());
                    for field in fields {
                        let name = field
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or("a record field has no name")?;
                        let kind = field.get("type").ok_or("a record field has no type")?;
                        let mut schema = connect_schema(kind, inner.as_deref(), named)?;
                        schema["field"] = Value::String(name.to_owned());
                        translated.push(schema);
                    }
                    let schema = json!({
                        "type": "struct",
                        "name": connect_name.unwrap_or(&full),
                        "fields": translated,
                    });
                    named.insert(full, schema.clone());
                    return Ok(schema);
                }
                "enum" => {
                    let full = defined_name(object, namespace)?;
                    named.insert(full, json!({ "type": "string" }));
                    json!({ "type": "string" })
                }
                "fixed" => {
                    let full = defined_name(object, namespace)?;
                    let mut schema = json!({ "type": "bytes" });
                    logical(object, &mut schema);
                    named.insert(full, schema.clone());
                    schema
                }
                "array" => {
                    let items = object.get("items").ok_or("an array has no `items`")?;
                    json!({ "type": "array", "items": connect_schema(items, namespace, named)? })
                }
                "map" => {
                    let values = object.get("values").ok_or("a map has no `values`")?;
                    connect_schema(values, namespace, named)?;
                    json!({ "type": "map" })
                }
                primitive_name => {
                    let kind = primitive(primitive_name)
                        .ok_or_else(|| format!("unknown type `{primitive_name}`"))?;
                    let mut schema = json!({ "type": kind });
                    // Connect's int8 and int16 are Avro ints.
                    if let Some(narrow) = object.get("connect.type").and_then(Value::as_str) {
                        schema["type"] = Value::String(narrow.to_owned());
                    }
                    logical(object, &mut schema);
                    schema
                }
            };
            if let Some(name) = connect_name {
                schema["name"] = Value::String(name.to_owned());
                if let Some(parameters) = object.get("connect.parameters") {
                    schema["parameters"] = parameters.clone();
                }
            }
            Ok(schema)
        }
        other => Err(format!("`{other}` is not a schema")),
    }
}

/// Avro's logical types as the Connect (or Debezium) types of the same meaning; the instants
/// Connect has no name for keep Avro's `logicalType` ([`super::connect`] reads it).
fn logical(object: &Map<String, Value>, schema: &mut Value) {
    let Some(logical) = object.get("logicalType").and_then(Value::as_str) else {
        return;
    };
    let name = match logical {
        "decimal" => {
            let scale = object.get("scale").and_then(Value::as_i64).unwrap_or(0);
            schema["parameters"] = json!({ "scale": scale.to_string() });
            "org.apache.kafka.connect.data.Decimal"
        }
        "date" => "org.apache.kafka.connect.data.Date",
        "time-millis" => "org.apache.kafka.connect.data.Time",
        "time-micros" => "io.debezium.time.MicroTime",
        "timestamp-millis" => "org.apache.kafka.connect.data.Timestamp",
        "local-timestamp-millis" => "io.debezium.time.Timestamp",
        "local-timestamp-micros" => "io.debezium.time.MicroTimestamp",
        "local-timestamp-nanos" => "io.debezium.time.NanoTimestamp",
        other => {
            schema["logicalType"] = Value::String(other.to_owned());
            return;
        }
    };
    schema["name"] = Value::String(name.to_owned());
}

fn primitive(name: &str) -> Option<&'static str> {
    Some(match name {
        "null" => "string",
        "boolean" => "boolean",
        "int" => "int32",
        "long" => "int64",
        "float" => "float32",
        "double" => "float64",
        "bytes" => "bytes",
        "string" => "string",
        _ => return None,
    })
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

/// The full name a record, enum or fixed defines.
fn defined_name(object: &Map<String, Value>, namespace: Option<&str>) -> Result<String, String> {
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a named type has no name")?;
    let namespace = object
        .get("namespace")
        .and_then(Value::as_str)
        .or(namespace);
    Ok(full_name(name, namespace))
}

/// NaN and the infinities as the JSON converter writes them: `"NaN"`, `"Infinity"`,
/// `"-Infinity"`.
fn push_non_finite(out: &mut String, value: f64) {
    out.push_str(if value.is_nan() {
        "\"NaN\""
    } else if value > 0.0 {
        "\"Infinity\""
    } else {
        "\"-Infinity\""
    });
}

/// An Avro value as the JSON converter writes the Connect value it holds.
fn write_json(out: &mut String, value: &AvroValue) -> Result<(), String> {
    let base64 = |out: &mut String, bytes: &[u8]| {
        out.push('"');
        base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
        out.push('"');
    };
    match value {
        AvroValue::Null => out.push_str("null"),
        AvroValue::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        AvroValue::Int(n) | AvroValue::Date(n) | AvroValue::TimeMillis(n) => {
            let _ = write!(out, "{n}");
        }
        AvroValue::Long(n)
        | AvroValue::TimeMicros(n)
        | AvroValue::TimestampMillis(n)
        | AvroValue::TimestampMicros(n)
        | AvroValue::TimestampNanos(n)
        | AvroValue::LocalTimestampMillis(n)
        | AvroValue::LocalTimestampMicros(n)
        | AvroValue::LocalTimestampNanos(n) => {
            let _ = write!(out, "{n}");
        }
        AvroValue::Float(f) if f.is_finite() => {
            out.push_str(&serde_json::to_string(f).unwrap_or_default())
        }
        AvroValue::Double(f) if f.is_finite() => {
            out.push_str(&serde_json::to_string(f).unwrap_or_default())
        }
        // JSON has no such numbers: the strings Jackson writes for Kafka Connect.
        AvroValue::Float(f) => push_non_finite(out, f64::from(*f)),
        AvroValue::Double(f) => push_non_finite(out, *f),
        AvroValue::Bytes(bytes) | AvroValue::Fixed(_, bytes) => base64(out, bytes),
        AvroValue::Decimal(decimal) => {
            let bytes = Vec::<u8>::try_from(decimal).map_err(|e| e.to_string())?;
            base64(out, &bytes);
        }
        AvroValue::BigDecimal(decimal) => {
            let _ = write!(out, "{decimal}");
        }
        AvroValue::Duration(duration) => base64(out, &<[u8; 12]>::from(*duration)),
        AvroValue::String(text) | AvroValue::Enum(_, text) => {
            out.push_str(&serde_json::to_string(text).map_err(|e| e.to_string())?)
        }
        AvroValue::Uuid(uuid) => {
            let _ = write!(out, "\"{uuid}\"");
        }
        AvroValue::Union(_, inner) => write_json(out, inner)?,
        AvroValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item)?;
            }
            out.push(']');
        }
        AvroValue::Map(entries) => {
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_key(out, key);
                out.push(':');
                write_json(out, &entries[key])?;
            }
            out.push('}');
        }
        AvroValue::Record(fields) => {
            out.push('{');
            for (i, (name, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_key(out, name);
                out.push(':');
                write_json(out, value)?;
            }
            out.push('}');
        }
    }
    Ok(())
}
