#!/bin/sh
# Registers the Debezium Postgres connector with Kafka Connect and waits until it runs.
# POSIX sh + curl only: the docker-compose.kafka.yml stack runs it in a curlimages/curl
# container (service "connector-register"); it also works from any shell that has curl.
#
#   CONNECT_URL=http://connect:8083 scripts/register-connector.sh [connector.json]
#
# Idempotent: a connector that already exists is left as it is (to change its config,
# DELETE /connectors/<name> first, or PUT /connectors/<name>/config). Exit status 0 once the
# connector and its task are RUNNING, 1 if it fails or does not start within the timeout.
set -eu

CONNECT_URL="${CONNECT_URL:-http://connect:8083}"
CONNECTOR_FILE="${1:-${CONNECTOR_FILE:-deploy/debezium/postgres-connector.json}}"
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-180}"

[ -r "$CONNECTOR_FILE" ] || { echo "cannot read $CONNECTOR_FILE" >&2; exit 1; }
NAME="$(sed -n 's/^ *"name" *: *"\([^"]*\)".*/\1/p' "$CONNECTOR_FILE" | head -n 1)"
[ -n "$NAME" ] || { echo "no \"name\" in $CONNECTOR_FILE" >&2; exit 1; }

deadline=$(( $(date +%s) + TIMEOUT_SECONDS ))
past_deadline() { [ "$(date +%s)" -ge "$deadline" ]; }

echo "waiting for Kafka Connect at $CONNECT_URL"
until curl -fsS -o /dev/null "$CONNECT_URL/connectors"; do
  past_deadline && { echo "Kafka Connect did not answer within ${TIMEOUT_SECONDS}s" >&2; exit 1; }
  sleep 2
done

code="$(curl -sS -o /dev/null -w '%{http_code}' "$CONNECT_URL/connectors/$NAME")"
if [ "$code" = "200" ]; then
  echo "connector $NAME already registered"
else
  echo "registering connector $NAME from $CONNECTOR_FILE"
  code="$(curl -sS -o /tmp/register-response.json -w '%{http_code}' \
    -X POST -H 'Content-Type: application/json' -H 'Accept: application/json' \
    --data "@$CONNECTOR_FILE" "$CONNECT_URL/connectors")"
  case "$code" in
    201) echo "created" ;;
    409) echo "already being created by another request" ;;
    *) echo "registration failed: HTTP $code" >&2; cat /tmp/register-response.json >&2; echo >&2; exit 1 ;;
  esac
fi

echo "waiting for $NAME and its task to be RUNNING"
while :; do
  status="$(curl -fsS "$CONNECT_URL/connectors/$NAME/status" 2>/dev/null || true)"
  states="$(printf '%s' "$status" | grep -o '"state" *: *"[A-Z_]*"' | sed 's/.*"\([A-Z_]*\)"$/\1/' || true)"
  total="$(printf '%s\n' "$states" | grep -c . || true)"
  running="$(printf '%s\n' "$states" | grep -c '^RUNNING$' || true)"
  if printf '%s\n' "$states" | grep -q '^FAILED$'; then
    echo "connector $NAME failed:" >&2; printf '%s\n' "$status" >&2; exit 1
  fi
  # One connector state plus at least one task state, all RUNNING.
  if [ "$total" -ge 2 ] && [ "$running" -eq "$total" ]; then
    echo "connector $NAME is RUNNING"; printf '%s\n' "$status"; exit 0
  fi
  past_deadline && { echo "connector $NAME not RUNNING after ${TIMEOUT_SECONDS}s:" >&2; printf '%s\n' "$status" >&2; exit 1; }
  sleep 2
done
