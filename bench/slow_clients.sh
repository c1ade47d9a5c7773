#!/usr/bin/env bash
# Slow clients: normal traffic through Palisade, nginx and HAProxy while slowloris and slow-POST
# attackers hold connections.
#
#   wrk -t1 -c50 (CPU 0) ────────────┐
#   attacker: loadgen attack (CPU 0) ─┴─> proxy under test (CPU 1, one worker) ─> nginx upstream (CPU 0)
#
# The attacker (examples/loadgen.rs attack) holds SLOWLORIS connections that send a partial request
# head and then one more byte every LORIS_INTERVAL s, and SLOWPOST connections that send a complete
# head with Content-Length: 1000000 and then one body byte every POST_INTERVAL s (to /upload, where
# the upstream reads the whole body before answering, as an application would). Each connection the
# server ends is reopened 50 ms later, so the attack keeps its size. Connections are opened over
# RAMP s.
#
# For each proxy: a fresh proxy; wrk for DURATION s (unattacked); the attack starts, SETTLE s pass
# (long enough for the proxies' timeouts to have fired once), wrk again for DURATION s during the
# attack; the attack ends, and a third wrk run, unattacked again. Reported: normal traffic's
# success % (target 100%) and req/s against the mean of the two unattacked runs (target >= 80%;
# the two tell how much the machine's other load moved meanwhile), the same for requests per
# CPU-second of the proxy (less sensitive to other load), p99, the proxy's RSS before and at its
# peak during the attack (sampled every 0.5 s), and how many attacker connections the proxy held
# on average and for how long.
#
# Each proxy has its timeouts against slow clients set (TIMEOUT s, 5 by default):
#   Palisade  header_read_timeout (the whole head, from its first byte), request_body_timeout and
#             request_body_min_rate = 1024 B/s (checked once a body has been arriving for
#             request_body_timeout); max_connections = 16000 on the listener
#   nginx     client_header_timeout, client_body_timeout (nginx times the gap between two reads
#             only, so a byte a second never trips it; it buffers the body, so the upstream is not
#             involved); worker_connections 16000
#   HAProxy   timeout http-request (the whole head; with option http-buffer-request, the wait
#             for the body too); maxconn 16000
# Every client comes from 127.0.0.1, so per-client connection caps (Palisade's
# max_connections_per_ip, nginx limit_conn $binary_remote_addr) would refuse wrk too: not used.
#
# Environment:
#   SLOWLORIS=5000 SLOWPOST=500      attacker connections
#   LORIS_INTERVAL=3 POST_INTERVAL=1 seconds between two bytes
#   TIMEOUT=5           the proxies' slow-client timeouts (s)
#   DURATION=15         seconds per wrk run
#   RAMP=3 SETTLE=7     seconds to open the attack, then to let it settle before the wrk run
#   CONNECTIONS=50      wrk connections
#   PROXIES="palisade nginx haproxy"   subset / order
#   WAIT_QUIET=0        before each proxy, wait up to this many seconds for the machine to be quiet
#   PALISADE_BIN=target/release/palisade   LOADGEN_BIN=target/release/examples/loadgen
#   RESULTS=FILE        also write the per-proxy JSON lines there
#   KEEP_WORK=1         keep the temp dir (configs, logs, wrk output, attacker JSON)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR disable=SC1091
source "$here/lib.sh"

SLOWLORIS=${SLOWLORIS:-5000}
SLOWPOST=${SLOWPOST:-500}
LORIS_INTERVAL=${LORIS_INTERVAL:-3}
POST_INTERVAL=${POST_INTERVAL:-1}
TIMEOUT=${TIMEOUT:-5}
DURATION=${DURATION:-15}
RAMP=${RAMP:-3}
SETTLE=${SETTLE:-7}
CONNECTIONS=${CONNECTIONS:-50}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
LOADGEN_BIN=${LOADGEN_BIN:-$root/target/release/examples/loadgen}
[[ $LOADGEN_BIN == /* ]] || LOADGEN_BIN=$root/$LOADGEN_BIN
LOAD_CPU=0
PROXY_CPU=1
MAX_CONNS=16000

for tool in wrk curl python3 nginx; do
    have "$tool" || die "$tool is required"
done
[[ -x $LOADGEN_BIN ]] || die "$LOADGEN_BIN not found: cargo build --release --example loadgen"
for v in SLOWLORIS SLOWPOST LORIS_INTERVAL POST_INTERVAL TIMEOUT DURATION RAMP SETTLE CONNECTIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done

PIN=1
if ! have taskset || (($(nproc) < 2)); then
    PIN=0
    log "note: not pinning (needs taskset and 2 CPUs); figures will include CPU contention"
fi

bench_init
read -r -a proxies <<<"${PROXIES:-$(available_proxies)}"
((${#proxies[@]} > 0)) || die "no proxy to test"
pin_palisade
cp "$LOADGEN_BIN" "$WORK/loadgen-bin"
LOADGEN_BIN=$WORK/loadgen-bin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$((SLOWLORIS + SLOWPOST + CONNECTIONS + 500))
(($(ulimit -n) >= need)) || die "ulimit -n is $(ulimit -n); the attack needs about $need descriptors per process"

# ---- configs --------------------------------------------------------------------------------------

# write_body_upstream_conf DIR PORT: nginx answering 200 "hello\n"; /upload reads the whole request
# body first (it is proxied to a second server block, and nginx buffers a body before proxying it),
# with no timeout of its own worth the name, so only the proxy under test protects it.
write_body_upstream_conf() {
    local dir=$1 port=$2 inner
    inner=$(free_port)
    mkdir -p "$dir/tmp"
    cat >"$dir/upstream.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $(nofile_limit);
pid $dir/upstream.pid;
error_log $dir/upstream-error.log error;
events { worker_connections 16000; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_header_timeout 300s;
    client_body_timeout 300s;
    client_max_body_size 0;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { return 200 "hello\n"; }
        location /upload { proxy_pass http://127.0.0.1:$inner; }
    }
    server {
        listen 127.0.0.1:$inner;
        location / { return 200 "uploaded\n"; }
    }
}
EOF
}

# write_palisade_slow_conf FILE PORT ADMIN_PORT UPSTREAM_PORT
write_palisade_slow_conf() {
    local file=$1 port=$2 admin=$3 up=$4
    cat >"$file" <<EOF
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
max_connections = $MAX_CONNS
idle_timeout = "300s"
max_requests_per_connection = 0
header_read_timeout = "${TIMEOUT}s"
request_body_timeout = "${TIMEOUT}s"
request_body_min_rate = 1024

[[routes]]
name = "all"
match = { path_prefix = "/" }
cluster = "up"

[clusters.up]
endpoints = ["127.0.0.1:$up"]
EOF
}

# write_nginx_slow_conf DIR PORT UPSTREAM_PORT
write_nginx_slow_conf() {
    local dir=$1 port=$2 up=$3
    mkdir -p "$dir/nginx-tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $(nofile_limit);
pid $dir/nginx.pid;
error_log $dir/nginx-error.log error;
events { worker_connections $MAX_CONNS; }
http {
    access_log off;
    client_body_temp_path $dir/nginx-tmp/body;
    proxy_temp_path $dir/nginx-tmp/proxy;
    fastcgi_temp_path $dir/nginx-tmp/fastcgi;
    uwsgi_temp_path $dir/nginx-tmp/uwsgi;
    scgi_temp_path $dir/nginx-tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_header_timeout ${TIMEOUT}s;
    client_body_timeout ${TIMEOUT}s;
    client_max_body_size 10m;
    send_timeout ${TIMEOUT}s;
    upstream up {
        server 127.0.0.1:$up;
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
        }
    }
}
EOF
}

# write_haproxy_slow_conf DIR PORT UPSTREAM_PORT
write_haproxy_slow_conf() {
    local dir=$1 port=$2 up=$3
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAX_CONNS
    no strict-limits
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    # Wait for the request body within timeout http-request too (slow POST).
    option http-buffer-request
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request ${TIMEOUT}s

frontend fe
    bind 127.0.0.1:$port
    maxconn $MAX_CONNS
    default_backend be

backend be
    server up1 127.0.0.1:$up maxconn 10000
EOF
}

# ---- runs ----------------------------------------------------------------------------------------

mkdir -p "$WORK/upstream"
upstream_port=$(free_port)
write_body_upstream_conf "$WORK/upstream" "$upstream_port"
spawn upstream "$LOAD_CPU" nginx -p "$WORK/upstream" -e "$WORK/upstream/upstream-error.log" -c "$WORK/upstream/upstream.conf"
wait_port "$upstream_port" 10 || { cat "$WORK/upstream.log" >&2; die "upstream did not start"; }

# start_slow_proxy KIND DIR PORT: sets LAST_PID, and ADMIN for Palisade.
ADMIN=""
start_slow_proxy() {
    local kind=$1 dir=$2 port=$3 rel=${2#"$WORK"/} check
    case $kind in
        palisade)
            ADMIN=127.0.0.1:$(free_port)
            write_palisade_slow_conf "$dir/palisade.toml" "$port" "${ADMIN#*:}" "$upstream_port"
            check=$("$PALISADE_BIN" validate -c "$dir/palisade.toml" 2>&1) || die "palisade validate failed: $check"
            spawn "$rel/palisade" "$PROXY_CPU" "$PALISADE_BIN" run -c "$dir/palisade.toml"
            ;;
        nginx)
            write_nginx_slow_conf "$dir" "$port" "$upstream_port"
            check=$(nginx -t -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" 2>&1) || die "nginx -t failed: $check"
            spawn "$rel/nginx" "$PROXY_CPU" nginx -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf"
            ;;
        haproxy)
            write_haproxy_slow_conf "$dir" "$port" "$upstream_port"
            check=$(haproxy -c -f "$dir/haproxy.cfg" 2>&1) || die "haproxy -c failed: $check"
            spawn "$rel/haproxy" "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg"
            ;;
        *) die "unknown proxy $kind" ;;
    esac
    wait_port "$port" 15 || { cat "$dir/$kind.log" >&2; die "$kind did not start listening on $port"; }
}

results=$WORK/results.jsonl
: >"$results"

clk_tck=$(getconf CLK_TCK)

# cpu_ticks PID: utime+stime of PID and its direct children (nginx workers), in clock ticks.
cpu_ticks() {
    local pid=$1 total=0 p t
    for p in "$pid" $(pgrep -P "$pid" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

# measured_wrk PID PORT OUT: one wrk run; appends the proxy's CPU (% of a core) to OUT.
measured_wrk() {
    local pid=$1 port=$2 out=$3 c0 c1
    c0=$(cpu_ticks "$pid")
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency \
        "http://127.0.0.1:$port/" >"$out" 2>&1 || log "warning: wrk failed ($out)"
    c1=$(cpu_ticks "$pid")
    echo "proxy_cpu_pct $(((c1 - c0) * 100 / (clk_tck * DURATION)))" >>"$out"
}

run_proxy() {
    local kind=$1 dir port pid attacker sampler rss_before
    dir=$WORK/$kind
    mkdir -p "$dir"
    port=$(free_port)
    start_slow_proxy "$kind" "$dir" "$port"
    pid=$LAST_PID
    if ((${WAIT_QUIET:-0} > 0)); then wait_quiet "$WAIT_QUIET" || true; fi
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    log "$kind: unattacked wrk run, ${DURATION}s"
    measured_wrk "$pid" "$port" "$dir/wrk-calm.txt"
    rss_before=$(tree_rss_kib "$pid")
    if [[ $kind == palisade ]]; then curl -s -m 5 "http://$ADMIN/metrics" >"$dir/metrics-before.txt" || true; fi

    log "$kind: attack, $SLOWLORIS slowloris + $SLOWPOST slow POST, then ${SETTLE}s, then wrk ${DURATION}s"
    if ((PIN)); then
        taskset -c "$LOAD_CPU" "$LOADGEN_BIN" attack --target "127.0.0.1:$port" \
            --duration "$((RAMP + SETTLE + DURATION + 2))s" --ramp "${RAMP}s" \
            --slowloris "$SLOWLORIS" --slowloris-interval "${LORIS_INTERVAL}s" \
            --slowpost "$SLOWPOST" --slowpost-interval "${POST_INTERVAL}s" \
            >"$dir/attack.json" 2>"$dir/attack.err" &
    else
        "$LOADGEN_BIN" attack --target "127.0.0.1:$port" \
            --duration "$((RAMP + SETTLE + DURATION + 2))s" --ramp "${RAMP}s" \
            --slowloris "$SLOWLORIS" --slowloris-interval "${LORIS_INTERVAL}s" \
            --slowpost "$SLOWPOST" --slowpost-interval "${POST_INTERVAL}s" \
            >"$dir/attack.json" 2>"$dir/attack.err" &
    fi
    attacker=$!
    PIDS+=("$attacker")
    : >"$dir/rss.txt"
    (while alive "$pid"; do tree_rss_kib "$pid" >>"$dir/rss.txt"; sleep 0.5; done) &
    sampler=$!
    PIDS+=("$sampler")
    sleep $((RAMP + SETTLE))
    ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l >"$dir/established.txt" || true
    measured_wrk "$pid" "$port" "$dir/wrk-attack.txt"
    if [[ $kind == palisade ]]; then curl -s -m 5 "http://$ADMIN/metrics" >"$dir/metrics-after.txt" || true; fi
    wait "$attacker" || log "warning: the attacker failed: $(cat "$dir/attack.err")"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sleep 1
    log "$kind: unattacked again, ${DURATION}s"
    measured_wrk "$pid" "$port" "$dir/wrk-calm2.txt"
    alive "$pid" || log "warning: $kind exited during the run (see $dir/$kind.log)"
    stop "$pid"
    python3 - "$kind" "$dir" "$rss_before" >>"$results" <<'EOF'
import json, re, sys

kind, d, rss_before = sys.argv[1], sys.argv[2], int(sys.argv[3])
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(path):
    t = open(path).read()
    m = re.search(r"(\d+) requests in ([0-9.]+)(\w+)", t)
    reqs = int(m.group(1)) if m else 0
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", t)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s|m)", t, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    se = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]
    bad = (int(non2xx.group(1)) if non2xx else 0) + sum(se)
    # Requests that never completed (connect errors, timeouts) are not in wrk's request count.
    attempts = reqs + se[0] + se[3]
    cpu = re.search(r"^proxy_cpu_pct (\d+)", t, re.M)
    cpu = int(cpu.group(1)) if cpu else None
    return {
        "cpu_pct": cpu,
        "per_cpu_s": float(rps.group(1)) / max(cpu, 1) * 100 if rps and cpu is not None else None,
        "requests": reqs,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)] if p99 else None,
        "errors": bad,
        "socket_errors": se,
        "success_pct": 100.0 * max(0, attempts - bad) / attempts if attempts else 0.0,
    }


rss = [int(x) for x in open(f"{d}/rss.txt").read().split()]
row = {
    "proxy": kind,
    "calm": wrk(f"{d}/wrk-calm.txt"),
    "attack": wrk(f"{d}/wrk-attack.txt"),
    "calm2": wrk(f"{d}/wrk-calm2.txt"),
    "rss_before_kib": rss_before,
    "rss_peak_kib": max(rss) if rss else None,
    "attacker": json.load(open(f"{d}/attack.json")),
}
try:
    row["established"] = int(open(f"{d}/established.txt").read().strip() or 0)
except (OSError, ValueError):
    pass
print(json.dumps(row))
EOF
    log "$(tail -n 1 "$results" | cut -c1-200)"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%MZ)
log "proxies: ${proxies[*]}; $SLOWLORIS slowloris + $SLOWPOST slow POST; timeouts ${TIMEOUT}s; work dir $WORK"
for kind in "${proxies[@]}"; do
    run_proxy "$kind"
done

if [[ -n ${RESULTS:-} ]]; then cp "$results" "$RESULTS"; fi
echo
echo "Palisade slow-client benchmark: $started, $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
echo "$BINARY_NOTE"
echo "load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
pinning="proxy pinned to CPU $PROXY_CPU, wrk + attacker + upstream to CPU $LOAD_CPU"
((PIN)) || pinning="not pinned"
echo "attack: $SLOWLORIS slowloris (a byte every ${LORIS_INTERVAL}s) + $SLOWPOST slow POST (a byte every ${POST_INTERVAL}s); proxies' timeouts ${TIMEOUT}s;" \
    "wrk -t1 -c$CONNECTIONS -d${DURATION}s, unattacked then attacked; $pinning"
python3 - "$results" <<'EOF'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
print("Normal traffic (wrk): unattacked (before / after the attack) vs attacked. 'ratio' = attacked /")
print("mean of the two unattacked runs, for req/s and for requests per CPU-second of the proxy.")
print("RSS of the proxy before the attack -> peak during it.")
print(f"{'proxy':<9} {'req/s before':>12} {'attacked':>8} {'after':>7} {'ratio':>6} {'req/CPU-s ratio':>15} "
      f"{'ok % att.':>9} {'p99 calm':>8} {'p99 att.':>8} {'errors':>6} {'RSS MiB':>11} {'estab.':>6}")
for r in rows:
    c, a, c2 = r["calm"], r["attack"], r["calm2"]
    ref = (c["rps"] + c2["rps"]) / 2
    r["ratio"] = a["rps"] / ref if ref else 0
    effs = [x["per_cpu_s"] for x in (c, c2) if x["per_cpu_s"]]
    r["eff_ratio"] = a["per_cpu_s"] / (sum(effs) / len(effs)) if effs and a["per_cpu_s"] else None
    eff = f"{r['eff_ratio']:.2f}" if r["eff_ratio"] else "-"
    rss = f"{r['rss_before_kib'] / 1024:.0f}->{(r['rss_peak_kib'] or 0) / 1024:.0f}"
    print(f"{r['proxy']:<9} {c['rps']:>12.0f} {a['rps']:>8.0f} {c2['rps']:>7.0f} {r['ratio']:>6.2f} {eff:>15} "
          f"{a['success_pct']:>9.3f} {c['p99_ms'] or 0:>8.2f} {a['p99_ms'] or 0:>8.2f} {a['errors']:>6} "
          f"{rss:>11} {r.get('established', '-'):>6}")
print("('estab.' = established connections to the proxy's port just before the attacked wrk run, attackers included)")
print()
print("The attackers, as they saw it: connections held (mean of per-second samples after the ramp / at the")
print("end), how the server ended connections, and how long it held those it ended (p50 / max, s).")
for r in rows:
    for name in ("slowloris", "slowpost"):
        s = r["attacker"][name]
        if not s["wanted"]:
            continue
        h = s["held_before_end_ms"]
        held = f"{h['p50_ms'] / 1000:.1f} / {h['max_ms'] / 1000:.1f}" if h["count"] else "- (never ended)"
        print(f"  {r['proxy']:<9} {name:<9} held {s['held_avg']:7.0f} of {s['wanted']} (end {s['held_at_end']}),"
              f" {s['connects']} connects, {s['connect_errors']} failed; ended by server: {s['ended_by_server'] or '-'}; held {held}")
print()
print("Targets: normal traffic 100% successful and >= 80% of its unattacked req/s; RSS bounded.")
for r in rows:
    a = r["attack"]
    ok = a["success_pct"] >= 100.0
    tp = r["ratio"] >= 0.8
    eff = f", per CPU-second {100 * r['eff_ratio']:.0f}%" if r["eff_ratio"] else ""
    print(f"  {r['proxy']:<9} success 100%: {'met' if ok else 'NOT met'} ({a['success_pct']:.3f}%), "
          f"throughput >= 80%: {'met' if tp else 'NOT met'} ({100 * r['ratio']:.0f}%{eff})")
EOF
if [[ -n ${KEEP_WORK:-} ]]; then echo; echo "work dir kept: $WORK"; fi
