#!/usr/bin/env bash
# Starts a release `cip-webhook serve --state-dir` on loopback and attacks it with
# scripts/abuse.py while /healthz is probed: idle and slow connections past
# --max-connections, bodies that hold memory, huge-scope and huge-denial reviews, seeded
# mutated reviews, state directory hazards. Reports the worst /healthz latency per attack
# and the peak RSS; exits non-zero when /healthz missed its second, a 5xx came back, or
# the server died.
#
#   scripts/abuse.sh                 # 10 s per attack (the figures in the notes)
#   scripts/abuse.sh --short         # 2 s per attack (run by scripts/test.sh)
#   scripts/abuse.sh --bin PATH      # a binary already built
#   scripts/abuse.sh --only NAME     # the phases whose name starts with NAME
#   scripts/abuse.sh -- ARGS         # more `serve` arguments (e.g. --max-decisions 16)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10
bin=""
only=()
serve_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --short) seconds=2 ;;
    --seconds) seconds="$2"; shift ;;
    --bin) bin="$2"; shift ;;
    --only) only=(--only "$2"); shift ;;
    --) shift; serve_args=("$@"); break ;;
    *) echo "usage: $0 [--short] [--seconds N] [--bin PATH]" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/cip-webhook
fi
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" certs --out "$work/certs" --dns localhost >/dev/null 2>&1
mkdir "$work/state"
cp examples/image.yaml examples/clusterversion.yaml examples/pools.yaml examples/p0.yaml \
  examples/signed-apps.yaml "$work/state/"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)
max_connections=256
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" \
  --state-dir "$work/state" --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --max-connections "$max_connections" "${serve_args[@]}" 2>"$work/serve.log" &
server=$!
for _ in $(seq 100); do
  curl -sf --cacert "$work/certs/ca.crt" "https://localhost:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
status=0
python3 scripts/abuse.py --port "$port" --ca "$work/certs/ca.crt" --pid "$server" \
  --state "$work/state" --max-connections "$max_connections" --seconds "$seconds" \
  --metrics-port "$metrics_port" --work "$work" "${only[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "server log (last 50 lines):" >&2
  tail -n 50 "$work/serve.log" >&2
fi
exit "$status"
