#!/usr/bin/env bash
# What `images.resize` saves and costs: `infergate sim` with an H100's prefill per image token
# (0.13 ms, ../shared/sim-calibration.md) behind one gateway, questions about one photo-like JPEG of
# 1024, 2048 and 4096 pixels a side, to a location that forwards images as they came and to one that
# scales them to 1024 a side. Prints, per size, the median time to first token of each and the
# gateway's CPU per request (decoding, scaling and encoding the image included), over ROUNDS rounds.
#
#   bench/resize.sh [ROUNDS] [REQUESTS]      (defaults: 3 rounds of 4 requests each)
#
# Everything listens on 127.0.0.1; the script stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-3} REQUESTS=${2:-4}
SIM=18601 AS_SENT=18602 RESIZED=18603
cargo build --profile production -q --workspace
LOAD=target/production/infergate-load
target/production/infergate sim --listen "127.0.0.1:$SIM" --prefill-base-ms 45 --prefill-per-image-token-ms 0.13 \
  2>"$WORK/sim.log" &
PIDS+=("$!")
GATEWAY_BIN=target/production/infergate start_gateway resize "[admin]
enabled = false

[[upstream]]
name = \"model\"
servers = [{ addr = \"127.0.0.1:$SIM\" }]

[[server]]
listen = [\"127.0.0.1:$AS_SENT\"]

  [[server.location]]
  prefix = \"/\"
  proxy = \"model\"
  images = { enabled = true }

[[server]]
listen = [\"127.0.0.1:$RESIZED\"]

  [[server.location]]
  prefix = \"/\"
  proxy = \"model\"
  images = { enabled = true, resize = { max_side = 1024 } }"
for port in $SIM $AS_SENT $RESIZED; do wait_port $port; done

# measure PORT SIDE -> "ttft_p50_ms cpu_ms_per_request"
measure() {
  local before after out
  before=$(ticks "$GATEWAY_PID")
  out=$($LOAD photo --addr "127.0.0.1:$1" --side "$2" --requests "$REQUESTS")
  after=$(ticks "$GATEWAY_PID")
  awk -v out="$out" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$REQUESTS" 'BEGIN {
    split(out, f, /[ \n=]/); for (i = 1; i < length(f); i++) v[f[i]] = f[i + 1]
    printf "%s %.1f\n", v["ttft_p50_ms"], t / hz / n * 1000 }'
}

echo "images.resize (max_side 1024) against images as sent: $REQUESTS questions x $ROUNDS rounds per size"
for side in 1024 2048 4096; do
  : > "$WORK/sent-$side.txt"; : > "$WORK/resized-$side.txt"
  for round in $(seq "$ROUNDS"); do
    measure $AS_SENT $side >> "$WORK/sent-$side.txt"
    measure $RESIZED $side >> "$WORK/resized-$side.txt"
  done
done
printf '\n%-6s %16s %16s %14s %18s\n' "side" "TTFT as sent" "TTFT resized" "TTFT saved" "gateway CPU/request"
for side in 1024 2048 4096; do
  sent=$(cut -d' ' -f1 "$WORK/sent-$side.txt" | median); resized=$(cut -d' ' -f1 "$WORK/resized-$side.txt" | median)
  cpu_sent=$(cut -d' ' -f2 "$WORK/sent-$side.txt" | median); cpu_resized=$(cut -d' ' -f2 "$WORK/resized-$side.txt" | median)
  saved=$(awk -v a="$sent" -v b="$resized" 'BEGIN { printf "%.0f", a - b }')
  printf '%-6s %13s ms %13s ms %11s ms %9s -> %s ms\n' "$side" "$sent" "$resized" "$saved" "$cpu_sent" "$cpu_resized"
done
