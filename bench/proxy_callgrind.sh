#!/usr/bin/env bash
# Where the gateway's time per proxied request goes: `secure-routes serve` (one PUBLIC route,
# the configuration of bench/proxy.sh, one tokio worker) under valgrind's callgrind, with
# instrumentation switched on only after start-up, while wrk sends requests to it; then
# instructions per request and the top functions by inclusive cost.
#
# Usage: bench/proxy_callgrind.sh [seconds] [top-N]     (defaults 20 and 45)
# The profile stays in target/callgrind/gateway.out for
# `callgrind_annotate --inclusive=yes target/callgrind/gateway.out | less`.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
top="${2:-45}"

if ! command -v valgrind >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind wrk >/dev/null
fi
cargo build --release -q -p secure-routes-cli --bin secure-routes \
    --example bench_server --example bench_load
mkdir -p target/callgrind
out=target/callgrind/gateway.out
dir=$(mktemp -d /tmp/bench-proxy-cg.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
wait_for() {
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 never answered" >&2
    exit 1
}

bound() { # log file, awk field: the address the server printed (30 s at most)
    local a
    for _ in $(seq 1 300); do
        a=$(awk -v f="$2" 'NR == 1 && NF >= f {print $f}' "$1" 2>/dev/null | sed 's|^http://||')
        if [ -n "$a" ]; then echo "$a"; return 0; fi
        sleep 0.1
    done
    echo "no address in $1:" >&2
    cat "$1" >&2
    exit 1
}
target/release/examples/bench_server 127.0.0.1:0 >"$dir/upstream.log" 2>&1 &
pids+=($!)
upstream=$(bound "$dir/upstream.log" 3)
wait_for "http://$upstream/bare"
cat >"$dir/gateway.toml" <<EOF
listen = "127.0.0.1:0"
upstream = "http://$upstream"

[stores]
limits = "memory"
audit = "sqlite:$dir/audit.db"

[[routes]]
path = "/bare"
preset = "public"
rate_limit = "100000/second"
max_body = "1MiB"
EOF
SECURE_ROUTES_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
CSRF_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
TOKIO_WORKER_THREADS=1 RUST_LOG=warn \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    target/release/secure-routes serve --config "$dir/gateway.toml" >"$dir/gateway.log" 2>"$dir/valgrind.log" &
gateway_pid=$!
pids+=("$gateway_pid")
gateway_addr=$(bound "$dir/gateway.log" 5)
wait_for "http://$gateway_addr/bare"
wrk -t1 -c4 -d2s "http://$gateway_addr/bare" >/dev/null # warm-up, not instrumented
callgrind_control -i on "$gateway_pid" >/dev/null
res=$(wrk -t1 -c4 -d"${secs}s" "http://$gateway_addr/bare")
callgrind_control -i off "$gateway_pid" >/dev/null
reqs=$(echo "$res" | awk '/requests in/ {print $1}')
kill -INT "$gateway_pid"
wait "$gateway_pid" 2>/dev/null || true
total=$(awk '/^totals:/ {print $2}' "$out" | tail -1)
echo "requests: $reqs; instructions: $total; per request: $((total / reqs))"
echo
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | grep -v '^-' | sed -n '1,/^Ir/d; /./p' | head -n "$top"
