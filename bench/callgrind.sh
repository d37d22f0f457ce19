#!/usr/bin/env bash
# bench/callgrind.sh — user-space instructions per request of the gateway, counted by callgrind.
#
# Wall-clock numbers on this shared 2-core VM move by 5-10 % between runs; instruction counts do
# not (repeat runs agree to well under 1 %). Use this to decide whether a change to the request path
# makes the gateway cheaper, and bench/run.sh to see what that is worth against nginx/HAProxy.
#
#   bench/callgrind.sh [h1|h2|401] [REQUESTS]      (default: h1 10000)
#
# Starts an upstream nginx (200-byte JSON) and the release gateway under
# `valgrind --tool=callgrind --instr-atstart=no`, warms up with 2,000 requests (upstream pool,
# caches), switches instrumentation on, sends REQUESTS with h2load (8 connections, CONNS=N; HTTP/2 with 10
# streams each, HTTP/1.1 one at a time), switches it off, dumps, and prints instructions per request
# plus the top functions. Kernel work (system calls, TCP) is not counted: callgrind sees user space
# only, and valgrind's CPU lacks SHA-NI, so sha2 (the key hash) shows its software fallback
# (~3.5k instructions) where the real CPU spends ~0.3k. Needs bench/setup.sh (certs, nginx, h2load)
# and valgrind (installed if missing). KEEP=path keeps the callgrind output for callgrind_annotate;
# GATEWAY_BIN=path measures that binary instead of building target/release (A/B of two builds);
# LOGS=1 turns the access log on (JSON lines to a file; the writer thread is counted too).
# REDIS=1 adds `cluster` with a redis-server of its own (every limiter shared; requests that arrive
# while a script call is in flight share the next one; `timeout: 5s` so that valgrind's slowness
# does not turn Redis mode into the local fallback; Redis's own work is not counted); CONNS=N sets
# h2load's connections (default 8; 64 is what bench/run.sh uses for HTTP/1.1; each run opens its
# connections inside the measured window, ~0.8M instructions per TLS handshake, so give CONNS=64
# at least 40000 requests); POOL=2 makes the upstream a pool of two servers (two
# ports of the same upstream nginx). Both measure what a Part 2 feature costs when configured.
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
MODE="${1:-h1}"
N="${2:-10000}"
case "$MODE" in h1 | h2 | 401) ;; *) echo "usage: $0 [h1|h2|401] [REQUESTS]" >&2; exit 2 ;; esac
say() { echo "callgrind.sh: $*" >&2; }

command -v valgrind >/dev/null || { say "installing valgrind"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >&2; }
[[ -f "$BENCH/certs/server.crt" ]] || "$BENCH/setup.sh"
BIN="${GATEWAY_BIN:-}"
[[ -n "$BIN" ]] || { (cd "$ROOT" && cargo build --release -q); BIN="$ROOT/target/release/twenty-gateway"; }

WORK="$(mktemp -d /tmp/gw-callgrind.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT="$(free_port)"; UP_PORT2="$(free_port)"; GW_PORT="$(free_port)"; ADMIN_PORT="$(free_port)"
KEY="bench-key-1"
SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"

mkdir -p "$WORK/tmp"
cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log $WORK/upstream.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    server {
        listen 127.0.0.1:$UP_PORT;
        listen 127.0.0.1:$UP_PORT2;
        default_type application/json;
        location / { return 200 '{"data":{"people":[{"id":"0f7c5a1e","name":{"firstName":"Ada","lastName":"Lovelace"},"emails":{"primaryEmail":"ada@example.test"},"city":"London","position":1}]},"totalCount":1,"bench":"x"}'; }
    }
}
EOF
ACCESS_LOG=false; [[ -z "${LOGS:-}" ]] || ACCESS_LOG=true
CORE="http://127.0.0.1:$UP_PORT"
[[ "${POOL:-1}" == 2 ]] && CORE="{ servers: [http://127.0.0.1:$UP_PORT, http://127.0.0.1:$UP_PORT2] }"
CLUSTER=""
if [[ -n "${REDIS:-}" ]]; then
  command -v redis-server >/dev/null || { say "installing redis-server"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools >&2; }
  REDIS_PORT="$(free_port)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  CLUSTER="cluster: { redis: \"redis://127.0.0.1:$REDIS_PORT/0\", timeout: 5s }"
fi
cat >"$WORK/gateway.yaml" <<EOF
listen:
  https: 127.0.0.1:$GW_PORT
  admin: 127.0.0.1:$ADMIN_PORT
access_log: $ACCESS_LOG
tls:
  certificates:
    - { cert: $BENCH/certs/server.crt, key: $BENCH/certs/server.key }
base_domains: [example.test]
upstreams:
  core: $CORE
  metadata: http://127.0.0.1:$UP_PORT
routes:
  - { prefix: /rest, upstream: core }
tenants:
  - name: acme
    domains: [acme.example.test]
    key_rate: { requests: 100000000, per: 1s }
keys:
  - { id: bench, tenant: acme, sha256: $SHA }
$CLUSTER
EOF

nginx -p "$WORK" -c "$WORK/upstream.conf" -g "daemon off;" >/dev/null 2>&1 &
PIDS+=($!)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
  "$BIN" --config "$WORK/gateway.yaml" --workers 1 >"$WORK/gateway.log" 2>&1 &
VG=$!
PIDS+=("$VG")
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && break
  sleep 0.3
done

URL="https://acme.example.test/rest/people"
H=(-H "authorization: Bearer $KEY"); [[ $MODE == 401 ]] && H=()
P=(--h1); M=1; [[ $MODE == h2 ]] && { P=(); M=10; }
load() { h2load "${P[@]}" --connect-to="127.0.0.1:$GW_PORT" -c"${CONNS:-8}" -m"$1" -n "$2" "${H[@]}" "$URL"; }
load 1 2000 >/dev/null
callgrind_control -i on "$VG" >/dev/null 2>&1
# Redis's counts so far: commands sent, and executed counting those inside the limiter script
# (TIME/GET/SET there cost no round trip of their own); INFO itself left out.
redis_cmds() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[=,:]' '/^cmdstat_/ && !/cmdstat_info/ {a+=$3; if ($1 !~ /^cmdstat_(time|get|set)$/) s+=$3} END{print s+0, a+0}'; }
CMDS0="0 0"; [[ -n "${REDIS:-}" ]] && CMDS0="$(redis_cmds)"
load "$M" "$N" | grep -E "^requests:|^status codes:" >&2
if [[ -n "${REDIS:-}" ]]; then
  CMDS1="$(redis_cmds)"
  read -r S0 A0 <<<"$CMDS0"; read -r S1 A1 <<<"$CMDS1"
  echo "redis: $((S1 - S0)) commands sent for $N requests ($((A1 - A0)) executed, counting those inside the script)"
  # Requests Redis did not decide (its answer came later than `timeout`): must be 0 for the count to mean Redis mode.
  echo "redis: fallback_total $(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^gateway_ratelimit_fallback_total/ {print $2}')"
fi
callgrind_control -i off "$VG" >/dev/null 2>&1
callgrind_control -d "$VG" >/dev/null 2>&1
OUT="$(ls "$WORK"/cg.out.* | head -1)"
TOTAL="$(callgrind_annotate --auto=no "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
echo "mode $MODE: $N requests, $TOTAL instructions, $((TOTAL / N)) per request (user space)"
echo "top functions (self, instructions per request):"
callgrind_annotate --auto=no "$OUT" 2>/dev/null | awk -v n="$N" '
  /^ *[0-9,]+ \(/ && !/PROGRAM TOTALS/ && shown < 15 {
    v = $1; gsub(",", "", v); $1 = ""; $2 = ""; sub(/^ +/, ""); sub(/ \[.*$/, ""); sub(/^[^:]*:/, "")
    printf "  %7d  %s\n", v / n, substr($0, 1, 110); shown++
  }'
if [[ -n "${KEEP:-}" ]]; then cp "$OUT" "$KEEP"; echo "callgrind output kept in $KEEP"; fi
