#!/usr/bin/env bash
# The Python client's tests (clients/python): unit tests, then end to end against the gateway
# binary and a tansu broker (restarts and kills mid-stream counted by source topic, partition
# and offset, token refresh, snapshots, live tables, SSE, the FastAPI example).
# The venv is cached outside the repository and reused:
#   ${CDC_GATEWAY_CACHE:-$HOME/.cache/cdc-gateway}/python-client-venv
# Needs CPython 3.11 or later (PYTHON, else python3.11, else python3), the gateway binary
# (CDC_GATEWAY_BIN, else the debug build under CARGO_TARGET_DIR or the shared target
# directory) and tansu (CDC_GATEWAY_TANSU, else scripts/install-tansu.sh). Bounded: the whole
# run is killed after CDC_PYTHON_TEST_TIMEOUT seconds (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CDC_GATEWAY_CACHE:-$HOME/.cache/cdc-gateway}"
VENV="$CACHE/python-client-venv"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  BASE="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  "$BASE" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || { echo "clients/python needs Python 3.11 or later (found $("$BASE" --version))" >&2; exit 1; }
  mkdir -p "$CACHE"
  "$BASE" -m venv "$VENV"
fi
# Reinstalled every run (quick when nothing changed): the package as users install it, not
# in development mode, so a file missing from the package fails here.
"$PY" -m pip install --quiet --disable-pip-version-check "./clients/python[test]"
CDC_GATEWAY_BIN="${CDC_GATEWAY_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/cdc-gateway/target}/debug/cdc-gateway}"
[ -x "$CDC_GATEWAY_BIN" ] || { echo "no gateway binary at $CDC_GATEWAY_BIN: cargo build --bin cdc-gateway" >&2; exit 1; }
CDC_GATEWAY_TANSU="${CDC_GATEWAY_TANSU:-$(bash scripts/install-tansu.sh)}"
export CDC_GATEWAY_BIN CDC_GATEWAY_TANSU
cd clients/python
timeout -k 10 "${CDC_PYTHON_TEST_TIMEOUT:-300}" "$PY" -m pytest -p no:cacheprovider "$@"
