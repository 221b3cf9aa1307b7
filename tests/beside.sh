#!/bin/bash
# Runs a test command that mostly waits (minutes of broker outage, QEMU boots and installs) beside
# the main one, so the 2-core CI machine is not idle while it waits:
#   tests/beside.sh NAME 'background command' main command...
# The background's output goes to out/logs/NAME.log and is printed when both have ended; the
# result fails when either failed.
set -u
name=$1 bg=$2
shift 2
mkdir -p out/logs
log=out/logs/$name.log
start=$(date +%s)
bash -c "$bg" >"$log" 2>&1 &
pid=$!
"$@"
rc=$?
wait "$pid"
bgrc=$?
echo "==> $name (ran beside the rest; $(($(date +%s) - start)) s until both ended; output: $log)"
cat "$log"
[ "$bgrc" -eq 0 ] || echo "==> $name FAILED (exit $bgrc)"
[ "$rc" -eq 0 ] && [ "$bgrc" -eq 0 ]
