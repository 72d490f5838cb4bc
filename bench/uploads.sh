#!/usr/bin/env bash
# Image uploads through each proxy: infergate against nginx (the seed's `client_max_body_size`
# raised to 50m on both, nginx's body buffering as it comes: 16 KB in memory, the rest in a temp
# file), in front of a backend that reads a body whole and answers at once (infergate-load's own).
# For bodies of 2, 10 and 20 MB, one upload at a time: the wait between the client's last byte and
# the answer's first, which is how long the proxy held the body back from the model (medians of
# ROUNDS x 10 uploads). Then 50 uploads of 10 MB at once, each client sending at 20 MB/s (a fast
# client's uplink): the proxy's peak resident memory.
#
#   bench/uploads.sh [ROUNDS]      (default 3)
#
# The gateway is built as for bench/run.sh (with profile-guided optimization; PGO=0: the production
# build as it is). Everything listens on 127.0.0.1; the script stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-3}
BACKEND=18580 NGINX=18581 GATEWAY=18582 NGINX_BACKEND=18583 GATEWAY_BACKEND=18584
install_tools
build_gateway
LOAD=target/production/infergate-load

# Each proxy its own backend port: the load client serves the backend of the proxy it measures.
start_nginx proxy "client_max_body_size 50m;
  upstream model { server 127.0.0.1:$NGINX_BACKEND; keepalive 32; }
  server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://model; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_read_timeout 120s; } }"
# nginx's workers (another user) write the bodies' temp files there.
chmod 755 "$WORK"; chmod 777 "$WORK/proxy"
start_gateway uploads "$(gateway_config $GATEWAY $GATEWAY_BACKEND | sed 's/^listen = .*/&\nclient_max_body_size = "50MB"/')"
for port in $NGINX $GATEWAY; do wait_port $port; done
NGINX_PIDS=$(nginx_pids proxy)

# peak_kb PIDS... : the highest resident memory of PIDS, sampled every 50 ms until $WORK/stop exists.
peak_kb() {
  local peak=0 now
  while [ ! -e "$WORK/stop" ]; do
    now=$(rss_kb "$@"); [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.05
  done
  echo "$peak"
}

RESULTS="$WORK/results.txt"; : > "$RESULTS"
echo "uploads: nginx and infergate, $ROUNDS rounds, $(nproc) cores" >&2
for round in $(seq "$ROUNDS"); do
  order=(nginx gateway); [ $((round % 2)) = 0 ] && order=(gateway nginx)
  for proxy in "${order[@]}"; do
    if [ "$proxy" = nginx ]; then port=$NGINX backend=$NGINX_BACKEND pids=$NGINX_PIDS
    else port=$GATEWAY backend=$GATEWAY_BACKEND pids=$GATEWAY_PID; fi
    for mb in 2 10 20; do
      out=$($LOAD upload --addr "127.0.0.1:$port" --backend "127.0.0.1:$backend" --mb $mb --requests 10)
      echo "$out" | grep -q "failed=0" || echo "  $proxy ${mb} MB: $out" >&2
      echo "$proxy|$mb MB: wait from the last byte to the answer, p50 (ms)|$(echo "$out" | value wait_p50_ms)" >> "$RESULTS"
    done
    rm -f "$WORK/stop"
    # shellcheck disable=SC2086
    idle=$(rss_kb $pids)
    # shellcheck disable=SC2086
    peak_kb $pids > "$WORK/peak" &
    sampler=$!
    out=$($LOAD upload --addr "127.0.0.1:$port" --backend "127.0.0.1:$backend" --mb 10 --requests 1 --clients 50 --rate-mb 20)
    touch "$WORK/stop"; wait $sampler
    echo "$out" | grep -q "failed=0" || echo "  $proxy 50 x 10 MB: $out" >&2
    echo "$proxy|50 uploads of 10 MB at once: peak memory (kB)|$(( $(cat "$WORK/peak") - idle ))" >> "$RESULTS"
    echo "  round $round $proxy: $(grep "^$proxy|" "$RESULTS" | tail -4 | cut -d'|' -f3 | tr '\n' ' ')" >&2
  done
done

echo
printf '| %-56s | %8s | %9s | %15s |\n' "measure (median of $ROUNDS)" nginx infergate "infergate/nginx"
printf '|%s|%s|%s|%s|\n' "----------------------------------------------------------" "----------" "-----------" "-----------------"
cut -d'|' -f2 "$RESULTS" | awk '!seen[$0]++' | while read -r metric; do
  n=$(awk -F'|' -v m="$metric" '$1 == "nginx" && $2 == m {print $3}' "$RESULTS" | median)
  g=$(awk -F'|' -v m="$metric" '$1 == "gateway" && $2 == m {print $3}' "$RESULTS" | median)
  printf '| %-56s | %8s | %9s | %15s |\n' "$metric" "$n" "$g" "$(ratio "$g" "$n")"
done
echo "(memory: above the proxy's resident memory before the uploads)"
