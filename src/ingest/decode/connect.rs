//! Kafka Connect schemas (the JSON converter with `schemas.enable=true`) and what they say
//! about values. The converter writes what Connect's types hold, not what the database does:
//! a `numeric(12,2)` is base64 of its unscaled bytes (`1234.56` -> `"AeJA"`), a `date` a day
//! count, a `jsonb` the JSON as text. The schema beside the payload names the logical type of
//! every field, so the values can be turned back into what the database holds.
//!
//! Each distinct schema is parsed once into a [`Plan`] that names only the fields whose text
//! must change; a row whose plan is empty keeps its text byte for byte. Debezium writes the
//! same schema text with every record of a table, so the last few schemas are kept with their
//! text, and a record that starts with one of them skips parsing it again
//! ([`Schemas::split`]). docs/values.md lists every logical type and what it becomes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::DecodeError;
use crate::config::DecimalFormat;

use crate::event::{UNAVAILABLE, UNAVAILABLE_JSON};

/// [`UNAVAILABLE`] as a `bytes` field carries it: base64 of the placeholder's UTF-8.
const UNAVAILABLE_BASE64: &str = "\"X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==\"";

/// Schemas kept with their text for the fast path, most recently used first.
const RECENT: usize = 8;
/// Distinct schemas kept at most; the cache starts over when it is full.
const KNOWN: usize = 1024;
/// Distinct unknown logical type names reported by name; more are reported as `other`.
const UNKNOWN_NAMES: usize = 32;

/// How a record's envelope rows change: for `after` (or the simple envelope's `data`) and
/// `before`.
#[derive(Debug, Default)]
pub struct Plan {
    pub after: Option<RowPlan>,
    pub before: Option<RowPlan>,
    /// Logical type names the gateway does not decode, passed through as written.
    pub unknown: Vec<Box<str>>,
}

/// The fields of one struct that change, by their position in the schema (the converter
/// writes a struct's fields in schema order) with their name to check it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RowPlan {
    slots: Vec<(Box<str>, Option<Conv>)>,
}

/// What a field's text becomes.
#[derive(Debug, Clone, PartialEq)]
enum Conv {
    /// `org.apache.kafka.connect.data.Decimal`: base64 of the unscaled two's complement bytes.
    Decimal {
        scale: i32,
    },
    /// `io.debezium.data.VariableScaleDecimal`: `{"scale": n, "value": <base64>}`.
    VariableDecimal,
    /// Days since 1970-01-01 -> `YYYY-MM-DD`.
    Date,
    /// Time of day in the unit -> `HH:MM:SS[.fraction]`.
    Time(Unit),
    /// Since the epoch in the unit -> `YYYY-MM-DDTHH:MM:SS[.fraction]`, with `Z` when the
    /// type is an instant (Connect's `Timestamp`), without when it is a local date-time
    /// (Debezium's, for `timestamp without time zone`).
    Timestamp(Unit, bool),
    /// `io.debezium.data.Json`: the text is the value.
    Json,
    /// Base64 kept as it is; only Debezium's placeholder is recognised.
    Bytes,
    /// `io.debezium.data.EnumSet`: `"a,b"` -> `["a","b"]`.
    EnumSet,
    /// `io.debezium.data.geometry.Point`: `{"x","y","wkb","srid"}` -> `{"x","y"[,"srid"]}`.
    Point,
    Array(Box<Conv>),
    Struct(RowPlan),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Milli,
    Micro,
    Nano,
}

impl Unit {
    fn per_second(self) -> i64 {
        match self {
            Unit::Milli => 1_000,
            Unit::Micro => 1_000_000,
            Unit::Nano => 1_000_000_000,
        }
    }
}

/// Logical types whose converter text is already what the database holds.
const AS_WRITTEN: [&str; 12] = [
    "io.debezium.time.ZonedTimestamp",
    "io.debezium.time.ZonedTime",
    "io.debezium.time.Year",
    "io.debezium.time.MicroDuration",
    "io.debezium.time.Interval",
    "io.debezium.data.Uuid",
    "io.debezium.data.Enum",
    "io.debezium.data.Xml",
    "io.debezium.data.Ltree",
    "io.debezium.data.geometry.Geometry",
    "io.debezium.data.geometry.Geography",
    "io.debezium.data.Bits",
];

/// The schema cache, shared by the clones of a decoder.
#[derive(Debug, Default)]
pub struct Schemas {
    state: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    recent: Vec<(Arc<str>, Arc<Plan>)>,
    known: HashMap<Arc<str>, Arc<Plan>>,
    unknown_names: Vec<Box<str>>,
}

impl Schemas {
    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A record written as `{"schema":S,"payload":P}` with `S` byte for byte a schema seen
    /// recently: its plan and `P`'s bytes, without reading `S` again (it was checked when
    /// first seen). `None` for anything else: the caller parses the record.
    pub fn split<'a>(&self, bytes: &'a [u8]) -> Option<(Arc<Plan>, &'a [u8])> {
        const HEAD: &[u8] = b"{\"schema\":";
        const MIDDLE: &[u8] = b",\"payload\":";
        let rest = bytes.strip_prefix(HEAD)?;
        let mut cache = self.lock();
        let found = cache.recent.iter().position(|(text, _)| {
            rest.len() > text.len() + MIDDLE.len()
                && rest.starts_with(text.as_bytes())
                && rest[text.len()..].starts_with(MIDDLE)
        })?;
        let (text, plan) = &cache.recent[found];
        let payload = &rest[text.len() + MIDDLE.len()..];
        let payload = payload.strip_suffix(b"}")?;
        let plan = Arc::clone(plan);
        if found > 0 {
            let entry = cache.recent.remove(found);
            cache.recent.insert(0, entry);
        }
        Some((plan, payload))
    }

    /// The plan of a schema given as JSON text, parsed once per distinct text.
    pub fn plan(&self, text: &str) -> Result<Arc<Plan>, DecodeError> {
        // The lock is let go before `remember` takes it again: held in an `if let`'s
        // scrutinee it would live to the end of the block, and the second lock would wait
        // on it for ever.
        let known = self.lock().known.get(text).cloned();
        if let Some(plan) = known {
            self.remember(text, &plan);
            return Ok(plan);
        }
        let schema: Value = serde_json::from_str(text)
            .map_err(|e| DecodeError::InvalidSchema(format!("not JSON: {e}")))?;
        let mut unknown = Vec::new();
        let mut plan = envelope_plan(&schema, &mut unknown)?;
        plan.unknown = self.label_names(unknown);
        let plan = Arc::new(plan);
        {
            let mut cache = self.lock();
            if cache.known.len() >= KNOWN {
                cache.known.clear();
            }
            cache.known.insert(text.into(), Arc::clone(&plan));
        }
        self.remember(text, &plan);
        Ok(plan)
    }

    fn remember(&self, text: &str, plan: &Arc<Plan>) {
        let mut cache = self.lock();
        if let Some(found) = cache.recent.iter().position(|(t, _)| &**t == text) {
            let entry = cache.recent.remove(found);
            cache.recent.insert(0, entry);
            return;
        }
        cache.recent.insert(0, (text.into(), Arc::clone(plan)));
        cache.recent.truncate(RECENT);
    }

    /// Unknown type names as metric labels: the first few by name, the rest as `other`.
    fn label_names(&self, names: Vec<String>) -> Vec<Box<str>> {
        let mut cache = self.lock();
        let mut labels: Vec<Box<str>> = Vec::new();
        for name in names {
            let label: Box<str> = if cache.unknown_names.iter().any(|n| **n == *name) {
                name.into()
            } else if cache.unknown_names.len() < UNKNOWN_NAMES {
                cache.unknown_names.push(name.as_str().into());
                name.into()
            } else {
                "other".into()
            };
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        labels
    }
}

/// The plan of an envelope's schema: a struct whose `after`/`data` and `before` fields are the
/// row structs.
fn envelope_plan(schema: &Value, unknown: &mut Vec<String>) -> Result<Plan, DecodeError> {
    let mut plan = Plan::default();
    let Some(fields) = schema.get("fields") else {
        // A schema that is not a struct (a plain string value, say): nothing to decode.
        return Ok(plan);
    };
    let fields = fields
        .as_array()
        .ok_or_else(|| invalid("`fields` is not an array"))?;
    for field in fields {
        let name = field
            .get("field")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a field has no name"))?;
        let slot = match name {
            "after" | "data" => &mut plan.after,
            "before" => &mut plan.before,
            _ => continue,
        };
        *slot = match conv_of(field, unknown)? {
            Some(Conv::Struct(row)) => Some(row),
            _ => None,
        };
    }
    Ok(plan)
}

fn invalid(problem: &str) -> DecodeError {
    DecodeError::InvalidSchema(problem.to_owned())
}

/// How one field's value changes, from its schema; `None` when it is kept as written.
fn conv_of(schema: &Value, unknown: &mut Vec<String>) -> Result<Option<Conv>, DecodeError> {
    let kind = schema
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("a field has no type"))?;
    let name = schema.get("name").and_then(Value::as_str);
    let expect = |wanted: &[&str], conv: Conv| {
        if wanted.contains(&kind) {
            Ok(Some(conv))
        } else {
            Err(DecodeError::InvalidSchema(format!(
                "logical type {} has type {kind}",
                name.unwrap_or_default()
            )))
        }
    };
    match name {
        Some("org.apache.kafka.connect.data.Decimal") => {
            let scale = schema
                .pointer("/parameters/scale")
                .and_then(|s| match s {
                    Value::String(s) => s.parse::<i32>().ok(),
                    Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
                    _ => None,
                })
                .ok_or_else(|| invalid("a Decimal has no scale parameter"))?;
            return expect(&["bytes"], Conv::Decimal { scale });
        }
        Some("io.debezium.data.VariableScaleDecimal") => {
            return expect(&["struct"], Conv::VariableDecimal)
        }
        Some("org.apache.kafka.connect.data.Date" | "io.debezium.time.Date") => {
            return expect(&["int32", "int64"], Conv::Date)
        }
        Some("org.apache.kafka.connect.data.Time" | "io.debezium.time.Time") => {
            return expect(&["int32", "int64"], Conv::Time(Unit::Milli))
        }
        Some("io.debezium.time.MicroTime") => {
            return expect(&["int64"], Conv::Time(Unit::Micro));
        }
        Some("io.debezium.time.NanoTime") => return expect(&["int64"], Conv::Time(Unit::Nano)),
        Some("org.apache.kafka.connect.data.Timestamp") => {
            return expect(&["int64"], Conv::Timestamp(Unit::Milli, true))
        }
        Some("io.debezium.time.Timestamp") => {
            return expect(&["int64"], Conv::Timestamp(Unit::Milli, false))
        }
        Some("io.debezium.time.MicroTimestamp") => {
            return expect(&["int64"], Conv::Timestamp(Unit::Micro, false))
        }
        Some("io.debezium.time.NanoTimestamp") => {
            return expect(&["int64"], Conv::Timestamp(Unit::Nano, false))
        }
        Some("io.debezium.data.Json") => return expect(&["string"], Conv::Json),
        Some("io.debezium.data.EnumSet") => return expect(&["string"], Conv::EnumSet),
        Some("io.debezium.data.geometry.Point") => return expect(&["struct"], Conv::Point),
        Some(known) if AS_WRITTEN.contains(&known) => {
            return Ok((kind == "bytes").then_some(Conv::Bytes));
        }
        // A struct's own name (`<prefix>.<schema>.<table>.Value`) is not a logical type.
        Some(_) if kind == "struct" => {}
        Some(other) => {
            if !unknown.iter().any(|n| n == other) {
                unknown.push(other.to_owned());
            }
            return Ok(None);
        }
        // Avro's instants in µs and ns, which Connect has no name for (avro.rs).
        None => match schema.get("logicalType").and_then(Value::as_str) {
            Some("timestamp-micros") => {
                return expect(&["int64"], Conv::Timestamp(Unit::Micro, true))
            }
            Some("timestamp-nanos") => {
                return expect(&["int64"], Conv::Timestamp(Unit::Nano, true))
            }
            _ => {}
        },
    }
    match kind {
        "bytes" => Ok(Some(Conv::Bytes)),
        "array" => {
            let items = schema
                .get("items")
                .ok_or_else(|| invalid("an array has no items schema"))?;
            Ok(conv_of(items, unknown)?.map(|conv| Conv::Array(Box::new(conv))))
        }
        "struct" => {
            let fields = schema
                .get("fields")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("a struct has no fields"))?;
            let mut slots = Vec::with_capacity(fields.len());
            for field in fields {
                let name = field
                    .get("field")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("a field has no name"))?;
                slots.push((name.into(), conv_of(field, unknown)?));
            }
            if slots.iter().all(|(_, conv)| conv.is_none()) {
                return Ok(None);
            }
            Ok(Some(Conv::Struct(RowPlan { slots })))
        }
        // The JSON converter's names (`float`, `double`) and Connect's (`float32`, `float64`).
        "int8" | "int16" | "int32" | "int64" | "float" | "double" | "float32" | "float64"
        | "boolean" | "string" | "map" => Ok(None),
        other => Err(DecodeError::InvalidSchema(format!("unknown type {other}"))),
    }
}

impl RowPlan {
    /// The row's text with its planned fields converted; `None` when nothing changed.
    pub fn apply(&self, text: &str, decimals: DecimalFormat) -> Result<Option<String>, String> {
        let Fields(fields) =
            serde_json::from_str(text).map_err(|e| format!("row is not an object: {e}"))?;
        let mut out = String::with_capacity(text.len() + 64);
        let mut changed = false;
        out.push('{');
        for (i, (name, raw)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_key(&mut out, name);
            out.push(':');
            let conv = match self.slots.get(i) {
                Some((planned, conv)) if **planned == **name => conv.as_ref(),
                _ => self
                    .slots
                    .iter()
                    .find(|(planned, _)| **planned == **name)
                    .and_then(|(_, conv)| conv.as_ref()),
            };
            match conv {
                Some(conv) => match convert(conv, raw, decimals) {
                    Ok(Some(value)) => {
                        out.push_str(&value);
                        changed = true;
                    }
                    Ok(None) => out.push_str(raw.get()),
                    Err(problem) => return Err(format!("field `{name}`: {problem}")),
                },
                None => out.push_str(raw.get()),
            }
        }
        out.push('}');
        Ok(changed.then_some(out))
    }
}

pub(super) fn push_key(out: &mut String, name: &str) {
    if name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(name);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(name).expect("a string serializes"));
    }
}

/// A JSON object's fields in their order, values as text.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    fields.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// A JSON array's elements as text.
struct Elements<'a>(Vec<&'a RawValue>);

impl<'de> Deserialize<'de> for Elements<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Array;
        impl<'de> Visitor<'de> for Array {
            type Value = Elements<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(Elements(items))
            }
        }
        deserializer.deserialize_seq(Array)
    }
}

/// One value's new text; `None` when it stays as written (null, or already decoded).
fn convert(conv: &Conv, raw: &RawValue, decimals: DecimalFormat) -> Result<Option<String>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    match conv {
        Conv::Decimal { scale } => {
            if !text.starts_with('"') {
                // `decimal.format=NUMERIC` on the converter: already a number.
                return Ok(None);
            }
            let encoded = string_of(text)?;
            if encoded == UNAVAILABLE {
                return Ok(Some(UNAVAILABLE_JSON.to_owned()));
            }
            let bytes = base64_of(&encoded)?;
            Ok(Some(decimal_text(&bytes, *scale, decimals)))
        }
        Conv::VariableDecimal => {
            #[derive(Deserialize)]
            struct Variable {
                scale: i32,
                value: String,
            }
            let v: Variable = serde_json::from_str(text)
                .map_err(|e| format!("not a VariableScaleDecimal: {e}"))?;
            Ok(Some(decimal_text(&base64_of(&v.value)?, v.scale, decimals)))
        }
        Conv::Date => {
            let days = integer_of(text)?;
            let date = time::Date::from_julian_day(
                i32::try_from(days + 2_440_588).map_err(|_| "date out of range".to_owned())?,
            )
            .map_err(|_| "date out of range".to_owned())?;
            let mut out = String::with_capacity(12);
            out.push('"');
            push_date(&mut out, date);
            out.push('"');
            Ok(Some(out))
        }
        Conv::Time(unit) => {
            let value = integer_of(text)?;
            let per_second = unit.per_second();
            let (seconds, fraction) = (value.div_euclid(per_second), value.rem_euclid(per_second));
            let mut out = String::with_capacity(20);
            let _ = write!(
                out,
                "\"{:02}:{:02}:{:02}",
                seconds / 3600,
                seconds / 60 % 60,
                seconds % 60
            );
            push_fraction(&mut out, fraction, *unit);
            out.push('"');
            Ok(Some(out))
        }
        Conv::Timestamp(unit, zoned) => {
            let value = integer_of(text)?;
            let per_second = unit.per_second();
            let (seconds, fraction) = (value.div_euclid(per_second), value.rem_euclid(per_second));
            let at = time::OffsetDateTime::from_unix_timestamp(seconds)
                .map_err(|_| "timestamp out of range".to_owned())?;
            let mut out = String::with_capacity(32);
            out.push('"');
            push_date(&mut out, at.date());
            let _ = write!(
                out,
                "T{:02}:{:02}:{:02}",
                at.hour(),
                at.minute(),
                at.second()
            );
            push_fraction(&mut out, fraction, *unit);
            if *zoned {
                out.push('Z');
            }
            out.push('"');
            Ok(Some(out))
        }
        Conv::Json => {
            let json = string_of(text)?;
            if json == UNAVAILABLE {
                return Ok(Some(UNAVAILABLE_JSON.to_owned()));
            }
            serde_json::from_str::<&RawValue>(&json)
                .map_err(|e| format!("io.debezium.data.Json value is not JSON: {e}"))?;
            Ok(Some(json.trim().to_owned()))
        }
        Conv::Bytes => Ok((text == UNAVAILABLE_BASE64).then(|| UNAVAILABLE_JSON.to_owned())),
        Conv::EnumSet => {
            let set = string_of(text)?;
            let items: Vec<&str> = if set.is_empty() {
                Vec::new()
            } else {
                set.split(',').collect()
            };
            Ok(Some(
                serde_json::to_string(&items).expect("strings serialize"),
            ))
        }
        Conv::Point => {
            let point: serde_json::Map<String, Value> =
                serde_json::from_str(text).map_err(|e| format!("not a Point: {e}"))?;
            let mut shown = serde_json::Map::new();
            for key in ["x", "y", "srid"] {
                match point.get(key) {
                    Some(Value::Null) | None if key == "srid" => {}
                    Some(value) => {
                        shown.insert(key.to_owned(), value.clone());
                    }
                    None => return Err(format!("a Point has no `{key}`")),
                }
            }
            Ok(Some(Value::Object(shown).to_string()))
        }
        Conv::Array(item) => {
            let Elements(items) =
                serde_json::from_str(text).map_err(|e| format!("not an array: {e}"))?;
            let mut out = String::with_capacity(text.len() + 16);
            let mut changed = false;
            out.push('[');
            for (i, raw) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match convert(item, raw, decimals)? {
                    Some(value) => {
                        out.push_str(&value);
                        changed = true;
                    }
                    None => out.push_str(raw.get()),
                }
            }
            out.push(']');
            // An unchanged TOASTed array comes as a list holding the placeholder.
            if items.len() == 1 && out == format!("[{UNAVAILABLE_JSON}]") {
                return Ok(Some(UNAVAILABLE_JSON.to_owned()));
            }
            Ok(changed.then_some(out))
        }
        Conv::Struct(plan) => plan.apply(text, decimals),
    }
}

fn string_of(text: &str) -> Result<Cow<'_, str>, String> {
    if !text.starts_with('"') {
        return Err("expected a string".to_owned());
    }
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| e.to_string())
}

fn integer_of(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .map_err(|_| format!("expected an integer, found {}", preview(text)))
}

fn base64_of(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| format!("not base64: {}", preview(text)))
}

/// The start of a value, for error messages: never a whole value.
fn preview(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(24)
        .map_or(text.len(), |(end, _)| end);
    &text[..end]
}

fn push_date(out: &mut String, date: time::Date) {
    let year = date.year();
    if (0..=9999).contains(&year) {
        let _ = write!(out, "{year:04}");
    } else {
        let _ = write!(out, "{year:+05}");
    }
    let _ = write!(out, "-{:02}-{:02}", u8::from(date.month()), date.day());
}

/// `.fraction` without trailing zeros; nothing when it is zero.
fn push_fraction(out: &mut String, fraction: i64, unit: Unit) {
    if fraction == 0 {
        return;
    }
    let digits = match unit {
        Unit::Milli => format!("{fraction:03}"),
        Unit::Micro => format!("{fraction:06}"),
        Unit::Nano => format!("{fraction:09}"),
    };
    out.push('.');
    out.push_str(digits.trim_end_matches('0'));
}

/// An unscaled big-endian two's complement integer with `scale`, as exact decimal text.
pub fn decimal_text(bytes: &[u8], scale: i32, format: DecimalFormat) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = bytes.to_vec();
    if negative {
        // Two's complement: invert and add one.
        for b in magnitude.iter_mut() {
            *b = !*b;
        }
        for b in magnitude.iter_mut().rev() {
            let (sum, carry) = b.overflowing_add(1);
            *b = sum;
            if !carry {
                break;
            }
        }
    }
    let digits = magnitude_digits(&magnitude);
    let mut out = String::with_capacity(digits.len() + 4);
    if format == DecimalFormat::String {
        out.push('"');
    }
    if negative && digits != "0" {
        out.push('-');
    }
    if scale <= 0 {
        out.push_str(&digits);
        if digits != "0" {
            out.extend(std::iter::repeat_n('0', scale.unsigned_abs() as usize));
        }
    } else {
        let scale = scale as usize;
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', scale - digits.len()));
            out.push_str(&digits);
        }
    }
    if format == DecimalFormat::String {
        out.push('"');
    }
    out
}

/// The decimal digits of an unsigned big-endian integer.
fn magnitude_digits(bytes: &[u8]) -> String {
    let bytes = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
    if bytes.len() <= 16 {
        let mut buf = [0u8; 16];
        buf[16 - bytes.len()..].copy_from_slice(bytes);
        return u128::from_be_bytes(buf).to_string();
    }
    let mut rest = bytes.to_vec();
    let mut digits = Vec::new();
    while rest.iter().any(|b| *b != 0) {
        let mut remainder = 0u32;
        for b in rest.iter_mut() {
            let current = (remainder << 8) | u32::from(*b);
            *b = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    digits.reverse();
    String::from_utf8(digits).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn decimals_are_exact() {
        let n = DecimalFormat::Number;
        // 123456 = 0x01E240: Debezium's `1234.56` for numeric(12,2) is "AeJA".
        assert_eq!(b64(&[0x01, 0xE2, 0x40]), "AeJA");
        assert_eq!(decimal_text(&[0x01, 0xE2, 0x40], 2, n), "1234.56");
        assert_eq!(decimal_text(&[0x05], 2, n), "0.05");
        assert_eq!(decimal_text(&[0xFB], 2, n), "-0.05");
        assert_eq!(decimal_text(&[0x00], 2, n), "0.00");
        assert_eq!(decimal_text(&[], 0, n), "0");
        assert_eq!(decimal_text(&[0x80], 0, n), "-128");
        assert_eq!(decimal_text(&[0xFF, 0x38], 1, n), "-20.0");
        assert_eq!(decimal_text(&[0x07], -2, n), "700");
        assert_eq!(
            decimal_text(&[0x01, 0xE2, 0x40], 2, DecimalFormat::String),
            "\"1234.56\""
        );
        // 10^40, beyond u128's digits path.
        let big: Vec<u8> = {
            let mut v = vec![0u8; 20];
            let mut n = vec![1u32];
            for _ in 0..40 {
                let mut carry = 0u32;
                for d in n.iter_mut() {
                    let x = *d * 10 + carry;
                    *d = x & 0xFF;
                    carry = x >> 8;
                }
                while carry > 0 {
                    n.push(carry & 0xFF);
                    carry >>= 8;
                }
            }
            for (i, d) in n.iter().enumerate() {
                v[19 - i] = *d as u8;
            }
            v
        };
        assert_eq!(decimal_text(&big, 2, n), format!("1{}.00", "0".repeat(38)));
    }

    fn plan_of(fields: Value) -> RowPlan {
        let schema = serde_json::json!({"type": "struct", "fields": fields, "name": "x.Value"});
        match conv_of(&schema, &mut Vec::new()).unwrap() {
            Some(Conv::Struct(plan)) => plan,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn logical_types_become_what_the_database_holds() {
        let plan = plan_of(serde_json::json!([
            {"field": "id", "type": "int64"},
            {"field": "amount", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
             "parameters": {"scale": "2"}},
            {"field": "d", "type": "int32", "name": "io.debezium.time.Date"},
            {"field": "t", "type": "int64", "name": "io.debezium.time.MicroTime"},
            {"field": "ts", "type": "int64", "name": "io.debezium.time.MicroTimestamp"},
            {"field": "cts", "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp"},
            {"field": "z", "type": "string", "name": "io.debezium.time.ZonedTimestamp"},
            {"field": "meta", "type": "string", "name": "io.debezium.data.Json"},
            {"field": "tags", "type": "array", "items": {"type": "string"}},
            {"field": "nums", "type": "array", "items": {"type": "struct",
             "name": "io.debezium.data.VariableScaleDecimal",
             "fields": [{"field": "scale", "type": "int32"}, {"field": "value", "type": "bytes"}]}},
            {"field": "set", "type": "string", "name": "io.debezium.data.EnumSet"},
            {"field": "p", "type": "struct", "name": "io.debezium.data.geometry.Point",
             "fields": [{"field": "x", "type": "double"}, {"field": "y", "type": "float64"}]},
            {"field": "f", "type": "float"},
            {"field": "blob", "type": "bytes"}
        ]));
        let row = r#"{"id":9007199254740993,"amount":"AeJA","d":20811,"t":36000500000,"ts":1766570400123456,"cts":1766570400000,"z":"2026-12-24T10:00:00Z","meta":"{\"a\": [1, {\"b\": null}]}","tags":["x"],"nums":[{"scale":1,"value":"Dw=="}],"set":"a,b","p":{"x":1.5,"y":-2.0,"wkb":"AQE=","srid":null},"blob":"AQID"}"#;
        let out = plan.apply(row, DecimalFormat::Number).unwrap().unwrap();
        assert_eq!(
            out,
            r#"{"id":9007199254740993,"amount":1234.56,"d":"2026-12-24","t":"10:00:00.5","ts":"2025-12-24T10:00:00.123456","cts":"2025-12-24T10:00:00Z","z":"2026-12-24T10:00:00Z","meta":{"a": [1, {"b": null}]},"tags":["x"],"nums":[1.5],"set":["a","b"],"p":{"x":1.5,"y":-2.0},"blob":"AQID"}"#
        );
        let nulls = r#"{"id":1,"amount":null,"d":null,"meta":null}"#;
        assert_eq!(plan.apply(nulls, DecimalFormat::Number).unwrap(), None);
    }

    #[test]
    fn the_toast_placeholder_is_one_marker_whatever_the_type() {
        let plan = plan_of(serde_json::json!([
            {"field": "note", "type": "string"},
            {"field": "meta", "type": "string", "name": "io.debezium.data.Json"},
            {"field": "blob", "type": "bytes"},
            {"field": "tags", "type": "array", "items": {"type": "bytes"}}
        ]));
        let row = format!(
            r#"{{"note":"{UNAVAILABLE}","meta":"{UNAVAILABLE}","blob":{UNAVAILABLE_BASE64},"tags":[{UNAVAILABLE_BASE64}]}}"#
        );
        let out = plan.apply(&row, DecimalFormat::Number).unwrap().unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        for field in ["note", "meta", "blob", "tags"] {
            assert_eq!(value[field], UNAVAILABLE, "{field}");
        }
    }

    #[test]
    fn bad_values_and_schemas_are_errors_not_panics() {
        let plan = plan_of(serde_json::json!([
            {"field": "amount", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
             "parameters": {"scale": "2"}},
            {"field": "d", "type": "int32", "name": "io.debezium.time.Date"},
            {"field": "meta", "type": "string", "name": "io.debezium.data.Json"}
        ]));
        for row in [
            r#"{"amount":"not base64!"}"#,
            r#"{"amount":12,"d":"x"}"#,
            r#"{"d":99999999999}"#,
            r#"{"meta":"{not json"}"#,
            r#"[1]"#,
        ] {
            assert!(plan.apply(row, DecimalFormat::Number).is_err(), "{row}");
        }
        for schema in [
            serde_json::json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal"}),
            serde_json::json!({"type": "string", "name": "io.debezium.time.Date"}),
            serde_json::json!({"type": "array"}),
            serde_json::json!({"type": "struct"}),
            serde_json::json!({"type": "nonsense"}),
            serde_json::json!({"name": "x"}),
        ] {
            assert!(conv_of(&schema, &mut Vec::new()).is_err(), "{schema}");
        }
        let mut unknown = Vec::new();
        let conv = conv_of(
            &serde_json::json!({"type": "string", "name": "com.example.Money"}),
            &mut unknown,
        )
        .unwrap();
        assert_eq!(
            (conv, unknown),
            (None, vec!["com.example.Money".to_owned()])
        );
    }

    #[test]
    fn a_known_schema_is_not_read_again() {
        let schemas = Schemas::default();
        let schema = r#"{"type":"struct","fields":[{"field":"after","type":"struct","optional":true,"name":"t.Value","fields":[{"field":"d","type":"int32","name":"io.debezium.time.Date"}]}]}"#;
        let record = format!(r#"{{"schema":{schema},"payload":{{"op":"c"}}}}"#);
        assert!(schemas.split(record.as_bytes()).is_none(), "not seen yet");
        let plan = schemas.plan(schema).unwrap();
        assert!(plan.after.is_some() && plan.before.is_none());
        let (again, payload) = schemas.split(record.as_bytes()).unwrap();
        assert!(Arc::ptr_eq(&plan, &again));
        assert_eq!(payload, br#"{"op":"c"}"#);
        // A schema that only starts like a known one is parsed.
        let longer = format!(r#"{{"schema":{schema}x,"payload":{{}}}}"#);
        assert!(schemas.split(longer.as_bytes()).is_none());
    }

    /// A record the fast path cannot split (spaced out, or its schema evicted from the recent
    /// list) is parsed and its schema text looked up among the known plans. That lookup once
    /// held the cache's lock while taking it again: the consumer task hung for good on the
    /// second such record (found by the decode bench).
    #[test]
    fn a_known_schema_looked_up_again_does_not_deadlock() {
        let schemas = std::sync::Arc::new(Schemas::default());
        let schema = r#"{"type":"struct","fields":[{"field":"after","type":"struct","optional":true,"name":"t.Value","fields":[{"field":"d","type":"int32","name":"io.debezium.time.Date"}]}]}"#;
        let (done, finished) = std::sync::mpsc::channel();
        let looking = std::sync::Arc::clone(&schemas);
        std::thread::spawn(move || {
            let first = looking.plan(schema).unwrap();
            let second = looking.plan(schema).unwrap();
            let _ = done.send(Arc::ptr_eq(&first, &second));
        });
        let same = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second lookup of a known schema returned");
        assert!(same, "one plan per distinct schema text");
    }
}
