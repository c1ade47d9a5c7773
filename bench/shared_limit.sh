#!/usr/bin/env bash
# A rate limit shared by two instances through Redis, and what happens when Redis dies.
#
#   loadgen a (CPU 0) -> instance 1 (CPU 1) \                      / redis-server (CPU 0)
#                                            > nginx "hello" upstream (CPU 0)
#   loadgen b (CPU 0) -> instance 2 (CPU 1) /
#
# One policy: LIMIT/s per API key (header x-api-key), burst BURST. Both loadgens send RATE/2
# requests/s each (open loop) with the same key, so the fleet is offered RATE against LIMIT.
#
# Palisade (two instances, one redis-server on an ephemeral port, scope = "shared",
# on_store_failure = "local"):
#   1. cost: 300 req/s per instance under the limit on a route with the shared policy (another
#      key) and 300 req/s on a route without it, CALIB s: the latency the Redis round trip adds,
#      and palisade_ratelimit_store_seconds (the round trip as Palisade measures it, a histogram).
#   2. one continuous run with per-second counts (loadgen --timeseries), in three phases of
#      PHASE s: Redis up (target: the fleet admits LIMIT/s +-5%); Redis killed (REDIS_FAULT=kill,
#      SIGKILL; or stop, SIGSTOP) -- both instances go on serving, counting locally with half the
#      rate each (target: LIMIT/s +-20%, no status but 200/429); Redis restarted (or SIGCONT) --
#      how long until both instances' GET /limits says mode "shared" again (target < 5 s), and the
#      admitted rate after that. GET /limits is polled every 100 ms throughout.
# nginx and HAProxy have no shared count: two instances of each, each with its own LIMIT/s
# (nginx limit_req rate=LIMITr/s burst=BURST nodelay; HAProxy a stick-table per instance counting
# the requests it lets through, gpc0_rate(1s), deny 429 from LIMIT), offered the same load for
# PHASE s: the fleet admits about 2x LIMIT.
#
# Environment:
#   LIMIT=1000          the policy's rate per second
#   BURST=100           its burst
#   RATE=5000           requests/s offered to the fleet (RATE/2 to each instance)
#   PHASE=15            seconds per phase
#   CALIB=8             seconds of the cost run
#   WARMUP=2            unmeasured seconds before each loadgen run
#   REDIS_FAULT=kill    kill (SIGKILL, then a fresh redis-server on the same port) or stop
#                       (SIGSTOP, then SIGCONT)
#   REDIS_TIMEOUT=25ms  Palisade's redis.timeout (its default): a decision slower than this marks
#                       the store down until the next probe (250 ms), counting locally meanwhile
#   PROXIES="palisade nginx haproxy"     subset / order
#   PALISADE_BIN=target/release/palisade   LOADGEN_BIN=target/release/examples/loadgen
#   RESULTS=FILE        also write the result JSON there
#   KEEP_WORK=1         keep the temp dir (configs, logs, loadgen JSON, the /limits poll)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR disable=SC1091
source "$here/lib.sh"

LIMIT=${LIMIT:-1000}
BURST=${BURST:-100}
RATE=${RATE:-5000}
PHASE=${PHASE:-15}
CALIB=${CALIB:-8}
WARMUP=${WARMUP:-2}
REDIS_FAULT=${REDIS_FAULT:-kill}
REDIS_TIMEOUT=${REDIS_TIMEOUT:-25ms}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
LOADGEN_BIN=${LOADGEN_BIN:-$root/target/release/examples/loadgen}
[[ $LOADGEN_BIN == /* ]] || LOADGEN_BIN=$root/$LOADGEN_BIN
LOAD_CPU=0
PROXY_CPU=1
CALIB_RATE=300

for tool in curl python3 nginx; do
    have "$tool" || die "$tool is required"
done
[[ -x $LOADGEN_BIN ]] || die "$LOADGEN_BIN not found: cargo build --release --example loadgen"
for v in LIMIT BURST RATE PHASE CALIB WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
[[ $REDIS_FAULT == kill || $REDIS_FAULT == stop ]] || die "REDIS_FAULT must be kill or stop"
read -r -a proxies <<<"${PROXIES:-palisade nginx haproxy}"
for p in "${proxies[@]}"; do
    case $p in
        palisade)
            [[ -x $PALISADE_BIN ]] || die "$PALISADE_BIN not found: cargo build --release"
            have redis-server || die "redis-server is required (apt-get install -y redis-server)"
            ;;
        nginx | haproxy) have "$p" || die "$p is not installed (or leave it out of PROXIES)" ;;
        *) die "unknown proxy $p" ;;
    esac
done

PIN=1
if ! have taskset || (($(nproc) < 2)); then
    PIN=0
    log "note: not pinning (needs taskset and 2 CPUs); figures will include CPU contention"
fi

bench_init
pin_palisade
cp "$LOADGEN_BIN" "$WORK/loadgen-bin"
LOADGEN_BIN=$WORK/loadgen-bin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
HALF=$((RATE / 2))

# ---- configs --------------------------------------------------------------------------------------

# write_palisade_shared_conf FILE PORT ADMIN_PORT UPSTREAM_PORT REDIS_PORT
write_palisade_shared_conf() {
    local file=$1 port=$2 admin=$3 up=$4 redis=$5
    cat >"$file" <<EOF
[admin]
listen = "127.0.0.1:$admin"

[runtime]
workers = 1

[log]
level = "info"

[access_log]
enabled = false

[redis]
url = "redis://127.0.0.1:$redis/0"
timeout = "$REDIS_TIMEOUT"

[[rate_limits]]
name = "per-key"
key = ["header:x-api-key"]
rate = "$LIMIT/s"
burst = $BURST
scope = "shared"
on_store_failure = "local"

[listeners.web]
listen = "127.0.0.1:$port"
max_connections = 16000
idle_timeout = "300s"
max_requests_per_connection = 0

[[routes]]
name = "limited"
match = { path_prefix = "/limited/" }
cluster = "up"
rate_limits = ["per-key"]

[[routes]]
name = "free"
match = { path_prefix = "/free/" }
cluster = "up"

[clusters.up]
endpoints = ["127.0.0.1:$up"]
EOF
}

# write_nginx_limit_conf DIR PORT UPSTREAM_PORT
write_nginx_limit_conf() {
    local dir=$1 port=$2 up=$3
    mkdir -p "$dir/nginx-tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $(nofile_limit);
pid $dir/nginx.pid;
error_log $dir/nginx-error.log error;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/nginx-tmp/body;
    proxy_temp_path $dir/nginx-tmp/proxy;
    fastcgi_temp_path $dir/nginx-tmp/fastcgi;
    uwsgi_temp_path $dir/nginx-tmp/uwsgi;
    scgi_temp_path $dir/nginx-tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    limit_req_zone \$http_x_api_key zone=perkey:10m rate=${LIMIT}r/s;
    limit_req_status 429;
    limit_req_log_level info;
    upstream up {
        server 127.0.0.1:$up;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /limited/ { limit_req zone=perkey burst=$BURST nodelay; proxy_pass http://up; }
        location / { proxy_pass http://up; }
    }
}
EOF
}

# write_haproxy_limit_conf DIR PORT UPSTREAM_PORT
write_haproxy_limit_conf() {
    local dir=$1 port=$2 up=$3
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
    no strict-limits
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 10s

frontend fe
    bind 127.0.0.1:$port
    # Per API key, the requests let through over the last second (gpc0 counts only those: with
    # http_req_rate, which counts the refused ones too, a key offered 2.5x its limit would be
    # refused almost entirely).
    stick-table type string len 64 size 100k expire 30s store gpc0_rate(1s)
    acl limited path_beg /limited/
    http-request track-sc0 req.hdr(x-api-key) if limited
    http-request deny deny_status 429 if limited { sc_gpc0_rate(0) ge $LIMIT }
    http-request sc-inc-gpc0(0) if limited
    default_backend be

backend be
    server up1 127.0.0.1:$up maxconn 10000
EOF
}

# ---- helpers -------------------------------------------------------------------------------------

# loadgen_bg NAME PORT RATE SECONDS CLASS...: a loadgen in the background, JSON to $WORK/NAME.json;
# sets LAST_PID.
loadgen_bg() {
    local name=$1 port=$2 rate=$3 secs=$4
    shift 4
    local -a classes=()
    local c
    for c in "$@"; do classes+=(--class "$c"); done
    if ((PIN)); then
        taskset -c "$LOAD_CPU" "$LOADGEN_BIN" run --target "127.0.0.1:$port" --rate "$rate" \
            --warmup "${WARMUP}s" --duration "${secs}s" --timeout 5s --timeseries "${classes[@]}" \
            >"$WORK/$name.json" 2>"$WORK/$name.err" &
    else
        "$LOADGEN_BIN" run --target "127.0.0.1:$port" --rate "$rate" --warmup "${WARMUP}s" \
            --duration "${secs}s" --timeout 5s --timeseries "${classes[@]}" \
            >"$WORK/$name.json" 2>"$WORK/$name.err" &
    fi
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

wait_loadgen() {
    wait "$1" || { cat "$WORK/$2.err" >&2; die "loadgen $2 failed"; }
}

now() { echo "${EPOCHREALTIME/,/.}"; }

REDIS_PID=""
REDIS_PORT=""
start_redis() {
    spawn "redis-$1" "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no --daemonize no --protected-mode no
    REDIS_PID=$LAST_PID
    wait_port "$REDIS_PORT" 10 || { cat "$WORK/redis-$1.log" >&2; die "redis-server did not start"; }
}

# wait_shared ADMIN...: until every instance's /limits says mode "shared" (at most 30 s).
wait_shared() {
    python3 - "$@" <<'EOF'
import json, sys, time, urllib.request
deadline = time.time() + 30
while time.time() < deadline:
    modes = []
    for admin in sys.argv[1:]:
        try:
            doc = json.load(urllib.request.urlopen(f"http://{admin}/limits", timeout=1))
            modes.append(doc["rate_limits"][0]["mode"])
        except Exception:
            modes.append(None)
    if all(m == "shared" for m in modes):
        sys.exit(0)
    time.sleep(0.1)
sys.exit(f"instances not in shared mode after 30 s: {modes}")
EOF
}

upstream_port=$(free_port)
start_upstream "$upstream_port" "$LOAD_CPU"
events=$WORK/events.tsv
: >"$events"
declare -a ADMINS=()

# ---- Palisade -----------------------------------------------------------------------------------

run_palisade() {
    local i port admin poller a b
    REDIS_PORT=$(free_port)
    start_redis 1
    declare -ga PORTS=()
    for i in 1 2; do
        port=$(free_port)
        admin=127.0.0.1:$(free_port)
        mkdir -p "$WORK/palisade$i"
        write_palisade_shared_conf "$WORK/palisade$i/palisade.toml" "$port" "${admin#*:}" "$upstream_port" "$REDIS_PORT"
        "$PALISADE_BIN" validate -c "$WORK/palisade$i/palisade.toml" >/dev/null 2>&1 ||
            die "palisade validate failed: $("$PALISADE_BIN" validate -c "$WORK/palisade$i/palisade.toml" 2>&1)"
        spawn "palisade$i/palisade" "$PROXY_CPU" "$PALISADE_BIN" run -c "$WORK/palisade$i/palisade.toml"
        wait_port "$port" 15 || { cat "$WORK/palisade$i/palisade.log" >&2; die "palisade $i did not start"; }
        PORTS+=("$port")
        ADMINS+=("$admin")
    done
    wait_shared "${ADMINS[@]}" || die "the instances never reached Redis"

    log "palisade: cost run, $CALIB_RATE req/s limited + $CALIB_RATE req/s free per instance, ${CALIB}s"
    for i in 1 2; do
        curl -s -m 5 "http://${ADMINS[$((i - 1))]}/metrics" >"$WORK/palisade$i/metrics-calib-before.txt"
    done
    loadgen_bg calib1 "${PORTS[0]}" $((CALIB_RATE * 2)) "$CALIB" "lim:1:/limited/x:x-api-key=calib" "free:1:/free/x"
    a=$LAST_PID
    loadgen_bg calib2 "${PORTS[1]}" $((CALIB_RATE * 2)) "$CALIB" "lim:1:/limited/x:x-api-key=calib" "free:1:/free/x"
    b=$LAST_PID
    wait_loadgen "$a" calib1
    wait_loadgen "$b" calib2
    for i in 1 2; do
        curl -s -m 5 "http://${ADMINS[$((i - 1))]}/metrics" >"$WORK/palisade$i/metrics-calib-after.txt"
    done

    log "palisade: main run, $HALF req/s per instance, phases of ${PHASE}s (Redis up, $REDIS_FAULT, back)"
    python3 - "$WORK/limits-poll.tsv" "$((WARMUP + 3 * PHASE + 8))" "${ADMINS[@]}" <<'EOF' &
import json, sys, time, urllib.request
out, secs, admins = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
end = time.time() + secs
with open(out, "w") as f:
    while time.time() < end:
        t = time.time()
        row = [f"{t:.3f}"]
        for admin in admins:
            try:
                doc = json.load(urllib.request.urlopen(f"http://{admin}/limits", timeout=0.5))
                rl = doc["rate_limits"][0]
                store = doc.get("store") or {}
                row.append(f"{rl['mode']}:{store.get('live_instances')}")
            except Exception as e:
                row.append(f"error:{type(e).__name__}")
        f.write("\t".join(row) + "\n")
        f.flush()
        time.sleep(max(0.0, 0.1 - (time.time() - t)))
EOF
    poller=$!
    PIDS+=("$poller")
    loadgen_bg main1 "${PORTS[0]}" "$HALF" $((3 * PHASE + 5)) "lim:1:/limited/x:x-api-key=k1"
    a=$LAST_PID
    loadgen_bg main2 "${PORTS[1]}" "$HALF" $((3 * PHASE + 5)) "lim:1:/limited/x:x-api-key=k1"
    b=$LAST_PID
    sleep "$(python3 -c "print($WARMUP + 0.02 + $PHASE)")"
    printf 'redis_down\t%s\n' "$(now)" >>"$events"
    if [[ $REDIS_FAULT == kill ]]; then
        kill -KILL "$REDIS_PID"
        wait "$REDIS_PID" 2>/dev/null || true
    else
        kill -STOP "$REDIS_PID"
    fi
    sleep "$PHASE"
    printf 'redis_back\t%s\n' "$(now)" >>"$events"
    if [[ $REDIS_FAULT == kill ]]; then
        start_redis 2
    else
        kill -CONT "$REDIS_PID"
    fi
    printf 'redis_listening\t%s\n' "$(now)" >>"$events"
    wait_shared "${ADMINS[@]}" || log "warning: not back to shared mode within 30 s"
    printf 'shared_again\t%s\n' "$(now)" >>"$events"
    wait_loadgen "$a" main1
    wait_loadgen "$b" main2
    wait "$poller" 2>/dev/null || true
    for i in 1 2; do
        curl -s -m 5 "http://${ADMINS[$((i - 1))]}/metrics" >"$WORK/palisade$i/metrics-end.txt" || true
        curl -s -m 5 "http://${ADMINS[$((i - 1))]}/limits" >"$WORK/palisade$i/limits-end.json" || true
    done
}

# ---- nginx / HAProxy: two independent instances each ----------------------------------------------

run_pair() {
    local kind=$1 i dir port a b check
    local -a ports=()
    for i in 1 2; do
        dir=$WORK/$kind$i
        mkdir -p "$dir"
        port=$(free_port)
        if [[ $kind == nginx ]]; then
            write_nginx_limit_conf "$dir" "$port" "$upstream_port"
            check=$(nginx -t -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" 2>&1) || die "nginx -t failed: $check"
            spawn "$kind$i/nginx" "$PROXY_CPU" nginx -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf"
        else
            write_haproxy_limit_conf "$dir" "$port" "$upstream_port"
            check=$(haproxy -c -f "$dir/haproxy.cfg" 2>&1) || die "haproxy -c failed: $check"
            spawn "$kind$i/haproxy" "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg"
        fi
        wait_port "$port" 15 || { cat "$dir/$kind.log" >&2; die "$kind $i did not start"; }
        ports+=("$port")
    done
    log "$kind: two instances, $HALF req/s each, ${PHASE}s"
    loadgen_bg "${kind}1" "${ports[0]}" "$HALF" "$PHASE" "lim:1:/limited/x:x-api-key=k1"
    a=$LAST_PID
    loadgen_bg "${kind}2" "${ports[1]}" "$HALF" "$PHASE" "lim:1:/limited/x:x-api-key=k1"
    b=$LAST_PID
    wait_loadgen "$a" "${kind}1"
    wait_loadgen "$b" "${kind}2"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%MZ)
log "proxies: ${proxies[*]}; limit $LIMIT/s burst $BURST, offered $RATE/s; work dir $WORK"
for p in "${proxies[@]}"; do
    case $p in
        palisade) run_palisade ;;
        *) run_pair "$p" ;;
    esac
done

echo
echo "Palisade shared rate limit benchmark: $started, $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
echo "$BINARY_NOTE"
echo "redis-server $(redis-server --version 2>/dev/null | awk '{print $3}' | sed 's/v=//'); load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
pinning="proxies pinned to CPU $PROXY_CPU, loadgens + upstream + Redis to CPU $LOAD_CPU"
((PIN)) || pinning="not pinned"
echo "policy: $LIMIT/s per x-api-key, burst $BURST; offered $RATE req/s open loop ($HALF to each of two instances); phases of ${PHASE}s; redis.timeout $REDIS_TIMEOUT; $pinning"
REDIS_FAULT=$REDIS_FAULT python3 - "$WORK" "$LIMIT" "$PHASE" "${RESULTS:-}" "${proxies[@]}" <<'EOF'
import json, math, os, sys

work, limit, phase, results_file = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
proxies = sys.argv[5:]
out = {}


def load(name):
    return json.load(open(os.path.join(work, name + ".json")))


def series(doc):
    """outcome -> per-second counts of the measured run (one class)."""
    ts = doc.get("timeseries", {})
    return next(iter(ts.values())) if ts else {}


def fleet(docs):
    """Per second of the run: {outcome: count summed over the instances}, and start_unix."""
    n = min(len(next(iter(series(d).values()), [])) for d in docs)
    per_sec = [dict() for _ in range(n)]
    for d in docs:
        for k, v in series(d).items():
            for i in range(n):
                per_sec[i][k] = per_sec[i].get(k, 0) + v[i]
    return per_sec, min(d["start_unix"] for d in docs)


def rate(per_sec, lo, hi, key="200"):
    """Mean per second over the whole seconds [lo, hi)."""
    lo, hi = max(0, lo), min(len(per_sec), hi)
    if hi <= lo:
        return None, {}
    tot = {}
    for s in per_sec[lo:hi]:
        for k, v in s.items():
            tot[k] = tot.get(k, 0) + v
    return tot.get(key, 0) / (hi - lo), {k: round(v / (hi - lo), 1) for k, v in tot.items()}


def pm(x):
    return "-" if x is None else f"{x:7.0f}/s ({100 * (x - limit) / limit:+.1f}%)"


def hist_quantiles(before, after, policy="per-key"):
    """p50/p99 upper bounds (ms) of palisade_ratelimit_store_seconds between two scrapes."""
    def buckets(path):
        b = {}
        for line in open(path):
            if line.startswith("palisade_ratelimit_store_seconds_bucket") and f'policy="{policy}"' in line:
                le = line.split('le="')[1].split('"')[0]
                b[le] = b.get(le, 0) + float(line.rsplit(" ", 1)[1])
        return b
    tot = {}
    for bf, af in zip(before, after):
        b0, b1 = buckets(bf), buckets(af)
        for le, v in b1.items():
            tot[le] = tot.get(le, 0) + v - b0.get(le, 0)
    if not tot:
        return None
    items = sorted(((math.inf if le == "+Inf" else float(le)), v) for le, v in tot.items())
    n = items[-1][1]
    if n <= 0:
        return None
    q = {}
    for name, frac in (("p50", 0.5), ("p99", 0.99)):
        q[name] = next((le * 1000 for le, c in items if c >= frac * n), math.inf)
    q["count"] = n
    return q


print()
if "palisade" in proxies:
    c1, c2 = load("calib1"), load("calib2")
    print("Palisade: cost of the shared (Redis) decision, 300 req/s limited + 300 req/s free per instance:")
    for name in ("lim", "free"):
        cells = []
        for i, d in enumerate((c1, c2), 1):
            s = d["classes"][name]["status"].get("200", {})
            cells.append(f"instance {i} p50 {s.get('p50_ms', 0):.3f} p99 {s.get('p99_ms', 0):.3f} ms")
        label = "with the shared policy   " if name == "lim" else "without a policy (free)  "
        print(f"  {label} " + "; ".join(cells))
    d50 = sum(d["classes"]["lim"]["status"]["200"]["p50_ms"] - d["classes"]["free"]["status"]["200"]["p50_ms"] for d in (c1, c2)) / 2
    d99 = sum(d["classes"]["lim"]["status"]["200"]["p99_ms"] - d["classes"]["free"]["status"]["200"]["p99_ms"] for d in (c1, c2)) / 2
    h = hist_quantiles([f"{work}/palisade{i}/metrics-calib-before.txt" for i in (1, 2)],
                       [f"{work}/palisade{i}/metrics-calib-after.txt" for i in (1, 2)])
    hs = (f"p50 <= {h['p50']:g} ms, p99 <= {h['p99']:g} ms over {h['count']:.0f} decisions (bucket bounds)"
          if h else "no samples")
    print(f"  added by the policy (mean of the two instances): p50 {d50:+.3f} ms, p99 {d99:+.3f} ms")
    print(f"  palisade_ratelimit_store_seconds: {hs}")
    out["redis_cost"] = {"p50_added_ms": d50, "p99_added_ms": d99, "histogram": h}

    m1, m2 = load("main1"), load("main2")
    per_sec, t0 = fleet([m1, m2])
    ev = {}
    for line in open(f"{work}/events.tsv"):
        k, v = line.split()
        ev[k] = float(v) - t0
    down, back, shared = ev["redis_down"], ev["redis_back"], ev["shared_again"]
    # Whole seconds inside each phase, one second of margin after each transition.
    up_r, up_all = rate(per_sec, 1, math.floor(down))
    dn_r, dn_all = rate(per_sec, math.ceil(down) + 1, math.floor(back))
    af_r, af_all = rate(per_sec, math.ceil(shared) + 1, len(per_sec))
    statuses = {}
    for s in per_sec:
        for k, v in s.items():
            statuses[k] = statuses.get(k, 0) + v
    bad = {k: v for k, v in statuses.items() if k not in ("200", "429")}
    # The /limits poll: when each instance went degraded and came back.
    poll = [l.rstrip("\n").split("\t") for l in open(f"{work}/limits-poll.tsv") if l.strip()]
    def first(pred, after):
        for row in poll:
            t = float(row[0]) - t0
            if t >= after and pred(row[1:]):
                return t
        return None
    degraded_at = first(lambda ms: all(m.startswith("degraded") for m in ms), down)
    shared_at = first(lambda ms: all(m.startswith("shared") for m in ms), back)
    recovery = (shared_at - back) if shared_at is not None else None
    print()
    print(f"Palisade, 2 instances + Redis ({os.environ.get('REDIS_FAULT', 'kill')}), fleet admitted (200) per second, {limit:.0f}/s limit:")
    print(f"  Redis up        s 1-{math.floor(down)}: {pm(up_r)}   outcomes/s {up_all}")
    print(f"  Redis down      s {math.ceil(down) + 1}-{math.floor(back)}: {pm(dn_r)}   outcomes/s {dn_all}")
    print(f"  Redis back      s {math.ceil(shared) + 1}-{len(per_sec)}: {pm(af_r)}   outcomes/s {af_all}")
    print(f"  both degraded {'-' if degraded_at is None else f'{degraded_at - down:.2f} s'} after the {os.environ.get('REDIS_FAULT', 'kill')};"
          f" both shared again {'-' if recovery is None else f'{recovery:.2f} s'} after Redis came back"
          f" (listening {ev['redis_listening'] - back:.2f} s after the restart command)")
    print(f"  statuses other than 200/429 over the whole run: {bad or 'none'}")
    flaps = []
    for i in (1, 2):
        n = sum(1 for l in open(f"{work}/palisade{i}/palisade.log") if "store is down" in l)
        flaps.append(n)
    print(f"  'store is down' log lines per instance over the whole script (the fault included): {flaps}")
    print("  per second (200s, fleet): " + " ".join(str(s.get("200", 0)) for s in per_sec))
    checks = [
        ("Redis up: within +-5% of the limit", up_r is not None and abs(up_r - limit) <= 0.05 * limit),
        ("Redis down: within +-20%", dn_r is not None and abs(dn_r - limit) <= 0.20 * limit),
        ("only 200/429", not bad),
        ("shared again < 5 s", recovery is not None and recovery < 5),
        ("after: within +-5%", af_r is not None and abs(af_r - limit) <= 0.05 * limit),
    ]
    print("  targets: " + ", ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in checks))
    out["palisade"] = {"up": up_r, "down": dn_r, "after": af_r, "recovery_s": recovery,
                       "degraded_after_s": None if degraded_at is None else degraded_at - down,
                       "other_statuses": bad, "store_down_logs": flaps, "per_second_200": [s.get("200", 0) for s in per_sec]}

rows = []
for kind in proxies:
    if kind == "palisade":
        continue
    a, b = load(kind + "1"), load(kind + "2")
    per_sec, _ = fleet([a, b])
    r, allr = rate(per_sec, 1, len(per_sec))
    each = []
    for d in (a, b):
        s = d["classes"]["lim"]["status"]
        each.append(s.get("200", {}).get("count", 0) / d["duration_s"])
    rows.append((kind, r, each, allr))
    out[kind] = {"fleet": r, "instances": each, "outcomes": allr}
if rows:
    print()
    print("nginx and HAProxy, 2 instances each with its own limit (no shared count):")
    for kind, r, each, allr in rows:
        print(f"  {kind:<8} fleet {pm(r)}   instances {each[0]:.0f}/s + {each[1]:.0f}/s   outcomes/s {allr}")
if results_file:
    json.dump(out, open(results_file, "w"), indent=1)
EOF
if [[ -n ${KEEP_WORK:-} ]]; then echo; echo "work dir kept: $WORK"; fi
