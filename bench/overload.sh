#!/usr/bin/env bash
# Overload: Palisade, nginx and HAProxy in front of an upstream of fixed capacity offered 3x it.
#
#   loadgen, open loop (CPU 0) -> proxy under test (CPU 1, one worker) -> chaos upstream (CPU 0)
#
# The upstream (examples/chaos.rs --capacity C --service-time S) serves at most C requests at once,
# S each; a request beyond C waits inside the upstream, first come first served, like a thread
# pool: its capacity is C/S requests/s, and latency grows with its queue when offered more.
# examples/loadgen.rs offers requests at a fixed rate whatever the answers (open loop: no
# coordinated omission) in three classes, each on its own path and route:
#
#   crit   /critical/x   CRITICAL_PERCENT % (10)   priority = "critical"
#   api    /api/x        the rest                  priority = "normal"
#   batch  /batch/x      SHEDDABLE_PERCENT % (30)  priority = "sheddable"
#
# For each target: fresh upstream and proxy, an unloaded run (UNLOADED_FACTOR x capacity) for the
# unloaded p99 of 200s, then WARMUP s unmeasured and DURATION s measured at LOAD_FACTOR x capacity.
# Before the proxy starts, the measurement's own floor: the loadgen at the offered rate straight at
# the upstream switched to answer 503 at once (chaos fault 5xx, which bypasses the capacity), 3 s:
# the p50/p99 any proxy's refusal can be seen at from here (both share CPU 0 with the upstream).
# Then the upstream's real capacity is measured (wrk -c 2C straight at it, 3 s, closed loop: C
# requests in service and C waiting at all times): tokio's timer rounds each S up to the next
# millisecond, so it serves somewhat less than the nominal C/S.
# Reported: goodput (200s/s) as % of the measured capacity (target >= 90%; also against the
# nominal one), p99 of the 200s against the
# unloaded p99 (target <= 2x), p99 of the 503s (target < 1 ms), the critical class's success
# (target >= 99%), other outcomes (timeouts, errors), and the proxy's peak RSS (sampled every
# 0.2 s).
#
# Targets (TARGETS, in this order by default):
#   palisade-adaptive   [clusters.app.adaptive_concurrency] with a short queue (max_queue = C/2,
#                       queue_timeout = 2S): the limit follows the upstream's latency; the queue
#                       serves critical first, and a higher-priority newcomer evicts the newest
#                       lower-priority waiter; a newcomer that finds the queue full of its own
#                       priority or higher is refused at once
#   palisade-static     no adaptive limit: [overload] max_in_flight = 3C, sheddable routes refused
#                       from 40% of it (1.2C requests in flight), normal from 50% (1.5C), critical
#                       up to 3C (the thresholds count every request in flight, critical ones
#                       included, and bursts: set at C, they admit far less than C on average)
#   nginx               limit_conn C (one zone for the whole server) on /api/ and /batch/,
#                       limit_conn_status 503; /critical/ exempt (nginx has no priorities)
#   haproxy             server maxconn C, timeout queue 2S (as Palisade's queue_timeout; HAProxy's
#                       queue has no length cap), http-request set-priority-class
#                       (critical first, batch last in HAProxy's queue)
#   palisade-adaptive-defaults   adaptive_concurrency = {} (max_queue 50, queue_timeout 10ms)
#
# Environment:
#   CAPACITY=20         upstream concurrency C
#   SERVICE_MS=10       upstream service time S (ms); capacity C/S = 2,000 requests/s by default
#   LOAD_FACTOR=3       offered load, x capacity
#   UNLOADED_FACTOR=0.3 load of the unloaded run, x capacity
#   CRITICAL_PERCENT=10 SHEDDABLE_PERCENT=30
#   DURATION=15         measured seconds at LOAD_FACTOR
#   UNLOADED_DURATION=8 seconds of the unloaded run
#   WARMUP=5            unmeasured seconds at LOAD_FACTOR before the measured ones
#   TIMEOUT=5           loadgen's per-request timeout (s)
#   QUEUE=C/2 QUEUE_TIMEOUT_MS=2S   palisade-adaptive's max_queue and queue_timeout (and
#                       HAProxy's timeout queue)
#   TARGETS="palisade-adaptive palisade-static nginx haproxy palisade-adaptive-defaults"
#   WAIT_QUIET=0        before each run, wait up to this many seconds for other processes to use
#                       < 10% of a core (for shared machines; 0 = do not wait)
#   PALISADE_BIN=target/release/palisade   CHAOS_BIN=target/release/examples/chaos
#   LOADGEN_BIN=target/release/examples/loadgen   (all copied before use)
#   RESULTS=FILE        also write the per-target JSON lines there
#   KEEP_WORK=1         keep the temp dir (configs, logs, loadgen JSON, Palisade's /limits, /metrics)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR disable=SC1091
source "$here/lib.sh"

CAPACITY=${CAPACITY:-20}
SERVICE_MS=${SERVICE_MS:-10}
LOAD_FACTOR=${LOAD_FACTOR:-3}
UNLOADED_FACTOR=${UNLOADED_FACTOR:-0.3}
CRITICAL_PERCENT=${CRITICAL_PERCENT:-10}
SHEDDABLE_PERCENT=${SHEDDABLE_PERCENT:-30}
DURATION=${DURATION:-15}
UNLOADED_DURATION=${UNLOADED_DURATION:-8}
WARMUP=${WARMUP:-5}
TIMEOUT=${TIMEOUT:-5}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
CHAOS_BIN=${CHAOS_BIN:-$root/target/release/examples/chaos}
[[ $CHAOS_BIN == /* ]] || CHAOS_BIN=$root/$CHAOS_BIN
LOADGEN_BIN=${LOADGEN_BIN:-$root/target/release/examples/loadgen}
[[ $LOADGEN_BIN == /* ]] || LOADGEN_BIN=$root/$LOADGEN_BIN
LOAD_CPU=0
PROXY_CPU=1
ALL_TARGETS="palisade-adaptive palisade-static nginx haproxy palisade-adaptive-defaults"
DEFAULT_TARGETS="palisade-adaptive palisade-static nginx haproxy palisade-adaptive-defaults"

for tool in curl python3 wrk; do
    have "$tool" || die "$tool is required"
done
[[ -x $CHAOS_BIN ]] || die "$CHAOS_BIN not found: cargo build --release --example chaos"
[[ -x $LOADGEN_BIN ]] || die "$LOADGEN_BIN not found: cargo build --release --example loadgen"
for v in CAPACITY SERVICE_MS DURATION UNLOADED_DURATION WARMUP TIMEOUT CRITICAL_PERCENT SHEDDABLE_PERCENT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
((CAPACITY >= 2 && SERVICE_MS >= 1)) || die "CAPACITY must be >= 2 and SERVICE_MS >= 1"
((CRITICAL_PERCENT + SHEDDABLE_PERCENT < 100)) || die "CRITICAL_PERCENT + SHEDDABLE_PERCENT must be below 100"
read -r -a targets <<<"${TARGETS:-$DEFAULT_TARGETS}"
for t in "${targets[@]}"; do
    [[ " $ALL_TARGETS " == *" $t "* ]] || die "unknown target $t (known: $ALL_TARGETS)"
    case $t in
        palisade*) [[ -x $PALISADE_BIN ]] || die "$PALISADE_BIN not found: cargo build --release" ;;
        *) have "$t" || die "$t is not installed (or leave it out of TARGETS)" ;;
    esac
done

PIN=1
if ! have taskset || (($(nproc) < 2)); then
    PIN=0
    log "note: not pinning (needs taskset and 2 CPUs); figures will include CPU contention"
fi

bench_init
pin_palisade
cp "$CHAOS_BIN" "$WORK/chaos-bin"
CHAOS_BIN=$WORK/chaos-bin
cp "$LOADGEN_BIN" "$WORK/loadgen-bin"
LOADGEN_BIN=$WORK/loadgen-bin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Derived figures (integers where a config needs them).
CAP_RPS=$((CAPACITY * 1000 / SERVICE_MS))
OFFERED=$(python3 -c "print(round($CAP_RPS * $LOAD_FACTOR))")
UNLOADED_RATE=$(python3 -c "print(max(1, round($CAP_RPS * $UNLOADED_FACTOR)))")
API_PERCENT=$((100 - CRITICAL_PERCENT - SHEDDABLE_PERCENT))
QUEUE=${QUEUE:-$((CAPACITY / 2))}
QUEUE_TIMEOUT_MS=${QUEUE_TIMEOUT_MS:-$((SERVICE_MS * 2))}
[[ $QUEUE =~ ^[0-9]+$ && $QUEUE_TIMEOUT_MS =~ ^[0-9]+$ ]] || die "QUEUE and QUEUE_TIMEOUT_MS must be whole numbers"
CLASSES=(--class "crit:$CRITICAL_PERCENT:/critical/x" --class "api:$API_PERCENT:/api/x")
((SHEDDABLE_PERCENT > 0)) && CLASSES+=(--class "batch:$SHEDDABLE_PERCENT:/batch/x")

# ---- configs --------------------------------------------------------------------------------------

# write_palisade_overload_conf FILE PORT ADMIN_PORT UPSTREAM MODE (adaptive | static | adaptive-defaults)
write_palisade_overload_conf() {
    local file=$1 port=$2 admin=$3 up=$4 mode=$5 prio route
    {
        cat <<EOF
[admin]
listen = "127.0.0.1:$admin"

[runtime]
workers = 1

[log]
level = "warn"

[access_log]
enabled = false

[listeners.web]
listen = "127.0.0.1:$port"
max_connections = 16000
idle_timeout = "300s"
max_requests_per_connection = 0

EOF
        case $mode in
            static)
                cat <<EOF
# Static limits only: priority shedding on the process's requests in flight.
[overload]
max_in_flight = $((CAPACITY * 3))
shed_sheddable_percent = 40
shed_normal_percent = 50

EOF
                ;;
        esac
        for route in critical:critical api:normal batch:sheddable; do
            prio=${route#*:}
            route=${route%:*}
            cat <<EOF
[[routes]]
name = "$route"
match = { path_prefix = "/$route/" }
cluster = "app"
priority = "$prio"
timeout = "${TIMEOUT}s"
# No retries: a refused or failed request is the figure being measured.
retry = { attempts = 1 }

EOF
        done
        cat <<EOF
[clusters.app]
endpoints = ["$up"]

EOF
        case $mode in
            adaptive)
                cat <<EOF
[clusters.app.adaptive_concurrency]
max_queue = $QUEUE
queue_timeout = "${QUEUE_TIMEOUT_MS}ms"
EOF
                ;;
            adaptive-defaults)
                cat <<EOF
[clusters.app.adaptive_concurrency]
EOF
                ;;
        esac
    } >"$file"
}

# write_nginx_overload_conf FILE PORT UPSTREAM
write_nginx_overload_conf() {
    local file=$1 port=$2 up=$3 dir
    dir=$(dirname "$file")
    mkdir -p "$dir/nginx-tmp"
    cat >"$file" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $(nofile_limit);
pid $dir/nginx.pid;
error_log $dir/nginx-error.log error;
events { worker_connections 16000; }
http {
    access_log off;
    client_body_temp_path $dir/nginx-tmp/body;
    proxy_temp_path $dir/nginx-tmp/proxy;
    fastcgi_temp_path $dir/nginx-tmp/fastcgi;
    uwsgi_temp_path $dir/nginx-tmp/uwsgi;
    scgi_temp_path $dir/nginx-tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    # One count for the whole server: at most C requests to the upstream (nginx has no queue).
    limit_conn_zone \$server_name zone=upstream_cap:1m;
    limit_conn_status 503;
    limit_conn_log_level info;
    upstream app {
        server $up;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        server_name bench;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_read_timeout ${TIMEOUT}s;
        proxy_next_upstream off;
        location /critical/ { proxy_pass http://app; }
        location /api/ { limit_conn upstream_cap $CAPACITY; proxy_pass http://app; }
        location /batch/ { limit_conn upstream_cap $CAPACITY; proxy_pass http://app; }
    }
}
EOF
}

# write_haproxy_overload_conf FILE PORT UPSTREAM
write_haproxy_overload_conf() {
    local file=$1 port=$2 up=$3 dir
    dir=$(dirname "$file")
    cat >"$file" <<EOF
global
    nbthread 1
    maxconn 16000
    no strict-limits
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    timeout connect 1s
    timeout client 300s
    timeout server ${TIMEOUT}s
    timeout http-keep-alive 300s
    timeout http-request 10s
    # A request beyond the server's maxconn waits in the backend's queue this long, then 503.
    timeout queue ${QUEUE_TIMEOUT_MS}ms
    retries 0

frontend fe
    bind 127.0.0.1:$port
    default_backend app

backend app
    # Lower class first out of the queue: critical, then api, then batch.
    http-request set-priority-class int(-10) if { path_beg /critical/ }
    http-request set-priority-class int(10) if { path_beg /batch/ }
    http-reuse always
    server u1 $up maxconn $CAPACITY
EOF
}

# ---- one target ----------------------------------------------------------------------------------

# start_chaos RUN_DIR: one chaos upstream with the capacity; sets UP, CONTROL and CHAOS_PID.
UP=""
CONTROL=""
CHAOS_PID=""
start_chaos() {
    local run=$1 rel=${1#"$WORK"/}
    spawn "$rel/chaos" "$LOAD_CPU" "$CHAOS_BIN" --upstreams 1 --names app --control 127.0.0.1:0 \
        --workers 1 --capacity "$CAPACITY" --service-time "${SERVICE_MS}ms"
    CHAOS_PID=$LAST_PID
    for _ in $(seq 100); do
        grep -q '^control ' "$run/chaos.log" 2>/dev/null && break
        alive "$CHAOS_PID" || break
        sleep 0.1
    done
    CONTROL=$(awk '$1 == "control" {print $2}' "$run/chaos.log")
    UP=$(awk '$1 == "upstream" {print $3}' "$run/chaos.log")
    [[ -n $CONTROL && -n $UP ]] || { cat "$run/chaos.log" >&2 || true; die "chaos upstream did not start"; }
}

# start_target TARGET RUN_DIR PORT: sets LAST_PID, and ADMIN for Palisade.
ADMIN=""
start_target() {
    local target=$1 run=$2 port=$3 rel=${2#"$WORK"/} check kind=${1%%-*}
    case $target in
        palisade-*)
            ADMIN=127.0.0.1:$(free_port)
            write_palisade_overload_conf "$run/palisade.toml" "$port" "${ADMIN#*:}" "$UP" "${target#palisade-}"
            check=$("$PALISADE_BIN" validate -c "$run/palisade.toml" 2>&1) || die "palisade validate failed: $check"
            spawn "$rel/palisade" "$PROXY_CPU" "$PALISADE_BIN" run -c "$run/palisade.toml"
            ;;
        nginx)
            write_nginx_overload_conf "$run/nginx.conf" "$port" "$UP"
            check=$(nginx -t -p "$run" -e "$run/nginx-error.log" -c "$run/nginx.conf" 2>&1) || die "nginx -t failed: $check"
            spawn "$rel/nginx" "$PROXY_CPU" nginx -p "$run" -e "$run/nginx-error.log" -c "$run/nginx.conf"
            ;;
        haproxy)
            write_haproxy_overload_conf "$run/haproxy.cfg" "$port" "$UP"
            check=$(haproxy -c -f "$run/haproxy.cfg" 2>&1) || die "haproxy -c failed: $check"
            spawn "$rel/haproxy" "$PROXY_CPU" haproxy -db -f "$run/haproxy.cfg"
            ;;
    esac
    if ! wait_port "$port" 15; then
        cat "$run/$kind.log" >&2 || true
        die "$target did not start listening on $port (log above)"
    fi
}

# sample_rss PID FILE: the tree's RSS (KiB) every 0.2 s, one line each, until killed.
sample_rss() {
    local pid=$1 file=$2
    while alive "$pid"; do
        tree_rss_kib "$pid" >>"$file"
        sleep 0.2
    done
}

# loadgen RATE WARMUP DURATION PORT OUT
loadgen() {
    on_cpu "$LOAD_CPU" "$LOADGEN_BIN" run --target "127.0.0.1:$4" --rate "$1" --warmup "${2}s" \
        --duration "${3}s" --timeout "${TIMEOUT}s" --connections 8000 "${CLASSES[@]}" >"$5" 2>"$5.err" ||
        { cat "$5.err" >&2; die "loadgen failed"; }
}

results=$WORK/results.jsonl
: >"$results"

run_target() {
    local target=$1 run port proxy_pid sampler rss_idle
    run=$WORK/runs/$target
    mkdir -p "$run"
    start_chaos "$run"
    # The floor: immediate 503s straight from the upstream.
    curl -s -m 3 -X POST "http://$CONTROL/app/5xx" >/dev/null || die "cannot set the upstream's fault"
    loadgen "$OFFERED" 0 3 "${UP##*:}" "$run/floor.json"
    curl -s -m 3 -X POST "http://$CONTROL/app/ok" >/dev/null || die "cannot reset the upstream's fault"
    # The upstream's real capacity: C requests in service and C waiting at all times.
    on_cpu "$LOAD_CPU" wrk -t1 -c"$((CAPACITY * 2))" -d3s "http://$UP/" >"$run/wrk-capacity.txt" 2>&1 ||
        die "wrk against the upstream failed: $(cat "$run/wrk-capacity.txt")"
    port=$(free_port)
    start_target "$target" "$run" "$port"
    proxy_pid=$LAST_PID
    sleep 0.5
    rss_idle=$(tree_rss_kib "$proxy_pid")
    if ((${WAIT_QUIET:-0} > 0)); then wait_quiet "$WAIT_QUIET" || true; fi

    log "$target: unloaded run, $UNLOADED_RATE req/s for ${UNLOADED_DURATION}s"
    # 3 s unmeasured first: Palisade's adaptive limit starts by measuring its baseline latency with
    # the limit pinned to min_limit (3), which queues requests for a moment even at this load.
    loadgen "$UNLOADED_RATE" 3 "$UNLOADED_DURATION" "$port" "$run/unloaded.json"

    log "$target: overload run, $OFFERED req/s (${LOAD_FACTOR}x $CAP_RPS), ${WARMUP}s warm-up + ${DURATION}s"
    : >"$run/rss.txt"
    sample_rss "$proxy_pid" "$run/rss.txt" &
    sampler=$!
    PIDS+=("$sampler")
    if [[ $target == palisade-* ]]; then
        curl -s -m 5 "http://$ADMIN/metrics" >"$run/metrics-before.txt" || true
    fi
    loadgen "$OFFERED" "$WARMUP" "$DURATION" "$port" "$run/overload.json"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    if [[ $target == palisade-* ]]; then
        curl -s -m 5 "http://$ADMIN/limits" >"$run/limits.json" || true
        curl -s -m 5 "http://$ADMIN/metrics" >"$run/metrics.txt" || true
    fi
    curl -s -m 5 "http://$CONTROL/" >"$run/chaos-state.json" || true
    alive "$proxy_pid" || log "warning: $target exited during the run (see $run)"
    stop "$proxy_pid"
    stop "$CHAOS_PID"
    python3 - "$target" "$run" "$rss_idle" >>"$results" <<'EOF'
import json, re, sys
target, run, rss_idle = sys.argv[1], sys.argv[2], int(sys.argv[3])
rss = [int(x) for x in open(f"{run}/rss.txt").read().split()]
cap = re.search(r"Requests/sec:\s+([0-9.]+)", open(f"{run}/wrk-capacity.txt").read())
row = {
    "target": target,
    "capacity_measured": float(cap.group(1)) if cap else None,
    "floor": json.load(open(f"{run}/floor.json")).get("all", {}).get("503"),
    "unloaded": json.load(open(f"{run}/unloaded.json")),
    "overload": json.load(open(f"{run}/overload.json")),
    "rss_idle_kib": rss_idle,
    "rss_peak_kib": max(rss) if rss else None,
}
try:
    row["limits"] = json.load(open(f"{run}/limits.json"))
except (OSError, ValueError):
    pass
print(json.dumps(row))
EOF
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%MZ)
log "targets: ${targets[*]}; capacity $CAPACITY x ${SERVICE_MS}ms = $CAP_RPS req/s; offered $OFFERED req/s; work dir $WORK"
for target in "${targets[@]}"; do
    run_target "$target"
done

if [[ -n ${RESULTS:-} ]]; then cp "$results" "$RESULTS"; fi
echo
echo "Palisade overload benchmark: $started, $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
echo "$BINARY_NOTE"
echo "load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
pinning="proxy pinned to CPU $PROXY_CPU, loadgen + upstream to CPU $LOAD_CPU"
((PIN)) || pinning="not pinned"
echo "upstream: capacity $CAPACITY in service x ${SERVICE_MS} ms = $CAP_RPS req/s (FIFO queue inside it); $pinning"
echo "offered: $OFFERED req/s open loop (${LOAD_FACTOR}x), classes crit ${CRITICAL_PERCENT}% / api ${API_PERCENT}% / batch ${SHEDDABLE_PERCENT}%;" \
    "${WARMUP}s warm-up, ${DURATION}s measured; unloaded reference: $UNLOADED_RATE req/s for ${UNLOADED_DURATION}s"
python3 - "$results" "$CAP_RPS" <<'EOF'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cap = float(sys.argv[2])


def count(doc, cls=None, key=None):
    n = 0
    for name, c in doc["classes"].items():
        if cls and name != cls:
            continue
        for k, v in c["status"].items():
            if key is None or k == key:
                n += v["count"]
    return n


def pct(doc, key, q="p99_ms"):
    """A percentile of one outcome over every class together."""
    v = doc["all"].get(key)
    return v[q] if v and v["count"] > 0 else None


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


print()
print("All figures from the measured part of the run (loadgen JSON), per target, all classes")
print("together. 'p99 200' is the p99 of the 200 answers; 'unl. p99' the same in the unloaded run;")
print("'x' their ratio. 'other' counts every outcome that is neither 200 nor 503 (timeouts,")
print("errors, other statuses, unfinished). 'RSS MiB' is idle -> peak during the overload run.")
print("'cap.' is the upstream's measured capacity (req/s) for that run; 'goodput' 200/s as % of it,")
print("'nominal' as % of C/S. '503 p50/p99' the latency of the refusals; 'floor' that of 503s")
print("straight from the upstream at the same rate, before the proxy started (what this setup can see).")
hdr = (f"{'target':<28} {'offered/s':>9} {'cap.':>5} {'200/s':>6} {'goodput':>8} {'nominal':>7} "
       f"{'p50 200':>8} {'p99 200':>8} "
       f"{'unl. p99':>8} {'x':>5} {'503/s':>6} {'503 p50/p99':>12} {'floor p50/p99':>13} {'crit ok':>8} {'other':>5} "
       f"{'RSS MiB':>13} {'late p99':>8}")
print(hdr)
summary = {}
for r in rows:
    o, u = r["overload"], r["unloaded"]
    dur = o["duration_s"]
    ok = count(o, key="200")
    refused = count(o, key="503")
    total = count(o)
    other = total - ok - refused + sum(c["unfinished"] for c in o["classes"].values())
    crit_sent = o["classes"].get("crit", {}).get("sent", 0)
    crit_ok = count(o, "crit", "200")
    crit_pct = 100.0 * crit_ok / crit_sent if crit_sent else None
    p99 = pct(o, "200")
    p50 = pct(o, "200", "p50_ms")
    up99 = pct(u, "200")
    ratio = p99 / up99 if p99 and up99 else None
    p99_503 = pct(o, "503")
    p50_503 = pct(o, "503", "p50_ms")
    fl = r.get("floor") or {}
    floor = f"{fl.get('p50_ms', 0):.2f}/{fl.get('p99_ms', 0):.2f}" if fl else "-"
    mcap = r.get("capacity_measured") or cap
    goodput = 100.0 * ok / dur / mcap
    nominal = 100.0 * ok / dur / cap
    rss = f"{r['rss_idle_kib'] / 1024:.0f}->{(r['rss_peak_kib'] or 0) / 1024:.0f}"
    late = o["generator_late"]["p99_ms"]
    summary[r["target"]] = dict(goodput=goodput, ratio=ratio, p99_503=p99_503, crit=crit_pct,
                                other=other, rss=r["rss_peak_kib"])
    print(f"{r['target']:<28} {o['sent'] / dur:>9.0f} {mcap:>5.0f} {ok / dur:>6.0f} {goodput:>7.1f}% "
          f"{nominal:>6.1f}% {fmt(p50):>8} {fmt(p99):>8} {fmt(up99):>8} {fmt(ratio):>5} {refused / dur:>6.0f} "
          f"{fmt(p50_503) + '/' + fmt(p99_503):>12} {floor:>13} {fmt(crit_pct, '.2f'):>7}% {other:>5} {rss:>13} {late:>8.2f}")

print()
print("Per class (200/s, p99 of 200 ms, 503/s, p99 of 503 ms, other outcomes):")
for r in rows:
    o = r["overload"]
    dur = o["duration_s"]
    parts = []
    for name, c in o["classes"].items():
        s = c["status"]
        ok = s.get("200", {}).get("count", 0)
        no = s.get("503", {}).get("count", 0)
        others = {k: v["count"] for k, v in s.items() if k not in ("200", "503")}
        if c["unfinished"]:
            others["unfinished"] = c["unfinished"]
        parts.append(f"{name} {ok / dur:.0f}/s {fmt(s.get('200', {}).get('p99_ms'))} ms, "
                     f"{no / dur:.0f}/s {fmt(s.get('503', {}).get('p99_ms'), '.3f')} ms"
                     + (f", {others}" if others else ""))
    print(f"  {r['target']:<28} " + " | ".join(parts))
    lim = r.get("limits")
    if lim:
        ac = lim.get("adaptive_concurrency") or []
        ov = lim.get("overload") or {}
        print(f"  {'':<28} /limits at the end: adaptive {[(a['limit'], a.get('min_rtt_s')) for a in ac]}"
              f" (limit, min_rtt_s); shed_level {ov.get('shed_level')}")

print()
print("'late p99' is how far behind its schedule the generator sent (ms; ~1 ms is its timer).")
print("Targets (Palisade with adaptive concurrency): goodput >= 90% of (measured) capacity, p99 of 200s <= 2x")
print("unloaded, p99 of 503s < 1 ms, critical >= 99% success, RSS bounded.")
for t, s in summary.items():
    checks = [
        ("goodput >= 90%", s["goodput"] >= 90),
        ("p99 <= 2x", s["ratio"] is not None and s["ratio"] <= 2),
        ("503 p99 < 1 ms", s["p99_503"] is not None and s["p99_503"] < 1),
        ("critical >= 99%", s["crit"] is not None and s["crit"] >= 99),
    ]
    print(f"  {t:<28} " + ", ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in checks))
EOF
if [[ -n ${KEEP_WORK:-} ]]; then echo; echo "work dir kept: $WORK"; fi
