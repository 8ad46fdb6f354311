#!/usr/bin/env bash
# Peak RSS and wall time of `cip-webhook render` on a generated input of N policies
# with 5 scopes each (default 2000 = 10,000 scopes), plus the examples' cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
policies=${1:-2000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "input: $work/in"
mkdir -p "$work/in"
cp examples/pools.yaml examples/image.yaml examples/clusterversion.yaml "$work/in/"
key=$(base64 -w0 tests/fixtures/keys/cosign.pub)
for ((i = 0; i < policies; i++)); do
  printf -- '---\napiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {name: policy-%05d}\nspec:\n  scopes: [registry%d.example.com/team0/app, registry%d.example.com/team1/app, registry%d.example.com/team2/app, registry%d.example.com/team3/app, registry%d.example.com/team4/app]\n  policy: {rootOfTrust: {policyType: PublicKey, publicKey: {keyData: %s}}}\n' \
    "$i" "$i" "$i" "$i" "$i" "$i" "$key"
done >"$work/in/policies.yaml"
cargo build --release -q
measure=(/usr/bin/time -f 'wall %e s, peak RSS %M KiB')
"${measure[@]}" target/release/cip-webhook render --input "$work/in" --output "$work/out" --size-budget 1000000000 | tail -1
du -sh "$work/out"
