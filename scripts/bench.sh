#!/usr/bin/env bash
# Side-by-side HTTP benchmark, all rows measured in one run on this machine, with wrk:
#
#   direct to the upstream (the floor), nginx as a reverse proxy, and `wasmtrace run` with no
#   filter, the header-reader test filter, the trace filter, and gallery-api's inbound chain
#   (request-id + tagging + trace, configured as deploy/envoy/gallery-api.yaml configures them).
#
# The upstream is one nginx worker answering `200 ok` to everything; it is also the OTLP collector
# the trace filter exports to (POST /v1/traces gets 200 as well). Every proxy row is a fresh process
# in front of it. Rounds are interleaved (round 1 runs every row, then round 2 ...) so that a slow
# phase of the machine (another build, a noisy neighbour) hits all rows alike.
#
# Prints the machine and the wrk parameters, one markdown table (req/s mean and min–max over rounds,
# p50/p99, ratios to nginx and to wasmtrace without filter), the p99 ratios, every error wrk or the
# proxy reported, and a small memory table (RSS of the chain before/after load, RSS per worker).
# Numbers are informational: nothing here passes or fails on time.
#
# Usage: bash scripts/bench.sh
#   BENCH_THREADS=1 BENCH_CONNECTIONS=32 BENCH_SECONDS=5 BENCH_ROUNDS=2   wrk -t/-c/-d, rounds
#   BENCH_ONLY=regex     run only the rows whose id or title matches (ids: direct nginx nofilter
#                        reader trace chain), e.g. BENCH_ONLY='nginx|chain'
#   BENCH_KEEP=1         keep the temp dir (configs, logs, raw wrk output) and print its path
#   BENCH_SKIP_BUILD=1   use the binaries and modules already built
#
# The first run needs root: it apt-get installs nginx and wrk when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

THREADS=${BENCH_THREADS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
DURATION=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-2}
ONLY=${BENCH_ONLY:-}
PROXY_WORKERS=2 # wasmtrace --workers and nginx worker_processes for the proxy rows: same budget

BIN=$ROOT/target/release/wasmtrace
WASM=$ROOT/target/wasm
READER_WASM=$ROOT/target/bench/header-reader.wasm
GALLERY_YAML=$ROOT/deploy/envoy/gallery-api.yaml

# Rows in display order: id, then title. The id is what BENCH_ONLY and the result files use.
ROW_IDS=(direct nginx nofilter reader trace chain)
declare -A ROW_TITLE=(
  [direct]="direct to upstream (nginx, 1 worker)"
  [nginx]="nginx reverse proxy (2 workers, keepalive 64)"
  [nofilter]="wasmtrace, no filter"
  [reader]="wasmtrace, header-reader filter"
  [trace]="wasmtrace, trace filter"
  [chain]="wasmtrace, gallery chain (request-id + tagging + trace)"
)

WORK=$(mktemp -d /tmp/wasmtrace-bench.XXXXXX)
# nginx workers drop to an unprivileged user and must be able to reach their prefix under here.
chmod 755 "$WORK"
RESULTS=$WORK/results.tsv  # id round rps p50_ms p99_ms requests non2xx socket_errors
MEMORY=$WORK/memory.tsv    # title rss_kb hwm_kb
NOTES=$WORK/notes.txt      # problems seen, printed at the end
BUSY=$WORK/busy.txt        # runs that started while another rustc or wrk was running
# wasmtrace caches compiled modules on disk (by sha256). A private cache makes every run start
# alike, whatever ~/.cache holds: prime_module_cache compiles into it once, before the rounds,
# so no measured process pays for (or keeps the memory of) compilation.
export WASMTRACE_MODULE_CACHE=$WORK/module-cache
: >"$RESULTS"
: >"$BUSY"
: >"$MEMORY"
: >"$NOTES"

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
note() { printf '%s\n' "$*" >>"$NOTES"; }

# ---------------------------------------------------------------------------------------------
# Processes: everything started here is remembered and stopped on exit, failure included.

STARTED=()     # pids of the processes this script started and has not stopped yet
STARTED_PID='' # the pid of the last start_bg, returned by variable: $(...) would fork a subshell
#               and the process would not be this shell's child (no `wait`)

start_bg() { # LOGFILE CMD...: runs CMD in the background, output to LOGFILE
  local logfile=$1
  shift
  "$@" >"$logfile" 2>&1 &
  STARTED_PID=$!
  STARTED+=("$STARTED_PID")
}

stop_pid() { # PID: SIGTERM, up to 15 s for a graceful exit (wasmtrace drains, flushes spans), then SIGKILL
  local pid=$1 i kept=()
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      note "pid $pid did not exit within 15 s of SIGTERM; killed"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  for i in "${STARTED[@]}"; do
    [[ $i == "$pid" ]] || kept+=("$i")
  done
  STARTED=("${kept[@]}")
}

# shellcheck disable=SC2317 # called by the EXIT trap only, which shellcheck does not follow
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${STARTED[@]}"; do
    stop_pid "$pid"
  done
  if [[ -n ${BENCH_KEEP:-} || $status -ne 0 ]]; then
    log "kept $WORK (configs, logs, raw wrk output)"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The kernel's ephemeral range, where client sockets (wrk's, the proxies' upstream connections)
# get their local ports: a listener port picked there can be taken by one before it is bound.
EPHEMERAL_LOW=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)

free_port() { # prints a loopback port below the ephemeral range nobody listens on (bash's /dev/tcp: a refused connect means free)
  local port
  while true; do
    port=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      # not one we handed out already in this run either (configs are written before processes start)
      if ! grep -qx "$port" "$WORK/ports" 2>/dev/null; then
        echo "$port" >>"$WORK/ports"
        echo "$port"
        return
      fi
    fi
  done
}

wait_ready() { # PID URL LOGFILE: polls URL until it answers 200, for up to 60 s (module compilation)
  local pid=$1 url=$2 logfile=$3 i
  for ((i = 0; i < 600; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logfile" >&2 || true
      die "process $pid exited before $url was ready (log: $logfile)"
    fi
    if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]]; then
      return
    fi
    sleep 0.1
  done
  tail -n 30 "$logfile" >&2 || true
  die "$url not ready within 60 s (log: $logfile)"
}

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# Install and build.

install_tools() {
  local missing=() nginx_was_running=''
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ -f /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null && nginx_was_running=yes
  log "installing ${missing[*]}"
  # Only refresh the package index when the install fails with the one we have.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >"$WORK/apt.log" 2>&1; then
    apt-get update >>"$WORK/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$WORK/apt.log" 2>&1 ||
      die "apt-get install ${missing[*]} failed (log: $WORK/apt.log)"
  fi
  # The Debian package starts the system nginx (port 80) where it can; we run our own nginx
  # processes with our own configs, so stop the one apt started (no systemd in containers:
  # `service`, then its pid file).
  if [[ -z $nginx_was_running && -f /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    log "stopping the system nginx that apt started"
    service nginx stop >/dev/null 2>&1 || true
    if [[ -f /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
      kill -QUIT "$(cat /run/nginx.pid)" 2>/dev/null || true
    fi
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable nginx >/dev/null 2>&1 || true
    fi
  fi
}

build() {
  if [[ -n ${BENCH_SKIP_BUILD:-} ]]; then
    log "BENCH_SKIP_BUILD set: using the binary and modules already built"
  else
    # Another engineer's build may hold the target dir's lock: cargo waits for it ("Blocking").
    log "cargo build --release -p wasmtrace"
    cargo build --release -p wasmtrace
    log "building the filters (scripts/build-filters.sh)"
    bash scripts/build-filters.sh >&2
    log "building the header-reader test filter"
    mkdir -p "$(dirname "$READER_WASM")"
    "$BIN" build filters/test-filters/header-reader --target-dir target/wasm-filters --out "$READER_WASM" >&2
  fi
  local f need=()
  if selected nofilter || selected reader || selected trace || selected chain; then need+=("$BIN"); fi
  if selected reader; then need+=("$READER_WASM"); fi
  if selected trace || selected chain; then need+=("$WASM/trace-filter.wasm"); fi
  if selected chain; then need+=("$WASM/request-id-filter.wasm" "$WASM/tagging-filter.wasm"); fi
  for f in "${need[@]}"; do
    [[ -e $f ]] || die "$f is missing (build it, or run without BENCH_SKIP_BUILD)"
  done
}

# ---------------------------------------------------------------------------------------------
# Config writers.

write_nginx_common() { # PREFIX: the prefix dir layout and the directives every nginx here shares
  local prefix=$1
  mkdir -p "$prefix/logs" "$prefix/tmp"
  # daemon off: the master stays our child, so $! is its pid and SIGTERM stops it and its workers.
  # pid and temp paths inside the prefix: nothing touches the system nginx's /run or /var/lib.
  cat <<EOF
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 4096; }
EOF
}

write_nginx_http_common() {
  local prefix=$1
  # keepalive_requests: the default (1000) makes nginx close a client connection every 1000
  # requests; wrk and the proxies' pools would then measure reconnects, not proxying.
  cat <<EOF
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $prefix/tmp/body;
  proxy_temp_path $prefix/tmp/proxy;
  fastcgi_temp_path $prefix/tmp/fastcgi;
  uwsgi_temp_path $prefix/tmp/uwsgi;
  scgi_temp_path $prefix/tmp/scgi;
EOF
}

write_upstream_conf() { # PREFIX PORT
  local prefix=$1 port=$2
  {
    echo "worker_processes 1;"
    write_nginx_common "$prefix"
    echo "http {"
    write_nginx_http_common "$prefix"
    # `return` answers every method, so the trace filter's OTLP POSTs to /v1/traces get 200 too.
    cat <<EOF
  server {
    listen 127.0.0.1:$port;
    location / { return 200 "ok\n"; }
  }
}
EOF
  } >"$prefix/nginx.conf"
}

write_nginx_proxy_conf() { # PREFIX PORT UPSTREAM_PORT
  local prefix=$1 port=$2 upstream=$3
  {
    echo "worker_processes $PROXY_WORKERS;"
    write_nginx_common "$prefix"
    echo "http {"
    write_nginx_http_common "$prefix"
    # Upstream keep-alive needs all three: the keepalive pool, HTTP/1.1, and no `Connection: close`.
    cat <<EOF
  upstream backend {
    server 127.0.0.1:$upstream;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  } >"$prefix/nginx.conf"
}

gallery_plugin_config() { # PLUGIN: the StringValue JSON of plugin PLUGIN in gallery-api.yaml
  # The JSON is single-quoted on the `value:` line after the plugin's `name:` (the file's layout);
  # reading it here keeps the benchmark's chain configured as the gallery is.
  local json
  json=$(awk -v plugin="$1" -v q="'" '
    $1 == "name:" { current = $2 }
    current == plugin && $1 == "value:" {
      s = $0; s = substr(s, index(s, q) + 1)
      j = length(s); while (j > 0 && substr(s, j, 1) != q) j--
      print substr(s, 1, j - 1); exit
    }' "$GALLERY_YAML")
  [[ -n $json ]] || die "no configuration for plugin $1 in $GALLERY_YAML (has its layout changed?)"
  printf '%s' "$json"
}

wasm_filter_yaml() { # NAME MODULE CONFIGURATION_JSON: one http_filters entry, as gallery-api.yaml has them
  cat <<EOF
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: $1
                        failure_policy: FAIL_OPEN
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: '$3'
                        vm_config:
                          vm_id: $1
                          runtime: envoy.wasm.runtime.v8
                          code: { local: { filename: $2 } }
EOF
}

cluster_yaml() { # NAME PORT: a STATIC cluster with one loopback endpoint
  cat <<EOF
    - name: $1
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: $1
        endpoints:
          - lb_endpoints:
              - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } }
EOF
}

# FILE LISTEN_PORT ADMIN_PORT UPSTREAM_PORT FILTERS_YAML: gallery-api's inbound listener (same
# route, timeout and filter entries), its app cluster and collector cluster both at the upstream.
write_wasmtrace_conf() {
  local file=$1 port=$2 admin=$3 upstream=$4 filters=$5
  {
    cat <<EOF
# Written by scripts/bench.sh: gallery-api's inbound listener (deploy/envoy/gallery-api.yaml).
node: { id: bench-sidecar, cluster: bench }
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $admin } } }
static_resources:
  listeners:
    - name: inbound
      address: { socket_address: { address: 127.0.0.1, port_value: $port } }
      traffic_direction: INBOUND
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: inbound
                route_config:
                  name: inbound
                  virtual_hosts:
                    - name: bench
                      domains: ["*"]
                      routes:
                        - match: { prefix: "/" }
                          route: { cluster: local_app, timeout: 60s }
                http_filters:
EOF
    printf '%s' "$filters"
    cat <<EOF
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
EOF
    cluster_yaml local_app "$upstream"
    cluster_yaml otel-collector "$upstream"
  } >"$file"
}

# ---------------------------------------------------------------------------------------------
# Rows: per row, a port, a config written and checked once, and start/stop per round.

declare -A ROW_PORT ROW_ADMIN ROW_CONF
UPSTREAM_PORT=''
ROW_PID='' # the running server of the current row ('' for the direct row: the upstream itself)

selected() { # ID: is the row in BENCH_ONLY (all rows when unset)?
  [[ -z $ONLY || $1 =~ $ONLY || ${ROW_TITLE[$1]} =~ $ONLY ]]
}

start_upstream() {
  local prefix=$WORK/upstream
  UPSTREAM_PORT=$(free_port)
  mkdir -p "$prefix"
  write_upstream_conf "$prefix" "$UPSTREAM_PORT"
  nginx -t -q -p "$prefix" -c "$prefix/nginx.conf" || die "nginx -t refused $prefix/nginx.conf"
  start_bg "$prefix/stdout.log" nginx -p "$prefix" -c "$prefix/nginx.conf"
  wait_ready "$STARTED_PID" "http://127.0.0.1:$UPSTREAM_PORT/" "$prefix/logs/error.log"
  log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (pid $STARTED_PID)"
}

prepare_rows() { # writes and checks every selected row's config
  local id filters
  local trace_json tagging_json request_id_json
  trace_json=$(gallery_plugin_config trace_inbound)
  tagging_json=$(gallery_plugin_config tagging)
  request_id_json=$(gallery_plugin_config request_id)
  for id in "${ROW_IDS[@]}"; do
    selected "$id" || continue
    case $id in
      direct) ROW_PORT[$id]=$UPSTREAM_PORT ;;
      nginx)
        ROW_PORT[$id]=$(free_port)
        mkdir -p "$WORK/nginx"
        ROW_CONF[$id]=$WORK/nginx/nginx.conf
        write_nginx_proxy_conf "$WORK/nginx" "${ROW_PORT[$id]}" "$UPSTREAM_PORT"
        nginx -t -q -p "$WORK/nginx" -c "${ROW_CONF[$id]}" || die "nginx -t refused ${ROW_CONF[$id]}"
        ;;
      *)
        case $id in
          nofilter) filters='' ;;
          reader) filters=$(wasm_filter_yaml reader "$READER_WASM" '') ;;
          trace) filters=$(wasm_filter_yaml trace_inbound "$WASM/trace-filter.wasm" "$trace_json") ;;
          chain)
            filters=$(wasm_filter_yaml request_id "$WASM/request-id-filter.wasm" "$request_id_json")
            filters+=$'\n'$(wasm_filter_yaml tagging "$WASM/tagging-filter.wasm" "$tagging_json")
            filters+=$'\n'$(wasm_filter_yaml trace_inbound "$WASM/trace-filter.wasm" "$trace_json")
            ;;
        esac
        [[ -n $filters ]] && filters+=$'\n'
        ROW_PORT[$id]=$(free_port)
        ROW_ADMIN[$id]=$(free_port)
        ROW_CONF[$id]=$WORK/$id.yaml
        write_wasmtrace_conf "${ROW_CONF[$id]}" "${ROW_PORT[$id]}" "${ROW_ADMIN[$id]}" "$UPSTREAM_PORT" "$filters"
        # The same validation an operator runs: the subset, and every module loads and configures.
        "$BIN" check "${ROW_CONF[$id]}" >"$WORK/$id.check.log" 2>&1 ||
          {
            cat "$WORK/$id.check.log" >&2
            die "wasmtrace check refused ${ROW_CONF[$id]}"
          }
        ;;
    esac
  done
}

start_row() { # ID ROUND [WORKERS]: a fresh server for the row; sets ROW_PID
  local id=$1 round=$2 workers=${3:-$PROXY_WORKERS}
  case $id in
    direct) ROW_PID='' ;;
    nginx)
      start_bg "$WORK/nginx/stdout.$round.log" nginx -p "$WORK/nginx" -c "${ROW_CONF[$id]}"
      ROW_PID=$STARTED_PID
      wait_ready "$ROW_PID" "http://127.0.0.1:${ROW_PORT[$id]}/" "$WORK/nginx/logs/error.log"
      ;;
    *)
      # --no-watch is left off: the file watcher runs, as in a deployment. A short drain: wrk has
      # finished when the process is stopped.
      start_bg "$WORK/$id.$round.log" "$BIN" run --config "${ROW_CONF[$id]}" --workers "$workers" --drain-timeout-secs 2
      ROW_PID=$STARTED_PID
      wait_ready "$ROW_PID" "http://127.0.0.1:${ROW_PORT[$id]}/" "$WORK/$id.$round.log"
      # The chain is really in the path: request-id-filter echoes x-request-id on the response.
      if [[ $id == chain ]] && ! curl -s -D - -o /dev/null "http://127.0.0.1:${ROW_PORT[$id]}/" | grep -qi '^x-request-id:'; then
        note "round $round, ${ROW_TITLE[$id]}: the response has no x-request-id (is request-id-filter running?)"
      fi
      ;;
  esac
}

stop_row() {
  if [[ -n $ROW_PID ]]; then
    stop_pid "$ROW_PID"
    ROW_PID=''
  fi
}

# ---------------------------------------------------------------------------------------------
# Measure.

# RAW_FILE: prints "rps p50_ms p99_ms requests non2xx socket_errors" from wrk --latency output.
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
      return v + 0
    }
    $1 == "Requests/sec:" { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    $2 == "requests" && $3 == "in" { requests = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ {
      # "Socket errors: connect 0, read 0, write 0, timeout 0"
      line = $0; gsub(/,/, "", line); n = split(line, f, " ")
      for (i = 3; i < n; i += 2) sockerr += f[i + 1]
    }
    END { printf "%.2f %.3f %.3f %d %d %d\n", rps, p50, p99, requests, non2xx, sockerr }
  ' "$1"
}

# ID ROUND: the admin counters that show a failure or a loss (non-2xx responses, upstream and
# downstream errors, refused connections, Wasm traps and VM restarts, spans dropped or failed),
# non-zero ones only, on one line; empty when there is none. Spans exported are added for scale.
scrape_stats() {
  local id=$1 round=$2 stats=$WORK/$1.$2.stats
  curl -s --max-time 2 "http://127.0.0.1:${ROW_ADMIN[$id]}/stats/prometheus" >"$stats" || return 0
  awk '
    /^#/ || $NF + 0 == 0 { next }
    /^wasmtrace_http_responses_total/ && /code_class="2xx"/ { ok += $NF; next }
    /^wasmtrace_trace_spans_exported_total/ { exported += $NF; next }
    /^wasmtrace_(http_responses_total|upstream_errors_total|downstream_errors_total|downstream_connections_overflow_total|downstream_connection_timeouts_total|wasm_callback_failures_total|wasm_vm_restarts_total|trace_spans_(dropped|failed)_total)/ {
      problems = problems sep $1 " " $NF; sep = ", "
    }
    END {
      if (problems != "") {
        printf "%s (for scale: %d 2xx responses, %d spans exported, by the time of the scrape)\n", problems, ok, exported
      }
    }' "$stats"
}

measure_row() { # ID ROUND
  local id=$1 round=$2 url raw busy stats rss_before='' hwm_before='' parsed
  url=http://127.0.0.1:${ROW_PORT[$id]}/
  raw=$WORK/wrk.$id.$round.txt
  start_row "$id" "$round"
  # Memory of the chain before it has served any load (the readiness probe was its one request).
  if [[ $id == chain ]]; then
    rss_before=$(rss_kb "$ROW_PID")
    hwm_before=$(hwm_kb "$ROW_PID")
  fi
  # Someone else's compiler or load generator on the same 2 cores skews a row: remember which.
  busy=$(($(pgrep -c -x rustc || true) + $(pgrep -c -x wrk || true)))
  [[ $busy -gt 0 ]] && echo "round $round ${ROW_TITLE[$id]}" >>"$BUSY"
  # Warm-up: connections, pools, JIT-compiled module code and caches, before the measured run.
  wrk -t"$THREADS" -c"$CONNECTIONS" -d1s "$url" >"$raw.warmup" 2>&1 || note "round $round, ${ROW_TITLE[$id]}: warm-up wrk failed"
  log "round $round: ${ROW_TITLE[$id]}"
  if ! wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$raw" 2>&1; then
    note "round $round, ${ROW_TITLE[$id]}: wrk failed: $(tail -n 3 "$raw" | tr '\n' ' ')"
  fi
  parsed=$(parse_wrk "$raw")
  # shellcheck disable=SC2086 # parsed is six space-separated fields, split on purpose
  set -- $parsed
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$round" "$1" "$2" "$3" "$4" "$5" "$6" >>"$RESULTS"
  [[ $5 -ne 0 ]] && note "round $round, ${ROW_TITLE[$id]}: wrk counted $5 non-2xx/3xx responses of $4"
  [[ $6 -ne 0 ]] && note "round $round, ${ROW_TITLE[$id]}: wrk socket errors: $(grep 'Socket errors' "$raw" | sed 's/^ *//')"
  if [[ -n ${ROW_ADMIN[$id]:-} ]]; then
    stats=$(scrape_stats "$id" "$round")
    [[ -n $stats ]] && note "round $round, ${ROW_TITLE[$id]}: admin counters: $stats"
  fi
  if [[ $id == chain ]]; then
    printf '%s\t%s\t%s\n' "gallery chain, --workers $PROXY_WORKERS, idle before load (round $round)" "$rss_before" "$hwm_before" >>"$MEMORY"
    printf '%s\t%s\t%s\n' "gallery chain, --workers $PROXY_WORKERS, after load (round $round)" "$(rss_kb "$ROW_PID")" "$(hwm_kb "$ROW_PID")" >>"$MEMORY"
  fi
  stop_row
  # The proxy's own complaints: warnings and errors it logged during the row.
  if [[ $id != direct && $id != nginx ]]; then
    local logfile=$WORK/$id.$round.log n
    n=$(grep -c -E '\b(WARN|ERROR)\b' "$logfile" || true)
    [[ $n -gt 0 ]] && note "round $round, ${ROW_TITLE[$id]}: $n WARN/ERROR log lines, first: $(grep -m1 -E '\b(WARN|ERROR)\b' "$logfile")"
  fi
  if [[ $id == nginx ]]; then
    local n
    n=$(grep -c -E '\[(error|crit|alert|emerg)\]' "$WORK/nginx/logs/error.log" || true)
    [[ $n -gt 0 ]] && note "round $round, ${ROW_TITLE[$id]}: $n error lines in nginx's error.log"
  fi
  return 0
}

# One start of the configs with modules, before the rounds: each module is compiled once, into
# the private cache, and every measured process loads machine code. The chain goes first so its
# start is the one that compiles all three of its modules: that RSS is the "cold start" row.
prime_module_cache() {
  local id logfile pid
  for id in chain reader trace; do
    selected "$id" || continue
    [[ $id == trace ]] && selected chain && continue # chain compiled trace-filter already
    logfile=$WORK/$id.prime.log
    start_bg "$logfile" "$BIN" run --config "${ROW_CONF[$id]}" --workers "$PROXY_WORKERS" --drain-timeout-secs 2
    pid=$STARTED_PID
    wait_ready "$pid" "http://127.0.0.1:${ROW_ADMIN[$id]}/ready" "$logfile"
    if [[ $id == chain ]]; then
      printf '%s\t%s\t%s\n' "gallery chain, --workers $PROXY_WORKERS, first start: modules compiled (cache empty), idle" "$(rss_kb "$pid")" "$(hwm_kb "$pid")" >>"$MEMORY"
    fi
    stop_pid "$pid"
  done
}

# Idle RSS of the chain with 1 and 2 workers: each worker owns its VMs of every plugin and its
# pools, so the difference is what one more worker costs. Readiness from the admin API's /ready,
# so no request has gone through a worker. Three alternating starts per count, the median kept:
# one start's RSS varies by a few MiB (allocator and thread-stack timing).
measure_worker_memory() {
  local workers logfile pid rep
  declare -A rss hwm
  for rep in 1 2 3; do
    for workers in 1 2; do
      logfile=$WORK/chain.idle-$workers.$rep.log
      start_bg "$logfile" "$BIN" run --config "${ROW_CONF[chain]}" --workers "$workers" --drain-timeout-secs 2
      pid=$STARTED_PID
      wait_ready "$pid" "http://127.0.0.1:${ROW_ADMIN[chain]}/ready" "$logfile"
      sleep 1 # let start-up settle (VM instantiation, the first timer ticks)
      rss[$workers]+="$(rss_kb "$pid") "
      hwm[$workers]+="$(hwm_kb "$pid") "
      stop_pid "$pid"
    done
  done
  for workers in 1 2; do
    printf '%s\t%s\t%s\n' "gallery chain, --workers $workers, idle (no request served; median of 3 starts)" \
      "$(median "${rss[$workers]}")" "$(median "${hwm[$workers]}")" >>"$MEMORY"
  done
}

median() { # "N N N ...": prints the median (the lower middle for an even count)
  tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# ---------------------------------------------------------------------------------------------
# Report.

print_header() {
  local cpu
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  echo
  echo "## wasmtrace benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo
  echo "machine: $(nproc) cores, ${cpu:-unknown CPU}, Linux $(uname -r)"
  echo "tools: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'), $("$BIN" --version 2>/dev/null || echo 'wasmtrace not built')"
  echo "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, after a 1 s warm-up; $ROUNDS interleaved round(s), a fresh server per row and round"
  echo "      client, proxies and upstream share the machine's cores; proxies get $PROXY_WORKERS workers (nginx worker_processes / wasmtrace --workers), the upstream 1 nginx worker"
  echo
}

print_table() {
  awk -F'\t' -v order="${ROW_IDS[*]}" -v titles="$(for id in "${ROW_IDS[@]}"; do printf '%s\t' "${ROW_TITLE[$id]}"; done)" '
    {
      n[$1]++; sum[$1] += $3; p50[$1] += $4; p99[$1] += $5
      if (!($1 in lo) || $3 < lo[$1]) lo[$1] = $3
      if (!($1 in hi) || $3 > hi[$1]) hi[$1] = $3
    }
    function mean(id) { return sum[id] / n[id] }
    function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "–" }
    END {
      k = split(order, ids, " "); split(titles, t, "\t")
      for (i = 1; i <= k; i++) title[ids[i]] = t[i]
      base = ("nginx" in n) ? mean("nginx") : 0
      nofilter = ("nofilter" in n) ? mean("nofilter") : 0
      print "| path | req/s | p50 ms | p99 ms | ÷ nginx | ÷ no filter |"
      print "|---|---:|---:|---:|---:|---:|"
      for (i = 1; i <= k; i++) {
        id = ids[i]
        if (!(id in n)) continue
        range = (n[id] > 1) ? sprintf(" (%.0f–%.0f)", lo[id], hi[id]) : ""
        vs_nofilter = (id == "reader" || id == "trace" || id == "chain") ? ratio(mean(id), nofilter) : ""
        printf "| %s | %.0f%s | %.2f | %.2f | %s | %s |\n", title[id], mean(id), range, p50[id] / n[id], p99[id] / n[id], ratio(mean(id), base), vs_nofilter
      }
      print ""
      print "p99 latency relative to nginx reverse proxy:"
      p99base = ("nginx" in n) ? p99["nginx"] / n["nginx"] : 0
      for (i = 1; i <= k; i++) {
        id = ids[i]
        if (!(id in n)) continue
        printf "- %s: p99 %.2f ms = %s × nginx\n", title[id], p99[id] / n[id], ratio(p99[id] / n[id], p99base)
      }
    }' "$RESULTS"
}

print_memory() {
  [[ -s $MEMORY ]] || return 0
  echo
  echo "| memory (wasmtrace, gallery chain config) | VmRSS MiB | VmHWM (peak) MiB |"
  echo "|---|---:|---:|"
  awk -F'\t' '{ printf "| %s | %.1f | %.1f |\n", $1, $2 / 1024, $3 / 1024 }' "$MEMORY"
  awk -F'\t' '
    /--workers 1, idle/ { one = $2 }
    /--workers 2, idle \(no/ { two = $2 }
    END { if (one && two) printf "| per extra worker (idle, 2 workers − 1) | %.1f | |\n", (two - one) / 1024 }' "$MEMORY"
}

print_notes() {
  echo
  if [[ -s $BUSY ]]; then
    echo "note: another build (rustc) or load generator (wrk) was running when $(wc -l <"$BUSY") of $(wc -l <"$RESULTS") measured runs started; it shared the CPU with them"
  fi
  if [[ -s $NOTES ]]; then
    echo "errors and notes (wrk non-2xx/socket errors, non-zero proxy failure counters, proxy log warnings):"
    sed 's/^/- /' "$NOTES"
  else
    echo "no errors: every response was 2xx, no socket errors, no proxy warnings, no failure counters"
  fi
}

# ---------------------------------------------------------------------------------------------

main() {
  [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
  install_tools
  build
  start_upstream
  prepare_rows
  local round id any=''
  for id in "${ROW_IDS[@]}"; do selected "$id" && any=yes; done
  [[ -n $any ]] || die "BENCH_ONLY='$ONLY' matches no row (ids: ${ROW_IDS[*]})"
  prime_module_cache
  for ((round = 1; round <= ROUNDS; round++)); do
    for id in "${ROW_IDS[@]}"; do
      selected "$id" || continue
      measure_row "$id" "$round"
    done
  done
  if selected chain; then
    measure_worker_memory
  fi
  print_header
  print_table
  print_memory
  print_notes
}

# On one line with `exit`: bash reads a script as it runs, so an edit of this file during a run
# cannot make it execute whatever lands after this point.
{ main "$@"; exit; }
