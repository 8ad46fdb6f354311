#!/usr/bin/env bash
# The release build the container image ships: a static binary (glibc's static runtime;
# the binary resolves no host names, in-cluster config gives the API server by address).
# The Dockerfile runs this script, and scripts/test.sh runs it too, so the flags the image
# uses are the flags the tests exercise.
#
# TARGETARCH (amd64, the default, or arm64; what `docker buildx --platform` sets) picks
# the target. arm64 from an amd64 builder cross-compiles with Debian's aarch64 gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${TARGETARCH:-amd64}" in
  amd64) target=x86_64-unknown-linux-gnu ;;
  arm64)
    target=aarch64-unknown-linux-gnu
    if [ "$(uname -m)" != aarch64 ]; then
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    fi
    ;;
  *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 2 ;;
esac
export RUSTFLAGS="-C target-feature=+crt-static"
cargo build --locked --release --bin cip-webhook --target "$target"
echo "target/$target/release/cip-webhook"
