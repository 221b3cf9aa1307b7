#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 20) and prints the executions of each.
# cargo fuzz needs a nightly toolchain; without one this prints SKIPPED and exits 0, so the
# missing nightly shows in the log instead of failing the whole test run.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-20}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: SKIPPED: no nightly toolchain on this machine (cargo fuzz needs one)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
total=0
for t in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" >"$log" 2>&1; then
    tail -40 "$log"; echo "fuzz: $t FAILED (crash input under agent/fuzz/artifacts/$t)"; exit 1
  fi
  n=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  echo "fuzz: $t ${secs}s, ${n:-?} executions, no crash"
  total=$((total + ${n:-0}))
  rm -f "$log"
done
echo "fuzz: $total executions in all"
