//! The normalized change event every stage after decoding sees, and the gateway topic names
//! derived from it. Decoders produce it, the index matches filters against it, fan-out
//! serializes it once. It keeps its Kafka position so that later stages (history, resume)
//! can order and deduplicate without going back to the record.

mod row;

use serde::Serialize;
use serde_json::Value;

pub use row::{FieldName, Row, RowSeed};

pub use crate::position::SourcePosition;

/// Debezium's stand-in for a value it did not read: a TOASTed column an update left unchanged.
/// The decoder writes it as this JSON string whatever the column's type, and row state
/// (`crate::snapshot`) puts the row's last known value in its place.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";
/// [`UNAVAILABLE`] as JSON text.
pub const UNAVAILABLE_JSON: &str = "\"__debezium_unavailable_value\"";

/// Longest entity id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest entity name accepted, in bytes.
pub const MAX_ENTITY_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Snapshot,
    Truncate,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Snapshot => "snapshot",
            Operation::Truncate => "truncate",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "insert" => Operation::Insert,
            "update" => Operation::Update,
            "delete" => Operation::Delete,
            "snapshot" => Operation::Snapshot,
            "truncate" => Operation::Truncate,
            _ => return None,
        })
    }
}

/// One change of one row (or a truncate of a whole entity).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeEvent {
    pub entity_type: String,
    /// `None` only for truncate, which has no row.
    pub entity_id: Option<String>,
    pub operation: Operation,
    /// The row after the change; `None` for deletes and truncates.
    pub data: Option<Row>,
    /// The row before the change, when the source sends it.
    pub before: Option<Row>,
    /// RFC 3339, from the source.
    pub timestamp: String,
    #[serde(skip)]
    pub position: SourcePosition,
    /// Kafka's record timestamp in epoch milliseconds, for latency measurement.
    #[serde(skip)]
    pub kafka_timestamp_ms: Option<i64>,
    /// Where the change sits in the database's log (Postgres' `source.lsn`; `None` for a
    /// snapshot read and for sources without one): a connector that restarts sends changes
    /// again as new Kafka records, and row state recognises them by it.
    #[serde(skip)]
    pub source_lsn: Option<i64>,
}

impl ChangeEvent {
    /// The row as it now stands: `data` when present, else `before` (for deletes).
    pub fn row(&self) -> Option<&Value> {
        match &self.data {
            Some(data) if data.text() != "null" => Some(data.value()),
            _ => self.before.as_ref().map(Row::value),
        }
    }

    /// `cdc.<entity>`: every change of the entity type.
    pub fn entity_topic(&self) -> String {
        format!("cdc.{}", self.entity_type)
    }

    /// `cdc.<entity>.<id>`: the changes of one row; `None` for truncates.
    pub fn row_topic(&self) -> Option<String> {
        self.entity_id
            .as_ref()
            .map(|id| format!("cdc.{}.{}", self.entity_type, id))
    }

    /// The payload clients receive, serialized once per event.
    pub fn payload_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ChangeEvent always serializes")
    }
}

pub fn is_valid_entity(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ENTITY_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES
}

/// A topic a client may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayTopic<'a> {
    Entity { entity: &'a str },
    Row { entity: &'a str, id: &'a str },
}

impl<'a> GatewayTopic<'a> {
    /// Parses `cdc.<entity>` or `cdc.<entity>.<id>` (everything after the second dot is the id).
    pub fn parse(topic: &'a str) -> Result<Self, &'static str> {
        let rest = topic
            .strip_prefix("cdc.")
            .ok_or("topics start with `cdc.`: cdc.<entity> or cdc.<entity>.<id>")?;
        let (entity, id) = match rest.split_once('.') {
            Some((entity, id)) => (entity, Some(id)),
            None => (rest, None),
        };
        if !is_valid_entity(entity) {
            return Err("the entity must match [A-Za-z0-9_-]{1,128}");
        }
        match id {
            None => Ok(GatewayTopic::Entity { entity }),
            Some(id) if is_valid_id(id) => Ok(GatewayTopic::Row { entity, id }),
            Some(_) => Err("the id must be 1 to 512 bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(data: Option<Value>, before: Option<Value>) -> ChangeEvent {
        ChangeEvent {
            entity_type: "order".into(),
            entity_id: Some("42".into()),
            operation: Operation::Update,
            data: data.map(Row::from),
            before: before.map(Row::from),
            timestamp: "2026-11-22T10:00:00Z".into(),
            position: SourcePosition::new("cdc.events", 0, 7),
            kafka_timestamp_ms: None,
            source_lsn: None,
        }
    }

    #[test]
    fn topics_follow_the_contract() {
        let e = event(None, None);
        assert_eq!(e.entity_topic(), "cdc.order");
        assert_eq!(e.row_topic().as_deref(), Some("cdc.order.42"));
        assert_eq!(
            GatewayTopic::parse("cdc.order"),
            Ok(GatewayTopic::Entity { entity: "order" })
        );
        assert_eq!(
            GatewayTopic::parse("cdc.order.a.b:c"),
            Ok(GatewayTopic::Row {
                entity: "order",
                id: "a.b:c"
            })
        );
        for bad in [
            "order",
            "cdc.",
            "cdc..1",
            "cdc.ord er",
            "cdc.order.",
            "kafka.order",
        ] {
            assert!(GatewayTopic::parse(bad).is_err(), "{bad}");
        }
        let long_id = format!("cdc.order.{}", "x".repeat(513));
        assert!(GatewayTopic::parse(&long_id).is_err());
    }

    #[test]
    fn row_prefers_data_then_before() {
        assert_eq!(
            event(Some(json!({"a": 1})), Some(json!({"a": 0}))).row(),
            Some(&json!({"a": 1}))
        );
        assert_eq!(
            event(None, Some(json!({"a": 0}))).row(),
            Some(&json!({"a": 0}))
        );
        assert_eq!(event(Some(Value::Null), None).row(), None);
    }

    #[test]
    fn payload_has_the_normalized_fields_only() {
        let v: Value =
            serde_json::from_slice(&event(Some(json!({"a": 1})), None).payload_json()).unwrap();
        assert_eq!(
            v,
            json!({"entity_type": "order", "entity_id": "42", "operation": "update",
                   "data": {"a": 1}, "before": null, "timestamp": "2026-11-22T10:00:00Z"})
        );
    }
}
