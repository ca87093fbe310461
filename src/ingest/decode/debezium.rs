//! Debezium's change envelope (`before`, `after`, `source`, `op`, `ts_ms`). The entity is
//! `source.table`; the id comes from the record key, else from the row's `id` field. The
//! timestamp is the commit time (`source.ts_ms`), else the envelope's processing time.

use serde_json::Value;

use super::{
    field, id_of, key, parse_object, take_row, timestamp_of, DecodeError, EventFields, Object,
    RawRecord,
};
use crate::config::EntityNaming;
use crate::event::Operation;

pub(super) fn decode(
    object: Object<'_>,
    record: &RawRecord<'_>,
    naming: EntityNaming,
) -> Result<EventFields, DecodeError> {
    let operation = match field(&object, "op")? {
        Some(Value::String(op)) => {
            operation_of(&op).ok_or_else(|| DecodeError::InvalidOperation(op.clone()))?
        }
        Some(other) => return Err(DecodeError::InvalidOperation(other.to_string())),
        None => return Err(DecodeError::MissingField("op")),
    };
    let source = match object.get("source") {
        Some(raw) if raw.get().starts_with('{') => parse_object(raw.get().as_bytes())?,
        Some(_) => {
            return Err(DecodeError::InvalidField {
                field: "source",
                problem: "must be an object",
            })
        }
        None => return Err(DecodeError::MissingField("source")),
    };
    let table = match field(&source, "table")? {
        Some(Value::String(table)) => table,
        Some(_) => {
            return Err(DecodeError::InvalidField {
                field: "source.table",
                problem: "must be a string",
            })
        }
        None => return Err(DecodeError::MissingField("source.table")),
    };
    let text = |name| -> Result<Option<String>, DecodeError> {
        Ok(match field(&source, name)? {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        })
    };
    let (db, schema) = (text("db")?, text("schema")?);
    let origin = [db.as_deref(), schema.as_deref(), Some(table.as_str())]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(".");
    let entity = match naming {
        EntityNaming::Table => table,
        EntityNaming::Schema => match schema.or(db) {
            Some(qualifier) => format!("{qualifier}-{table}"),
            None => table,
        },
        EntityNaming::Database => [db.as_deref(), schema.as_deref(), Some(table.as_str())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("-"),
    };
    // `source.ts_ms` is when the change was committed in the database; the envelope's
    // `ts_ms` is when Debezium processed it (later, by the connector's lag).
    let ts_ms = match field(&source, "ts_ms")? {
        None | Some(Value::Null) => field(&object, "ts_ms")?,
        found => found,
    };
    let timestamp = match ts_ms {
        None | Some(Value::Null) => None,
        Some(ts) => Some(timestamp_of(&ts)?),
    };
    // A streamed change's place in Postgres' log; a snapshot read (`op: r`, `snapshot` set)
    // shares one LSN with every row of the snapshot, so it has none.
    let source_lsn = match (operation, field(&source, "lsn")?) {
        (Operation::Snapshot, _) => None,
        (_, Some(Value::Number(lsn))) => lsn.as_i64(),
        _ => None,
    };
    let data = take_row(&object, "after")?;
    let before = take_row(&object, "before")?;
    let entity_id = if operation == Operation::Truncate {
        None
    } else {
        match record.key.filter(|k| !k.is_empty()) {
            Some(bytes) => Some(key::id_from_key(bytes)?),
            None => {
                let row = data.as_ref().or(before.as_ref());
                let id = row
                    .and_then(|row| row.value().get("id"))
                    .ok_or(DecodeError::MissingField("id"))?;
                Some(id_of(id)?)
            }
        }
    };
    Ok(EventFields {
        entity,
        origin: Some(origin),
        source_lsn,
        entity_id,
        operation,
        data,
        before,
        timestamp,
    })
}

fn operation_of(op: &str) -> Option<Operation> {
    Some(match op {
        "c" => Operation::Insert,
        "u" => Operation::Update,
        "d" => Operation::Delete,
        "r" => Operation::Snapshot,
        "t" => Operation::Truncate,
        _ => return None,
    })
}
