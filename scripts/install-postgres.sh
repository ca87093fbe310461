#!/usr/bin/env bash
# Installs the PostgreSQL server binaries used by the CDC pipeline tests (tests/cdc/):
# initdb, pg_ctl and postgres. Does nothing when they are already there.
# Prints the bin directory (e.g. /usr/lib/postgresql/15/bin).
set -euo pipefail
find_bin() {
  # The newest major version installed wins.
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r dir; do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] && echo "$dir"
  done | tail -n 1
}
BIN="$(find_bin)"
if [ -z "$BIN" ]; then
  echo "installing postgresql (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y postgresql >&2 || { apt-get update >&2 && apt-get install -y postgresql >&2; }
  BIN="$(find_bin)"
  [ -n "$BIN" ] || { echo "postgresql installed but no initdb under /usr/lib/postgresql/*/bin" >&2; exit 1; }
fi
# initdb refuses to run as root: the tests run the server as this user.
id postgres >/dev/null 2>&1 || { echo "no 'postgres' user (the Debian package creates it)" >&2; exit 1; }
echo "$BIN"
