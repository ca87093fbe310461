//! Any client text message parses to a request or a rejection with a code, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cdc_gateway::protocol::parse(data);
});
