#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test of the demo page (clients/js/test/
# browser.test.mjs drives it with playwright-core; nothing ever downloads a browser).
# Prints the browser's path, or nothing when it cannot be installed here (the test then
# skips with a message). Debian/Ubuntu only; does nothing when Chromium is present.
set -uo pipefail
for candidate in "${CDC_GATEWAY_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "$candidate"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get: cannot install Chromium for the browser test" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing chromium (Debian package) for the browser test" >&2
if $SUDO apt-get update -qq >&2 \
  && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2 \
  && [ -x /usr/bin/chromium ]; then
  echo /usr/bin/chromium
else
  echo "could not install chromium with apt-get" >&2
fi
