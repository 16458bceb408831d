#!/usr/bin/env bash
# Server CPU per request for /api/public-data (PUBLIC policy) against the same handler
# unprotected, measured with wrk on loopback. Prints both figures and their ratio.
#
# Usage: bench/http_cpu.sh [seconds-per-run] [connections]
# Needs wrk (Debian package `wrk`); installs it with apt-get when missing and run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-32}"
addr=127.0.0.1:3999

if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p secure-routes-cli --example bench_server
target/release/examples/bench_server "$addr" > /tmp/bench_server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    grep -q ready /tmp/bench_server.log 2>/dev/null && break
    sleep 0.1
done

tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

run() {
    local path=$1
    wrk -t1 -c"$conns" -d2s "http://$addr$path" >/dev/null # warm-up
    local before after out reqs
    before=$(cpu_ticks)
    out=$(wrk -t1 -c"$conns" -d"${secs}s" "http://$addr$path")
    after=$(cpu_ticks)
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    if [ -n "$non2xx" ]; then echo "unexpected non-2xx answers on $path: $non2xx" >&2; exit 1; fi
    # microseconds of server CPU (user + system) per request
    awk -v t=$((after - before)) -v hz="$tick" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }'
    echo " $reqs"
}

read -r plain plain_n < <(run /plain)
read -r prot prot_n < <(run /api/public-data)
ratio=$(awk -v a="$prot" -v b="$plain" 'BEGIN { printf "%.2f", a / b }')
echo "unprotected /plain:            ${plain} us CPU/request (${plain_n} requests in ${secs}s)"
echo "PUBLIC /api/public-data:       ${prot} us CPU/request (${prot_n} requests in ${secs}s)"
echo "ratio protected/unprotected:   ${ratio}  (target <= 1.3)"
