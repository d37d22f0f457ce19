#!/usr/bin/env bash
# bench/setup.sh — idempotent machine + asset setup for the twenty-gateway benchmark.
#   - installs the peers and load tools from Debian if missing: nginx, haproxy, caddy, wrk,
#     nghttp2-client (h2load), plus openssl/curl/python3/procps/util-linux (taskset)
#   - stops distro service copies of nginx/haproxy/caddy (we run our own instances, by PID)
#   - makes a test CA and an ECDSA P-256 server cert for acme.example.test (bench/certs/)
#   - maps acme.example.test to 127.0.0.1 in /etc/hosts (wrk takes SNI from the URL host)
#   - writes the 1 MiB body the upstream serves (bench/upstream-www/)
#   - builds bench/tools/gwload (own cargo project, own target dir)
#   - with --gateway: builds the gateway (`cargo build --release` at the repo root)
# Re-running is cheap: nothing is regenerated when present (FORCE_CERTS=1 regenerates certs).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
CERTS="$BENCH/certs"
BUILD_GATEWAY=0
for a in "$@"; do
  case "$a" in
    --gateway) BUILD_GATEWAY=1 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
say() { echo "setup: $*" >&2; }

# ---- packages ---------------------------------------------------------------------------------
need=()
for p in nginx haproxy caddy wrk nghttp2-client openssl curl python3 procps util-linux ca-certificates \
  redis-server redis-tools; do   # redis: the --variants redis gateway's Redis
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || { say "need root to apt-get install ${need[*]}"; exit 1; }
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
# Distro packages may start system-wide services we never use; stop them through their own
# service manager only (never by process name).
for svc in nginx haproxy caddy redis-server; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  elif [[ -x /etc/init.d/$svc ]] && /etc/init.d/$svc status >/dev/null 2>&1; then
    /etc/init.d/$svc stop >/dev/null 2>&1 || true
  fi
done

# ---- certificates -----------------------------------------------------------------------------
mkdir -p "$CERTS"
if [[ "${FORCE_CERTS:-0}" == 1 ]]; then rm -f "$CERTS"/*; fi
cd "$CERTS"
if [[ ! -s ca.crt || ! -s ca.key ]]; then
  say "generating test CA"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=twenty-gateway bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt 2>/dev/null
fi
if [[ ! -s server.crt || ! -s server.key ]]; then
  say "generating server cert (ECDSA P-256, SAN acme.example.test)"
  cat > server.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:acme.example.test
EXT
  openssl ecparam -name prime256v1 -genkey -noout -out server.key.tmp
  # PKCS#8 PEM: readable by every peer and by rustls-pemfile
  openssl pkcs8 -topk8 -nocrypt -in server.key.tmp -out server.key
  rm -f server.key.tmp
  openssl req -new -key server.key -subj "/CN=acme.example.test" -out server.csr
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile server.ext -out server.crt 2>/dev/null
  rm -f server.csr server.ext
fi
cat server.crt server.key > server.pem        # HAProxy wants cert + key in one file
openssl verify -CAfile ca.crt server.crt >/dev/null
chmod 644 ./*.crt ./*.key ./*.pem             # test-only material; nginx workers may drop privileges
cd "$BENCH"

# ---- loopback name for SNI (wrk has no --resolve) ---------------------------------------------
if ! grep -qE '^127\.0\.0\.1[[:space:]].*\bacme\.example\.test\b' /etc/hosts; then
  if [[ -w /etc/hosts ]]; then
    echo "127.0.0.1 acme.example.test # twenty-gateway bench" >> /etc/hosts
  else
    say "WARNING: cannot add acme.example.test to /etc/hosts; wrk scenarios will fail"
  fi
fi

# ---- upstream payloads ------------------------------------------------------------------------
mkdir -p "$BENCH/upstream-www"
big="$BENCH/upstream-www/big.json"
if [[ ! -s "$big" || $(stat -c %s "$big") != 1048576 ]]; then
  python3 - "$big" <<'PY'
import sys
n = 1 << 20
head, tail = b'{"data":"', b'"}\n'
open(sys.argv[1], "wb").write(head + b"x" * (n - len(head) - len(tail)) + tail)
PY
fi

# ---- our load tool (own cargo project, own target dir) -----------------------------------------
command -v cargo >/dev/null || { say "cargo not found (install Rust: the gateway needs it anyway)"; exit 1; }
say "building bench/tools/gwload"
(cd "$BENCH/tools/gwload" && CARGO_TARGET_DIR="$BENCH/tools/gwload/target" cargo build --release -q)
[[ -x "$BENCH/tools/gwload/target/release/gwload" ]] || { say "gwload did not build"; exit 1; }

# ---- the gateway under test -------------------------------------------------------------------
if ((BUILD_GATEWAY)); then
  say "building the gateway (cargo build --release)"
  (cd "$ROOT" && cargo build --release -q)
  [[ -x "$ROOT/target/release/twenty-gateway" ]] || { say "gateway binary missing after build"; exit 1; }
fi

for b in nginx haproxy caddy wrk h2load openssl curl taskset python3; do
  command -v "$b" >/dev/null || { say "missing $b"; exit 1; }
done
say "ok"
