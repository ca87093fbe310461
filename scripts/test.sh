#!/usr/bin/env bash
# The project's test command (README "Run the tests"): installs the tansu broker the
# end-to-end tests run against (cached outside the repo), then runs every test target.
set -euo pipefail
cd "$(dirname "$0")/.."
CDC_GATEWAY_TANSU="$(bash scripts/install-tansu.sh)"
export CDC_GATEWAY_TANSU
cargo test --all-targets --locked -- --test-threads="${CDC_GATEWAY_TEST_THREADS:-4}"
