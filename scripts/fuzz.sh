#!/usr/bin/env bash
# Fuzz wire decoding + intake for a bounded time (default 60 s).
# Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Usage: scripts/fuzz.sh [seconds]
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")/../shared"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
  exit 2
fi
cargo +nightly fuzz run wire_intake -- -max_total_time="$seconds" -rss_limit_mb=2048
