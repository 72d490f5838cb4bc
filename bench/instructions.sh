#!/usr/bin/env bash
# User-space instructions per proxied request, infergate vs nginx (Debian's package), counted by
# valgrind's callgrind: unlike rps on a shared 2-core machine, this figure does not move between
# runs, so it shows what a change to the request path costs or saves. Kernel work is not counted
# (both make the same system calls per request: two recvfrom and two writev).
#
#   bench/instructions.sh [SECONDS]      (default: 5 s of counted traffic each)
#
# Both proxies run one worker under callgrind in front of the same backend (an nginx answering a
# small fixed JSON), with the seed's proxy headers, keep-alive 32, no access log and no metrics
# (nginx keeps none; infergate's cost of them is the metrics section of bench/run.sh). Load: wrk,
# 8 connections, after a 2 s warm-up that is not counted. Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SECONDS_COUNTED=${1:-5}
BACKEND=18180 NGINX=18181 GATEWAY=18182

install_tools
need valgrind || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
cargo build --profile production -q

start_backend $BACKEND
wait_port $BACKEND

# count NAME PORT COMMAND...: runs COMMAND under callgrind, loads PORT; prints "requests instructions".
count() {
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.out" "$@" \
    >"$WORK/$name.valgrind.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  # Under valgrind a start takes seconds.
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  wrk -t1 -c8 -d2s "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  local out
  out=$(wrk -t1 -c8 -d"${SECONDS_COUNTED}s" "http://127.0.0.1:$port/v1/chat/completions")
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if echo "$out" | grep -qE "Non-2xx|Socket errors"; then echo "$name: failed requests" >&2; echo "$out" >&2; exit 1; fi
  local requests instructions
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  instructions=$(callgrind_annotate "$WORK/$name.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$requests $instructions"
}

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 32; }
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://backend; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; } }
}
CONF
cat > "$WORK/gateway.toml" <<CONF
[http]
workers = 1
keepalive_requests = 1000000

[admin]
enabled = false

[[upstream]]
name = "backend"
servers = [{ addr = "127.0.0.1:$BACKEND" }]
keepalive = 32

[[server]]
listen = ["127.0.0.1:$GATEWAY"]
  [[server.location]]
  prefix = "/"
  proxy = "backend"
CONF

read -r n_requests n_instructions < <(count nginx $NGINX nginx -c "$WORK/nginx/nginx.conf")
read -r g_requests g_instructions < <(count infergate $GATEWAY target/production/infergate run --config "$WORK/gateway.toml")
nginx_per=$((n_instructions / n_requests)) gateway_per=$((g_instructions / g_requests))
echo "user-space instructions per proxied request (callgrind, 1 worker, wrk -c8, ${SECONDS_COUNTED}s counted)"
printf '%-10s %10s %14s\n' "" requests "instr/request"
printf '%-10s %10s %14s\n' nginx "$n_requests" "$nginx_per" infergate "$g_requests" "$gateway_per"
echo "infergate/nginx: $(ratio "$gateway_per" "$nginx_per")x instructions per request"
