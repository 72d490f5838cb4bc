#!/usr/bin/env bash
# infergate's benchmark suite: infergate against nginx (Debian's package) on this machine, in the same
# run, alternating, medians of ROUNDS rounds. Prints one table; every figure has its nginx ratio.
#
#   bench/run.sh [ROUNDS]        (default 3; the whole suite takes about 18 minutes, and 6 more the
#                                first time for the profile-guided build, bench/build-pgo.sh)
#   SECTIONS=rps,logs,tls,ratelimit,metrics,gzip,ttft,overload,balance,memory bench/run.sh   (a subset)
#
# Sections: plain proxy rps (a small and a 20 KB answer); HTTPS over HTTP/1.1 (wrk) and HTTP/2 (h2load); the
# same HTTP/1.1 rows with the seed's access log on both; TLS handshakes a second (P-256, RSA-2048); the cost
# of a rate limit and of metrics;
# gzip of a 20 KB JSON answer with the seed's settings (rps, CPU per request, bytes); time to first token added
# over a direct connection to the simulated model, with the seed's config (nginx `proxy_buffering on`),
# over cleartext and over the seed's HTTPS listener (HTTP/1.1 and HTTP/2);
# milliseconds from a client closing a stream to the model noticing; goodput of an overloaded model
# (8 slots, dies above 24 requests, 48 clients, 20 s, SLO 5 s); memory with 10,000 idle keep-alive
# connections. All traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-3}
SECTIONS=${SECTIONS:-rps,logs,tls,ratelimit,metrics,gzip,ttft,overload,balance,memory}
section() { [[ ",$SECTIONS," == *",$1,"* ]]; }
install_tools
build_gateway
LOAD=target/production/infergate-load
ulimit -n 65536 2>/dev/null || true

BACKEND=18080 SIM=18090 SIM_SLOW=18095
NGINX_HTTP=18081 GW_HTTP=18082 NGINX_TLS=18443 GW_TLS=18444 NGINX_SEED=18091 GW_SEED=18092 GW_GUARD=18093 NGINX_PAIR=18096 GW_PAIR_RR=18097 GW_PAIR_LI=18098 NGINX_LIMIT=18099 GW_LIMIT=18100 NGINX_GZIP=18101 GW_GZIP=18102 GW_ADMIN=18103 GW_BARE=18104 GW_METRICS=18105 GW_METRICS_ADMIN=18106
NGINX_HTTP_LOG=18107 GW_HTTP_LOG=18108 NGINX_TLS_LOG=18445 GW_TLS_LOG=18446 NGINX_RSA=18447 GW_RSA=18448 NGINX_SEED_TLS=18449 GW_SEED_TLS=18450
RESULTS="$WORK/results.txt"; : > "$RESULTS"
# record SECTION METRIC NGINX_VALUE INFERGATE_VALUE BETTER(higher|lower)
record() { echo "$1|$2|$3|$4|$5" >> "$RESULTS"; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$WORK/rsa.key" -out "$WORK/rsa.crt" 2>/dev/null

start_backend $BACKEND

PROXY_HEADERS='proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host;
  proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto $scheme;'
start_nginx proxy "upstream backend { server 127.0.0.1:$BACKEND; keepalive 32; }
  upstream glm_backend { server 127.0.0.1:$SIM; keepalive 32; }
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$NGINX_HTTP; location / { proxy_pass http://backend; $PROXY_HEADERS } }
  log_format main '\$remote_addr - \$remote_user [\$time_local] "\$request" \$status \$body_bytes_sent "\$http_referer" "\$http_user_agent" "\$http_x_forwarded_for"';
  server { listen 127.0.0.1:$NGINX_HTTP_LOG; access_log $WORK/nginx-access.log main;
    location / { proxy_pass http://backend; $PROXY_HEADERS } }
  server { listen 127.0.0.1:$NGINX_RSA ssl; ssl_certificate $WORK/rsa.crt; ssl_certificate_key $WORK/rsa.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers HIGH:!aNULL:!MD5; location / { proxy_pass http://backend; $PROXY_HEADERS } }
  server { listen 127.0.0.1:$NGINX_TLS_LOG ssl; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers HIGH:!aNULL:!MD5; access_log $WORK/nginx-access.log main;
    location / { proxy_pass http://backend; $PROXY_HEADERS } }
  limit_req_zone \$binary_remote_addr zone=generous:10m rate=1000000r/s;
  server { listen 127.0.0.1:$NGINX_LIMIT; location / { limit_req zone=generous burst=1000000 nodelay; proxy_pass http://backend; $PROXY_HEADERS } }
  server { listen 127.0.0.1:$NGINX_GZIP; gzip on; gzip_types text/plain application/json text/css application/javascript;
    gzip_min_length 1024; location / { proxy_pass http://backend; $PROXY_HEADERS } }
  server { listen 127.0.0.1:$NGINX_TLS ssl http2; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers HIGH:!aNULL:!MD5;
    location / { proxy_pass http://backend; $PROXY_HEADERS } }
  upstream pair { server 127.0.0.1:$SIM; server 127.0.0.1:$SIM_SLOW; keepalive 32; }
  server { listen 127.0.0.1:$NGINX_PAIR; location / { proxy_pass http://pair; $PROXY_HEADERS proxy_read_timeout 120s; } }
  server { listen 127.0.0.1:$NGINX_SEED;
    location / { proxy_pass http://glm_backend; $PROXY_HEADERS
      proxy_connect_timeout 30s; proxy_send_timeout 60s; proxy_read_timeout 120s;
      proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 8 32k; } }
  server { listen 127.0.0.1:$NGINX_SEED_TLS ssl http2; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers HIGH:!aNULL:!MD5;
    location / { proxy_pass http://glm_backend; $PROXY_HEADERS
      proxy_connect_timeout 30s; proxy_send_timeout 60s; proxy_read_timeout 120s;
      proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 8 32k; } }"
start_gateway proxy "[http]
keepalive_requests = 1000000

[admin]
listen = \"127.0.0.1:$GW_ADMIN\"

[limit_zone.generous]
key = \"client_ip\"
rate = \"1000000r/s\"

[[upstream]]
name = \"backend\"
servers = [{ addr = \"127.0.0.1:$BACKEND\" }]
keepalive = 32

[[upstream]]
name = \"glm_backend\"
servers = [{ addr = \"127.0.0.1:$SIM\" }]
keepalive = 32
timeouts = { connect = \"30s\", send = \"60s\", read = \"120s\" }

# The seed's upstream with admission control sized to the sim: 8 slots, a queue that an answer
# admitted from it still finishes within the 5 s SLO.
[[upstream]]
name = \"glm_guarded\"
servers = [{ addr = \"127.0.0.1:$SIM\", max_inflight = 8 }]
queue = { max = 24, timeout = \"3s\" }
keepalive = 32
timeouts = { connect = \"30s\", send = \"60s\", read = \"120s\" }

[[upstream]]
name = \"pair_rr\"
servers = [{ addr = \"127.0.0.1:$SIM\" }, { addr = \"127.0.0.1:$SIM_SLOW\" }]
timeouts = { read = \"120s\" }

[[upstream]]
name = \"pair_li\"
servers = [{ addr = \"127.0.0.1:$SIM\" }, { addr = \"127.0.0.1:$SIM_SLOW\" }]
balance = \"least_inflight\"
timeouts = { read = \"120s\" }

[[server]]
listen = [\"127.0.0.1:$GW_PAIR_RR\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"pair_rr\"

[[server]]
listen = [\"127.0.0.1:$GW_PAIR_LI\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"pair_li\"

[[server]]
listen = [\"127.0.0.1:$GW_GUARD\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"glm_guarded\"

[[server]]
listen = [\"127.0.0.1:$GW_LIMIT\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"
  limit_req = { zone = \"generous\", burst = 1000000, nodelay = true }

[[server]]
listen = [\"127.0.0.1:$GW_GZIP\"]
compress = { encodings = [\"gzip\"], types = [\"text/plain\", \"application/json\", \"text/css\", \"application/javascript\"], min_length = 1024, gzip_level = 1 }
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"

[[server]]
listen = [\"127.0.0.1:$GW_HTTP\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"

[[server]]
listen = [\"127.0.0.1:$GW_TLS\"]
tls = { cert = \"$WORK/tls.crt\", key = \"$WORK/tls.key\", protocols = [\"1.2\", \"1.3\"] }
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"

[[server]]
listen = [\"127.0.0.1:$GW_RSA\"]
tls = { cert = \"$WORK/rsa.crt\", key = \"$WORK/rsa.key\", protocols = [\"1.2\", \"1.3\"] }
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"

[[server]]
listen = [\"127.0.0.1:$GW_HTTP_LOG\"]
access_log = { path = \"$WORK/gateway-access.log\", format = \"main\" }
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"

[[server]]
listen = [\"127.0.0.1:$GW_TLS_LOG\"]
tls = { cert = \"$WORK/tls.crt\", key = \"$WORK/tls.key\", protocols = [\"1.2\", \"1.3\"] }
access_log = { path = \"$WORK/gateway-access.log\", format = \"main\" }
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"

[[server]]
listen = [\"127.0.0.1:$GW_SEED\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"glm_backend\"
  proxy_buffering = true
  proxy_buffer_size = \"16k\"
  proxy_buffers = \"8 32k\"

[[server]]
listen = [\"127.0.0.1:$GW_SEED_TLS\"]
tls = { cert = \"$WORK/tls.crt\", key = \"$WORK/tls.key\", protocols = [\"1.2\", \"1.3\"] }
  [[server.location]]
  prefix = \"/\"
  proxy = \"glm_backend\"
  proxy_buffering = true
  proxy_buffer_size = \"16k\"
  proxy_buffers = \"8 32k\""
GW_PID=$GATEWAY_PID
# Two identical small-JSON proxies but for metrics (kept and served in the first; in the second no
# admin API, so no request is accounted), for the cost of metrics.
for variant in "metrics|listen = \"127.0.0.1:$GW_METRICS_ADMIN\"|$GW_METRICS" "bare|enabled = false|$GW_BARE"; do
  IFS='|' read -r name admin port <<< "$variant"
  start_gateway "$name" "[http]
keepalive_requests = 1000000

[admin]
$admin

[[upstream]]
name = \"backend\"
servers = [{ addr = \"127.0.0.1:$BACKEND\" }]
keepalive = 32

[[server]]
listen = [\"127.0.0.1:$port\"]
  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\""
done
GATEWAY_PID=$GW_PID
NGINX_PIDS=$(nginx_pids proxy)
for port in $BACKEND $NGINX_HTTP $GW_HTTP $NGINX_TLS $GW_TLS $NGINX_HTTP_LOG $GW_HTTP_LOG $NGINX_TLS_LOG $GW_TLS_LOG $NGINX_RSA $GW_RSA $GW_BARE $GW_METRICS; do wait_port $port; done

# sim_start [ARGS...]: a fresh simulated model on $SIM; sets SIM_PID.
sim_start() {
  target/production/infergate sim --listen "127.0.0.1:$SIM" "$@" 2>>"$WORK/sim.log" &
  SIM_PID=$!; PIDS+=("$SIM_PID"); wait_port $SIM
}
sim_stop() { kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; }

echo "infergate benchmark suite: $(date -u +%Y-%m-%d), $(nproc) cores, nginx $(nginx -v 2>&1 | cut -d/ -f2), $ROUNDS rounds, infergate: $GATEWAY_BUILD" >&2

# 1. rps, plain HTTP/1.1 (a small and a 20 KB answer) and HTTPS (wrk), HTTP/2 over TLS (h2load).
wrk_rps() { wrk -t2 -c50 -d10s "$1" | awk '/Requests\/sec/ {print $2}'; }
h2_rps() { h2load -t2 -c50 -m10 -D 10 "$1" 2>/dev/null | awk '/^finished in/ {gsub(",", "", $4); print $4}'; }
# rps_pair ROUND COMMAND NGINX_URL INFERGATE_URL -> "nginx_rps infergate_rps"; the two take turns going
# first (odd rounds nginx), since load on a shared machine drifts within a round.
rps_pair() {
  local n g
  if [ $(($1 % 2)) = 1 ]; then n=$($2 "$3"); g=$($2 "$4"); else g=$($2 "$4"); n=$($2 "$3"); fi
  echo "$n $g"
}
section rps && for round in $(seq "$ROUNDS"); do
  echo "rps round $round" >&2
  for row in "HTTP/1.1 small JSON (rps)|wrk_rps|http://127.0.0.1:$NGINX_HTTP/v1/models|http://127.0.0.1:$GW_HTTP/v1/models" \
    "HTTP/1.1 20 KB JSON (rps)|wrk_rps|http://127.0.0.1:$NGINX_HTTP/big.json|http://127.0.0.1:$GW_HTTP/big.json" \
    "HTTPS HTTP/1.1 (rps)|wrk_rps|https://127.0.0.1:$NGINX_TLS/v1/models|https://127.0.0.1:$GW_TLS/v1/models" \
    "HTTPS HTTP/2 (rps, h2load -m10)|h2_rps|https://127.0.0.1:$NGINX_TLS/v1/models|https://127.0.0.1:$GW_TLS/v1/models"; do
    IFS='|' read -r metric tool nginx_url gateway_url <<< "$row"
    read -r n g <<< "$(rps_pair "$round" "$tool" "$nginx_url" "$gateway_url")"
    record rps "$metric" "$n" "$g" higher
  done
done

# 1a. The same with the seed's access log (`main`, to a file) on both, beside the rows without: rps,
# and each proxy's rps with its log over without (the log's own cost). The files are emptied
# before each run.
logged_rps() { : > "$WORK/nginx-access.log"; : > "$WORK/gateway-access.log"; wrk_rps "$1"; }
section logs && for round in $(seq "$ROUNDS"); do
  echo "logs round $round" >&2
  for row in "HTTP/1.1 small JSON|http://127.0.0.1:$NGINX_HTTP|http://127.0.0.1:$GW_HTTP|http://127.0.0.1:$NGINX_HTTP_LOG|http://127.0.0.1:$GW_HTTP_LOG" \
    "HTTPS HTTP/1.1|https://127.0.0.1:$NGINX_TLS|https://127.0.0.1:$GW_TLS|https://127.0.0.1:$NGINX_TLS_LOG|https://127.0.0.1:$GW_TLS_LOG"; do
    IFS='|' read -r metric nginx_plain gateway_plain nginx_log gateway_log <<< "$row"
    read -r n_plain g_plain <<< "$(rps_pair "$round" wrk_rps "$nginx_plain/v1/models" "$gateway_plain/v1/models")"
    read -r n_log g_log <<< "$(rps_pair "$round" logged_rps "$nginx_log/v1/models" "$gateway_log/v1/models")"
    record logs "$metric, access log main (rps)" "$n_log" "$g_log" higher
    record logs "$metric: rps with the log / without" "$(ratio "$n_log" "$n_plain")" "$(ratio "$g_log" "$g_plain")" higher
  done
done

# 1a'. TLS handshakes: new connections a second (full handshakes, no resumption), two `openssl
# s_time -new` clients at once for 5 s, with the P-256 and the RSA-2048 certificate.
handshakes() {
  local start end out=$WORK/s_time clients=()
  start=$(date +%s.%N)
  for client in 1 2; do
    openssl s_time -connect "127.0.0.1:$1" -new -time 5 > "$out.$client" 2>&1 &
    clients+=("$!")
  done
  wait "${clients[@]}"
  end=$(date +%s.%N)
  cat "$out.1" "$out.2" | awk -v s="$start" -v e="$end" '/connections in .* real seconds/ {n += $1} END {printf "%.0f\n", n / (e - s)}'
}
section tls && for round in $(seq "$ROUNDS"); do
  echo "tls round $round" >&2
  read -r n g <<< "$(rps_pair "$round" handshakes $NGINX_TLS $GW_TLS)"
  record tls "TLS handshakes/s, P-256 certificate" "$n" "$g" higher
  read -r n g <<< "$(rps_pair "$round" handshakes $NGINX_RSA $GW_RSA)"
  record tls "TLS handshakes/s, RSA-2048 certificate" "$n" "$g" higher
done

# 1b. Cost of a per-client rate limit that never rejects: rps with it over rps without, for each.
section ratelimit && for round in $(seq "$ROUNDS"); do
  echo "ratelimit round $round" >&2
  n_plain=$(wrk_rps http://127.0.0.1:$NGINX_HTTP/v1/models); n_limit=$(wrk_rps http://127.0.0.1:$NGINX_LIMIT/v1/models)
  g_plain=$(wrk_rps http://127.0.0.1:$GW_HTTP/v1/models); g_limit=$(wrk_rps http://127.0.0.1:$GW_LIMIT/v1/models)
  record ratelimit "rps with a generous per-IP limit / without" "$(ratio "$n_limit" "$n_plain")" "$(ratio "$g_limit" "$g_plain")" higher
done

# 1b'. Cost of metrics (every request accounted: counters, histograms, TTFT): rps with over without,
# infergate only (nginx has no such metrics; its column is empty).
section metrics && for round in $(seq "$ROUNDS"); do
  echo "metrics round $round" >&2
  # Alternate which goes first, so drift in the machine's load does not favour one.
  if (( round % 2 )); then
    g_bare=$(wrk_rps http://127.0.0.1:$GW_BARE/v1/models); g_metrics=$(wrk_rps http://127.0.0.1:$GW_METRICS/v1/models)
  else
    g_metrics=$(wrk_rps http://127.0.0.1:$GW_METRICS/v1/models); g_bare=$(wrk_rps http://127.0.0.1:$GW_BARE/v1/models)
  fi
  record metrics "rps with metrics / without (infergate)" nan "$(ratio "$g_metrics" "$g_bare")" higher
done

# 1c. gzip of a 20 KB JSON answer with the seed's settings (gzip_comp_level 1 on both): rps, CPU per
# request of the proxy's processes, and the compressed size.
# gzip_run URL PIDS...: "RPS CPU_US_PER_REQUEST" for 10 s of wrk asking for gzip.
gzip_run() {
  local url=$1 before after out; shift
  before=$(ticks "$@")
  out=$(wrk -t2 -c50 -d10s -H 'Accept-Encoding: gzip' "$url")
  after=$(ticks "$@")
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" '/requests in/ {printf "%.1f", t / hz * 1e6 / $1}')"
}
gzip_size() { curl -s -H 'Accept-Encoding: gzip' "$1" | wc -c; }
section gzip && for round in $(seq "$ROUNDS"); do
  echo "gzip round $round" >&2
  # shellcheck disable=SC2086
  read -r n_rps n_cpu <<< "$(gzip_run http://127.0.0.1:$NGINX_GZIP/big.json $NGINX_PIDS)"
  read -r g_rps g_cpu <<< "$(gzip_run http://127.0.0.1:$GW_GZIP/big.json "$GATEWAY_PID")"
  record gzip "gzip 20 KB JSON (rps)" "$n_rps" "$g_rps" higher
  record gzip "gzip 20 KB JSON: proxy CPU per request (us)" "$n_cpu" "$g_cpu" lower
  record gzip "gzip 20 KB JSON: bytes sent" "$(gzip_size http://127.0.0.1:$NGINX_GZIP/big.json)" "$(gzip_size http://127.0.0.1:$GW_GZIP/big.json)" lower
done

# 2. Time to first token over the seed config, and cancellation, against the default sim.
section ttft && sim_start && for round in $(seq "$ROUNDS"); do
  echo "ttft/cancel round $round" >&2
  direct=$($LOAD ttft --addr 127.0.0.1:$SIM --requests 20)
  via_nginx=$($LOAD ttft --addr 127.0.0.1:$NGINX_SEED --requests 10)
  via_gw=$($LOAD ttft --addr 127.0.0.1:$GW_SEED --requests 20)
  for p in p50 p90; do
    d=$(echo "$direct" | value "ttft_${p}_ms")
    n=$(echo "$via_nginx" | value "ttft_${p}_ms"); g=$(echo "$via_gw" | value "ttft_${p}_ms")
    record ttft "TTFT added over direct, $p (ms)" "$(awk -v a="$n" -v b="$d" 'BEGIN {printf "%.2f", a - b}')" "$(awk -v a="$g" -v b="$d" 'BEGIN {printf "%.2f", a - b}')" lower
  done
  # The seed's HTTPS listener (HTTP/1.1 and HTTP/2), where nginx's `proxy_buffering on` holds the
  # stream back.
  for version in "HTTP/1.1|" "HTTP/2|--http2"; do
    IFS='|' read -r name flag <<< "$version"
    # shellcheck disable=SC2086
    n=$($LOAD ttft --addr 127.0.0.1:$NGINX_SEED_TLS --tls-ca "$WORK/tls.crt" $flag --requests 10 | value ttft_p50_ms)
    # shellcheck disable=SC2086
    g=$($LOAD ttft --addr 127.0.0.1:$GW_SEED_TLS --tls-ca "$WORK/tls.crt" $flag --requests 20 | value ttft_p50_ms)
    d=$(echo "$direct" | value ttft_p50_ms)
    record ttft "TTFT added, seed's HTTPS $name, p50 (ms)" "$(awk -v a="$n" -v b="$d" 'BEGIN {printf "%.2f", a - b}')" "$(awk -v a="$g" -v b="$d" 'BEGIN {printf "%.2f", a - b}')" lower
  done
  n=$($LOAD cancel --addr 127.0.0.1:$NGINX_SEED --sim 127.0.0.1:$SIM --requests 5 | value cancel_p50_ms)
  g=$($LOAD cancel --addr 127.0.0.1:$GW_SEED --sim 127.0.0.1:$SIM --requests 10 | value cancel_p50_ms)
  record cancel "client close -> model abort, p50 (ms)" "$n" "$g" lower
done
section ttft && sim_stop

# 3. Goodput under overload: a fresh sim each run (it may die), 48 closed-loop clients.
CAPACITY=""
if section overload; then
  # The model's capacity: exactly as many closed-loop clients as it has slots, straight to it.
  sim_start --slots 8 --crash-above 24
  CAPACITY=$($LOAD overload --addr 127.0.0.1:$SIM --sim 127.0.0.1:$SIM --clients 8 --duration 20s --slo 5s | value goodput_rps)
  sim_stop
  echo "model capacity: $CAPACITY req/s" >&2
fi
section overload && for round in $(seq "$ROUNDS"); do
  echo "overload round $round" >&2
  for target in nginx:$NGINX_SEED gateway:$GW_GUARD; do
    sim_start --slots 8 --crash-above 24
    out=$($LOAD overload --addr "127.0.0.1:${target#*:}" --sim 127.0.0.1:$SIM --clients 48 --duration 20s --slo 5s)
    sim_stop
    echo "  ${target%%:*}: $out" >&2
    eval "${target%%:*}_goodput=$(echo "$out" | value goodput_rps)"
    eval "${target%%:*}_alive=$(echo "$out" | value sim_alive)"
    eval "${target%%:*}_reject=$(echo "$out" | value reject_p99_ms)"
  done
  # shellcheck disable=SC2154
  record overload "goodput within 5 s SLO (req/s)" "$nginx_goodput" "$gateway_goodput" higher
  # shellcheck disable=SC2154
  record overload "model alive after (1 = yes)" "$([ "$nginx_alive" = yes ] && echo 1 || echo 0)" "$([ "$gateway_alive" = yes ] && echo 1 || echo 0)" higher
  # shellcheck disable=SC2154
  record overload "rejection latency p99 (ms)" "$nginx_reject" "$gateway_reject" lower
done

# 4. Balancing two models of different speed (the second decodes 3x slower), 16 closed-loop clients:
# nginx's round robin against infergate's least_inflight; infergate's own round robin for reference.
if section balance; then
  sim_start --slots 16; FAST_PID=$SIM_PID
  target/production/infergate sim --listen "127.0.0.1:$SIM_SLOW" --slots 16 --decode-ms 75 2>>"$WORK/sim.log" &
  SLOW_PID=$!; PIDS+=("$SLOW_PID"); wait_port $SIM_SLOW
  for round in $(seq "$ROUNDS"); do
    echo "balance round $round" >&2
    run_pair() { $LOAD overload --addr "127.0.0.1:$1" --sim 127.0.0.1:$SIM --clients 16 --duration 15s --slo 60s; }
    n=$(run_pair $NGINX_PAIR); g=$(run_pair $GW_PAIR_LI); r=$(run_pair $GW_PAIR_RR)
    echo "  infergate round_robin: $r" >&2
    record balance "two models, 1x/3x: mean latency (ms)" "$(echo "$n" | value ok_mean_ms)" "$(echo "$g" | value ok_mean_ms)" lower
    record balance "two models, 1x/3x: p99 latency (ms)" "$(echo "$n" | value ok_p99_ms)" "$(echo "$g" | value ok_p99_ms)" lower
    record balance "two models, 1x/3x: answers/s" "$(echo "$n" | value goodput_rps)" "$(echo "$g" | value goodput_rps)" higher
  done
  kill "$FAST_PID" "$SLOW_PID" 2>/dev/null || true
fi

# 5. Memory while holding 10,000 idle keep-alive connections: the whole resident set of the proxy's
# processes (nginx allocates its connection slots up front, so the total compares fairly), and what
# the connections added to it, per connection, over the resident set before. The gateway starts anew
# for each round, with the same config: in one process a round's connections are held in what the
# last one left (malloc keeps freed memory, and later rounds scatter over it: 1,539, 1,598 and 1,616
# bytes in three rounds of one process, docs/perf-log.md), so each round would measure its history.
# nginx's slots are its own from the start.
section memory && nginx_before=$(rss_kb $NGINX_PIDS)
section memory && for round in $(seq "$ROUNDS"); do
  echo "idle memory round $round" >&2
  kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true
  start_gateway proxy "$(cat "$WORK/proxy.toml")"
  wait_port $GW_HTTP
  gateway_before=$(rss_kb $GATEWAY_PID)
  for target in nginx gateway; do
    if [ $target = nginx ]; then port=$NGINX_HTTP; pids=$NGINX_PIDS; else port=$GW_HTTP; pids=$GATEWAY_PID; fi
    before_var=${target}_before; before=${!before_var}
    $LOAD idle --addr 127.0.0.1:$port --connections 10000 --hold 8s > "$WORK/idle.txt" &
    sleep 6
    # shellcheck disable=SC2086
    during=$(rss_kb $pids)
    eval "${target}_mem=$(( during / 1024 ))"
    eval "${target}_per_connection=$(( (during - before) * 1024 / 10000 ))"
    wait $!
    grep -q "idle_still_open=10000" "$WORK/idle.txt" || echo "  $target closed some idle connections: $(cat "$WORK/idle.txt")" >&2
  done
  # shellcheck disable=SC2154
  record memory "RSS holding 10,000 idle connections (MB)" "$nginx_mem" "$gateway_mem" lower
  # shellcheck disable=SC2154
  record memory "memory per idle connection (B)" "$nginx_per_connection" "$gateway_per_connection" lower
done

echo
printf '| %-42s | %12s | %12s | %18s |\n' "measure (median of $ROUNDS)" nginx infergate "infergate/nginx"
printf '|%s|%s|%s|%s|\n' "--------------------------------------------" "--------------" "--------------" "--------------------"
awk -F'|' '{print $2}' "$RESULTS" | awk '!seen[$0]++' | while read -r metric; do
  n=$(awk -F'|' -v m="$metric" '$2 == m {print $3}' "$RESULTS" | median)
  g=$(awk -F'|' -v m="$metric" '$2 == m {print $4}' "$RESULTS" | median)
  printf '| %-42s | %12s | %12s | %18s |\n' "$metric" "$n" "$g" "$(ratio "$g" "$n")"
done
echo "(ratio > 1 is better for rps, goodput and alive; < 1 is better for latencies and memory)"
if [ -n "$CAPACITY" ]; then
  g=$(awk -F'|' '$2 == "goodput within 5 s SLO (req/s)" {print $4}' "$RESULTS" | median)
  n=$(awk -F'|' '$2 == "goodput within 5 s SLO (req/s)" {print $3}' "$RESULTS" | median)
  echo "model capacity (8 clients straight to the sim): $CAPACITY req/s; goodput / capacity: nginx $(ratio "$n" "$CAPACITY"), infergate $(ratio "$g" "$CAPACITY")"
fi
