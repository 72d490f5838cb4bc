#!/usr/bin/env bash
# What affinity by image gains: three simulated replicas, each caching the last 4 images it saw
# (`infergate sim --image-cache 4`: a cached image prefills at a tenth), behind one gateway that
# balances by `round_robin`, `least_inflight` or `hash` on `hash_key = "image"`. 12 clients ask
# streamed questions about 12 distinct 896x896 images (1,024 image tokens each), each image in turn.
# Prints medians over the rounds of time to first token (p50, p90), answers per second and the
# share of questions the replicas answered from their cache.
#
#   bench/affinity.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 15 s)
#
# Each variant runs against freshly started replicas, so no cache carries over. Everything listens
# on 127.0.0.1; the script stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-3} SECONDS_PER_RUN=${2:-15}
SIMS=(18501 18502 18503) GATEWAY=18500
cargo build --profile production -q --workspace
LOAD=target/production/infergate-load

# sim_stats PORT: a replica's `GET /stats` (HTTP/1.0 over bash's /dev/tcp: no client needed).
sim_stats() {
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /stats HTTP/1.0\r\nHost: sim\r\n\r\n' >&3
  cat <&3
  exec 3<&-
}

# run BALANCE -> "ttft_p50 ttft_p90 rps hit_share"
run() {
  local pids=() port
  for port in "${SIMS[@]}"; do
    target/production/infergate sim --listen "127.0.0.1:$port" --image-cache 4 2>>"$WORK/sim.log" &
    pids+=("$!")
  done
  PIDS+=("${pids[@]}")
  local hash=""; [ "$1" = hash ] && hash='hash_key = "image"'
  GATEWAY_BIN=target/production/infergate start_gateway "affinity-$1" "[admin]
enabled = false

[[upstream]]
name = \"model\"
balance = \"$1\"
$hash
servers = [{ addr = \"127.0.0.1:${SIMS[0]}\" }, { addr = \"127.0.0.1:${SIMS[1]}\" }, { addr = \"127.0.0.1:${SIMS[2]}\" }]

[[server]]
listen = [\"127.0.0.1:$GATEWAY\"]

  [[server.location]]
  prefix = \"/\"
  proxy = \"model\""
  for port in "${SIMS[@]}" $GATEWAY; do wait_port "$port"; done
  local out hits=0 completed=0 stats
  out=$($LOAD images --addr "127.0.0.1:$GATEWAY" --clients 12 --images 12 --side 896 --duration "${SECONDS_PER_RUN}s")
  for port in "${SIMS[@]}"; do
    stats=$(sim_stats "$port")
    hits=$((hits + $(echo "$stats" | sed -n 's/.*"image_cache_hits":\([0-9]*\).*/\1/p')))
    completed=$((completed + $(echo "$stats" | sed -n 's/.*"completed":\([0-9]*\).*/\1/p')))
  done
  kill "$GATEWAY_PID" "${pids[@]}" 2>/dev/null || true
  wait "$GATEWAY_PID" "${pids[@]}" 2>/dev/null || true
  echo "$out" | grep -q "failed=0" || echo "  ($1: $(echo "$out" | tr '\n' ' '))" >&2
  awk -v out="$out" -v h="$hits" -v c="$completed" 'BEGIN {
    split(out, f, /[ \n=]/); for (i = 1; i < length(f); i++) v[f[i]] = f[i + 1]
    printf "%s %s %s %.2f\n", v["ttft_p50_ms"], v["ttft_p90_ms"], v["rps"], (c ? h / c : 0) }'
}

echo "affinity by image: 3 replicas caching 4 images each, 12 clients over 12 images, ${SECONDS_PER_RUN}s x $ROUNDS rounds"
for balance in round_robin least_inflight hash; do : > "$WORK/$balance.txt"; done
for round in $(seq "$ROUNDS"); do
  for balance in round_robin least_inflight hash; do
    run $balance >> "$WORK/$balance.txt"
  done
  echo "  round $round: $(for b in round_robin least_inflight hash; do printf '%s %s  ' "$b" "$(tail -1 "$WORK/$b.txt")"; done)(ttft p50 p90 ms, rps, cache hits)"
done
printf '\n%-16s %14s %14s %10s %12s\n' "" "TTFT p50 ms" "TTFT p90 ms" "answers/s" "cache hits"
for balance in round_robin least_inflight hash; do
  col() { cut -d' ' -f"$1" "$WORK/$balance.txt" | median; }
  printf '%-16s %14s %14s %10s %12s\n' "$balance" "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)"
done
