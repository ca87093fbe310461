//! The record key as an entity id. Debezium writes the primary key as a JSON object (possibly
//! in the schema/payload wrapper): one field gives its value, several are joined with `:` in
//! key order. A JSON scalar or a plain UTF-8 key is used as it is.

use serde_json::Value;

use super::DecodeError;

pub(super) fn id_from_key(bytes: &[u8]) -> Result<String, DecodeError> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidId);
    };
    let value = match value {
        Value::Object(mut wrapper) if wrapper.len() == 2 && wrapper.contains_key("schema") => {
            wrapper.remove("payload").ok_or(DecodeError::InvalidId)?
        }
        other => other,
    };
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            let parts: Result<Vec<String>, DecodeError> =
                fields.values().map(scalar_text).collect();
            Ok(parts?.join(":"))
        }
        other => scalar_text(&other),
    }
}

fn scalar_text(value: &Value) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(DecodeError::InvalidId),
    }
}
