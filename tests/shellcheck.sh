#!/usr/bin/env bash
# Runs shellcheck over the repository's shell scripts (make lint): every tracked *.sh, every tracked file
# whose first line is a sh/bash #!, .ci/run and the boards' board.conf (sourced by image/build.sh).
# Settings: .shellcheckrc. Every finding fails, style notes included; a `# shellcheck disable=`
# carries its reason on the line above or beside it.
# Usage: tests/shellcheck.sh [--list]     --list: print the file set only
set -euo pipefail
cd "$(dirname "$0")/.."
files=()
while IFS= read -r -d '' f; do
  case "$f" in
    *.sh | .ci/run | boards/*/board.conf) files+=("$f") ;;
    *) if head -n 1 -- "$f" 2>/dev/null | grep -qE '^#!.*[/ ](ba)?sh( |$)'; then files+=("$f"); fi ;;
  esac
done < <(git ls-files -z)
if [ "${1:-}" = --list ]; then
  printf '%s\n' "${files[@]}"
  exit 0
fi
start=$(date +%s.%N)
status=0
shellcheck "${files[@]}" || status=$?
took=$(printf %.1f "$(echo "$(date +%s.%N) - $start" | bc)")
if [ "$status" -ne 0 ]; then
  echo "==> shellcheck: findings above ($(shellcheck --version | sed -n 's/^version: //p'), ${#files[@]} scripts, ${took} s)" >&2
  exit 1
fi
echo "==> shellcheck: ${#files[@]} scripts clean ($(shellcheck --version | sed -n 's/^version: //p'), ${took} s)"
