#!/usr/bin/env bash
# Plain keep-alive reverse proxy throughput: infergate vs nginx (Debian's package), same machine,
# same run, same backend. Prints medians of the rounds and the infergate/nginx ratio.
#
#   bench/proxy-rps.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 10 s each)
#
# The backend is a second nginx answering a fixed small JSON body (fast and identical for both).
# Load: wrk, HTTP/1.1, 50 connections, 2 threads. CPU per request is read from /proc for the proxy's
# processes only. The gateway is the profile-guided build (bench/build-pgo.sh); PGO=0 measures the
# production profile alone. Everything listens on 127.0.0.1; the script stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
BACKEND=18080 NGINX=18081 GATEWAY=18082

install_tools
build_gateway

start_backend $BACKEND
start_nginx proxy "upstream backend { server 127.0.0.1:$BACKEND; keepalive 32; }
  server { listen 127.0.0.1:$NGINX; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; } }"
start_gateway proxy "$(gateway_config $GATEWAY $BACKEND)"
for port in $BACKEND $NGINX $GATEWAY; do wait_port $port; done

# run PORT PIDS... -> "rps us_cpu_per_request"
run() { local port=$1; shift; wrk_rps "http://127.0.0.1:$port/v1/chat/completions" "$@"; }

echo "proxy throughput: small JSON, HTTP/1.1 keep-alive, wrk -t2 -c50, ${SECONDS_PER_RUN}s x $ROUNDS rounds, $(nproc) cores"
echo "infergate: $GATEWAY_BUILD"
: > "$WORK/nginx.txt"; : > "$WORK/gateway.txt"
: > "$WORK/ratios.txt"
for round in $(seq "$ROUNDS"); do
  # The two take turns going first: on a shared machine, load drifts within a round.
  # shellcheck disable=SC2046
  if [ $((round % 2)) = 1 ]; then
    n=$(run $NGINX $(nginx_pids proxy)); g=$(run $GATEWAY "$GATEWAY_PID")
  else
    g=$(run $GATEWAY "$GATEWAY_PID"); n=$(run $NGINX $(nginx_pids proxy))
  fi
  echo "$n" >> "$WORK/nginx.txt"; echo "$g" >> "$WORK/gateway.txt"; echo "$(ratio "${g% *}" "${n% *}")" >> "$WORK/ratios.txt"
  echo "  round $round: nginx ${n% *} rps (${n#* } us CPU/req)   infergate ${g% *} rps (${g#* } us CPU/req)   ratio $(tail -1 "$WORK/ratios.txt")"
done
nginx_rps=$(cut -d' ' -f1 "$WORK/nginx.txt" | median); gw_rps=$(cut -d' ' -f1 "$WORK/gateway.txt" | median)
nginx_cpu=$(cut -d' ' -f2 "$WORK/nginx.txt" | median); gw_cpu=$(cut -d' ' -f2 "$WORK/gateway.txt" | median)
printf '\n%-10s %12s %16s\n' "" "median rps" "us CPU/request"
printf '%-10s %12s %16s\n' nginx "$nginx_rps" "$nginx_cpu" infergate "$gw_rps" "$gw_cpu"
echo "infergate/nginx: rps $(ratio "$gw_rps" "$nginx_rps")x (median of the rounds' own ratios $(median < "$WORK/ratios.txt")x), CPU per request $(ratio "$gw_cpu" "$nginx_cpu")x"
