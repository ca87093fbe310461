//! Any record (key and value bytes, either envelope) decodes to an event or a typed error,
//! never a panic; an event's payload serializes.
#![no_main]

use cdc_gateway::config::InputFormat;
use cdc_gateway::event::SourcePosition;
use cdc_gateway::ingest::decode::{Decoded, Decoder, RawRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into a key and a value.
    let (split, rest) = match data.split_first() {
        Some((split, rest)) => (usize::from(*split), rest),
        None => return,
    };
    let (key, value) = rest.split_at(split.min(rest.len()));
    let renames: std::collections::HashMap<String, String> =
        [("orders".to_owned(), "order".to_owned())].into();
    for format in [
        InputFormat::Auto,
        InputFormat::Simple,
        InputFormat::Debezium,
    ] {
        let decoder = Decoder::new(format, renames.clone());
        let record = RawRecord {
            key: (!key.is_empty()).then_some(key),
            value: (!value.is_empty()).then_some(value),
            position: SourcePosition::new("fuzz", 0, 0),
            timestamp_ms: Some(0),
        };
        if let Ok(Decoded::Event(event)) = decoder.decode(&record) {
            let payload: serde_json::Value = serde_json::from_slice(&event.payload_json()).unwrap();
            assert!(payload.is_object());
        }
    }
});
