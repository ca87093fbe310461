#!/usr/bin/env bash
# The project's test command (README "Run the tests"): installs the tansu broker the
# end-to-end tests run against (cached outside the repo), runs every test target of the
# workspace, the criterion benches in test mode, a short load-generator smoke run that fails
# on any loss or error, then the JavaScript client's tests (unit, end to end against the
# gateway binary and tansu, and the demo page in headless Chromium), and the real-CDC tests
# (scripts/test-cdc.sh: PostgreSQL and Debezium, installed and cached outside the repo), and the
# Python client's tests (scripts/test-python.sh, a venv cached outside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
CDC_GATEWAY_TANSU="$(bash scripts/install-tansu.sh)"
export CDC_GATEWAY_TANSU
cargo test --workspace --lib --bins --tests --locked -- --test-threads="${CDC_GATEWAY_TEST_THREADS:-4}"
# Criterion benches in test mode: each bench body runs once (no timing).
cargo test --workspace --benches --locked
cargo run --locked -p cdc-gateway-bench -- --smoke --tansu-bin "$CDC_GATEWAY_TANSU"
# A short pass of every fuzz target (parsers of CDC records, client messages, filters,
# positions, JWT claims); scripts/fuzz.sh with a longer time is the real run.
bash scripts/fuzz.sh "${CDC_GATEWAY_FUZZ_SECONDS:-10}"

# clients/js: needs Node 20 or later; the browser test needs Chromium (installed with apt).
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
  echo "clients/js needs Node.js 20 or later (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
cargo build --locked --bin cdc-gateway
CDC_GATEWAY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/cdc-gateway"
# The real pipeline: Postgres -> Debezium -> tansu -> gateway -> clients, judged against SELECTs.
CDC_GATEWAY_BIN="$CDC_GATEWAY_BIN" bash scripts/test-cdc.sh
# clients/python: unit tests and end to end against the gateway binary and tansu.
CDC_GATEWAY_BIN="$CDC_GATEWAY_BIN" bash scripts/test-python.sh
CDC_GATEWAY_CHROMIUM="$(bash scripts/install-browser.sh)"
if [ -z "$CDC_GATEWAY_CHROMIUM" ]; then
  echo "SKIPPING the browser test of the demo page: Chromium cannot be installed on this machine" >&2
  CDC_GATEWAY_CHROMIUM=/nonexistent/chromium
fi
export CDC_GATEWAY_BIN CDC_GATEWAY_CHROMIUM
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
(
  cd clients/js
  npm ci --no-audit --no-fund
  npm run build
  npm test
)
