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
    fn line_breaks_are_compacted_away() {
        let raw: Box<RawValue> =
            serde_json::from_str("{\n  \"note\": \"a\\nb\",\r\n  \"n\": 1\n}").unwrap();
        let row = Row::from_raw(&raw);
        assert_eq!(row.text(), r#"{"note":"a\nb","n":1}"#);
        assert_eq!(row.value()["note"], "a\nb");
    }
}
