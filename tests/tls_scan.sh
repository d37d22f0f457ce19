#!/usr/bin/env bash
# TLS scan of twenty-gateway with sslscan (Debian package).
#
#   tests/tls_scan.sh                 # build --release, start with ./gateway.yaml, scan, stop
#   tests/tls_scan.sh HOST:PORT       # scan a gateway that is already running
#
# Passes only if: SSLv2, SSLv3, TLS 1.0 and TLS 1.1 are disabled; TLS 1.2 and/or 1.3 are
# enabled; every accepted cipher suite is an AEAD suite with forward secrecy (no RC4, 3DES,
# DES, NULL, EXPORT, anonymous, MD5, CBC or SHA-1-MAC suite); TLS compression is off; not
# vulnerable to Heartbleed. Exit 0 on pass, 1 on a finding, 2 on a setup problem.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${TLS_SCAN_OUT:-"$ROOT/target/tls_scan"}
mkdir -p "$OUT"

if ! command -v sslscan >/dev/null 2>&1; then
    echo "sslscan not found: installing it from Debian" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "need root to apt-get install sslscan (or install it yourself)" >&2
        exit 2
    fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sslscan >/dev/null
fi

GW_PID=""
cleanup() {
    if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        wait "$GW_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [ $# -ge 1 ]; then
    TARGET=$1
    SNI=${2:-}
else
    cargo build --release --quiet
    CONFIG=${GATEWAY_CONFIG:-"$ROOT/gateway.yaml"}
    LOG="$OUT/gateway.log"
    # Run from the config's directory, so relative certificate paths resolve as documented.
    (cd "$(dirname "$CONFIG")" && exec "$ROOT/target/release/twenty-gateway" --config "$CONFIG") \
        >"$LOG" 2>&1 &
    GW_PID=$!
    TARGET=""
    for _ in $(seq 1 100); do
        if ! kill -0 "$GW_PID" 2>/dev/null; then
            echo "the gateway exited during startup:" >&2
            cat "$LOG" >&2
            exit 2
        fi
        TARGET=$(grep -o '"listener":"https","addr":"[^"]*"' "$LOG" 2>/dev/null \
            | head -n1 | sed 's/.*"addr":"\([^"]*\)"/\1/' || true)
        [ -n "$TARGET" ] && break
        sleep 0.1
    done
    if [ -z "$TARGET" ]; then
        echo "no 'listening' line for https within 10 s:" >&2
        cat "$LOG" >&2
        exit 2
    fi
    # a name the shipped certificate covers
    SNI=${TLS_SCAN_SNI:-acme.localhost}
fi

ARGS=(--no-colour --iana-names --show-sigs)
[ -n "${SNI:-}" ] && ARGS+=(--sni-name="$SNI")
REPORT="$OUT/sslscan.txt"
sslscan "${ARGS[@]}" "$TARGET" >"$REPORT" 2>&1 || true
echo "sslscan $(sed -n 's/^Version: *//p' "$REPORT" | head -n1) ($(grep -m1 '^OpenSSL' "$REPORT" || echo OpenSSL)) against $TARGET${SNI:+ (SNI $SNI)}"

fail=0
finding() {
    echo "FAIL: $*"
    fail=1
}

# --- protocols
proto_state() { # $1 = label as sslscan prints it; echoes enabled/disabled/unknown
    local line
    line=$(grep -E "^$1[[:space:]]+(enabled|disabled)" "$REPORT" | head -n1 || true)
    case "$line" in
    *enabled*) echo enabled ;;
    *disabled*) echo disabled ;;
    *) echo unknown ;;
    esac
}
for p in SSLv2 SSLv3 TLSv1.0 TLSv1.1; do
    s=$(proto_state "$p")
    [ "$s" = disabled ] || finding "$p is $s (must be disabled)"
done
tls12=$(proto_state TLSv1.2)
tls13=$(proto_state TLSv1.3)
if [ "$tls12" != enabled ] && [ "$tls13" != enabled ]; then
    finding "neither TLS 1.2 nor TLS 1.3 is enabled (TLSv1.2: $tls12, TLSv1.3: $tls13)"
fi

# --- cipher suites
ACCEPTED=$(grep -E '^(Preferred|Accepted)[[:space:]]+(SSLv|TLSv)' "$REPORT" || true)
if [ -z "$ACCEPTED" ]; then
    finding "no accepted cipher suites found in the sslscan output"
fi
while IFS= read -r line; do
    [ -z "$line" ] && continue
    proto=$(awk '{print $2}' <<<"$line")
    suite=$(awk '{print $5}' <<<"$line")
    case "$proto" in TLSv1.2 | TLSv1.3) ;; *) finding "suite offered on $proto: $line" ;; esac
    # sslscan prints OpenSSL names (ECDHE-ECDSA-AES128-GCM-SHA256) or IANA names
    # (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) depending on its OpenSSL build: match both.
    if grep -Eqi 'RC4|3DES|DES[-_]CBC|_DES_|^DES-|NULL|EXP|_anon_|ADH|AECDH|MD5|CBC' <<<"$suite"; then
        finding "weak cipher suite: $suite ($proto)"
    elif ! grep -Eqi 'GCM|CHACHA20|POLY1305|CCM' <<<"$suite"; then
        finding "not an AEAD suite (CBC or stream cipher): $suite ($proto)"
    elif [ "$proto" = TLSv1.2 ] && grep -Eq '[-_]SHA$' <<<"$suite"; then
        finding "SHA-1 MAC cipher suite: $suite"
    elif [ "$proto" = TLSv1.2 ] && ! grep -Eq '^(TLS_)?(ECDHE|DHE)[-_]' <<<"$suite"; then
        finding "TLS 1.2 suite without forward secrecy: $suite"
    fi
done <<<"$ACCEPTED"

# --- other checks sslscan makes
if grep -qi 'Compression enabled' "$REPORT"; then finding "TLS compression enabled (CRIME)"; fi
if grep -Eqi 'vulnerable to heartbleed' "$REPORT" && ! grep -Eqi 'not vulnerable to heartbleed' "$REPORT"; then
    finding "Heartbleed"
fi

# --- summary
echo
echo "Protocols: $(grep -E '^(SSLv[23]|TLSv1\.[0-3])[[:space:]]+(enabled|disabled)' "$REPORT" | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')"
echo "Accepted cipher suites:"
awk '{printf "  %-9s %-8s %s\n", $1, $2, $5}' <<<"$ACCEPTED"
groups=$(sed -n '/Server Key Exchange Group/,/^$/p' "$REPORT" | grep -E '^TLSv' \
    | awk '{$2=$3=""; print}' | tr -s ' ' | paste -sd';' - || true)
[ -n "$groups" ] && echo "Key exchange groups: $groups"
for section in "TLS Fallback SCSV" "TLS renegotiation" "TLS Compression" "Heartbleed"; do
    echo "$section: $(sed -n "/^  $section:/,/^\$/p" "$REPORT" | sed '1d;/^$/d' | paste -sd';' -)"
done
cert=$(grep -E '^(Subject|Altnames|Issuer|Signature Algorithm|RSA Key Strength|ECC Curve Name|Not valid after):' "$REPORT" | sed 's/^/  /' || true)
[ -n "$cert" ] && printf 'Certificate:\n%s\n' "$cert"
echo "Full report: $REPORT"
echo
if [ "$fail" -ne 0 ]; then
    echo "TLS scan: FAILED"
    exit 1
fi
echo "TLS scan: PASSED (only TLS 1.2/1.3 enabled; only AEAD suites with forward secrecy)"
