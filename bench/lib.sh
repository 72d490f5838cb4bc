# Shared helpers of the bench scripts (sourced, not run). Everything listens on 127.0.0.1 and is
# stopped by `cleanup` on exit.

need() { command -v "$1" >/dev/null 2>&1; }

# Installs Debian's nginx, wrk and h2load when missing.
install_tools() {
  if ! need nginx || ! need wrk || ! need h2load || ! need openssl; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk nghttp2-client openssl >/dev/null
  fi
}

WORK=$(mktemp -d)
PIDS=()
NGINX_DIRS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for dir in "${NGINX_DIRS[@]}"; do [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_nginx NAME 'http-block-contents': writes $WORK/NAME/nginx.conf and starts it.
start_nginx() {
  local dir="$WORK/$1"
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<CONF
worker_processes auto;
worker_rlimit_nofile 65536;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 32768; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  $2
}
CONF
  nginx -c "$dir/nginx.conf" -e "$dir/error.log"
  NGINX_DIRS+=("$dir")
}

# start_backend PORT: the fixed small JSON backend every proxy is measured against (an nginx); it
# also serves /big.json, about 20 KB of chat-completion JSON, for the compression bench.
start_backend() {
  mkdir -p "$WORK/files"
  awk 'BEGIN { printf "{\"object\":\"chat.completion\",\"choices\":["
    for (i = 0; i < 250; i++) printf "%s{\"index\":%d,\"message\":{\"role\":\"assistant\",\"content\":\"token %d of the answer\"}}", (i ? "," : ""), i, i
    printf "]}" }' > "$WORK/files/big.json"
  # nginx's workers run as another user: they must be able to read it.
  chmod 755 "$WORK" "$WORK/files"; chmod 644 "$WORK/files/big.json"
  start_nginx backend "server { listen 127.0.0.1:$1; keepalive_requests 1000000;
    location = /big.json { root $WORK/files; default_type application/json; }
    location / { default_type application/json; return 200 '{\"id\":\"cmpl-1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"}}]}'; } }"
}

# Pids of a started nginx (master and workers).
nginx_pids() { local master; master=$(cat "$WORK/$1/nginx.pid"); echo "$master $(pgrep -P "$master" | tr '\n' ' ')"; }

# build_gateway: builds what the benchmarks run and sets GATEWAY_BIN (the gateway measured) and
# GATEWAY_BUILD (its description). By default the gateway is the profile-guided build of
# bench/build-pgo.sh, as a production build would be; PGO=0 measures `cargo build --profile production`.
build_gateway() {
  cargo build --profile production -q --workspace
  if [ "${PGO:-1}" = 0 ]; then
    GATEWAY_BIN=target/production/infergate GATEWAY_BUILD="cargo build --profile production (PGO=0)"
  else
    bench/build-pgo.sh
    GATEWAY_BIN=target/pgo/production/infergate GATEWAY_BUILD="production with PGO (bench/build-pgo.sh)"
  fi
}

# wrk_rps URL PIDS...: SECONDS_PER_RUN seconds of wrk -t2 -c50 on URL (with the Lua script WRK_SCRIPT
# when set); prints "rps us_cpu_per_request", the CPU being that of the processes PIDS.
wrk_rps() {
  local url=$1; shift
  local before after out rps
  before=$(ticks "$@")
  out=$(wrk -t2 -c50 -d"${SECONDS_PER_RUN}s" ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "$url")
  after=$(ticks "$@")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  echo "$out" | grep -E "Non-2xx|Socket errors" >&2 || true
  awk -v r="$rps" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v s="$SECONDS_PER_RUN" \
    'BEGIN { printf "%.0f %.1f\n", r, (t / hz) / (r * s) * 1e6 }'
}

# gateway_config LISTEN_PORT BACKEND_PORT [MORE]: the config every plain proxy benchmark gives the
# gateway (keep-alive pool of 32, no admin API, WORKERS worker threads or one per core), with MORE
# after it (more tables).
gateway_config() {
  printf '%s\n' "[http]
workers = ${WORKERS:-0}
keepalive_requests = 1000000

[admin]
enabled = false

[[upstream]]
name = \"backend\"
servers = [{ addr = \"127.0.0.1:$2\" }]
keepalive = 32

[[server]]
listen = [\"127.0.0.1:$1\"]

  [[server.location]]
  prefix = \"/\"
  proxy = \"backend\"
${3:-}"
}

# start_gateway NAME CONFIG_TEXT: runs infergate (GATEWAY_BIN) with the config; sets GATEWAY_PID.
#
# In a session of its own (setsid), as nginx is once it daemonizes and as a service manager starts a
# service: with the kernel's autogroup scheduling (sched_autogroup_enabled, on by default) every
# session is one scheduling group, and a gateway left in the script's session shares one CPU share
# with wrk while nginx gets a share of its own (measured: 5-10 % fewer requests per second).
start_gateway() {
  printf '%s\n' "$2" > "$WORK/$1.toml"
  RUST_LOG=warn setsid "${GATEWAY_BIN:-target/production/infergate}" run --config "$WORK/$1.toml" 2>"$WORK/$1.log" &
  GATEWAY_PID=$!
  PIDS+=("$GATEWAY_PID")
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (at most 10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

# CPU ticks (user+system) of a set of processes.
ticks() { local total=0 pid; for pid in "$@"; do
  [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo $total; }

# Resident memory (kB) of a set of processes.
rss_kb() { local total=0 pid; for pid in "$@"; do
  [ -r "/proc/$pid/status" ] && total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status"))); done; echo $total; }

median() { sort -g | awk '{a[NR]=$1} END { if (NR == 0) { print "nan" } else { print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2 } }'; }

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

# value KEY < "k=v k=v": the value of KEY in infergate-load's output.
value() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
