#!/usr/bin/env bash
# What API keys and token budgets cost: one gateway in front of the same backend, loaded in turn with
# the same small chat completion POST: to a location without `auth` (off), to an `auth = "api_key"`
# location with a key of no limits (keys: the body is read for its model, the answer metered for the
# key's usage), and with a key that has a token budget (budgets: its cost also estimated, reserved
# and settled). Prints medians of the rounds: rps and the gateway's CPU per request, each over off.
# Then the same three with streams: 200-token streams from the simulated model, 100 at once, the
# gateway's CPU per streamed token over off.
#
#   bench/keys.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds of 6 s)
#
# Then the steady figures: user-space instructions per request and per streamed token of each, one
# worker under valgrind's callgrind (3 s of wrk -c8, or 4 s of 20 streams, counted per variant, after
# a warm-up of the same that is not).
#
# Load: wrk, HTTP/1.1 keep-alive, 50 connections, 2 threads, the body sent with each request. The
# gateway is the production build without PGO. Everything listens on 127.0.0.1; the script stops what it
# started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5} SECONDS_PER_RUN=${2:-6}
BACKEND=18380 GATEWAY=18382 COUNTED=18383
digest() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

install_tools
need valgrind || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
cargo build --profile production -q --workspace
start_backend $BACKEND
# The two keys: one without limits, one with a token budget it never spends.
KEYS="[[api_key]]
name = \"plain\"
sha256 = \"$(digest ig-bench-plain)\"

[[api_key]]
name = \"budgeted\"
sha256 = \"$(digest ig-bench-budgeted)\"
tokens_per_minute = 1000000000000"
# config PORT: the gateway's config: `/` without auth, `/keyed/` with it, and the two keys.
config() {
  gateway_config "$1" $BACKEND "
  [[server.location]]
  prefix = \"/keyed/\"
  proxy = \"backend\"
  auth = \"api_key\"

$KEYS"
}
GATEWAY_BIN=target/production/infergate start_gateway keys "$(config $GATEWAY)"
for port in $BACKEND $GATEWAY; do wait_port $port; done

# script NAME KEY: a wrk script POSTing the chat request with KEY.
script() {
  cat > "$WORK/$1.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"glm-4v-flash","max_tokens":16,"messages":[{"role":"user","content":"What is in this image?"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
LUA
}
script plain ig-bench-plain
script budgeted ig-bench-budgeted

# run PATH SCRIPT -> "rps us_cpu_per_request"
run() { WRK_SCRIPT="$WORK/$2.lua" wrk_rps "http://127.0.0.1:$GATEWAY$1" "$GATEWAY_PID"; }

echo "keys and budgets over off: chat POST, wrk -t2 -c50, ${SECONDS_PER_RUN}s x $ROUNDS rounds, $(nproc) cores"
: > "$WORK/off.txt"; : > "$WORK/keys.txt"; : > "$WORK/budgets.txt"
for round in $(seq "$ROUNDS"); do
  # The order turns each round: on a shared machine, load drifts within a round.
  order=(off keys budgets); [ $((round % 2)) = 0 ] && order=(budgets keys off)
  for variant in "${order[@]}"; do
    case $variant in
      off) result=$(run /off/v1/chat/completions plain) ;;
      keys) result=$(run /keyed/v1/chat/completions plain) ;;
      budgets) result=$(run /keyed/v1/chat/completions budgeted) ;;
    esac
    echo "$result" >> "$WORK/$variant.txt"
  done
  echo "  round $round: off $(tail -1 "$WORK/off.txt")  keys $(tail -1 "$WORK/keys.txt")  budgets $(tail -1 "$WORK/budgets.txt")  (rps us/req)"
done
off_rps=$(cut -d' ' -f1 "$WORK/off.txt" | median); off_cpu=$(cut -d' ' -f2 "$WORK/off.txt" | median)
printf '\n%-8s %12s %16s %14s %14s\n' "" "median rps" "us CPU/request" "rps over off" "CPU over off"
for variant in off keys budgets; do
  rps=$(cut -d' ' -f1 "$WORK/$variant.txt" | median); cpu=$(cut -d' ' -f2 "$WORK/$variant.txt" | median)
  printf '%-8s %12s %16s %14s %14s\n' "$variant" "$rps" "$cpu" "$(ratio "$rps" "$off_rps")" "$(ratio "$cpu" "$off_cpu")"
done

# Streams: the same three, each request a 200-token stream from the simulated model (a token a
# millisecond, no prefill to speak of), 100 clients at once; the gateway's CPU per streamed token.
# The 2 cores are saturated (about half the tokens asked for are delivered), and a run that completes
# fewer streams takes up to a fifth more CPU a token: read the medians, and the instructions a token
# at the end for the steady figure. (A token every 5 ms, unsaturated, swung more: 7.1-12.3 us a token.)
SIM=18384 STREAM_OFF=18385 STREAM_KEYED=18386 STREAM_TOKENS=200
target/production/infergate sim --listen "127.0.0.1:$SIM" --slots 1000 --prefill-base-ms 1 \
  --prefill-per-token-ms 0 --decode-ms 1 --decode-slowdown 0 2>"$WORK/sim.log" &
PIDS+=("$!")
# streams_config OFF KEYED: the streams' gateway: the sim without auth on port OFF, with it on KEYED.
streams_config() {
  gateway_config "$1" $SIM "
[[server]]
listen = [\"127.0.0.1:$2\"]

  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"
  auth = \"api_key\"

$KEYS"
}
GATEWAY_BIN=target/production/infergate start_gateway streams "$(streams_config $STREAM_OFF $STREAM_KEYED)"
STREAMS_PID=$GATEWAY_PID
for port in $SIM $STREAM_OFF $STREAM_KEYED; do wait_port $port; done
# stream PORT [KEY] -> "tokens_per_second ns_cpu_per_token"
stream() {
  local before after out ok
  before=$(ticks "$STREAMS_PID")
  out=$(target/production/infergate-load chat --addr "127.0.0.1:$1" --clients 100 --duration "${SECONDS_PER_RUN}s" \
    --stream --max-tokens $STREAM_TOKENS ${2:+--key "$2"})
  after=$(ticks "$STREAMS_PID")
  ok=$(echo "$out" | sed -n 's/.*ok=\([0-9]*\).*/\1/p')
  echo "$out" | grep -v "failed=0" >&2 || true
  awk -v ok="$ok" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v s="$SECONDS_PER_RUN" -v n=$STREAM_TOKENS \
    'BEGIN { printf "%.0f %.0f\n", ok * n / s, (t / hz) / (ok * n) * 1e9 }'
}
# stream_variant VARIANT -> as `stream`, for off, keys or budgets.
stream_variant() {
  case $1 in
    off) stream $STREAM_OFF ;;
    keys) stream $STREAM_KEYED ig-bench-plain ;;
    budgets) stream $STREAM_KEYED ig-bench-budgeted ;;
  esac
}
echo
echo "streams: ${STREAM_TOKENS}-token streams at 1 ms a token, 100 clients, ${SECONDS_PER_RUN}s x $ROUNDS rounds"
# A run of each first, not counted: the first rounds after the sim started completed fewer streams
# at more CPU a token (2026-12-07: the location without auth 1,200-1,300 streams in rounds 1-3, 1,400
# after; a token 7.8-8.6 us against 6.2).
for variant in off keys budgets; do stream_variant $variant > /dev/null; done
: > "$WORK/s-off.txt"; : > "$WORK/s-keys.txt"; : > "$WORK/s-budgets.txt"
for round in $(seq "$ROUNDS"); do
  order=(off keys budgets); [ $((round % 2)) = 0 ] && order=(budgets keys off)
  for variant in "${order[@]}"; do
    stream_variant "$variant" >> "$WORK/s-$variant.txt"
  done
  echo "  round $round: off $(tail -1 "$WORK/s-off.txt")  keys $(tail -1 "$WORK/s-keys.txt")  budgets $(tail -1 "$WORK/s-budgets.txt")  (tokens/s ns/token)"
done
off_cpu=$(cut -d' ' -f2 "$WORK/s-off.txt" | median)
printf '\n%-8s %14s %16s %14s\n' "" "tokens/s" "ns CPU/token" "CPU over off"
for variant in off keys budgets; do
  tps=$(cut -d' ' -f1 "$WORK/s-$variant.txt" | median); cpu=$(cut -d' ' -f2 "$WORK/s-$variant.txt" | median)
  printf '%-8s %14s %16s %14s\n' "$variant" "$tps" "$cpu" "$(ratio "$cpu" "$off_cpu")"
done
kill "$STREAMS_PID" 2>/dev/null || true

# The steady figures: instructions per request, then per streamed token, one variant after the
# other in a gateway of one worker counted by callgrind (one for the requests, one for the streams).
COUNTED_STREAM_OFF=18387 COUNTED_STREAM_KEYED=18388
# start_counted NAME CONFIG_TEXT PORT: the gateway under callgrind, counting nothing yet; sets
# COUNTED_PID.
start_counted() {
  printf '%s\n' "$2" > "$WORK/$1.toml"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$1.out" \
    target/production/infergate run --config "$WORK/$1.toml" >"$WORK/$1.valgrind.log" 2>&1 &
  COUNTED_PID=$!
  PIDS+=("$COUNTED_PID")
  COUNTED_NAME=$1 COUNTED_DUMPS=0
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && break; sleep 0.1; done
}
# counted COMMAND...: runs COMMAND once uncounted (the warm-up), then again counted; its output is
# in $WORK/counted.txt, the instructions it cost the gateway in $WORK/instructions.txt.
counted() {
  "$@" >/dev/null
  callgrind_control -z "$COUNTED_PID" >/dev/null 2>&1
  callgrind_control -i on "$COUNTED_PID" >/dev/null 2>&1
  "$@" > "$WORK/counted.txt"
  callgrind_control -i off "$COUNTED_PID" >/dev/null 2>&1
  callgrind_control -d "$COUNTED_PID" >/dev/null 2>&1
  COUNTED_DUMPS=$((COUNTED_DUMPS + 1))
  callgrind_annotate "$WORK/$COUNTED_NAME.out.$COUNTED_DUMPS" 2>/dev/null \
    | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' > "$WORK/instructions.txt"
}
# wrk_for SECONDS LUA PATH: the small chat POST against the counted gateway.
wrk_for() { wrk -t1 -c8 -d"$1"s -s "$WORK/$2.lua" "http://127.0.0.1:$COUNTED$3"; }
# streams_for SECONDS PORT [KEY]: 20 streams at once against the counted gateway.
streams_for() {
  target/production/infergate-load chat --addr "127.0.0.1:$2" --clients 20 --duration "$1s" --stream \
    --max-tokens $STREAM_TOKENS ${3:+--key "$3"}
}
variants=(off keys budgets)
start_counted requests "$(WORKERS=1 config $COUNTED)" $COUNTED
for variant in "${variants[@]}"; do
  case $variant in
    off) path=/off/v1/chat/completions lua=plain ;;
    keys) path=/keyed/v1/chat/completions lua=plain ;;
    budgets) path=/keyed/v1/chat/completions lua=budgeted ;;
  esac
  counted wrk_for 3 $lua $path
  echo $(($(cat "$WORK/instructions.txt") / $(awk '/requests in/ {print $1}' "$WORK/counted.txt"))) > "$WORK/i-$variant.txt"
done
kill "$COUNTED_PID" 2>/dev/null || true
start_counted streams "$(WORKERS=1 streams_config $COUNTED_STREAM_OFF $COUNTED_STREAM_KEYED)" $COUNTED_STREAM_KEYED
for variant in "${variants[@]}"; do
  case $variant in
    off) port=$COUNTED_STREAM_OFF key= ;;
    keys) port=$COUNTED_STREAM_KEYED key=ig-bench-plain ;;
    budgets) port=$COUNTED_STREAM_KEYED key=ig-bench-budgeted ;;
  esac
  counted streams_for 4 $port $key
  echo $(($(cat "$WORK/instructions.txt") / ($(value ok < "$WORK/counted.txt") * STREAM_TOKENS))) > "$WORK/t-$variant.txt"
done
printf '\n%-8s %14s %14s %14s %14s\n' "" "instr/request" "over off" "instr/token" "over off"
for variant in "${variants[@]}"; do
  request=$(cat "$WORK/i-$variant.txt") token=$(cat "$WORK/t-$variant.txt")
  printf '%-8s %14s %14s %14s %14s\n' "$variant" "$request" "$(ratio "$request" "$(cat "$WORK/i-off.txt")")" \
    "$token" "$(ratio "$token" "$(cat "$WORK/t-off.txt")")"
done
