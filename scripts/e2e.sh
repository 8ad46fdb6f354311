#!/usr/bin/env bash
# The two suites against real parts: a real kube-apiserver with etcd (tests/real_apiserver)
# and current containers/image deciding pulls from a loopback registry
# (tests/containers_image). Builds what they need first (scripts/upstream.sh, cached
# outside the repository), prints the versions each ran against and its pass count, and
# ends with one `N passed, M failed` line.
set -uo pipefail
cd "$(dirname "$0")/.."

scripts/upstream.sh --quiet || exit 1
tool() { "$(scripts/upstream.sh --path "$1" "$2")" "${@:3}"; }
kube_versions="$(tool kube kube-apiserver --version | sed 's/^Kubernetes/kube-apiserver/'), etcd $(tool kube etcd --version | awk 'NR==1{print $3}')"
ci_version=$(tool civerify civerify version)

cargo build --locked --features e2e --tests --bin cip-webhook --quiet || exit 1

passed=0 failed=0 status=0
run() { # run SUITE VERSIONS
  local log out p f
  log=$(mktemp)
  cargo test --locked --features e2e --test "$1" 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  out=$(grep -E '^test result:' "$log" | tail -1)
  p=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$out")
  f=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$out")
  if [ -z "$p" ]; then p=0 f=1 status=1; fi # it did not even run
  passed=$((passed + p)) failed=$((failed + f))
  summary+=("$1 against $2: $p passed, $f failed")
  rm -f "$log"
}
summary=()
run real_apiserver "$kube_versions"
run containers_image "$ci_version"

echo
printf '%s\n' "${summary[@]}"
echo "$passed passed, $failed failed"
exit $status
