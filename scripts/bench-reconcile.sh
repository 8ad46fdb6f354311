#!/usr/bin/env bash
# The reconciler's benchmarks against the API simulator, release build
# (tests/bench_reconcile.rs): one change's latency, a burst of 900 policies and one of
# 5,000 (time until every policy has its conditions, writes per MachineConfig), leader and
# admission-only RSS with 300 rendered MachineConfigs of 300 KiB. Each test asserts its
# goal: the script exits non-zero when one fails, and prints the figures either way.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --test bench_reconcile -- --ignored --nocapture --test-threads 1 >"$log" 2>&1 || status=$?
grep -E "^bench: |^test |panicked|never reached|assertion" "$log" || true
if [ "$status" -ne 0 ]; then
  echo "bench-reconcile: FAILED (cargo test exited $status); full output:" >&2
  tail -n 200 "$log" >&2
fi
exit "$status"
