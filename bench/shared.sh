#!/usr/bin/env bash
# What sharing limits through Redis costs a request: one gateway in front of the same backend,
# loaded in turn on a location whose rate zone is local and on one whose zone is `shared = true`
# (the same generous rate, so nothing is refused: every request is one round trip to Redis), with a
# redis-server on 127.0.0.1. Prints the medians of the rounds: rps, latency p50 and p99, and the
# shared location's figures over the local one's (what Redis adds).
#
#   bench/shared.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds of 6 s)
#
# Load: wrk, HTTP/1.1 keep-alive, 2 threads, 50 connections (throughput) and then 8 (latency, off
# saturation). The gateway is the production build without PGO. Everything listens on 127.0.0.1; the script
# stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5} SECONDS_PER_RUN=${2:-6}
BACKEND=18390 GATEWAY=18392 REDIS=18393

install_tools
need redis-server || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
cargo build --profile production -q --workspace
start_backend $BACKEND
redis-server --port $REDIS --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
GATEWAY_BIN=target/production/infergate start_gateway shared "$(gateway_config $GATEWAY $BACKEND "
  [[server.location]]
  prefix = \"/local/\"
  proxy = \"backend\"
  limit_req = { zone = \"local\", burst = 1000, nodelay = true }

  [[server.location]]
  prefix = \"/shared/\"
  proxy = \"backend\"
  limit_req = { zone = \"shared\", burst = 1000, nodelay = true }

[redis]
url = \"redis://127.0.0.1:$REDIS\"

[limit_zone.local]
key = \"client_ip\"
rate = \"1000000r/s\"

[limit_zone.shared]
key = \"client_ip\"
rate = \"1000000r/s\"
shared = true")"
for port in $BACKEND $GATEWAY $REDIS; do wait_port $port; done

# run PATH CONNECTIONS -> "rps p50_us p99_us redis_us_cpu_per_request"
run() {
  local out before after
  before=$(ticks "$REDIS_PID")
  out=$(wrk -t2 -c"$2" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$GATEWAY$1")
  after=$(ticks "$REDIS_PID")
  echo "$out" | grep -E "Non-2xx|Socket errors" >&2 || true
  echo "$out" | awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v s="$SECONDS_PER_RUN" '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6; return v }
    /Requests\/sec/ { rps = $2 } $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) }
    END { printf "%.0f %.0f %.0f %.1f\n", rps, p50, p99, (t / hz) / (rps * s) * 1e6 }'
}

echo "shared over local rate zones: GET through a 1M r/s zone, ${SECONDS_PER_RUN}s x $ROUNDS rounds, $(nproc) cores"
for file in local-c50 shared-c50 local-c8 shared-c8; do : > "$WORK/$file.txt"; done
for round in $(seq "$ROUNDS"); do
  order=(local shared); [ $((round % 2)) = 0 ] && order=(shared local)
  for variant in "${order[@]}"; do
    run "/$variant/" 50 >> "$WORK/$variant-c50.txt"
    run "/$variant/" 8 >> "$WORK/$variant-c8.txt"
  done
  echo "  round $round: local $(tail -1 "$WORK/local-c50.txt" | cut -d' ' -f1-3) / $(tail -1 "$WORK/local-c8.txt" | cut -d' ' -f1-3)" \
    " shared $(tail -1 "$WORK/shared-c50.txt" | cut -d' ' -f1-3) / $(tail -1 "$WORK/shared-c8.txt" | cut -d' ' -f1-3)  (rps p50 p99 us, -c50 / -c8)"
done
printf '\n%-8s %10s %14s %14s %14s %14s\n' "" "rps -c50" "p50 us -c8" "p99 us -c8" "p50 us -c50" "p99 us -c50"
for variant in local shared; do
  printf '%-8s %10s %14s %14s %14s %14s\n' "$variant" \
    "$(cut -d' ' -f1 "$WORK/$variant-c50.txt" | median)" \
    "$(cut -d' ' -f2 "$WORK/$variant-c8.txt" | median)" "$(cut -d' ' -f3 "$WORK/$variant-c8.txt" | median)" \
    "$(cut -d' ' -f2 "$WORK/$variant-c50.txt" | median)" "$(cut -d' ' -f3 "$WORK/$variant-c50.txt" | median)"
done
m() { cut -d' ' -f"$2" "$WORK/$1.txt" | median; }
echo
echo "shared over local: rps $(ratio "$(m shared-c50 1)" "$(m local-c50 1)");" \
  "added latency at -c8: p50 +$(( $(m shared-c8 2) - $(m local-c8 2) )) us, p99 +$(( $(m shared-c8 3) - $(m local-c8 3) )) us;" \
  "Redis's own CPU per shared request: $(m shared-c50 4) us (on the same cores as everything else here)"
