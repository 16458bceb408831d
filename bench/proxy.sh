#!/usr/bin/env bash
# The gateway's cost next to nginx (issue 11 part 9). One upstream (the `/bare` route of
# examples/bench_server.rs: the demo's JSON handler, one tokio worker, already what
# bench/http_cpu.sh measures as "bare") behind two proxies configured for the same job:
#
# * nginx (Debian package): `limit_req` per client IP (zone keyed by $binary_remote_addr, a
#   rate no run reaches), the eight security response headers of secure-routes' defaults,
#   `client_max_body_size 1m`, keep-alive `proxy_pass` (upstream block with `keepalive 32`,
#   HTTP/1.1, `Connection ""`), X-Forwarded-For/-Proto/-Host and X-Request-Id set, no access
#   log (the gateway writes no line per allowed request either);
# * `secure-routes serve` with one PUBLIC route (the same limit, `max_body = "1MiB"`), memory
#   limits, audit to a temporary SQLite file.
#
# Both run one worker: nginx `worker_processes 1`, the gateway TOKIO_WORKER_THREADS=1 (its
# `#[tokio::main]` runtime otherwise starts one worker per core).
#
# In rounds, interleaved so a change in machine load hits every target alike:
#  (a) CPU per proxied request of the proxy process only: utime+stime from /proc/PID/stat
#      (nginx: summed over its master and worker) across a wrk run at full speed, divided by
#      the requests wrk completed;
#  (b) latency at a fixed rate (examples/bench_load.rs, since wrk2 is not packaged): p50/p99
#      direct to the upstream, through nginx and through the gateway; added latency is the
#      proxied percentile minus the direct one of the same round.
# The figure per target is the median over the rounds. Any non-2xx answer fails the run.
#
# Usage: bench/proxy.sh [seconds-per-run] [connections] [rounds] [rate]
#        (defaults 10, 32, 3, 2000; RATE requests/s for the latency runs, over 16 connections)
# Needs nginx and wrk (Debian packages); installs them with apt-get when missing (as root).
# KEEP=1 keeps the temporary directory (configs, logs); DEBUG=1 prints when each latency run
# starts and how many connections its target holds.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-32}"
rounds="${3:-3}"
rate="${4:-2000}"

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nginx wrk >/dev/null
fi
# One invocation, so the binary and the examples share one build of the dependencies.
cargo build --release -q -p secure-routes-cli --bin secure-routes \
    --example bench_server --example bench_load
bin=target/release/secure-routes
# Everything from here (servers, proxies, load generators) at a higher priority than the
# builds that share the machine, when run as root, so their time slices shape the tail less.
# Both proxies get the same.
if [ "$(id -u)" = 0 ]; then renice -n -10 -p $$ >/dev/null; fi
load=target/release/examples/bench_load

dir=$(mktemp -d /tmp/bench-proxy.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

wait_for() { # url: until it answers 2xx (10 s at most)
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 never answered" >&2
    exit 1
}

# Ports the kernel picks (bench/http_cpu.sh, run by someone else on the same machine, uses
# 3999): each server prints the address it bound.
bound() { # log file, awk field: the address once the server printed it (10 s at most)
    local a
    for _ in $(seq 1 100); do
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

# The gateway's security headers, as nginx `add_header` lines (read below from a response of
# the gateway itself, so the two stay the same job if the defaults change).
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
# Secrets from the environment (never the dev-secrets file in the work tree).
SECURE_ROUTES_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
CSRF_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
TOKIO_WORKER_THREADS=1 RUST_LOG=warn \
    "$bin" serve --config "$dir/gateway.toml" >"$dir/gateway.log" 2>&1 &
gateway_pid=$!
pids+=("$gateway_pid")
gateway_addr=$(bound "$dir/gateway.log" 5)
wait_for "http://$gateway_addr/bare"

headers=$(curl -fsS -D - -o /dev/null "http://$gateway_addr/bare" | tr -d '\r' | awk -F': ' '
    tolower($1) ~ /^(x-content-type-options|x-frame-options|referrer-policy|permissions-policy|content-security-policy|cross-origin-opener-policy|cross-origin-resource-policy|x-xss-protection|strict-transport-security)$/ {
        v = substr($0, length($1) + 3); gsub(/"/, "\\\"", v)
        printf "            add_header %s \"%s\" always;\n", $1, v
    }')
if [ "$(echo "$headers" | grep -c add_header)" -ne 8 ]; then
    echo "expected the gateway's eight security headers, got:" >&2
    echo "$headers" >&2
    exit 1
fi

# nginx cannot report a port it picked: the first free one from 4101.
nginx_addr=
for port in $(seq 4101 4199); do
    if ! ss -Htln "sport = :$port" | grep -q .; then nginx_addr=127.0.0.1:$port; break; fi
done
if [ -z "$nginx_addr" ]; then echo "no free port for nginx in 4101-4199" >&2; exit 1; fi
mkdir -p "$dir/nginx"
cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # The gateway never closes a client connection after N requests; nginx (1000 by default)
    # would make clients reconnect mid-run.
    keepalive_requests 1000000;
    server_tokens off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    # Per client IP, as the gateway's limiter keys PUBLIC; a rate no run reaches. nginx counts
    # in milliseconds, so requests in the same millisecond need the burst to pass.
    limit_req_zone \$binary_remote_addr zone=perip:10m rate=100000r/s;
    limit_req_status 429;
    upstream app {
        server $upstream;
        keepalive 32;
    }
    server {
        listen $nginx_addr;
        client_max_body_size 1m;
        location / {
            limit_req zone=perip burst=100000 nodelay;
$headers
            add_header X-Request-Id \$request_id always;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
nginx -t -q -c "$dir/nginx.conf" -p "$dir/nginx"
nginx -c "$dir/nginx.conf" -p "$dir/nginx" &
nginx_pid=$!
pids+=("$nginx_pid")
wait_for "http://$nginx_addr/bare"
nginx_workers=$(pgrep -P "$nginx_pid" | tr '\n' ' ')

tick=$(getconf CLK_TCK)
cpu_ticks() { # pids...: utime + stime, summed
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}

# (a) One full-speed run: prints "<us of proxy CPU per request> <requests>".
cpu_run() {
    local url=$1
    shift
    wrk -t1 -c"$conns" -d1s "$url" >/dev/null # warm-up
    local before after out reqs non2xx
    before=$(cpu_ticks "$@")
    out=$(wrk -t1 -c"$conns" -d"${secs}s" "$url")
    after=$(cpu_ticks "$@")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    if [ -n "$non2xx" ]; then echo "unexpected non-2xx answers from $url: $non2xx" >&2; exit 1; fi
    awk -v t=$((after - before)) -v hz="$tick" -v n="$reqs" 'BEGIN { printf "%.2f %d\n", t / hz * 1e6 / n, n }'
}

# (b) One fixed-rate run: prints "<p50 us> <p99 us>".
lat_run() {
    local out hp=${1#http://}
    hp=${hp%%/*}
    if [ -n "${DEBUG:-}" ]; then
        echo "$(date +%T.%N) $1: $(ss -Htn state established "( sport = :${hp##*:} )" | wc -l) connections" >&2
    fi
    out=$("$load" "$1" "$rate" "$secs" 16 1)
    echo "$out" | awk '{print $2, $6}'
}

sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
declare -A all
for r in $(seq 1 "$rounds"); do
    read -r us n < <(cpu_run "http://$nginx_addr/bare" "$nginx_pid" $nginx_workers)
    all[cpu_nginx]+="$us "
    printf 'round %d  CPU      nginx    %8s us/request  (%d requests in %ss)\n' "$r" "$us" "$n" "$secs"
    read -r us n < <(cpu_run "http://$gateway_addr/bare" "$gateway_pid")
    all[cpu_gateway]+="$us "
    printf 'round %d  CPU      gateway  %8s us/request  (%d requests in %ss)\n' "$r" "$us" "$n" "$secs"
    d50= d99= n50= n99= g50= g99=
    # The order turns each round, so no target always runs right after the CPU runs.
    for t in $(printf 'direct\nnginx\ngateway\n' | tail -n +$(((r - 1) % 3 + 1)); printf 'direct\nnginx\ngateway\n' | head -n $(((r - 1) % 3))); do
        case $t in
            direct) read -r d50 d99 < <(lat_run "http://$upstream/bare") ;;
            nginx) read -r n50 n99 < <(lat_run "http://$nginx_addr/bare") ;;
            gateway) read -r g50 g99 < <(lat_run "http://$gateway_addr/bare") ;;
        esac
    done
    if [ -z "${d99:-}" ] || [ -z "${n99:-}" ] || [ -z "${g99:-}" ]; then
        echo "a latency run failed" >&2
        exit 1
    fi
    printf 'round %d  latency  direct   p50 %7s us  p99 %7s us\n' "$r" "$d50" "$d99"
    printf 'round %d  latency  nginx    p50 %7s us  p99 %7s us\n' "$r" "$n50" "$n99"
    printf 'round %d  latency  gateway  p50 %7s us  p99 %7s us\n' "$r" "$g50" "$g99"
    all[direct50]+="$d50 "
    all[direct99]+="$d99 "
    all[nginx50]+="$(sub "$n50" "$d50") "
    all[nginx99]+="$(sub "$n99" "$d99") "
    all[gateway50]+="$(sub "$g50" "$d50") "
    all[gateway99]+="$(sub "$g99" "$d99") "
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m() { echo "${all[$1]}" | median; }
echo
echo "median over $rounds rounds (CPU: wrk -t1 -c$conns ${secs}s; latency: $rate requests/s over 16 connections, ${secs}s):"
printf '  %-8s %10s %14s %14s\n' "" "CPU us/req" "added p50 us" "added p99 us"
printf '  %-8s %10s %14s %14s\n' nginx "$(m cpu_nginx)" "$(m nginx50)" "$(m nginx99)"
printf '  %-8s %10s %14s %14s\n' gateway "$(m cpu_gateway)" "$(m gateway50)" "$(m gateway99)"
printf '  direct to the upstream: p50 %s us, p99 %s us\n' "$(m direct50)" "$(m direct99)"
echo "  rounds: nginx CPU ${all[cpu_nginx]}| gateway CPU ${all[cpu_gateway]}"
echo "          added p99 nginx ${all[nginx99]}| gateway ${all[gateway99]}"
echo
ratio=$(awk -v a="$(m cpu_gateway)" -v b="$(m cpu_nginx)" 'BEGIN { printf "%.2f", a / b }')
echo "gateway / nginx CPU per request: ${ratio}x  (target <= 1.0x)"
echo "gateway added p99 at $rate/s:    $(m gateway99) us  (target < 1000 us)"
echo "versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $("$bin" --version 2>/dev/null || echo secure-routes), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
