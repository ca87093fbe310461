//! The simple envelope: `entity_type`, `entity_id`, `operation`, `data`, `before`, `timestamp`.

use serde_json::Value;

use super::{field, id_of, take_row, timestamp_of, DecodeError, EventFields, Object, RawRecord};
use crate::event::Operation;

pub(super) fn decode(
    object: Object<'_>,
    _record: &RawRecord<'_>,
) -> Result<EventFields, DecodeError> {
    let entity = match field(&object, "entity_type")? {
        Some(Value::String(entity)) => entity,
        Some(_) => {
            return Err(DecodeError::InvalidField {
                field: "entity_type",
                problem: "must be a string",
            })
        }
        None => return Err(DecodeError::MissingField("entity_type")),
    };
    let operation = match field(&object, "operation")? {
        Some(Value::String(op)) => {
            Operation::parse(&op).ok_or_else(|| DecodeError::InvalidOperation(op.clone()))?
        }
        Some(other) => return Err(DecodeError::InvalidOperation(other.to_string())),
        None => return Err(DecodeError::MissingField("operation")),
    };
    let entity_id = match field(&object, "entity_id")? {
        // A truncate concerns the whole entity: it has no row, whatever the producer sent.
        _ if operation == Operation::Truncate => None,
        None | Some(Value::Null) => return Err(DecodeError::MissingField("entity_id")),
        Some(id) => Some(id_of(&id)?),
    };
    let timestamp = match field(&object, "timestamp")? {
        None | Some(Value::Null) => None,
        Some(ts) => Some(timestamp_of(&ts)?),
    };
    Ok(EventFields {
        entity,
        origin: None,
        source_lsn: None,
        entity_id,
        operation,
        data: take_row(&object, "data")?,
        before: take_row(&object, "before")?,
        timestamp,
    })
}
