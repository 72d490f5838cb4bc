#!/usr/bin/env bash
# Plain keep-alive reverse proxy throughput: infergate vs nginx (Debian's package), same machine,
# same run, same backend. Prints medians of the rounds and the infergate/nginx ratio.
#
#   bench/proxy-rps.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 10 s each)
#
# The backend is a second nginx answering a fixed small JSON body (fast and identical for both).
# Load: wrk, HTTP/1.1, 50 connections, 2 threads. CPU per request is read from /proc for the proxy's
# processes only. Everything listens on 127.0.0.1; the script stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
BACKEND_PORT=18080 NGINX_PORT=18081 GATEWAY_PORT=18082

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
NGINX=$(command -v nginx)
cargo build --release -q
GATEWAY=target/release/infergate

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/backend/nginx.pid" ] && kill "$(cat "$WORK/backend/nginx.pid")" 2>/dev/null || true
  [ -f "$WORK/proxy/nginx.pid" ] && kill "$(cat "$WORK/proxy/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

nginx_conf() { # $1 dir, $2 server block
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CONF
worker_processes auto;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
  $2
}
CONF
}

nginx_conf "$WORK/backend" "server { listen 127.0.0.1:$BACKEND_PORT; keepalive_requests 1000000;
  location / { default_type application/json; return 200 '{\"id\":\"cmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"}}]}'; } }"
nginx_conf "$WORK/proxy" "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 32; }
  server { listen 127.0.0.1:$NGINX_PORT; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; } }"
cat > "$WORK/infergate.toml" <<CONF
[http]
keepalive_requests = 1000000

[[upstream]]
name = "backend"
servers = [{ addr = "127.0.0.1:$BACKEND_PORT" }]
keepalive = 32

[[server]]
listen = ["127.0.0.1:$GATEWAY_PORT"]

  [[server.location]]
  prefix = "/"
  proxy = "backend"
CONF

"$NGINX" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log"
"$NGINX" -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log"
RUST_LOG=warn "$GATEWAY" --config "$WORK/infergate.toml" 2>"$WORK/gateway.log" &
PIDS+=($!)
GATEWAY_PID=$!
for port in $BACKEND_PORT $NGINX_PORT $GATEWAY_PORT; do
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break; sleep 0.1; done
done

# CPU ticks (user+system) of a set of processes.
ticks() { local total=0; for pid in "$@"; do
  [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo $total; }
nginx_pids() { echo "$(cat "$WORK/proxy/nginx.pid") $(pgrep -P "$(cat "$WORK/proxy/nginx.pid")" | tr '\n' ' ')"; }
HZ=$(getconf CLK_TCK)

# run NAME PORT PIDS... -> prints "rps us_cpu_per_request"
run() {
  local port=$1; shift
  local before after out rps
  before=$(ticks "$@")
  out=$(wrk -t2 -c50 -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$port/v1/chat/completions")
  after=$(ticks "$@")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
  [ -n "$errors" ] && echo "  note: $errors" >&2
  awk -v r="$rps" -v t=$((after - before)) -v hz="$HZ" -v s="$SECONDS_PER_RUN" \
    'BEGIN { printf "%.0f %.1f\n", r, (t / hz) / (r * s) * 1e6 }'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "proxy throughput: small JSON, HTTP/1.1 keep-alive, wrk -t2 -c50, ${SECONDS_PER_RUN}s x $ROUNDS rounds, $(nproc) cores"
: > "$WORK/nginx.txt"; : > "$WORK/gateway.txt"
for round in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2046
  n=$(run $NGINX_PORT $(nginx_pids)); echo "$n" >> "$WORK/nginx.txt"
  g=$(run $GATEWAY_PORT "$GATEWAY_PID"); echo "$g" >> "$WORK/gateway.txt"
  echo "  round $round: nginx ${n% *} rps (${n#* } us CPU/req)   infergate ${g% *} rps (${g#* } us CPU/req)"
done
nginx_rps=$(cut -d' ' -f1 "$WORK/nginx.txt" | median); gw_rps=$(cut -d' ' -f1 "$WORK/gateway.txt" | median)
nginx_cpu=$(cut -d' ' -f2 "$WORK/nginx.txt" | median); gw_cpu=$(cut -d' ' -f2 "$WORK/gateway.txt" | median)
printf '\n%-10s %12s %16s\n' "" "median rps" "us CPU/request"
printf '%-10s %12s %16s\n' nginx "$nginx_rps" "$nginx_cpu" infergate "$gw_rps" "$gw_cpu"
awk -v g="$gw_rps" -v n="$nginx_rps" -v gc="$gw_cpu" -v nc="$nginx_cpu" \
  'BEGIN { printf "infergate/nginx: rps %.2fx, CPU per request %.2fx\n", g / n, gc / nc }'
