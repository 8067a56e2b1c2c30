#!/usr/bin/env bash
# Bounded fuzzing of the parsers of untrusted input.
#   1. proptest properties (tests/fuzz_parsers.rs) with many cases (stable);
#   2. cargo-fuzz (libFuzzer) targets in fuzz/, SECONDS each (nightly).
# Usage: scripts/fuzz.sh [SECONDS per libFuzzer target, default 60]
# Results are recorded by hand in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}

echo "== proptest: ${PROPTEST_CASES:=20000} cases per property"
PROPTEST_CASES=$PROPTEST_CASES timeout 1800 cargo test --release --test fuzz_parsers 2>&1 | grep -E "^test |test result"

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo-fuzz skipped: needs a nightly toolchain and 'cargo install cargo-fuzz'"
  exit 0
fi
status=0
for target in client_frame publish_body webhook_header; do
  echo "== cargo fuzz run $target for ${secs}s"
  log=$(mktemp)
  if (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096) >"$log" 2>&1; then
    grep -E "Done [0-9]+ runs|cov: [0-9]+" "$log" | tail -n 2 || true
  else
    status=1
    grep -E "ERROR|panicked|SUMMARY|Test unit written|error" "$log" | head -n 20 || tail -n 40 "$log"
  fi
  rm -f "$log"
done
exit $status
