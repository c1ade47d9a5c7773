#!/usr/bin/env bash
# Resilience of Palisade, nginx and HAProxy when one of three upstreams fails under load.
#
#   wrk (CPU 0) -> proxy under test (CPU 1, one worker) -> 3 chaos upstreams u1 u2 u3 (CPU 0)
#
# For each scenario and each installed proxy: fresh chaos upstreams (examples/chaos.rs) and a fresh
# proxy, configured as a careful operator would (retries to another upstream, 1 s connect/read
# timeouts, active checks, passive ejection), 2 s of unmeasured warm-up, then a measured wrk run
# during which a background step flips u2 to the fault FAULT_AFTER seconds in, so the onset is in
# the figures and not only the steady state. Prints one table per scenario (requests, errors, p50,
# p99, max latency), Palisade's retry/ejection counters, and a summary against Palisade's baseline.
#
# wrk 4 corrects its latency percentiles for coordinated omission (it adds synthetic samples behind
# every slow answer), so a few hundred slow answers move its p99 a lot; for Palisade the report also
# gives its own request-duration histogram over the measured run, which has no such correction.
#
# Scenarios (SCENARIOS, in this order by default):
#   baseline  no fault
#   refuse    u2 refuses connections (open ones are reset)       from FAULT_AFTER
#   hang      u2 reads requests and never answers                from FAULT_AFTER
#   slow      u2 answers after 500 ms                            from FAULT_AFTER
#   5xx       u2 answers 503                                     from FAULT_AFTER
#   reset     u2 sends the head and half the body, then resets   from FAULT_AFTER
#   flaky     u2 answers 503 to 30% of requests                  from FAULT_AFTER
#   all_down  u1, u2 and u3 refuse                               from FAULT_AFTER
#   recovery  u2 refuses from the start of the run, heals after RECOVER_AFTER; how much traffic
#             u2 gets back in the rest of the run
#
# Environment:
#   DURATION=20         seconds per measured wrk run (wrk -t1 -c$CONNECTIONS --timeout 10s)
#   FAULT_AFTER=3       seconds into the run when the fault starts
#   RECOVER_AFTER=5     recovery: seconds into the run when u2 heals
#   WARMUP=2            seconds of unmeasured wrk before each measured run (all upstreams healthy)
#   CONNECTIONS=50      wrk connections
#   WAIT_QUIET=0        before each run, wait up to this many seconds for other processes to use
#                       < 10% of a core (for shared machines; 0 = do not wait)
#   SCENARIOS="baseline refuse ..."        subset / order
#   PROXIES="palisade nginx haproxy"       subset / order (default: those installed)
#   PALISADE_BIN=target/release/palisade   (relative to the crate root; copied before use)
#   CHAOS_BIN=target/release/examples/chaos
#   RESULTS=FILE        also write the per-run TSV there
#   KEEP_WORK=1         keep the temp dir: configs, proxy logs (palisade.log is Palisade's stderr),
#                       raw wrk output, Palisade's /metrics and /clusters at the end of each run
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

DURATION=${DURATION:-20}
FAULT_AFTER=${FAULT_AFTER:-3}
RECOVER_AFTER=${RECOVER_AFTER:-5}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
CHAOS_BIN=${CHAOS_BIN:-$root/target/release/examples/chaos}
[[ $CHAOS_BIN == /* ]] || CHAOS_BIN=$root/$CHAOS_BIN
LOAD_CPU=0
PROXY_CPU=1
WRK_TIMEOUT=10s
ALL_SCENARIOS="baseline refuse hang slow 5xx reset flaky all_down recovery"

for tool in wrk curl python3; do
    have "$tool" || die "$tool is required (apt-get install -y wrk curl python3)"
done
[[ -x $CHAOS_BIN ]] || die "$CHAOS_BIN not found: cargo build --release --example chaos"
for v in DURATION FAULT_AFTER RECOVER_AFTER WARMUP CONNECTIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number of seconds (or connections)"
done
((FAULT_AFTER < DURATION)) || die "FAULT_AFTER ($FAULT_AFTER) must be below DURATION ($DURATION)"
read -r -a scenarios <<<"${SCENARIOS:-$ALL_SCENARIOS}"
for s in "${scenarios[@]}"; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario $s (known: $ALL_SCENARIOS)"
done
if [[ " ${scenarios[*]} " == *" recovery "* ]] && ((RECOVER_AFTER >= DURATION)); then
    die "recovery needs RECOVER_AFTER ($RECOVER_AFTER) below DURATION ($DURATION)"
fi

# Pinning as in compare.sh when it is possible; otherwise everything shares the CPUs.
PIN=1
if ! have taskset || (($(nproc) < 2)); then
    PIN=0
    log "note: not pinning (needs taskset and 2 CPUs); figures will include CPU contention"
fi

bench_init
read -r -a proxies <<<"${PROXIES:-$(available_proxies)}"
((${#proxies[@]} > 0)) || die "no proxy to test"
pin_palisade
cp "$CHAOS_BIN" "$WORK/chaos-bin"
CHAOS_BIN=$WORK/chaos-bin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- helpers --------------------------------------------------------------------------------------

# fault CONTROL NAME SPEC: switches one chaos upstream; the control API answers once it has settled.
fault() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 3 -X POST "http://$1/$2/$3" || true)
    [[ $code == 200 ]] || log "warning: setting $2 to $3 via $1 answered ${code:-nothing}"
}

# describe SCENARIO: one line for the report.
describe() {
    case $1 in
        baseline) echo "no fault" ;;
        refuse) echo "u2 refuses connections from ${FAULT_AFTER} s" ;;
        hang) echo "u2 never answers from ${FAULT_AFTER} s" ;;
        slow) echo "u2 answers after 500 ms from ${FAULT_AFTER} s" ;;
        5xx) echo "u2 answers 503 from ${FAULT_AFTER} s" ;;
        reset) echo "u2 resets mid-response from ${FAULT_AFTER} s" ;;
        flaky) echo "u2 answers 503 to 30% of requests from ${FAULT_AFTER} s" ;;
        all_down) echo "u1, u2 and u3 refuse connections from ${FAULT_AFTER} s" ;;
        recovery) echo "u2 refuses from 0 s, heals at ${RECOVER_AFTER} s" ;;
    esac
}

# schedule SCENARIO CONTROL RUN_DIR: the fault steps during the measured run (run in background,
# started together with wrk).
schedule() {
    local scenario=$1 control=$2 run=$3 origin=${EPOCHREALTIME/,/.}
    case $scenario in
        baseline) ;;
        all_down)
            sleep "$FAULT_AFTER"
            local u
            for u in u1 u2 u3; do fault "$control" "$u" refuse & done
            wait
            ;;
        recovery)
            on_cpu "$LOAD_CPU" python3 "$here/faults_summary.py" recover "$control" "$origin" \
                "$RECOVER_AFTER" "$DURATION" "$run/recovery-poll.tsv"
            ;;
        *)
            local spec=$scenario
            case $scenario in
                slow) spec=slow=500ms ;;
                flaky) spec=flaky=30 ;;
            esac
            sleep "$FAULT_AFTER"
            fault "$control" u2 "$spec"
            ;;
    esac
}

# ---- configs --------------------------------------------------------------------------------------
# Each gets the three upstream addresses A1 A2 A3 (host:port).

# write_palisade_faults_conf FILE PORT ADMIN_PORT A1 A2 A3
write_palisade_faults_conf() {
    local file=$1 port=$2 admin=$3 a1=$4 a2=$5 a3=$6
    cat >"$file" <<EOF
[admin]
listen = "127.0.0.1:$admin"

[runtime]
workers = 1

[access_log]
enabled = false

[listeners.web]
listen = "127.0.0.1:$port"

[[routes]]
name = "all"
cluster = "up"
timeout = "5s"

[routes.match]
path_prefix = "/"

[routes.retry]
attempts = 3
per_try_timeout = "1s"

# GETs are idempotent: a request the upstream has not answered by the cluster's p95 (at least
# 5 ms) gets a second attempt elsewhere, and the first answer wins (nginx and HAProxy have no
# equivalent). Charged to the retry budget.
[routes.hedge]
delay = "p95"

# peak_ewma balancing, outlier detection and the retry budget are on by default.
[clusters.up]
endpoints = ["$a1", "$a2", "$a3"]
connect_timeout = "1s"

[clusters.up.health_check]
path = "/"
interval = "1s"
timeout = "500ms"
EOF
}

# write_nginx_faults_conf FILE PORT A1 A2 A3
write_nginx_faults_conf() {
    local file=$1 port=$2 a1=$3 a2=$4 a3=$5 dir
    dir=$(dirname "$file")
    mkdir -p "$dir/nginx-tmp"
    cat >"$file" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $(nofile_limit);
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx-tmp/body;
    proxy_temp_path $dir/nginx-tmp/proxy;
    fastcgi_temp_path $dir/nginx-tmp/fastcgi;
    uwsgi_temp_path $dir/nginx-tmp/uwsgi;
    scgi_temp_path $dir/nginx-tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    upstream up {
        server $a1 max_fails=1 fail_timeout=10s;
        server $a2 max_fails=1 fail_timeout=10s;
        server $a3 max_fails=1 fail_timeout=10s;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 1s;
        }
    }
}
EOF
}

# write_haproxy_faults_conf FILE PORT A1 A2 A3
write_haproxy_faults_conf() {
    local file=$1 port=$2 a1=$3 a2=$4 a3=$5 dir
    dir=$(dirname "$file")
    cat >"$file" <<EOF
global
    nbthread 1
    maxconn 4096
    no strict-limits
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 1s
    timeout client 300s
    timeout server 1s
    timeout http-keep-alive 300s
    timeout http-request 10s

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    balance roundrobin
    option redispatch
    retries 3
    retry-on conn-failure empty-response response-timeout 502 503 504
    option httpchk GET /
    default-server check inter 1s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down
    server u1 $a1
    server u2 $a2
    server u3 $a3
EOF
}

# ---- one run --------------------------------------------------------------------------------------

results=$WORK/results.tsv
printf 'proxy\tscenario\trequests\trps\tnon2xx\tconnect\tread\twrite\ttimeout\tp50_ms\tp99_ms\tmax_ms\n' \
    >"$results"
: >"$WORK/scenarios.tsv"

# start_chaos RUN_DIR: three chaos upstreams; sets UPS (their addresses), CONTROL and CHAOS_PID.
UPS=()
CONTROL=""
CHAOS_PID=""
start_chaos() {
    local run=$1 rel=${1#"$WORK"/} i
    spawn "$rel/chaos" "$LOAD_CPU" "$CHAOS_BIN" --upstreams 3 --names u1,u2,u3 \
        --control 127.0.0.1:0 --workers 1
    CHAOS_PID=$LAST_PID
    for i in $(seq 100); do
        grep -q '^control ' "$run/chaos.log" 2>/dev/null && break
        alive "$CHAOS_PID" || break
        sleep 0.1
    done
    CONTROL=$(awk '$1 == "control" {print $2}' "$run/chaos.log")
    mapfile -t UPS < <(awk '$1 == "upstream" {print $3}' "$run/chaos.log")
    if [[ -z $CONTROL || ${#UPS[@]} -ne 3 ]]; then
        cat "$run/chaos.log" >&2 || true
        die "chaos upstreams did not start (log above)"
    fi
}

# start_faults_proxy KIND RUN_DIR PORT: writes and checks the config, starts the proxy; sets
# LAST_PID, and ADMIN (Palisade's admin address).
ADMIN=""
start_faults_proxy() {
    local kind=$1 run=$2 port=$3 rel=${2#"$WORK"/} check
    case $kind in
        palisade)
            ADMIN=127.0.0.1:$(free_port)
            write_palisade_faults_conf "$run/palisade.toml" "$port" "${ADMIN#*:}" "${UPS[@]}"
            check=$("$PALISADE_BIN" validate -c "$run/palisade.toml" 2>&1) ||
                die "palisade validate failed: $check"
            spawn "$rel/palisade" "$PROXY_CPU" "$PALISADE_BIN" run -c "$run/palisade.toml"
            ;;
        nginx)
            write_nginx_faults_conf "$run/nginx.conf" "$port" "${UPS[@]}"
            check=$(nginx -t -p "$run" -e "$run/nginx-error.log" -c "$run/nginx.conf" 2>&1) ||
                die "nginx -t failed: $check"
            spawn "$rel/nginx" "$PROXY_CPU" nginx -p "$run" -e "$run/nginx-error.log" -c "$run/nginx.conf"
            ;;
        haproxy)
            write_haproxy_faults_conf "$run/haproxy.cfg" "$port" "${UPS[@]}"
            check=$(haproxy -c -f "$run/haproxy.cfg" 2>&1) || die "haproxy -c failed: $check"
            spawn "$rel/haproxy" "$PROXY_CPU" haproxy -db -f "$run/haproxy.cfg"
            ;;
        *) die "unknown proxy $kind" ;;
    esac
    if ! wait_port "$port" 15; then
        cat "$run/$kind.log" >&2 || true
        die "$kind did not start listening on $port (log above)"
    fi
}

# run_one SCENARIO PROXY: one fresh set of upstreams and proxy, warm-up, measured run with the fault
# schedule, result appended to $results.
run_one() {
    local scenario=$1 kind=$2 run port proxy_pid step_pid url
    run=$WORK/runs/$scenario-$kind
    mkdir -p "$run"
    start_chaos "$run"
    port=$(free_port)
    start_faults_proxy "$kind" "$run" "$port"
    proxy_pid=$LAST_PID
    url="http://127.0.0.1:$port/"

    if ((${WAIT_QUIET:-0} > 0)); then wait_quiet "$WAIT_QUIET" || true; fi
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" --timeout "$WRK_TIMEOUT" "$url" \
        >"$run/wrk-warmup.txt" 2>&1 || true
    if [[ $scenario == recovery ]]; then fault "$CONTROL" u2 refuse; fi
    # Palisade's own request-duration histogram, so that the measured run can be told apart.
    if [[ $kind == palisade ]]; then
        curl -s -m 5 "http://$ADMIN/metrics" >"$run/metrics-before.txt" || true
    fi

    schedule "$scenario" "$CONTROL" "$run" &
    step_pid=$!
    PIDS+=("$step_pid")
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout "$WRK_TIMEOUT" --latency \
        "$url" >"$run/wrk.txt" 2>&1 || log "warning: wrk exited with an error ($run/wrk.txt)"
    wait "$step_pid" || true

    if [[ $kind == palisade ]]; then
        curl -s -m 5 "http://$ADMIN/metrics" >"$run/metrics.txt" || log "warning: no /metrics"
        grep -E '^palisade_(retries_total|outlier_ejections_total)\{' "$run/metrics.txt" \
            >"$run/resilience-metrics.txt" || true
        curl -s -m 5 "http://$ADMIN/clusters" >"$run/clusters.json" || true
    fi
    curl -s -m 5 "http://$CONTROL/" >"$run/chaos-state.json" || true
    alive "$proxy_pid" || log "warning: $kind exited during the run (see $run/$kind.log)"
    stop "$proxy_pid"
    stop "$CHAOS_PID"

    if python3 "$here/faults_summary.py" parse "$run/wrk.txt" "$kind" "$scenario" >>"$results"; then
        log "$(tail -n 1 "$results")"
    else
        log "warning: no result for $kind/$scenario (wrk output above); going on"
    fi
}

# ---- main -----------------------------------------------------------------------------------------

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%MZ)
log "proxies: ${proxies[*]}; scenarios: ${scenarios[*]}"
log "duration=${DURATION}s fault_after=${FAULT_AFTER}s warmup=${WARMUP}s connections=$CONNECTIONS; work dir $WORK"
log "proxy	scenario	requests	rps	non2xx	connect	read	write	timeout	p50_ms	p99_ms	max_ms"
# Scenario outer, proxy inner: a noisy minute on the shared machine hits one scenario of every proxy
# rather than every scenario of one proxy.
for scenario in "${scenarios[@]}"; do
    printf '%s\t%s\n' "$scenario" "$(describe "$scenario")" >>"$WORK/scenarios.tsv"
    for kind in "${proxies[@]}"; do
        run_one "$scenario" "$kind"
    done
done

if [[ -n ${RESULTS:-} ]]; then cp "$results" "$RESULTS"; fi
echo
echo "Palisade resilience benchmark: $started, $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
echo "$BINARY_NOTE"
echo "load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
pinning="proxy pinned to CPU $PROXY_CPU, wrk+chaos upstreams to CPU $LOAD_CPU"
((PIN)) || pinning="not pinned"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s --timeout $WRK_TIMEOUT after ${WARMUP}s warm-up; faults from ${FAULT_AFTER}s; $pinning"
python3 "$here/faults_summary.py" report "$WORK"
if [[ -n ${KEEP_WORK:-} ]]; then echo; echo "work dir kept: $WORK"; fi
