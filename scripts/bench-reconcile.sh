#!/usr/bin/env bash
# Reconcile latency (CIP create to all four MachineConfigs written, 100 changes) and RSS
# with 1,000 policies cached, against the API simulator, release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test reconcile -- --ignored --nocapture --test-threads 1 2>&1 \
  | grep -E "create ->|writes per change|RSS|policies added"
