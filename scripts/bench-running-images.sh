#!/usr/bin/env bash
# The running-images pass at the issue's size (tests/real_apiserver/bench_running_images.rs):
# the real API server with 10,000 pods over 2,000 signed digests in the in-process
# registry behind 50 ms, the release binary as reconciler and as admission replica.
# Prints the first full pass's time, the reconciler's RSS with and without the pass, the
# registry's request count, and admission latencies for a new key over every digest (the
# test fails if admission sent the registry a single request). Sizes:
# CIP_BENCH_PODS, CIP_BENCH_DIGESTS; CIP_BENCH_KEYLESS=1 signs the digests keyless.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/upstream.sh --quiet
bin=$(scripts/build-release.sh | tail -1)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
CIP_WEBHOOK_BIN=$bin cargo test --features e2e --test real_apiserver bench_running_images \
  -- --ignored --nocapture >"$log" 2>&1 || status=$?
grep -E "^bench: |^test |panicked|assertion" "$log" || true
if [ "$status" -ne 0 ]; then
  echo "bench-running-images: FAILED (cargo test exited $status); full output:" >&2
  tail -n 200 "$log" >&2
fi
exit "$status"
