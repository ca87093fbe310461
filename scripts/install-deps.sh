#!/usr/bin/env bash
# Installs the system packages the build needs (librdkafka is compiled from source by
# rdkafka-sys: a C toolchain, make, pkg-config, OpenSSL and zlib headers), and Node.js for the
# JavaScript client when it is missing. Debian/Ubuntu only;
# does nothing when everything is present.
set -euo pipefail
needed=(build-essential pkg-config libssl-dev zlib1g-dev perl)
# Node.js and npm for clients/js (its tests need Node 20 or later; scripts/test.sh checks).
command -v node >/dev/null 2>&1 || needed+=(nodejs npm)
missing=()
for package in "${needed[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
