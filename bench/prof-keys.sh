#!/usr/bin/env bash
# temporary: callgrind profiles of off / keys / budgets, kept in /tmp/prof
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BIN=${BIN:-target/production/infergate}
BACKEND=18380 COUNTED=18383
digest() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
start_backend $BACKEND
KEYS="[[api_key]]
name = \"plain\"
sha256 = \"$(digest ig-bench-plain)\"

[[api_key]]
name = \"budgeted\"
sha256 = \"$(digest ig-bench-budgeted)\"
tokens_per_minute = 1000000000000"
config() {
  gateway_config "$1" $BACKEND "
  [[server.location]]
  prefix = \"/keyed/\"
  proxy = \"backend\"
  auth = \"api_key\"

$KEYS"
}
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
wait_port $BACKEND
mkdir -p /tmp/prof
WORKERS=1 config $COUNTED > "$WORK/counted.toml"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/prof/c.out \
  $BIN run --config "$WORK/counted.toml" >"$WORK/valgrind.log" 2>&1 &
COUNTED_PID=$!
PIDS+=("$COUNTED_PID")
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$COUNTED") 2>/dev/null && break; sleep 0.1; done
dump=0
for variant in ${VARIANTS:-off keys budgets}; do
  case $variant in
    off) path=/off/v1/chat/completions lua=plain ;;
    keys) path=/keyed/v1/chat/completions lua=plain ;;
    budgets) path=/keyed/v1/chat/completions lua=budgeted ;;
  esac
  wrk -t1 -c8 -d1s -s "$WORK/$lua.lua" "http://127.0.0.1:$COUNTED$path" >/dev/null
  callgrind_control -z "$COUNTED_PID" >/dev/null 2>&1
  callgrind_control -i on "$COUNTED_PID" >/dev/null 2>&1
  out=$(wrk -t1 -c8 -d3s -s "$WORK/$lua.lua" "http://127.0.0.1:$COUNTED$path")
  callgrind_control -i off "$COUNTED_PID" >/dev/null 2>&1
  callgrind_control -d "$COUNTED_PID" >/dev/null 2>&1
  dump=$((dump + 1))
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  cp /tmp/prof/c.out.$dump /tmp/prof/$variant.out
  instructions=$(callgrind_annotate "/tmp/prof/$variant.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$variant $requests $((instructions / requests))" | tee -a /tmp/prof/summary
done
