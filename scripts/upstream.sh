#!/usr/bin/env bash
# Fetches and builds the real parts the tests run against, from the pinned Go modules under
# tests/upstream/ (each with its go.sum, so every byte is checksummed):
#   kube/             kube-apiserver and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3)
#   civerify/         containers/image (go.podman.io/image/v5) deciding pulls as CRI-O does;
#                     its module also holds containers/image's signature test fixtures
#   openshift-api*/   the upstream CRDs (github.com/openshift/api), data only
# Binaries go to a cache outside the repository, in a directory named by a hash of the
# module's go.mod, go.sum and Go files, so a later run (or another checkout) reuses them and
# a changed pin rebuilds. tests/support/src/upstream.rs computes the same names.
# Usage: scripts/upstream.sh [--quiet]     Prints what it built or found, with versions.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quiet=${1:-}

command -v go >/dev/null || { echo "upstream.sh: Go is required (go1.26 is on these machines)" >&2; exit 1; }
cache=${CIP_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cip-webhook/tools}
mkdir -p "$cache"
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"

say() { [ "$quiet" = --quiet ] || echo "$@"; }

# The cache key of a module: sha256 over "sha256  ./path" lines of its go.mod, go.sum and Go
# files in byte order, first 16 hex digits.
key() {
  (cd "$1" && find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) | LC_ALL=C sort \
    | xargs sha256sum | sha256sum | cut -c1-16)
}

# Version of a required module, as go.mod pins it.
pinned() { sed 's|//.*||' "$1/go.mod" | awk -v m="$2" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }'; }

# build MODULE-DIR NAME BUILD-COMMAND...: runs the command in the module with $out set, once.
build() {
  local dir=$1 name=$2; shift 2
  local out="$cache/$name-$(key "$dir")"
  if [ -f "$out/.complete" ]; then
    say "$name: cached in $out"
    return
  fi
  local started=$SECONDS tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$dir" && out=$tmp && "$@")
  touch "$tmp/.complete"
  rm -rf "$out" && mv "$tmp" "$out"
  say "$name: built in $((SECONDS - started)) s into $out"
}

kube_version=$(pinned tests/upstream/kube k8s.io/kubernetes)
minor=${kube_version#v1.}; minor=${minor%%.*}
ldflags=
build_kube() {
  local v
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
build "$root/tests/upstream/kube" kube build_kube
build "$root/tests/upstream/civerify" civerify build_civerify

# Data modules: downloaded into the module cache and checked against their go.sum.
for dir in tests/upstream/openshift-api tests/upstream/openshift-api-4.20; do
  (cd "$dir" && go mod download github.com/openshift/api)
  say "github.com/openshift/api $(pinned "$dir" github.com/openshift/api): in the module cache ($dir)"
done

if [ "$quiet" != --quiet ]; then
  kube="$cache/kube-$(key tests/upstream/kube)"
  echo "versions: $("$kube/kube-apiserver" --version), etcd $("$kube/etcd" --version | awk 'NR==1{print $3}'), $("$cache/civerify-$(key tests/upstream/civerify)/civerify" version)"
fi
