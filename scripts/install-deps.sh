#!/usr/bin/env bash
# Installs the system packages the build needs (librdkafka is compiled from source by
# rdkafka-sys: a C toolchain, make, pkg-config, OpenSSL and zlib headers), Node.js for the
# JavaScript client when it is missing, and Prometheus (/usr/bin/prometheus and
# /usr/bin/promtool) for the monitoring tests (tests/deploy/prometheus.rs). Debian/Ubuntu only;
# does nothing when everything is present.
set -euo pipefail
needed=(build-essential pkg-config libssl-dev zlib1g-dev perl)
# Node.js and npm for clients/js (its tests need Node 20 or later; scripts/test.sh checks).
command -v node >/dev/null 2>&1 || needed+=(nodejs npm)
# Prometheus without its recommends (node-exporter and its helpers). The tests run their own
# prometheus on a free loopback port; the package's own service (systemd unit or init script,
# on :9090) starts unless policy-rc.d forbids it, as in most containers, and nothing here
# uses it.
bare=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || bare+=(prometheus)
missing=()
for package in "${needed[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "$((${#missing[@]} + ${#bare[@]}))" -gt 0 ]; then
  echo "installing: ${missing[*]} ${bare[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  if [ "${#missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  fi
  if [ "${#bare[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${bare[@]}"
  fi
fi
