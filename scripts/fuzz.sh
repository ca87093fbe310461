#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (first argument or CDC_GATEWAY_FUZZ_SECONDS,
# default 60 s each). cargo-fuzz is installed once into ~/.cache/cdc-gateway/cargo-fuzz; the
# targets build on the stable toolchain (RUSTC_BOOTSTRAP=1 allows the flags libFuzzer's
# instrumentation needs) and without librdkafka. A crash stops the run and leaves its input
# under fuzz/artifacts/<target>/: reproduce it with `cargo fuzz run <target> <file>` and keep
# it as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-${CDC_GATEWAY_FUZZ_SECONDS:-60}}"
root="${CDC_GATEWAY_CACHE:-$HOME/.cache/cdc-gateway}/cargo-fuzz"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  echo "installing cargo-fuzz into $root (cached for later runs)" >&2
  cargo install cargo-fuzz --locked --root "$root" >&2
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CDC_GATEWAY_FUZZ_TARGET_DIR:-${CDC_GATEWAY_CACHE:-$HOME/.cache/cdc-gateway}/fuzz-target}"
for target in $("$root/bin/cargo-fuzz" list); do
  echo "fuzzing $target for ${seconds}s" >&2
  "$root/bin/cargo-fuzz" run "$target" --sanitizer none --debug-assertions -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=0
done
