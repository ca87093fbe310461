//! Any claims, signed with the gateway's secret, verify to a grant or a typed error (claim
//! filters that do not compile, a missing or absurd `exp`), never a panic; a grant's topic
//! checks and confinement run on any topic.
#![no_main]

use std::sync::LazyLock;

use cdc_gateway::auth::Verifier;
use cdc_gateway::config::Cli;
use clap::Parser as _;
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let args = ["cdc-gateway", "--auth", "jwt", "--jwt-secret", "fuzz"];
    Verifier::from_config(&Cli::parse_from(args).config)
        .unwrap()
        .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(token) = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"fuzz"),
    ) else {
        return;
    };
    if let Ok(grant) = VERIFIER.verify(&token) {
        for topic in ["cdc.order", "cdc.order.7", "cdc.x.y.z", "cdc"] {
            if grant.allows(topic) {
                let _ = grant.confine(topic, Some(&claims));
            }
        }
        let _ = grant.remaining();
    }
});
