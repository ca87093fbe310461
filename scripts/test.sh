#!/usr/bin/env bash
# The project's test command (README "Run the tests"): installs the tansu broker the
# end-to-end tests run against (cached outside the repo), runs every test target of the
# workspace, then a short load-generator smoke run that fails on any loss or error.
set -euo pipefail
cd "$(dirname "$0")/.."
CDC_GATEWAY_TANSU="$(bash scripts/install-tansu.sh)"
export CDC_GATEWAY_TANSU
cargo test --workspace --lib --bins --tests --locked -- --test-threads="${CDC_GATEWAY_TEST_THREADS:-4}"
# Criterion benches in test mode: each bench body runs once (no timing).
cargo test --workspace --benches --locked
cargo run --locked -p cdc-gateway-bench -- --smoke --tansu-bin "$CDC_GATEWAY_TANSU"
