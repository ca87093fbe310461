//! Kafka record -> normalized [`ChangeEvent`]. One submodule per envelope; this module picks
//! the envelope (per record under `auto`), applies the entity rename map, and names every way
//! a record can fail so that metrics count failures by reason and the consumer moves on.
//! Avro records (the Confluent wire format, [`avro`]) become the JSON converter's text first
//! and then take the same path.

pub mod avro;
pub mod connect;
mod debezium;
mod key;
mod simple;

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::{DecimalFormat, EntityNaming, InputFormat};
use crate::event::{is_valid_entity, is_valid_id, ChangeEvent, Row, SourcePosition};

/// The parts of a Kafka record that decoding needs.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub position: SourcePosition,
    pub timestamp_ms: Option<i64>,
}

#[derive(Debug, PartialEq)]
pub enum Decoded {
    Event(Box<ChangeEvent>),
    /// A record with a null value: Debezium's marker for log compaction after a delete.
    Tombstone,
}

/// Why a record could not be decoded. [`DecodeError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is not JSON: {0}")]
    InvalidJson(String),
    #[error("value is not a JSON object")]
    NotAnObject,
    #[error("value is neither a simple nor a Debezium envelope")]
    UnknownEnvelope,
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` {problem}")]
    InvalidField {
        field: &'static str,
        problem: &'static str,
    },
    #[error("entity `{0}` does not match [A-Za-z0-9_-]{{1,128}}")]
    InvalidEntity(String),
    #[error("entity id is empty or longer than 512 bytes, or the key is not usable as an id")]
    InvalidId,
    #[error("unknown operation `{0}`")]
    InvalidOperation(String),
    #[error("timestamp is neither RFC 3339 nor epoch milliseconds")]
    InvalidTimestamp,
    #[error("the Kafka Connect schema cannot be read: {0}")]
    InvalidSchema(String),
    #[error("a value does not match its schema: {0}")]
    InvalidValue(String),
    #[error("not Avro in the Confluent wire format: {0}")]
    InvalidAvro(String),
    #[error("schema id {0} is unknown: the schema registry does not hold it (or no --schema-registry-url is set)")]
    UnknownSchemaId(u32),
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::NotAnObject => "not_an_object",
            DecodeError::UnknownEnvelope => "unknown_envelope",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::InvalidEntity(_) => "invalid_entity",
            DecodeError::InvalidId => "invalid_id",
            DecodeError::InvalidOperation(_) => "invalid_operation",
            DecodeError::InvalidTimestamp => "invalid_timestamp",
            DecodeError::InvalidSchema(_) => "invalid_schema",
            DecodeError::InvalidValue(_) => "invalid_value",
            DecodeError::InvalidAvro(_) => "invalid_avro",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
        }
    }

    /// Every reason label, so metrics can show zeroes before the first failure.
    pub const REASONS: [&'static str; 13] = [
        "invalid_json",
        "not_an_object",
        "unknown_envelope",
        "missing_field",
        "invalid_field",
        "invalid_entity",
        "invalid_id",
        "invalid_operation",
        "invalid_timestamp",
        "invalid_schema",
        "invalid_value",
        "invalid_avro",
        "unknown_schema_id",
    ];
}

/// Decodes records of the configured envelope into normalized events.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: InputFormat,
    renames: HashMap<String, String>,
    /// The Kafka Connect schemas seen, each parsed once (shared by clones).
    schemas: Arc<connect::Schemas>,
    /// The schema registry's schemas fetched so far, by id (shared by clones).
    avro: Arc<avro::AvroSchemas>,
    decimals: DecimalFormat,
    /// Records with values of a logical type the gateway does not decode, by type name.
    unknown_types: Option<prometheus::IntCounterVec>,
    naming: EntityNaming,
    /// The source each entity name was first seen from, to detect two tables merging into
    /// one entity (shared by clones).
    origins: Arc<Mutex<HashMap<String, String>>>,
    /// Records whose source differs from the first one seen under their entity name.
    collisions: Option<prometheus::IntCounterVec>,
}

/// Entities whose origin is kept for collision detection; beyond, new ones are not checked.
const ORIGINS: usize = 10_000;

impl Decoder {
    pub fn new(format: InputFormat, renames: HashMap<String, String>) -> Self {
        Self {
            format,
            renames,
            schemas: Arc::default(),
            avro: Arc::default(),
            decimals: DecimalFormat::Number,
            unknown_types: None,
            naming: EntityNaming::Table,
            origins: Arc::default(),
            collisions: None,
        }
    }

    /// What Debezium entities are named after.
    pub fn with_entity_naming(mut self, naming: EntityNaming) -> Self {
        self.naming = naming;
        self
    }

    /// Counts records from a second source under an entity name, by entity.
    pub fn with_collisions(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.collisions = Some(counter);
        self
    }

    /// Decimals as JSON numbers (exact text) or strings.
    pub fn with_decimal_format(mut self, decimals: DecimalFormat) -> Self {
        self.decimals = decimals;
        self
    }

    /// Counts records carrying a logical type the decoder passes through, by type name.
    pub fn with_unknown_types(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.unknown_types = Some(counter);
        self
    }

    /// Whether a value is read as Avro: always under `avro`, when framed under `auto`.
    fn is_avro(&self, value: &[u8]) -> bool {
        match self.format {
            InputFormat::Avro => true,
            InputFormat::Auto => avro::schema_id(value).is_some(),
            InputFormat::Simple | InputFormat::Debezium => false,
        }
    }

    /// The registry schema ids a record needs that the decoder does not hold yet: the
    /// consumer fetches them ([`Decoder::add_schema`]) before [`Decoder::decode`]. A key is
    /// read as Avro only beside an Avro value.
    pub fn missing_schemas(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u32> {
        let Some(value) = value.filter(|v| self.is_avro(v)) else {
            return Vec::new();
        };
        let ids = [Some(value), key]
            .into_iter()
            .flatten()
            .filter_map(avro::schema_id);
        self.avro.missing(ids)
    }

    /// The registry's answer for schema `id`: its text, or `None` when it does not hold it.
    pub fn add_schema(&self, id: u32, text: Option<&str>) {
        self.avro.insert(id, text, &self.schemas);
    }

    /// Registry schemas held.
    pub fn schemas_held(&self) -> usize {
        self.avro.held()
    }

    pub fn decode(&self, record: &RawRecord<'_>) -> Result<Decoded, DecodeError> {
        let Some(bytes) = record.value else {
            return Ok(Decoded::Tombstone);
        };
        // The JSON text of an Avro value and key, which the envelope's fields borrow.
        let (avro_value, avro_key);
        let avro = self.is_avro(bytes);
        let (object, plan) = if avro {
            let (text, plan) = self.avro.decode(bytes)?;
            avro_value = text;
            (parse_payload(avro_value.as_bytes())?, Some(plan))
        } else if let Some((plan, payload)) = self.schemas.split(bytes) {
            (parse_payload(payload)?, Some(plan))
        } else {
            let object = parse_object(bytes)?;
            if is_schema_wrapper(&object) {
                let plan = self.schemas.plan(object["schema"].get())?;
                (
                    parse_payload(object["payload"].get().as_bytes())?,
                    Some(plan),
                )
            } else {
                (Some(object), None)
            }
        };
        let Some(object) = object else {
            return Ok(Decoded::Tombstone);
        };
        // A key in the schema wrapper: its payload, its schema read once like the value's.
        // An Avro key: its JSON text.
        let unwrapped;
        let key = match record.key {
            Some(key) if avro && avro::schema_id(key).is_some() => {
                avro_key = self.avro.decode(key)?.0;
                Some(avro_key.as_bytes())
            }
            Some(key) => self.key_payload(key),
            None => None,
        };
        let record = match key {
            Some(payload) => {
                unwrapped = RawRecord {
                    key: Some(payload),
                    ..*record
                };
                &unwrapped
            }
            None => record,
        };
        let mut fields = match self.format {
            InputFormat::Simple => simple::decode(object, record)?,
            InputFormat::Debezium => debezium::decode(object, record, self.naming)?,
            InputFormat::Auto | InputFormat::Avro if object.contains_key("op") => {
                debezium::decode(object, record, self.naming)?
            }
            InputFormat::Auto | InputFormat::Avro if object.contains_key("entity_type") => {
                simple::decode(object, record)?
            }
            InputFormat::Auto | InputFormat::Avro => return Err(DecodeError::UnknownEnvelope),
        };
        if let Some(plan) = plan {
            self.apply(&plan, &mut fields)?;
        }
        self.finish(fields, record)
    }

    /// The payload of a key written in the JSON converter's schema wrapper, found without
    /// parsing a schema seen recently; `None` for any other key (read as it is).
    fn key_payload<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        if !key.starts_with(b"{\"schema\":") {
            return None;
        }
        if let Some((_, payload)) = self.schemas.split(key) {
            return Some(payload);
        }
        let object = parse_object(key).ok()?;
        if !is_schema_wrapper(&object) {
            return None;
        }
        // Remembered for the next key of this schema; a schema that cannot be planned still
        // leaves the key readable as it is.
        let _ = self.schemas.plan(object["schema"].get());
        let payload = object["payload"].get();
        // The payload's text is a slice of `key`: hand that slice on.
        let start = payload.as_ptr() as usize - key.as_ptr() as usize;
        Some(&key[start..start + payload.len()])
    }

    /// Detects two sources (tables of one name in two schemas or databases) merging into one
    /// entity: counted per record, logged the first time.
    fn check_origin(&self, entity: &str, origin: &str) {
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        match origins.get(entity) {
            Some(first) if first == origin => {}
            Some(first) => {
                if let Some(counter) = &self.collisions {
                    let counter = counter.with_label_values(&[entity]);
                    if counter.get() == 0 {
                        tracing::warn!(
                            entity,
                            first = first.as_str(),
                            also = origin,
                            "two sources share one entity: their rows, snapshots and history \
                             merge. Set --entity-naming schema (or database), or rename one \
                             with --entity-map"
                        );
                    }
                    counter.inc();
                }
            }
            None if origins.len() < ORIGINS => {
                origins.insert(entity.to_owned(), origin.to_owned());
            }
            None => {}
        }
    }

    /// Turns the rows' values into what the database holds, as the schema says.
    fn apply(&self, plan: &connect::Plan, fields: &mut EventFields) -> Result<(), DecodeError> {
        for (row, row_plan) in [
            (&mut fields.data, &plan.after),
            (&mut fields.before, &plan.before),
        ] {
            let (Some(current), Some(row_plan)) = (row.as_ref(), row_plan) else {
                continue;
            };
            let changed = row_plan
                .apply(current.text(), self.decimals)
                .map_err(DecodeError::InvalidValue)?;
            if let Some(text) = changed {
                let raw = RawValue::from_string(text)
                    .map_err(|e| DecodeError::InvalidValue(e.to_string()))?;
                *row = Some(Row::from_raw(&raw));
            }
        }
        if let Some(counter) = &self.unknown_types {
            for name in &plan.unknown {
                counter.with_label_values(&[name]).inc();
            }
        }
        Ok(())
    }

    /// Applies the rename map and the rules every envelope shares.
    fn finish(&self, fields: EventFields, record: &RawRecord<'_>) -> Result<Decoded, DecodeError> {
        let entity_type = self
            .renames
            .get(&fields.entity)
            .cloned()
            .unwrap_or(fields.entity);
        if !is_valid_entity(&entity_type) {
            return Err(DecodeError::InvalidEntity(entity_type));
        }
        if let Some(origin) = &fields.origin {
            self.check_origin(&entity_type, origin);
        }
        if let Some(id) = &fields.entity_id {
            if !is_valid_id(id) {
                return Err(DecodeError::InvalidId);
            }
        }
        let timestamp = match fields.timestamp {
            Some(timestamp) => timestamp,
            None => record
                .timestamp_ms
                .and_then(crate::clock::rfc3339_from_millis)
                .unwrap_or_else(crate::clock::now_rfc3339),
        };
        Ok(Decoded::Event(Box::new(ChangeEvent {
            entity_type,
            entity_id: fields.entity_id,
            operation: fields.operation,
            data: fields.data,
            before: fields.before,
            timestamp,
            position: record.position,
            kafka_timestamp_ms: record.timestamp_ms,
            source_lsn: fields.source_lsn,
        })))
    }
}

/// What an envelope decoder extracts before the shared rules apply.
struct EventFields {
    entity: String,
    /// Where the source says the row lives (`db.schema.table`), to tell apart sources that
    /// end up under one entity name.
    origin: Option<String>,
    /// The change's place in the database's log, when the source gives one.
    source_lsn: Option<i64>,
    entity_id: Option<String>,
    operation: crate::event::Operation,
    data: Option<Row>,
    before: Option<Row>,
    timestamp: Option<String>,
}

/// A JSON object's fields with each value left as JSON text: an envelope's fields are read
/// one by one, and its rows are never built into a tree unless a filter asks (see [`Row`]).
type Object<'a> = BTreeMap<Key<'a>, &'a RawValue>;

/// A field name, borrowed from the record unless it holds escapes.
#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The wrapper's payload: an object, or `None` for a null (a tombstone).
fn parse_payload(bytes: &[u8]) -> Result<Option<Object<'_>>, DecodeError> {
    match bytes.trim_ascii() {
        b"null" => Ok(None),
        text if text.starts_with(b"{") => parse_object(text).map(Some),
        [] => Err(DecodeError::InvalidJson("empty payload".to_owned())),
        _ => Err(DecodeError::NotAnObject),
    }
}

fn parse_object(bytes: &[u8]) -> Result<Object<'_>, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        // Well-formed JSON of another type than an object.
        Category::Data => DecodeError::NotAnObject,
        _ => DecodeError::InvalidJson(e.to_string()),
    })
}

/// A field's value as a JSON tree: for the envelope's small fields, not for rows.
fn field(object: &Object<'_>, name: &str) -> Result<Option<Value>, DecodeError> {
    object
        .get(name)
        .map(|raw| serde_json::from_str(raw.get()))
        .transpose()
        .map_err(|e| DecodeError::InvalidJson(e.to_string()))
}

/// Kafka Connect's JSON converter with schemas on wraps the value as `{"schema":..,"payload":..}`.
fn is_schema_wrapper(object: &Object<'_>) -> bool {
    object.len() == 2 && object.contains_key("schema") && object.contains_key("payload")
}

/// A row image: an object, or absent/null.
fn take_row(object: &Object<'_>, field: &'static str) -> Result<Option<Row>, DecodeError> {
    match object.get(field).map(|raw| (raw, raw.get())) {
        None | Some((_, "null")) => Ok(None),
        Some((raw, text)) if text.starts_with('{') => Ok(Some(Row::from_raw(raw))),
        Some(_) => Err(DecodeError::InvalidField {
            field,
            problem: "must be an object or null",
        }),
    }
}

/// A timestamp given as RFC 3339 text or epoch milliseconds.
fn timestamp_of(value: &Value) -> Result<String, DecodeError> {
    match value {
        Value::String(text) if crate::clock::is_rfc3339(text) => Ok(text.clone()),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .and_then(crate::clock::rfc3339_from_millis)
            .ok_or(DecodeError::InvalidTimestamp),
        _ => Err(DecodeError::InvalidTimestamp),
    }
}

/// An id given as a string or a number.
fn id_of(value: &Value) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(DecodeError::InvalidId),
    }
}

#[cfg(test)]
mod avro_tests;
#[cfg(test)]
mod tests;
