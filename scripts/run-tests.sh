#!/usr/bin/env bash
# The test suite in two halves, side by side: the QEMU boots (marker `qemu`: a cold image
# build, then TCG boots that are CPU-bound for minutes and mostly wait on the guest) and
# everything else. Run one after the other they take longer than CI's 30-minute budget.
# The QEMU half's output is kept in a log and printed at the end; either half failing fails.
set -uo pipefail
cd "$(dirname "$0")/.."
pytest=(.venv/bin/pytest -p no:cacheprovider)
log=$(mktemp -t corral-qemu-tests.XXXXXX)
# Niced: the boots take what the rest leaves, so its timing-sensitive tests keep their CPU.
nice -n 15 "${pytest[@]}" -m qemu "$@" >"$log" 2>&1 &
qemu_pid=$!
trap 'kill "$qemu_pid" 2>/dev/null' INT TERM
"${pytest[@]}" -m "not qemu" "$@"
rest=$?
wait "$qemu_pid"
qemu=$?
echo "=== the QEMU half (marker qemu), log $log"
cat "$log"
echo "=== pytest: the rest exit $rest, the QEMU half exit $qemu"
[ "$rest" -eq 0 ] && [ "$qemu" -eq 0 ]
