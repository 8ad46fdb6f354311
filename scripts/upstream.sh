#!/usr/bin/env bash
# Fetches and builds the real parts the tests run against, from the pinned Go modules under
# tests/upstream/ (each with its go.sum, so every byte is checksummed):
#   kube/             kube-apiserver and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3)
#   civerify/         containers/image (go.podman.io/image/v5) deciding pulls as CRI-O does;
#                     its module also holds containers/image's signature test fixtures
#   openshift-api*/   the upstream CRDs (github.com/openshift/api), data only
# Binaries go to a cache outside the repository ($CIP_TOOLS_CACHE, default
# ~/.cache/cip-webhook/tools), in a directory named by a hash of the module's go.mod,
# go.sum and Go files, so a later run (or another checkout) reuses them and a changed pin
# rebuilds. tests/support/src/upstream.rs computes the same names.
#
# Usage: scripts/upstream.sh            build what is missing; print what it did and the versions
#        scripts/upstream.sh --quiet    the same, silently
#        scripts/upstream.sh --versions the versions line only (after building)
#        scripts/upstream.sh --path MODULE BINARY   where a built binary is (no build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-}

command -v go >/dev/null || { echo "upstream.sh: Go is required (go1.26 is on these machines)" >&2; exit 1; }
cache=${CIP_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cip-webhook/tools}
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"

say() { [ -z "$mode" ] && echo "$@" || true; }

# The cache key of a module: sha256 over "sha256  ./path" lines of its go.mod, go.sum and Go
# files in byte order, first 16 hex digits.
key() {
  (cd "$1" && find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) | LC_ALL=C sort \
    | xargs sha256sum | sha256sum | cut -c1-16)
}

built() { echo "$cache/$1-$(key "$root/tests/upstream/$1")"; }

if [ "$mode" = --path ]; then
  echo "$(built "$2")/$3"
  exit 0
fi

# Version of a required module, as go.mod pins it.
# One process reads the file: a reader that quits early would kill its writer with SIGPIPE
# (exit 141 under pipefail).
pinned() { awk -v m="$2" '{ sub(/\/\/.*/, "") } $1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1/go.mod"; }

# build MODULE BUILD-FUNCTION: runs the function in tests/upstream/MODULE with $out set, once.
build() {
  local name=$1 fn=$2
  local out
  out=$(built "$name")
  if [ -f "$out/.complete" ]; then
    say "$name: cached in $out"
    return
  fi
  local started=$SECONDS tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$root/tests/upstream/$name" && out=$tmp && "$fn")
  touch "$tmp/.complete"
  rm -rf "$out" && mv "$tmp" "$out"
  say "$name: built in $((SECONDS - started)) s into $out"
  # Builds of earlier pins, unused for a week, go.
  find "$cache" -maxdepth 1 -name "$name-*" ! -path "$out" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
}

mkdir -p "$cache"
kube_version=$(pinned tests/upstream/kube k8s.io/kubernetes)
minor=${kube_version#v1.}
minor=${minor%%.*}
build_kube() {
  local v ldflags=""
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $v.gitVersion=$kube_version -X $v.gitMajor=1 -X $v.gitMinor=$minor"
  done
  go build -o "$out/kube-apiserver" -ldflags "-s -w $ldflags" k8s.io/kubernetes/cmd/kube-apiserver
  go build -o "$out/kubectl" -ldflags "-s -w $ldflags" k8s.io/kubernetes/cmd/kubectl
  go build -o "$out/etcd" -ldflags "-s -w" ./etcd
}
build_civerify() {
  go build -o "$out/civerify" -ldflags "-s -w" -tags containers_image_openpgp,exclude_graphdriver_btrfs .
}
build kube build_kube
build civerify build_civerify

# Data modules: downloaded into the module cache and checked against their go.sum.
for dir in tests/upstream/openshift-api tests/upstream/openshift-api-4.20; do
  (cd "$dir" && go mod download github.com/openshift/api)
  say "github.com/openshift/api $(pinned "$dir" github.com/openshift/api): in the module cache ($dir)"
done

if [ -z "$mode" ] || [ "$mode" = --versions ]; then
  kube=$(built kube)
  kubectl=$("$kube/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | sed -n 1p)
  echo "$("$kube/kube-apiserver" --version | sed 's/^Kubernetes/kube-apiserver/'), etcd $("$kube/etcd" --version | awk 'NR==1{print $3}'), kubectl $kubectl, $("$(built civerify)/civerify" version)"
fi
