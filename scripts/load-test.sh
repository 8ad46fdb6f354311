#!/usr/bin/env bash
# Admission throughput and latency with wrk over keep-alive TLS, against the real
# `cip-webhook serve` process on loopback, plus its RSS idle and with 1,000 policies.
#   /validate saturated vs /healthz saturated (the ceiling of the same server stack),
#   /validate paced at about 1,000 requests/s for p50/p99.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q
bin=target/release/cip-webhook
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
"$bin" certs --out "$work/certs" --dns localhost >/dev/null 2>&1

start() { # start serve on a state dir, wait until ready
  "$bin" serve --listen "127.0.0.1:$port" --metrics-listen none --state-dir "$1" --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
    --log-format json 2>"$work/serve.log" &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf --cacert "$work/certs/ca.crt" "https://localhost:$port/readyz" >/dev/null && return
    sleep 0.1
  done
  echo "serve did not become ready"; cat "$work/serve.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$pid/status"; }

key=$(base64 -w0 tests/fixtures/keys/cosign.pub)
cat >"$work/body.json" <<JSON
{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"0d6c1d9a-5f2a-4d4e-9b8e-1b2c3d4e5f60","kind":{"group":"config.openshift.io","version":"v1","kind":"ClusterImagePolicy"},"resource":{"group":"config.openshift.io","version":"v1","resource":"clusterimagepolicies"},"name":"load","operation":"CREATE","userInfo":{"username":"kube:admin"},"object":{"apiVersion":"config.openshift.io/v1","kind":"ClusterImagePolicy","metadata":{"name":"load"},"spec":{"scopes":["example.org/team/app","registry.example.org"],"policy":{"rootOfTrust":{"policyType":"PublicKey","publicKey":{"keyData":"$key"}}}}},"dryRun":false}}
JSON
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json"); wrk.body = f:read("*a"); f:close()
LUA
cat "$work/post.lua" >"$work/paced.lua"
echo 'function delay() return 10 end' >>"$work/paced.lua"

start examples
sleep 1
echo "idle RSS (examples/ state): $(rss)"
# The server's CPU time (user + system, clock ticks) is appended to wrk's output, so
# that each run also tells how many CPU microseconds the server spent per request.
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
run() {
  local before
  before=$(ticks)
  wrk -t1 -c"$1" -d"$2" --latency "${@:3}" 2>&1
  echo "server ticks $(($(ticks) - before))"
}
validate=$(run 16 10s -s "$work/post.lua" "https://127.0.0.1:$port/validate")
healthz=$(run 16 10s "https://127.0.0.1:$port/healthz")
paced=$(run 10 10s -s "$work/paced.lua" "https://127.0.0.1:$port/validate")
rps() { awk '/Requests\/sec/ {print $2}' <<<"$1"; }
pct() { awk -v p="$2" '$1 == p {print $2}' <<<"$1"; }
cpu() {
  awk -v hz="$(getconf CLK_TCK)" '/requests in/ {n = $1} /server ticks/ {t = $3}
    END {printf "%.1f", t / hz * 1e6 / n}' <<<"$1"
}
echo "validate saturated: $(rps "$validate") req/s, p50 $(pct "$validate" 50%), p99 $(pct "$validate" 99%), server CPU $(cpu "$validate") µs/request"
echo "healthz saturated:  $(rps "$healthz") req/s, p50 $(pct "$healthz" 50%), p99 $(pct "$healthz" 99%), server CPU $(cpu "$healthz") µs/request"
awk -v v="$(rps "$validate")" -v h="$(rps "$healthz")" 'BEGIN {printf "validate / ceiling: %.0f%%\n", 100 * v / h}'
echo "validate paced:     $(rps "$paced") req/s, p50 $(pct "$paced" 50%), p99 $(pct "$paced" 99%)"
echo "decisions logged: $(grep -c "\"verdict\":\"allowed\"" "$work/serve.log" || true)"
echo "RSS after load: $(rss)"
stop

mkdir -p "$work/state"
cp examples/pools.yaml examples/image.yaml examples/clusterversion.yaml "$work/state/"
for ((i = 0; i < 1000; i++)); do
  printf -- '---\napiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {name: policy-%04d}\nspec:\n  scopes: [registry%d.example.com/app]\n  policy: {rootOfTrust: {policyType: PublicKey, publicKey: {keyData: %s}}}\n' "$i" "$i" "$key"
done >"$work/state/policies.yaml"
start "$work/state"
sleep 1
echo "RSS with 1,000 policies cached: $(rss)"
run 16 5s -s "$work/post.lua" "https://127.0.0.1:$port/validate" | awk '/Requests\/sec/ {print "validate with 1,000 policies: " $2 " req/s"}'
stop

# Server CPU per decision against a trivial handler (parse the review, allow, echo the
# uid) on the same TLS/HTTP stack, in one process (tests/bench_admission.rs; exits
# non-zero when /validate costs more than 2x).
cargo test --release -q --test bench_admission -- --ignored --nocapture 2>&1 | grep -E "^bench: |panicked|test result"
