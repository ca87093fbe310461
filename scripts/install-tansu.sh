#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker used by the integration tests.
# Cached outside the repository (first build takes several minutes on 2 cores).
set -euo pipefail
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
ROOT="${CDC_GATEWAY_CACHE:-$HOME/.cache/cdc-gateway}/tansu"
BIN="$ROOT/bin/tansu"
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$ROOT"
echo "installing tansu $TANSU_VERSION into $ROOT (cached for later runs)" >&2
cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore --root "$ROOT" >&2 \
  || cargo install tansu --version "$TANSU_VERSION" --features dynostore --root "$ROOT" >&2
echo "$BIN"
