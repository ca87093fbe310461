//! Any SSE `Last-Event-ID` or `since` text, and any JSON `since`, resolves to a position or a
//! typed refusal, never a panic.
#![no_main]

use cdc_gateway::position::{Partition, Position, Resolver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let one: Position = (0..3)
        .map(|p| (Partition::new("shop.orders", p), 5))
        .collect();
    let two: Position = one
        .keys()
        .map(|p| (Partition::new("shop.customers", p.partition), -1))
        .chain(one.clone())
        .collect();
    for read in [&one, &two] {
        let resolver = Resolver::new(read, 64);
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = resolver.event_id(text);
        }
        if let Ok(value) = serde_json::from_slice(data) {
            let _ = resolver.json(&value);
        }
    }
});
