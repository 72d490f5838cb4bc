#!/usr/bin/env bash
# temporary: callgrind per streamed token, off vs keyed
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BIN=${BIN:-target/production/infergate}
digest() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
SIM=18384 OFF=18385 KEYED=18386
target/production/infergate sim --listen "127.0.0.1:$SIM" --slots 1000 --prefill-base-ms 1 \
  --prefill-per-token-ms 0 --decode-ms 1 --decode-slowdown 0 2>"$WORK/sim.log" &
PIDS+=("$!")
KEYS="[[api_key]]
name = \"plain\"
sha256 = \"$(digest ig-bench-plain)\"

[[api_key]]
name = \"budgeted\"
sha256 = \"$(digest ig-bench-budgeted)\"
tokens_per_minute = 1000000000000"
WORKERS=1 gateway_config $OFF $SIM "
[[server]]
listen = [\"127.0.0.1:$KEYED\"]

  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"
  auth = \"api_key\"

$KEYS" > "$WORK/s.toml"
mkdir -p /tmp/prof
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/prof/s.out \
  $BIN run --config "$WORK/s.toml" >"$WORK/valgrind.log" 2>&1 &
PID=$!
PIDS+=("$PID")
wait_port $SIM
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$KEYED") 2>/dev/null && break; sleep 0.1; done
dump=0
for variant in ${VARIANTS:-off keys budgets}; do
  case $variant in
    off) port=$OFF key= ;;
    keys) port=$KEYED key=ig-bench-plain ;;
    budgets) port=$KEYED key=ig-bench-budgeted ;;
  esac
  target/production/infergate-load chat --addr "127.0.0.1:$port" --clients 20 --duration 1s --stream --max-tokens 200 ${key:+--key $key} >/dev/null
  callgrind_control -z "$PID" >/dev/null 2>&1
  callgrind_control -i on "$PID" >/dev/null 2>&1
  out=$(target/production/infergate-load chat --addr "127.0.0.1:$port" --clients 20 --duration 4s --stream --max-tokens 200 ${key:+--key $key})
  callgrind_control -i off "$PID" >/dev/null 2>&1
  callgrind_control -d "$PID" >/dev/null 2>&1
  dump=$((dump + 1))
  ok=$(echo "$out" | sed -n 's/.*ok=\([0-9]*\).*/\1/p')
  cp /tmp/prof/s.out.$dump /tmp/prof/s-$variant.out
  instructions=$(callgrind_annotate "/tmp/prof/s-$variant.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$variant ok=$ok tokens=$((ok*200)) instr/token=$((instructions / (ok*200)))" | tee -a /tmp/prof/summary
done
