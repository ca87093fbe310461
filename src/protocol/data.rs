//! Data messages (protocol section 3): one event on one topic, built around the payload bytes
//! serialized once per event, so every recipient shares the same bytes.

use bytes::Bytes;

use crate::event::SourcePosition;

/// The kind of a data message: a live event, a snapshot row, or a leave event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Live,
    Snapshot,
    Leave,
}

/// `{"type":"data","topic":..,"payload":..,"source":..,"partition":..,"offset":..,
/// "timestamp":..}`, built around the payload bytes serialized once per event; snapshot rows
/// add `"snapshot":true`, leave events `"leave":true`.
pub fn data_message(topic: &str, payload: &[u8], position: SourcePosition, kind: Kind) -> Bytes {
    let sent_at = crate::clock::now_rfc3339();
    let source = position.topic.as_str();
    let mut out =
        Vec::with_capacity(payload.len() + topic.len() + source.len() + sent_at.len() + 128);
    out.extend_from_slice(br#"{"type":"data","topic":"#);
    serde_json::to_writer(&mut out, topic).expect("writing to a Vec cannot fail");
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(payload);
    // Kafka topic names are [A-Za-z0-9._-]: nothing to escape.
    out.extend_from_slice(br#","source":""#);
    out.extend_from_slice(source.as_bytes());
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(br#"","partition":"#);
    out.extend_from_slice(digits.format(position.partition).as_bytes());
    out.extend_from_slice(br#","offset":"#);
    out.extend_from_slice(digits.format(position.offset).as_bytes());
    out.extend_from_slice(br#","timestamp":""#);
    out.extend_from_slice(sent_at.as_bytes());
    out.extend_from_slice(match kind {
        Kind::Live => br#""}"#.as_slice(),
        Kind::Snapshot => br#"","snapshot":true}"#.as_slice(),
        Kind::Leave => br#"","leave":true}"#.as_slice(),
    });
    Bytes::from(out)
}

/// The source position of a message built by [`data_message`]: its last `"source"`,
/// `"partition"` and `"offset"` fields, which come after the payload (the payload may hold
/// fields of those names; the envelope's are the last).
pub fn data_message_position(message: &[u8]) -> Option<SourcePosition> {
    let text = std::str::from_utf8(message).ok()?;
    let source_at = text.rfind(r#","source":""#)? + r#","source":""#.len();
    let source = &text[source_at..source_at + text[source_at..].find('"')?];
    let tail = &text[source_at..];
    let number_after = |key: &str| {
        let start = tail.rfind(key)? + key.len();
        let digits = &tail[start..];
        let end = digits
            .find(|c: char| c != '-' && !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse::<i64>().ok()
    };
    Some(SourcePosition::new(
        source,
        i32::try_from(number_after(r#","partition":"#)?).ok()?,
        number_after(r#","offset":"#)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ChangeEvent, Operation};
    use serde_json::{json, Value};

    #[test]
    fn the_position_comes_from_the_envelope_not_the_payload() {
        let mut e = ChangeEvent {
            entity_type: "order".into(),
            entity_id: Some("7".into()),
            operation: Operation::Update,
            data: None,
            before: None,
            timestamp: "2026-11-22T10:00:00Z".into(),
            position: SourcePosition::new("cdc.events", 1, 41),
            kafka_timestamp_ms: None,
            source_lsn: None,
        };
        e.data = Some(
            json!({"partition": 99, "offset": 98, "source": "x", "note": ",\"source\":\"y\""})
                .into(),
        );
        let message = data_message("cdc.order", &e.payload_json(), e.position, Kind::Leave);
        let v: Value = serde_json::from_slice(&message).unwrap();
        assert_eq!(v["leave"], true);
        assert_eq!(
            data_message_position(&message),
            Some(SourcePosition::new("cdc.events", 1, 41))
        );
    }
}
