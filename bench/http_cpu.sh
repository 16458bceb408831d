#!/usr/bin/env bash
# Server CPU per request over HTTP (wrk on loopback) for the same handler bare, bare with
# PUBLIC's header lines as constants (`bare-wire`: what PUBLIC's bytes cost alone), behind PUBLIC,
# behind the stack a user would assemble from tower_governor and tower-http layers, behind
# AUTHENTICATED (HS256 bearer) and behind that assembled stack plus a jsonwebtoken bearer check
# (the routes of crates/secure-routes/benches/stacks/mod.rs). The six routes are interleaved
# in rounds in one run, so a change in machine load hits all of them alike; the figure per
# route is the median over the rounds. Prints CPU per request and the ratios of issue 10's
# targets.
#
# Usage: bench/http_cpu.sh [seconds-per-run] [connections] [rounds]
# Needs wrk (Debian package `wrk`); installs it with apt-get when missing and run as root.
# BENCH_SERVER=path runs a server built before (a before/after comparison: build the
# `bench_server` example on the old commit and copy it aside).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-32}"
rounds="${3:-3}"
addr=127.0.0.1:3999

if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
server="${BENCH_SERVER:-}"
if [ -z "$server" ]; then
    cargo build --release -q -p secure-routes-cli --example bench_server
    server=target/release/examples/bench_server
fi
# Where CPUs 0 and 1 may be used, the server runs on CPU 1 and wrk on CPU 0 (PIN=0 turns it off): the
# scheduler moving either between cores was most of the round-to-round spread on the 2-core
# machine (issue 10 part 7, stop 18).
srv_cpu=() wrk_cpu=()
if [ "${PIN:-1}" = 1 ] && command -v taskset >/dev/null && taskset -c 0 true 2>/dev/null &&
    taskset -c 1 true 2>/dev/null; then
    srv_cpu=(taskset -c 1) wrk_cpu=(taskset -c 0)
fi
"${srv_cpu[@]}" "$server" "$addr" > /tmp/bench_server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "${sleeps_file:-}"' EXIT
for _ in $(seq 1 100); do
    grep -q ready /tmp/bench_server.log 2>/dev/null && break
    sleep 0.1
done
token=$(awk '/^ready/ {print $5}' /tmp/bench_server.log)
if [ -z "$token" ]; then cat /tmp/bench_server.log >&2; exit 1; fi

tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15, $14}' "/proc/$pid/stat"; }

# wrk's sleeps (voluntary context switches, from GNU time's rusage) per request, where
# /usr/bin/time is installed: each time wrk sleeps, the server's next answer must wake it,
# and a slower route makes it sleep more often. How much of the server's system time that
# costs was not measured apart (BENCHMARKS.md, stop 21).
sleeps_file=$(mktemp)
timer=()
if [ -x /usr/bin/time ]; then timer=(/usr/bin/time -f %w -o "$sleeps_file"); fi

# One measurement: prints "<us of server CPU per request> <requests> <us of it in user space>
# <wrk's sleeps per request, or - >".
run() {
    local path=$1 auth=()
    if [ "$2" = yes ]; then auth=(-H "Authorization: Bearer $token"); fi
    "${wrk_cpu[@]}" wrk -t1 -c"$conns" -d1s "${auth[@]}" "http://$addr$path" >/dev/null # warm-up
    local before after out reqs non2xx user_before user_after
    read -r before user_before < <(cpu_ticks)
    echo - > "$sleeps_file"
    out=$("${wrk_cpu[@]}" "${timer[@]}" wrk -t1 -c"$conns" -d"${secs}s" "${auth[@]}" "http://$addr$path")
    read -r after user_after < <(cpu_ticks)
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    if [ -n "$non2xx" ]; then echo "unexpected non-2xx answers on $path: $non2xx" >&2; exit 1; fi
    # microseconds of server CPU (user + system) per request
    awk -v t=$((after - before)) -v u=$((user_after - user_before)) -v hz="$tick" -v n="$reqs" \
        -v w="$(cat "$sleeps_file")" \
        'BEGIN { printf "%.2f %d %.2f %s\n", t / hz * 1e6 / n, n, u / hz * 1e6 / n,
                 (w == "-") ? "-" : sprintf("%.3f", w / n) }'
}

routes=(bare bare-wire public assembled authenticated assembled-jwt)
declare -A bearer=([bare]=no [bare-wire]=no [public]=no [assembled]=no [authenticated]=yes [assembled-jwt]=yes)
declare -A all user sleeps
for r in $(seq 1 "$rounds"); do
    for route in "${routes[@]}"; do
        read -r us n us_user wrk_sleeps < <(run "/$route" "${bearer[$route]}")
        all[$route]+="$us "
        user[$route]+="$us_user "
        sleeps[$route]+="$wrk_sleeps "
        printf 'round %d  /%-15s %8s us CPU/request  (%d requests in %ss)\n' "$r" "$route" "$us" "$n" "$secs"
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
declare -A med
echo
echo "median over $rounds rounds (wrk -t1 -c$conns, ${secs}s per route per round):"
for route in "${routes[@]}"; do
    med[$route]=$(echo "${all[$route]}" | median)
    printf '  /%-15s %8s us CPU/request   rounds: %s\n' "$route" "${med[$route]}" "${all[$route]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# The median of the per-round ratios: the two routes of one round ran a few seconds apart, so a
# drift in the machine's load cancels out of their ratio.
paired() {
    paste <(echo "${all[$1]}" | tr ' ' '\n' | grep .) <(echo "${all[$2]}" | tr ' ' '\n' | grep .) |
        awk '{ printf "%.4f\n", $1 / $2 }' | median | awk '{ printf "%.2f", $1 }'
}
both() { echo "$(ratio "${med[$1]}" "${med[$2]}") / $(paired "$1" "$2")"; }
echo
echo "ratios: of the medians / median of the per-round ratios"
echo "PUBLIC / bare:                 $(both public bare)  (target <= 1.3)"
echo "assembled / bare:              $(both assembled bare)"
echo "bare-wire / bare:              $(both bare-wire bare)  (PUBLIC's bytes alone)"
echo "bare-wire / assembled:         $(both bare-wire assembled)  (the least PUBLIC / assembled can be)"
echo "PUBLIC / bare-wire:            $(both public bare-wire)  (the pipeline's own work)"
echo "PUBLIC / assembled:            $(both public assembled)  (target <= 0.85)"
echo "AUTHENTICATED / assembled+JWT: $(both authenticated assembled-jwt)  (target <= 0.85)"
# The same in user space alone. The kernel's share moves with more than the route's own work:
# waking wrk when it slept (more often behind a slower route) and loopback packet processing
# (softirq), counted to whichever process it interrupts (BENCHMARKS.md, stop 20). Not the
# issue's measure; printed to tell the two apart.
declare -A umed
for route in "${routes[@]}"; do umed[$route]=$(echo "${user[$route]}" | median); done
echo
printf 'user space alone (medians, us/request):'
for route in "${routes[@]}"; do printf ' /%s %s' "$route" "${umed[$route]}"; done
echo
echo "  PUBLIC / bare $(ratio "${umed[public]}" "${umed[bare]}"), PUBLIC / assembled" \
    "$(ratio "${umed[public]}" "${umed[assembled]}"), AUTHENTICATED / assembled+JWT" \
    "$(ratio "${umed[authenticated]}" "${umed[assembled-jwt]}")"
if [ ${#timer[@]} -gt 0 ]; then
    printf "wrk's sleeps per request (medians):"
    for route in "${routes[@]}"; do printf ' /%s %s' "$route" "$(echo "${sleeps[$route]}" | median)"; done
    echo
fi
