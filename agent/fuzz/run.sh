#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 20) and prints the executions of each.
# Fails on a crash, and on a target that ran zero executions (or whose count cannot be read):
# a fuzzer that never ran proves nothing. cargo fuzz needs a nightly toolchain; one is installed
# when missing, and the stage fails if that is not possible.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-20}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "==> installing a nightly toolchain for cargo fuzz"
  rustup toolchain install nightly --profile minimal \
    || { echo "fuzz: FAILED: no nightly toolchain (cargo fuzz needs one)"; exit 1; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
targets=$(cargo +nightly fuzz list)
[ -n "$targets" ] || { echo "fuzz: FAILED: cargo fuzz list names no target"; exit 1; }
total=0
for t in $targets; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" >"$log" 2>&1; then
    tail -40 "$log"; echo "fuzz: $t FAILED (crash input under agent/fuzz/artifacts/$t)"; exit 1
  fi
  # libFuzzer's status lines start with `#<executions>`; its last one is the final count.
  n=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  if [ -z "$n" ] || [ "$n" -eq 0 ]; then
    tail -40 "$log"; echo "fuzz: $t FAILED: ran ${n:-no counted} executions in ${secs}s"; exit 1
  fi
  echo "fuzz: $t ${secs}s, $n executions, no crash"
  total=$((total + n))
  rm -f "$log"
done
echo "fuzz: $total executions in all"
