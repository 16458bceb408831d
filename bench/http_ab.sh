#!/usr/bin/env bash
# Before/after over HTTP: two builds of the bench server (`bench_server` example) side by side,
# the same route on each, interleaved in rounds (A then B, B then A, ...), server CPU per
# request from /proc as in bench/http_cpu.sh. Prints each round and the median of the
# per-round B/A ratios: the two runs of a round are seconds apart, so a drift in the machine's
# load cancels out of their ratio. A change of 1-2 % needs 10 or more rounds on the 2-core
# machine (issue 10 part 7, stop 19).
#
# Usage: bench/http_ab.sh A_SERVER B_SERVER [route] [rounds] [seconds]
#   (route: bare, bare-wire, public, assembled, authenticated or assembled-jwt; default public)
# Build A on the old commit (`cargo build --release -p secure-routes-cli --example
# bench_server`) and copy target/release/examples/bench_server aside first.
set -euo pipefail
a_bin=$1 b_bin=$2 route=${3:-public} rounds=${4:-10} secs=${5:-3}
if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
# The servers on CPU 1 (one loaded at a time), wrk on CPU 0, as bench/http_cpu.sh.
srv=() gen=()
if taskset -c 0 true 2>/dev/null && taskset -c 1 true 2>/dev/null; then
    srv=(taskset -c 1) gen=(taskset -c 0)
fi
logs=$(mktemp -d)
"${srv[@]}" "$a_bin" 127.0.0.1:3901 > "$logs/a.log" 2>&1 & pa=$!
"${srv[@]}" "$b_bin" 127.0.0.1:3902 > "$logs/b.log" 2>&1 & pb=$!
trap 'kill $pa $pb 2>/dev/null || true; rm -rf "$logs"' EXIT
for _ in $(seq 1 100); do
    grep -q ready "$logs/a.log" 2>/dev/null && grep -q ready "$logs/b.log" 2>/dev/null && break
    sleep 0.1
done
token=$(awk '/^ready/ {print $5}' "$logs/a.log")
auth=()
case $route in authenticated | assembled-jwt) auth=(-H "Authorization: Bearer $token") ;; esac
tick=$(getconf CLK_TCK)
# One measurement on one server: microseconds of its CPU (user + system) per request.
one() {
    local pid=$1 port=$2 before after out n
    "${gen[@]}" wrk -t1 -c32 -d1s "${auth[@]}" "http://127.0.0.1:$port/$route" >/dev/null
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    out=$("${gen[@]}" wrk -t1 -c32 -d"${secs}s" "${auth[@]}" "http://127.0.0.1:$port/$route")
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    if echo "$out" | grep -q Non-2xx; then echo "non-2xx answers on /$route" >&2; exit 1; fi
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v t=$((after - before)) -v hz="$tick" -v n="$n" 'BEGIN { printf "%.3f", t / hz * 1e6 / n }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
as=() bs=() ratios=()
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then x=$(one $pa 3901); y=$(one $pb 3902); else y=$(one $pb 3902); x=$(one $pa 3901); fi
    as+=("$x") bs+=("$y") ratios+=("$(awk -v a="$x" -v b="$y" 'BEGIN { printf "%.4f", b / a }')")
    printf 'round %2d  A %s  B %s  B/A %s\n' "$r" "$x" "$y" "${ratios[-1]}"
done
echo "/$route, $rounds rounds of ${secs}s: median A $(median "${as[@]}") us, B $(median "${bs[@]}") us, median of per-round B/A $(median "${ratios[@]}")"
