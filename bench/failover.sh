#!/usr/bin/env bash
# A model killed under load: two simulated models behind one upstream, 16 closed-loop clients of
# non-streamed chat completions for 6 s, and SIGKILL of one model 2 s in. The gateway's config sets
# nothing about retries; nginx (Debian's package) gets the same two servers with its defaults, in
# the same run. Prints the failed requests of each run for both.
#
#   bench/failover.sh [RUNS]     (default 5; about 15 s a run)
#
# All traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

RUNS=${1:-5}
install_tools
cargo build --profile production -q --workspace
GATEWAY_BIN=target/production/infergate
LOAD=target/production/infergate-load
SIM_A=18190 SIM_B=18191 NGINX_PORT=18192 GW_PORT=18193

start_nginx failover "upstream models { server 127.0.0.1:$SIM_A; server 127.0.0.1:$SIM_B; keepalive 32; }
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://models; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_read_timeout 120s; } }"
start_gateway failover "[[upstream]]
name = \"models\"
servers = [{ addr = \"127.0.0.1:$SIM_A\" }, { addr = \"127.0.0.1:$SIM_B\" }]

[[server]]
listen = [\"127.0.0.1:$GW_PORT\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"models\""
wait_port $NGINX_PORT; wait_port $GW_PORT

# one_run PORT: fresh models, the load, a SIGKILL of model A two seconds in; prints "ok failed".
one_run() {
  "$GATEWAY_BIN" sim --listen "127.0.0.1:$SIM_A" 2>>"$WORK/sim.log" & local a=$!
  "$GATEWAY_BIN" sim --listen "127.0.0.1:$SIM_B" 2>>"$WORK/sim.log" & local b=$!
  PIDS+=("$a" "$b")
  wait_port $SIM_A; wait_port $SIM_B
  "$LOAD" chat --addr "127.0.0.1:$1" --clients 16 --duration 6s > "$WORK/load.out" &
  local load=$!
  sleep 2
  kill -9 "$a"
  wait "$load"
  kill "$b" 2>/dev/null || true; wait "$a" "$b" 2>/dev/null || true
  # Both proxies mark the dead model down for fail_timeout (10 s): wait it out between runs.
  sleep 11
  echo "$(value ok < "$WORK/load.out") $(value failed < "$WORK/load.out")"
}

echo "failover: $(date -u +%Y-%m-%d), $(nproc) cores, nginx $(nginx -v 2>&1 | cut -d/ -f2), $RUNS runs, infergate: cargo build --profile production" >&2
printf '%-5s %-22s %-22s\n' run "nginx ok/failed" "infergate ok/failed"
for run in $(seq "$RUNS"); do
  # The two take turns going first.
  if [ $((run % 2)) = 1 ]; then n=$(one_run $NGINX_PORT); g=$(one_run $GW_PORT); else g=$(one_run $GW_PORT); n=$(one_run $NGINX_PORT); fi
  printf '%-5s %-22s %-22s\n' "$run" "${n% *}/${n#* }" "${g% *}/${g#* }"
done
