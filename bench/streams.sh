#!/usr/bin/env bash
# Token streams through each proxy: infergate against nginx (`proxy_buffering off`, as a streaming
# setup of nginx has it), in front of one simulated model streaming 100-token answers, at 100 streams
# at once (a token every 10 ms each) and at 1,000 (a token every 100 ms each): the same 10,000 tokens
# a second in both. Per proxy: CPU per streamed token, the p99 time between two tokens over the same
# straight to the model (what the proxy adds), and resident memory per stream held open (each proxy
# started anew before each of its runs).
#
#   bench/streams.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 10 s)
#
# Rounds alternate which proxy goes first; figures are medians of the rounds. The gateway is built as
# for bench/run.sh (with profile-guided optimization; PGO=0: the production build as it is).
# Everything listens on 127.0.0.1; the script stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-3} SECONDS_PER_RUN=${2:-10}
SIM=18480 NGINX=18481 GATEWAY=18482 TOKENS=100
install_tools
build_gateway
LOAD=target/production/infergate-load
ulimit -n 65536 2>/dev/null || true

# sim_start DECODE_MS: a fresh simulated model streaming a token every DECODE_MS; sets SIM_PID.
sim_start() {
  target/production/infergate sim --listen "127.0.0.1:$SIM" --slots 5000 --prefill-base-ms 1 \
    --prefill-per-token-ms 0 --decode-ms "$1" --decode-slowdown 0 2>>"$WORK/sim.log" &
  SIM_PID=$!; PIDS+=("$SIM_PID"); wait_port $SIM
}
start_nginx proxy "upstream model { server 127.0.0.1:$SIM; keepalive 32; }
  server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://model; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_buffering off; proxy_read_timeout 120s; } }"
start_gateway streams "$(gateway_config $GATEWAY $SIM)"
for port in $NGINX $GATEWAY; do wait_port $port; done
NGINX_PIDS=$(nginx_pids proxy)

# stream PORT CLIENTS PIDS... -> "ns_cpu_per_token gap_p99_ms kb_per_stream": CLIENTS closed-loop
# streams for SECONDS_PER_RUN through the proxy on PORT, whose processes are PIDS.
stream() {
  local port=$1 clients=$2 pids=("${@:3}") before after idle_kb busy_kb out ok
  idle_kb=$(rss_kb "${pids[@]}")
  before=$(ticks "${pids[@]}")
  $LOAD chat --addr "127.0.0.1:$port" --clients "$clients" --duration "${SECONDS_PER_RUN}s" --stream \
    --max-tokens $TOKENS > "$WORK/out" &
  local load=$!
  sleep $((SECONDS_PER_RUN / 2))
  busy_kb=$(rss_kb "${pids[@]}")
  wait $load
  after=$(ticks "${pids[@]}")
  out=$(cat "$WORK/out")
  ok=$(echo "$out" | value ok)
  echo "$out" | grep -q "failed=0" || echo "  $port: $out" >&2
  awk -v ok="$ok" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n=$TOKENS -v gap="$(echo "$out" | value gap_p99_ms)" \
    -v kb=$((busy_kb - idle_kb)) -v c="$clients" \
    'BEGIN { printf "%.0f %s %.1f\n", (t / hz) / (ok * n) * 1e9, gap, kb / c }'
}

# fresh PROXY: the proxy started anew before its run, so that its memory per stream is what these
# streams took: in one process a round is held partly in what the rounds before it left (the first
# rounds measured several times the later ones, for both proxies).
fresh() {
  if [ "$1" = nginx ]; then
    local master; master=$(cat "$WORK/proxy/nginx.pid")
    kill -QUIT "$master"
    for _ in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
    nginx -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log"
    wait_port $NGINX
    NGINX_PIDS=$(nginx_pids proxy)
  else
    kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true
    start_gateway streams "$(cat "$WORK/streams.toml")"
    wait_port $GATEWAY
  fi
  sleep 0.5
}

echo "streams: $TOKENS-token answers, nginx (proxy_buffering off) and infergate, ${SECONDS_PER_RUN}s x $ROUNDS rounds, $(nproc) cores" >&2
RESULTS="$WORK/results.txt"; : > "$RESULTS"
for shape in "100 10" "1000 100"; do
  read -r clients decode <<< "$shape"
  sim_start "$decode"
  for round in $(seq "$ROUNDS"); do
    # The gaps straight to the model: the baseline of the delay a proxy adds.
    direct=$($LOAD chat --addr "127.0.0.1:$SIM" --clients "$clients" --duration "${SECONDS_PER_RUN}s" --stream --max-tokens $TOKENS | value gap_p99_ms)
    order=(nginx gateway); [ $((round % 2)) = 0 ] && order=(gateway nginx)
    for proxy in "${order[@]}"; do
      fresh "$proxy"
      # shellcheck disable=SC2086
      if [ "$proxy" = nginx ]; then result=$(stream $NGINX "$clients" $NGINX_PIDS)
      else result=$(stream $GATEWAY "$clients" "$GATEWAY_PID"); fi
      read -r cpu gap kb <<< "$result"
      echo "$clients|$proxy|$cpu|$(awk -v a="$gap" -v b="$direct" 'BEGIN {printf "%.2f", a - b}')|$kb" >> "$RESULTS"
      echo "  $clients streams, round $round, $proxy: $cpu ns CPU/token, p99 gap $gap ms (direct $direct), $kb kB/stream" >&2
    done
  done
  kill "$SIM_PID"; wait "$SIM_PID" 2>/dev/null || true
done

# column CLIENTS PROXY FIELD: the median of a field over the rounds.
column() { awk -F'|' -v c="$1" -v p="$2" -v f="$3" '$1 == c && $2 == p {print $f}' "$RESULTS" | median; }
echo
printf '| %-48s | %10s | %10s | %16s |\n' "measure (median of $ROUNDS)" nginx infergate "infergate/nginx"
printf '|%s|%s|%s|%s|\n' "--------------------------------------------------" "------------" "------------" "------------------"
for clients in 100 1000; do
  for row in "3|CPU per streamed token (ns)" "4|added p99 time between tokens (ms)" "5|memory per open stream (kB)"; do
    IFS='|' read -r field name <<< "$row"
    n=$(column "$clients" nginx "$field"); g=$(column "$clients" gateway "$field")
    printf '| %-48s | %10s | %10s | %16s |\n' "$clients streams: $name" "$n" "$g" "$(ratio "$g" "$n")"
  done
done
