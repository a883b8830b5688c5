#!/usr/bin/env bash
# Fuzz every decoder target for a number of executions each (default
# 1,000,000), growing the committed corpora in shared/fuzz/corpus/<target>.
# Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Usage: scripts/fuzz.sh [runs] [target...]
# The corpora also replay on stable in `cargo test` (shared/tests/fuzz_corpus.rs).
set -euo pipefail
runs="${1:-1000000}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(json append_line baton_load salvage wire_intake)
fi
cd "$(dirname "$0")/../shared"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
  exit 2
fi
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: $runs executions"
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -runs="$runs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|#[0-9]+ *DONE|.*(ERROR|panicked|crash-))" || true
done
