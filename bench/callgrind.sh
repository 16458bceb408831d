#!/usr/bin/env bash
# Instructions per request, in process, for the same handler bare, bare with PUBLIC's header
# lines as constants, behind PUBLIC, behind the
# assembled tower_governor/tower-http stack, behind AUTHENTICATED (HS256 bearer, uncached) and
# behind the assembled stack plus a jsonwebtoken bearer check: the `instructions` bench driver
# (crates/secure-routes/benches/instructions.rs) runs under valgrind's callgrind twice per
# route, with FEW and MANY requests, counting only inside the driver's `measured_requests`
# (after its warm-up); (instructions(MANY) - instructions(FEW)) / (MANY - FEW) is the cost of
# one request (the same for the number of calls to malloc). Unlike time, instruction counts do not move with other processes' load
# (they do move with the compiler, the dependencies' versions and the CPU features the
# libraries detect at run time: valgrind's CPU has no SHA extensions, for one).
#
# Also counted per request: calls to malloc, and atomic instructions (bench/atomics.py: a
# reference count taken and dropped, two atomics, costs about what an allocation does, yet
# each atomic is one instruction here; issue 10 part 7, stop 22).
#
# Usage: bench/callgrind.sh [FEW] [MANY]        (defaults 1000 and 6000)
# INSTRUCTIONS_BIN=path runs a driver built before (a before/after comparison: build the
# `instructions` bench on the old commit, copy the binary aside, run both with the same script).
# The MANY run's profile of each route stays in target/callgrind/ROUTE.out (CALLGRIND_OUT=dir: there) for
# `callgrind_annotate --inclusive=yes target/callgrind/public.out | head -60`.
set -euo pipefail
cd "$(dirname "$0")/.."
few="${1:-1000}"
many="${2:-6000}"

if ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
bin="${INSTRUCTIONS_BIN:-}"
if [ -z "$bin" ]; then
    bin=$(cargo bench -q -p secure-routes --bench instructions --no-run --message-format=json \
        | grep -o '"executable":"[^"]*instructions-[^"]*"' | cut -d'"' -f4 | tail -1)
fi
if [ -z "$bin" ]; then echo "could not find the instructions bench binary" >&2; exit 1; fi
out="${CALLGRIND_OUT:-target/callgrind}"
mkdir -p "$out"

instructions() { # route, requests, output file -> total instructions (Ir) of the run
    # Only the driver's `measured_requests` is counted: setup and warm-up are outside it (the
    # memory store's CPU-counter calibration runs for a time, not a number of steps, and
    # moved the per-request figure by thousands of instructions between runs).
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_requests*' \
        --dump-instr=yes --callgrind-out-file="$3" "$bin" "$1" "$2" 2>/dev/null >/dev/null
    awk '/^(summary|totals):/ {print $2; exit}' "$3"
}

mallocs() { # calls to malloc recorded in a callgrind profile (names are compressed: the
    # first "fn=(id) name" or "cfn=(id) name" names an id, later lines give the id alone)
    awk '/^c?fn=\(/ {
            id = $1; sub(/^c?fn=/, "", id)
            if (NF > 1) { name = $0; sub(/^c?fn=\([0-9]+\) /, "", name); names[id] = name }
            cur = ($0 ~ /^cfn=/) ? names[id] : ""
            next
        }
        /^calls=/ { if (cur == "malloc") { split($1, c, "="); n += c[2] } cur = "" }
        END { print n + 0 }' "$1"
}

declare -A per
for route in bare_handler bare_wire public assembled authenticated_hs256 assembled_jwt_hs256; do
    a=$(instructions "$route" "$few" "$out/$route.few.out")
    b=$(instructions "$route" "$many" "$out/$route.out")
    per[$route]=$(awk -v a="$a" -v b="$b" -v n=$((many - few)) 'BEGIN { printf "%.0f", (b - a) / n }')
    allocs=$(awk -v a="$(mallocs "$out/$route.few.out")" \
        -v b="$(mallocs "$out/$route.out")" -v n=$((many - few)) \
        'BEGIN { printf "%.1f", (b - a) / n }')
    atomics=$(awk -v a="$(bench/atomics.py "$out/$route.few.out")" \
        -v b="$(bench/atomics.py "$out/$route.out")" -v n=$((many - few)) \
        'BEGIN { printf "%.1f", (b - a) / n }')
    printf '%-22s %8s instructions/request  %5s mallocs  %5s atomics/request   (%s requests: %s, %s requests: %s)\n' \
        "$route" "${per[$route]}" "$allocs" "$atomics" "$few" "$a" "$many" "$b"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a - b }'; }
echo
echo "PUBLIC adds                   $(added "${per[public]}" "${per[bare_handler]}") instructions/request over bare"
echo "bare-wire adds                $(added "${per[bare_wire]}" "${per[bare_handler]}")  (PUBLIC's header lines as constants)"
echo "assembled adds                $(added "${per[assembled]}" "${per[bare_handler]}")"
echo "AUTHENTICATED adds            $(added "${per[authenticated_hs256]}" "${per[bare_handler]}")"
echo "assembled+JWT adds            $(added "${per[assembled_jwt_hs256]}" "${per[bare_handler]}")"
echo "PUBLIC / bare                 $(ratio "${per[public]}" "${per[bare_handler]}")"
echo "PUBLIC / assembled            $(ratio "${per[public]}" "${per[assembled]}")  (the HTTP target is <= 0.85)"
echo "AUTHENTICATED / assembled+JWT $(ratio "${per[authenticated_hs256]}" "${per[assembled_jwt_hs256]}")  (the HTTP target is <= 0.85)"
