#!/usr/bin/env bash
# Reload under load: the gateway serves wrk traffic (HTTP/1.1 keep-alive over TLS) with a
# 100,000-key config while `POST /reload` runs every second. Reports every reload's latency
# and the requests that failed (non-2xx, socket errors). Target: 0 failed.
#
#   bench/reload_under_load.sh [KEYS=100000] [SECONDS=20]
#
# Needs wrk (apt-get install wrk); builds the gateway and the stand-in upstream in release mode.
# Traffic goes to 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
KEYS=${1:-100000}
SECS=${2:-20}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin twenty-gateway --example stand_in

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); GW=$(free_port); ADMIN=$(free_port)
TOKEN=bench-token-$RANDOM$RANDOM

python3 - "$WORK/gateway.yaml" "$KEYS" "$ROOT/certs" "$UP" "$GW" "$ADMIN" "$TOKEN" <<'PY'
import hashlib, sys
path, keys, certs, up, gw, admin, token = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
out = [f"listen: {{ https: 127.0.0.1:{gw}, admin: 127.0.0.1:{admin} }}",
       f"tls: {{ certificates: [ {{ cert: {certs}/localhost.crt, key: {certs}/localhost.key }} ] }}",
       "base_domains: [localhost]",
       f"upstreams: {{ core: http://127.0.0.1:{up}, metadata: http://127.0.0.1:{up} }}",
       "limits: { default_rate: { requests: 100, per: 1m, burst: 20 } }",
       "access_log: false",
       "tenants:"]
out += [f"  - {{ name: t{t}, subdomain: {'acme' if t == 0 else 't%d' % t} }}" for t in range(100)]
out.append("keys:")
h = hashlib.sha256(token.encode()).hexdigest()
out.append(f"  - {{ id: bench, tenant: t0, sha256: {h}, rate: {{ requests: 100000000, per: 1s }} }}")
for k in range(keys - 1):
    hk = hashlib.sha256(f"token-{k}".encode()).hexdigest()
    out.append(f"  - {{ id: key-{k}, tenant: t{k % 100}, sha256: {hk} }}")
open(path, "w").write("\n".join(out) + "\n")
PY

"$ROOT/target/release/examples/stand_in" "127.0.0.1:$UP" >/dev/null &
PIDS+=($!)
"$ROOT/target/release/twenty-gateway" --config "$WORK/gateway.yaml" >"$WORK/gw.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done

wrk -t1 -c32 -d"${SECS}s" -H "Host: acme.localhost" -H "Authorization: Bearer $TOKEN" \
  "https://127.0.0.1:$GW/rest/people" >"$WORK/wrk.txt" 2>&1 &
WRK=$!
PIDS+=($WRK)
sleep 1
LAT=()
FAILED_RELOADS=0
for _ in $(seq $((SECS - 3))); do
  out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -XPOST "http://127.0.0.1:$ADMIN/reload")
  [ "${out%% *}" = "200" ] || FAILED_RELOADS=$((FAILED_RELOADS + 1))
  LAT+=("${out##* }")
  sleep 1
done
wait "$WRK" || true
REQS=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
NON2XX=$(awk -F': ' '/Non-2xx/ {print $2}' "$WORK/wrk.txt"); NON2XX=${NON2XX:-0}
SOCKERR=$(grep -o 'Socket errors:.*' "$WORK/wrk.txt" || echo "Socket errors: none")
SORTED=$(printf '%s\n' "${LAT[@]}" | sort -n)
echo "## Reload under load ($(date -u +%F), $KEYS keys, ${SECS}s wrk -c32, POST /reload every second)"
echo
echo "| reloads | failed reloads | reload p50 | reload max | requests | non-2xx | socket errors |"
echo "|---:|---:|---:|---:|---:|---:|---|"
printf '| %d | %d | %.0f ms | %.0f ms | %s | %s | %s |\n' "${#LAT[@]}" "$FAILED_RELOADS" \
  "$(echo "$SORTED" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]*1000}')" \
  "$(echo "$SORTED" | tail -1 | awk '{print $1*1000}')" "$REQS" "$NON2XX" "${SOCKERR#Socket errors: }"
