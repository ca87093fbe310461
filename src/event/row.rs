//! A row image (`data`, `before`) as the producer wrote it. Most subscriptions have no filter
//! on the row, so decoding keeps the row's JSON text and builds no tree: the payload splices
//! the text back in unchanged (the producer's field order and values, byte for byte), and a
//! filter that reads the row parses it once, on first use. Building a `serde_json::Value` per
//! row was a fifth of the gateway's CPU when every event has one recipient (BENCHMARKS.md).

use std::fmt;
use std::sync::OnceLock;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

pub struct Row {
    /// Compact JSON text of an object.
    text: Box<RawValue>,
    parsed: OnceLock<Value>,
}

impl Row {
    /// Takes a JSON object's text. Text with line breaks between tokens is compacted, so that
    /// a payload is always one line (Server-Sent Events frame it by lines).
    pub fn from_raw(raw: &RawValue) -> Self {
        let text = raw.get();
        if !text.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Row {
                text: raw.to_owned(),
                parsed: OnceLock::new(),
            };
        }
        // Valid JSON holds no raw line break inside a string: these are all whitespace.
        let value: Value = serde_json::from_str(text).expect("RawValue holds valid JSON");
        Row::from(value)
    }

    /// The row with only the top-level `fields` of the object in `raw`, for judging a filter
    /// that reads no other (a table scan, see `Filter::row_fields`): the other fields are
    /// skipped over, not built. Text that is not an object is taken whole. Never sent: its
    /// text is not the producer's.
    pub fn projected(raw: &RawValue, fields: &[String]) -> Self {
        let mut seed = Projection {
            fields,
            kept: serde_json::Map::new(),
        };
        let mut reader = serde_json::Deserializer::from_str(raw.get());
        match serde::Deserializer::deserialize_map(&mut reader, &mut seed) {
            Ok(()) => Row::from(Value::Object(seed.kept)),
            Err(_) => Row::from_raw(raw),
        }
    }

    /// The row as a JSON tree, parsed on first use.
    pub fn value(&self) -> &Value {
        self.parsed.get_or_init(|| {
            serde_json::from_str(self.text.get()).expect("RawValue holds valid JSON")
        })
    }

    /// The row's JSON text.
    pub fn text(&self) -> &str {
        self.text.get()
    }
}

impl From<Value> for Row {
    fn from(value: Value) -> Self {
        let text = serde_json::value::to_raw_value(&value).expect("a Value always serializes");
        Row {
            text,
            parsed: OnceLock::from(value),
        }
    }
}

/// Reads a JSON object keeping only some of its top-level fields ([`Row::projected`]).
struct Projection<'f> {
    fields: &'f [String],
    kept: serde_json::Map<String, Value>,
}

impl<'de> serde::de::Visitor<'de> for &mut Projection<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<FieldName<'de>>()? {
            if self.fields.iter().any(|f| f.as_str() == name.0.as_ref()) {
                let value: Value = map.next_value()?;
                self.kept.insert(name.0.into_owned(), value);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Reads a row image (`data`, `before`) inside a larger document in one pass: whole (its
/// text kept, as [`Row::from_raw`]), or with only some top-level fields, as
/// [`Row::projected`]. JSON `null` is `None`.
#[derive(Debug, Clone, Copy)]
pub struct RowSeed<'f>(pub Option<&'f [String]>);

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Option<Row>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Row>, D::Error> {
        let Some(fields) = self.0 else {
            let raw: Option<&'de RawValue> = serde::Deserialize::deserialize(d)?;
            return Ok(raw.map(Row::from_raw));
        };
        struct Image<'f>(&'f [String]);
        impl<'de> serde::de::Visitor<'de> for Image<'_> {
            type Value = Option<Row>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object or null")
            }
            fn visit_none<E>(self) -> Result<Option<Row>, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Option<Row>, E> {
                Ok(None)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Option<Row>, D::Error> {
                let mut projection = Projection {
                    fields: self.0,
                    kept: serde_json::Map::new(),
                };
                d.deserialize_map(&mut projection)?;
                Ok(Some(Row::from(Value::Object(projection.kept))))
            }
        }
        d.deserialize_option(Image(fields))
    }
}

/// A field name, borrowed from the text unless it has escapes.
pub struct FieldName<'a>(pub std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Text)
    }
}

impl Clone for Row {
    fn clone(&self) -> Self {
        Row {
            text: self.text.clone(),
            parsed: self.parsed.clone(),
        }
    }
}

/// Rows are equal when their JSON is, whatever the spacing or field order of the text.
impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        self.text.get() == other.text.get() || self.value() == other.value()
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.get())
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_passes_through_and_parses_on_demand() {
        let raw: Box<RawValue> = serde_json::from_str(r#"{"b":1, "a":{"x":[true,null]}}"#).unwrap();
        let row = Row::from_raw(&raw);
        assert_eq!(row.text(), r#"{"b":1, "a":{"x":[true,null]}}"#);
        assert_eq!(row.value()["a"]["x"][0], true);
        assert_eq!(serde_json::to_string(&row).unwrap(), row.text());
        assert_eq!(row, Row::from(json!({"a": {"x": [true, null]}, "b": 1})));
    }

    #[test]
    fn a_projection_keeps_the_named_fields_only() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"id":1,"big":{"deep":[1,2,{"x":"}"}]},"t\u0065nant":"acme","n":2.5,"n":3}"#,
        )
        .unwrap();
        let fields = ["tenant".to_owned(), "n".to_owned(), "absent".to_owned()];
        let row = Row::projected(&raw, &fields);
        // Escaped names are read as what they say; a repeated field keeps its last value,
        // as the full parse does.
        assert_eq!(row.value(), &json!({"tenant": "acme", "n": 3}));
        let not_object: Box<RawValue> = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(Row::projected(&not_object, &fields).value(), &json!([1, 2]));
        let null: Box<RawValue> = serde_json::from_str("null").unwrap();
        assert_eq!(Row::projected(&null, &fields).text(), "null");
    }

    #[test]
    fn line_breaks_are_compacted_away() {
        let raw: Box<RawValue> =
            serde_json::from_str("{\n  \"note\": \"a\\nb\",\r\n  \"n\": 1\n}").unwrap();
        let row = Row::from_raw(&raw);
        assert_eq!(row.text(), r#"{"note":"a\nb","n":1}"#);
        assert_eq!(row.value()["note"], "a\nb");
    }
}
