#!/usr/bin/env bash
# bench/run.sh — the twenty-gateway benchmark in one command (see bench/README.md).
#   bench/run.sh                 full run: 3 rounds, 10 s runs after 2 s warm-up, logs off and on  (~30-40 min)
#   bench/run.sh --quick         smoke run: 1 round, 2 s runs after 0.5 s warm-up                    (~3.5-5 min)
#   bench/run.sh --proxies nginx,haproxy,caddy,direct   peers only (no gateway build)
#   bench/run.sh --only h1-keepalive,auth-cost --modes off   a subset
# Everything else: python3 bench/harness.py --help.
# Installs missing Debian packages (needs root), makes test certs, builds bench/tools/gwload and,
# unless the gateway is left out or --no-build is given, the gateway (cargo build --release).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case " $* " in *" --help "*|*" -h "*) exec python3 "$BENCH/harness.py" --help ;; esac

build_gateway=1
prev=""
for a in "$@"; do
  case "$a" in
    --no-build) build_gateway=0 ;;
    --proxies=*) [[ ",${a#--proxies=}," == *,gateway,* ]] || build_gateway=0 ;;
  esac
  if [[ $prev == --proxies && ",$a," != *,gateway,* ]]; then build_gateway=0; fi
  prev="$a"
done

if ((build_gateway)); then "$BENCH/setup.sh" --gateway; else "$BENCH/setup.sh"; fi

# 5,000 idle TLS connections (+ pools) need more than the usual 1024 fds: raise the soft limit to
# the hard one (and the hard one too where we are allowed to).
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$BENCH/harness.py" "$@"
