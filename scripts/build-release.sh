#!/usr/bin/env bash
# The release build the container image ships: a static binary (glibc's static runtime;
# the binary resolves no host names, in-cluster config gives the API server by address).
# The Dockerfile runs this script, and scripts/test.sh runs it too, so the flags the image
# uses are the flags the tests exercise.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="-C target-feature=+crt-static"
cargo build --locked --release --bin cip-webhook --target x86_64-unknown-linux-gnu
echo "target/x86_64-unknown-linux-gnu/release/cip-webhook"
