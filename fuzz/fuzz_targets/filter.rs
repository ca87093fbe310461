//! Any JSON as `filters` compiles or is refused with a reason; a compiled filter matches any
//! event (with any rows) without panicking, and its leave and redaction checks too.
#![no_main]

use cdc_gateway::event::{ChangeEvent, Operation, Row, SourcePosition};
use cdc_gateway::index::Filter;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(filter) = Filter::compile(Some(&spec)) else {
        return;
    };
    // The filter's own JSON as the row: paths it names are likely to exist.
    let event = ChangeEvent {
        entity_type: "order".into(),
        entity_id: Some("1".into()),
        operation: Operation::Update,
        data: Some(Row::from(spec.clone())),
        before: Some(Row::from(spec)),
        timestamp: "2026-11-22T10:00:00Z".into(),
        position: SourcePosition::new("fuzz", 0, 0),
        kafka_timestamp_ms: None,
        source_lsn: None,
    };
    let _ = filter.matches(&event);
    let _ = filter.matched_before(&event);
    let confined = Filter::default().confined_by(&filter);
    let _ = confined.matches(&event);
    let _ = confined.redaction(&event, true);
    let _ = confined.redaction(&event, false);
});
