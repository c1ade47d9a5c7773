# shellcheck shell=bash
# Shared helpers for bench/compare.sh and bench/idle_memory.sh (sourced, not run).
#
# Everything lives under $WORK (a mktemp dir); every process started here is recorded in PIDS and
# killed by bench_cleanup, which the callers install as an EXIT trap.

PIDS=()
WORK=""

bench_init() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/palisade-bench.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# alive PID: true while PID runs (a zombie, exited but not yet reaped, counts as gone).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

bench_cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded wait (2 s), then SIGKILL whatever is left.
        for i in 1 2 3 4 5 6 7 8 9 10; do
            alive "$pid" || break
            sleep 0.2
            if ((i == 10)); then kill -KILL "$pid" 2>/dev/null || true; fi
        done
    done
    if [[ -n $WORK && -d $WORK && -z ${KEEP_WORK:-} ]]; then
        rm -rf -- "$WORK"
    fi
}

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# free_port: prints a currently free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# wait_port PORT [SECONDS]: waits until something accepts on 127.0.0.1:PORT.
wait_port() {
    local port=$1 deadline=$((SECONDS + ${2:-10}))
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# start NAME CPU CMD...: starts CMD pinned to CPU in the background, logs to $WORK/NAME.log,
# records its pid in PIDS and in the global LAST_PID.
LAST_PID=""
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# stop PID: SIGTERM, then SIGKILL after 5 s; removes nothing from PIDS (kill on a dead pid is harmless).
stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        alive "$pid" || break
        sleep 0.1
        if ((i == 50)); then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    wait "$pid" 2>/dev/null || true
}

# tree_rss_kib PID: VmRSS (KiB) of PID plus its direct children (nginx master + workers).
tree_rss_kib() {
    local pid=$1 total=0 p rss
    for p in "$pid" $(pgrep -P "$pid" || true); do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${rss:-0}))
    done
    echo "$total"
}

# spawn NAME CPU CMD... (needs PIN): `start` (pinned, log in $WORK/NAME.log, pid in PIDS and LAST_PID),
# or the same without taskset.
spawn() {
    if ((PIN)); then
        start "$@"
        return
    fi
    local name=$1
    shift 2
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# on_cpu CPU CMD...: runs CMD in the foreground, pinned when pinning is on (`PIN=1`, the scripts' default when taskset exists).
on_cpu() {
    local cpu=$1
    shift
    if ((PIN)); then taskset -c "$cpu" "$@"; else "$@"; fi
}

have() { command -v "$1" >/dev/null 2>&1; }

# wait_quiet MAX_SECONDS: between runs (nothing of ours busy), waits until the machine's CPU use over
# a 2 s window is under 10% of one core, for at most MAX_SECONDS. Returns 1 if it never got quiet.
wait_quiet() {
    local max=$1 deadline b0 b1 hz pct
    hz=$(getconf CLK_TCK)
    deadline=$((SECONDS + max))
    while :; do
        b0=$(awk '/^cpu / {print $2 + $3 + $4 + $9}' /proc/stat)
        sleep 2
        b1=$(awk '/^cpu / {print $2 + $3 + $4 + $9}' /proc/stat)
        pct=$(((b1 - b0) * 100 / (2 * hz)))
        ((pct < 10)) && return 0
        if ((SECONDS >= deadline)); then
            log "note: the machine stayed busy (${pct}% of a core used by others); measuring anyway"
            return 1
        fi
    done
}

# nofile_limit: the hard RLIMIT_NOFILE (65536 when unlimited), for worker_rlimit_nofile.
nofile_limit() {
    local n
    n=$(ulimit -Hn)
    [[ $n == unlimited ]] && n=65536
    echo "$n"
}

# ---- configs --------------------------------------------------------------------------------------

# write_upstream_conf FILE PORT: nginx answering 200 "hello\n", keep-alive without a request cap.
write_upstream_conf() {
    local file=$1 port=$2 dir
    dir=$(dirname "$file")
    mkdir -p "$dir/upstream-tmp"
    cat >"$file" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $(nofile_limit);
pid $dir/upstream.pid;
error_log $dir/upstream-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/upstream-tmp/body;
    proxy_temp_path $dir/upstream-tmp/proxy;
    fastcgi_temp_path $dir/upstream-tmp/fastcgi;
    uwsgi_temp_path $dir/upstream-tmp/uwsgi;
    scgi_temp_path $dir/upstream-tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { return 200 "hello\n"; }
    }
}
EOF
}

# write_nginx_proxy_conf FILE PORT UPSTREAM_PORT MAX_CONNS
# worker_connections counts client and upstream connections together, and nginx closes idle
# keep-alive clients when it runs short ("reusing connections"), so it gets twice MAX_CONNS.
write_nginx_proxy_conf() {
    local file=$1 port=$2 up=$3 conns=$(($4 * 2)) dir
    dir=$(dirname "$file")
    mkdir -p "$dir/nginx-tmp"
    cat >"$file" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $(nofile_limit);
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    client_body_temp_path $dir/nginx-tmp/body;
    proxy_temp_path $dir/nginx-tmp/proxy;
    fastcgi_temp_path $dir/nginx-tmp/fastcgi;
    uwsgi_temp_path $dir/nginx-tmp/uwsgi;
    scgi_temp_path $dir/nginx-tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    upstream backend {
        server 127.0.0.1:$up;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
}

# write_haproxy_conf FILE PORT UPSTREAM_PORT MAX_CONNS
write_haproxy_conf() {
    local file=$1 port=$2 up=$3 conns=$4 dir
    dir=$(dirname "$file")
    cat >"$file" <<EOF
global
    nbthread 1
    maxconn $conns
    # The container's hard RLIMIT_NOFILE may be below HAProxy's estimate (2 x maxconn); idle client
    # connections need only one descriptor each, so run with what there is instead of refusing.
    no strict-limits
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 10s

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    server up1 127.0.0.1:$up maxconn 10000
EOF
}

# write_palisade_conf FILE PORT ADMIN_PORT UPSTREAM_PORT MAX_CONNS
write_palisade_conf() {
    local file=$1 port=$2 admin=$3 up=$4 conns=$5
    cat >"$file" <<EOF
[admin]
listen = "127.0.0.1:$admin"

[runtime]
workers = 1

[log]
level = "warn"

[access_log]
enabled = false

[listeners.bench]
listen = "127.0.0.1:$port"
max_connections = $conns
idle_timeout = "300s"

[[routes]]
name = "all"
match = { path_prefix = "/" }
cluster = "up"

[clusters.up]
endpoints = ["127.0.0.1:$up"]
EOF
}

# start_proxy KIND PORT UPSTREAM_PORT CPU MAX_CONNS: starts palisade|nginx|haproxy; sets LAST_PID.
start_proxy() {
    local kind=$1 port=$2 up=$3 cpu=$4 conns=$5
    case $kind in
        palisade)
            local admin
            admin=$(free_port)
            write_palisade_conf "$WORK/palisade.toml" "$port" "$admin" "$up" "$conns"
            # PALISADE_ENV: extra VAR=value words for Palisade's environment (e.g. allocator knobs).
            local -a penv=()
            read -r -a penv <<<"${PALISADE_ENV:-}"
            start palisade "$cpu" env "${penv[@]}" "$PALISADE_BIN" run -c "$WORK/palisade.toml"
            ;;
        nginx)
            write_nginx_proxy_conf "$WORK/nginx.conf" "$port" "$up" "$conns"
            start nginx "$cpu" nginx -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf"
            ;;
        haproxy)
            write_haproxy_conf "$WORK/haproxy.cfg" "$port" "$up" "$conns"
            start haproxy "$cpu" haproxy -db -f "$WORK/haproxy.cfg"
            ;;
        *) die "unknown proxy $kind" ;;
    esac
    if ! wait_port "$port" 15; then
        log "--- $kind log:"
        cat "$WORK/$kind.log" >&2 || true
        die "$kind did not start listening on $port"
    fi
}

# start_upstream PORT CPU: the nginx "hello" upstream; sets LAST_PID.
start_upstream() {
    local port=$1 cpu=$2
    mkdir -p "$WORK/upstream"
    write_upstream_conf "$WORK/upstream/upstream.conf" "$port"
    start upstream "$cpu" nginx -p "$WORK/upstream" -e "$WORK/upstream/upstream-error.log" \
        -c "$WORK/upstream/upstream.conf"
    wait_port "$port" 10 || { cat "$WORK/upstream.log" >&2; die "upstream did not start"; }
}

# pin_palisade: copies $PALISADE_BIN into $WORK and points PALISADE_BIN at the copy, so that a
# `cargo build` during the run (the binary is shared with whoever else builds) cannot switch binaries
# between rounds. Sets BINARY_NOTE to say which binary was measured.
# shellcheck disable=SC2034  # read by the scripts that source this file
BINARY_NOTE=""
pin_palisade() {
    [[ -x $PALISADE_BIN ]] || return 0
    local src=$PALISADE_BIN
    cp "$src" "$WORK/palisade-bin"
    PALISADE_BIN=$WORK/palisade-bin
    # shellcheck disable=SC2034
    BINARY_NOTE="palisade binary: $src (built $(date -u -r "$src" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$PALISADE_BIN" | cut -c1-16))"
    if [[ -n ${PALISADE_ENV:-} ]]; then BINARY_NOTE+=", run with PALISADE_ENV=\"$PALISADE_ENV\""; fi
}

# available_proxies: prints the proxies that can run here, noting the ones skipped.
available_proxies() {
    local out=()
    if [[ -x $PALISADE_BIN ]]; then out+=(palisade); else log "note: skipping palisade ($PALISADE_BIN not found; run cargo build --release)"; fi
    if have nginx; then out+=(nginx); else log "note: skipping nginx (not installed: apt-get install -y nginx-light)"; fi
    if have haproxy; then out+=(haproxy); else log "note: skipping haproxy (not installed: apt-get install -y haproxy)"; fi
    echo "${out[@]}"
}
