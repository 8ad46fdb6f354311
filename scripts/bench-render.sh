#!/usr/bin/env bash
# Peak RSS and wall time of `cip-webhook render` (the whole command: read, render, write)
# on generated input, plus the examples' cluster.
#   bench-render.sh [N]               N ClusterImagePolicies of 5 scopes (default 2000)
#   bench-render.sh --namespaced [N]  N ImagePolicies over N/10 namespaces, an IDMS with
#                                     N/5 mirrored registries and 20 ClusterImagePolicies
#                                     (default 1000: issue 14's 1,000 / 100 / 200)
# The render core alone, without files: `cargo bench --bench core`.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=cluster
if [ "${1:-}" = --namespaced ]; then
  mode=namespaced
  shift
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "input: $work/in"
mkdir -p "$work/in"
cp examples/pools.yaml examples/image.yaml examples/clusterversion.yaml "$work/in/"
key=$(base64 -w0 tests/fixtures/keys/cosign.pub)
cip() { # name scopes...
  local name=$1
  shift
  local IFS=,
  printf -- '---\napiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {name: %s}\nspec:\n  scopes: [%s]\n  policy: {rootOfTrust: {policyType: PublicKey, publicKey: {keyData: %s}}}\n' \
    "$name" "$*" "$key"
}
if [ "$mode" = cluster ]; then
  policies=${1:-2000}
  for ((i = 0; i < policies; i++)); do
    cip "$(printf 'policy-%05d' "$i")" "registry$i.example.com/team0/app" "registry$i.example.com/team1/app" \
      "registry$i.example.com/team2/app" "registry$i.example.com/team3/app" "registry$i.example.com/team4/app"
  done >"$work/in/policies.yaml"
else
  policies=${1:-1000}
  namespaces=$((policies / 10)) registries=$((policies / 5))
  for ((i = 0; i < 20; i++)); do cip "cluster-$i" "cluster$i.example.com/apps"; done >"$work/in/policies.yaml"
  for ((i = 0; i < policies; i++)); do
    ns=$(printf 'team-%03d' $((i % namespaces)))
    printf -- '---\napiVersion: config.openshift.io/v1\nkind: ImagePolicy\nmetadata: {name: policy-%05d, namespace: %s}\nspec:\n  scopes: [apps%d.example.com/%s/app%d]\n  policy: {rootOfTrust: {policyType: PublicKey, publicKey: {keyData: %s}}}\n' \
      "$i" "$ns" $((i % registries)) "$ns" "$i" "$key"
  done >"$work/in/imagepolicies.yaml"
  {
    printf 'apiVersion: config.openshift.io/v1\nkind: ImageDigestMirrorSet\nmetadata: {name: mirrors}\nspec:\n  imageDigestMirrors:\n'
    for ((r = 0; r < registries; r++)); do
      printf '    - {source: apps%d.example.com, mirrors: [mirror.example.net/apps%d]}\n' "$r" "$r"
    done
  } >"$work/in/mirrors.yaml"
fi
cargo build --release -q
measure=(/usr/bin/time -f 'wall %e s, peak RSS %M KiB')
"${measure[@]}" target/release/cip-webhook render --input "$work/in" --output "$work/out" --size-budget 1000000000 | tail -1
du -sh "$work/out"
