#!/usr/bin/env bash
# Two builds of infergate against each other: what a change costs or saves in requests per second,
# same machine, same run, same backend, taking turns. Prints each round and the medians.
#
#   bench/ab.sh BASELINE_BIN CHANGED_BIN [ROUNDS] [SECONDS]     (defaults: 8 rounds of 8 s)
#
# Build the baseline in a worktree of the commit before the change (`git worktree add /tmp/base REV`,
# then `cargo build --profile production` there). Both gateways run one at a time in front of the
# backend nginx
# of bench/lib.sh (a fixed small JSON), with the config of bench/proxy-rps.sh; load: wrk, HTTP/1.1,
# 50 connections, 2 threads. Everything listens on 127.0.0.1; the script stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BASELINE=$1 CHANGED=$2 ROUNDS=${3:-8} SECONDS_PER_RUN=${4:-8}
BACKEND=18280 GATEWAY=18282

install_tools
start_backend $BACKEND
wait_port $BACKEND
CONFIG=$(gateway_config $GATEWAY $BACKEND)

# rps BIN: starts the gateway BIN, loads it, stops it; prints its requests per second.
rps() {
  GATEWAY_BIN=$1 start_gateway ab "$CONFIG"
  wait_port $GATEWAY
  wrk -t2 -c50 -d1s "http://127.0.0.1:$GATEWAY/v1/chat/completions" >/dev/null
  wrk -t2 -c50 -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$GATEWAY/v1/chat/completions" | awk '/Requests\/sec/ {print $2}'
  kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true
  while (exec 3<>"/dev/tcp/127.0.0.1/$GATEWAY") 2>/dev/null; do sleep 0.1; done
}

echo "A/B: $BASELINE (baseline) against $CHANGED, wrk -t2 -c50, ${SECONDS_PER_RUN}s x $ROUNDS rounds, $(nproc) cores"
: > "$WORK/ratios.txt"; : > "$WORK/base.txt"; : > "$WORK/changed.txt"
for round in $(seq "$ROUNDS"); do
  # They take turns going first: on a shared machine, load drifts within a round.
  if [ $((round % 2)) = 1 ]; then b=$(rps "$BASELINE"); c=$(rps "$CHANGED"); else c=$(rps "$CHANGED"); b=$(rps "$BASELINE"); fi
  echo "$b" >> "$WORK/base.txt"; echo "$c" >> "$WORK/changed.txt"; ratio "$c" "$b" >> "$WORK/ratios.txt"; echo >> "$WORK/ratios.txt"
  echo "  round $round: baseline $b rps, changed $c rps, ratio $(ratio "$c" "$b")"
done
echo "median rps: baseline $(median < "$WORK/base.txt"), changed $(median < "$WORK/changed.txt");" \
  "changed/baseline: median of the rounds' ratios $(grep . "$WORK/ratios.txt" | median)x"
