#!/usr/bin/env bash
# Config reloads and binary upgrades under load: Palisade, nginx and HAProxy side by side.
#
#   wrk (CPU 0) -> proxy under test (CPU 1, one worker) -> nginx "hello" upstreams u1, u2 (CPU 0)
#
# Two valid configs per proxy: variant a (one endpoint, u1; a marker route /a) and variant b (two
# endpoints, u1 and u2; a marker route /b instead of /a). Besides those, both send everything to
# the upstreams as in compare.sh. Five invalid configs per proxy, each with one mistake.
#
# reload run, per proxy (fresh proxy, WARMUP s of unmeasured load, then one measured wrk run):
#   from LEAD s in, every INTERVAL s, apply the other variant, RELOADS times (b, a, b, ...), and
#   after each one probe from outside (new connections to /a and /b) until the new variant
#   serves; then push the INVALID bad configs the same way, and check the old variant still serves.
#     Palisade, twice: rewrite the file + SIGHUP ("signal"), and POST /config ("api"). Afterwards
#       check that the running version did not change, that palisade_config_reloads_total
#       {result="failure"} grew by INVALID, and that /config/history shows INVALID rejected entries.
#     nginx: rewrite the file + SIGHUP to the master (what `nginx -s reload` sends).
#     HAProxy: master-worker mode (-W -S master socket); rewrite the file + SIGUSR2 to the master.
# upgrade run, per proxy: fresh proxy, warm-up, measured wrk run of UPGRADE_DURATION s; at
#   UPGRADE_AT s, replace the running process with a new one:
#     Palisade: the binary file is replaced by a fresh copy (same bytes, new inode, as a deploy
#       would), then SIGUSR2; the new process takes the listening sockets, the old one drains and
#       exits. The new process is found by its /server_info pid.
#     nginx: the documented on-the-fly upgrade: USR2 to the master (a new master and workers start
#       on the inherited sockets), WINCH to the old master (its workers stop gracefully), QUIT to it.
#     HAProxy: SIGUSR2 to the master: in master-worker mode its reload is its upgrade (the master
#       re-executes itself; a new worker takes the sockets; the old worker finishes and exits).
#   Reports when the new process served and when the old one was gone, and its exit status.
#
# Prints one table per run type and PASS/FAIL lines for the acceptance points (zero errors).
#
# Environment:
#   RELOADS=20          valid reloads per reload run (alternating b, a, ...)
#   INVALID=5           invalid configs pushed after them
#   INTERVAL=0.5        seconds between reload steps
#   LEAD=1              seconds of measured load before the first reload
#   TAIL=2              seconds of measured load after the last step (the wrk run is
#                       LEAD + (RELOADS + INVALID) * INTERVAL + TAIL long, rounded up)
#   UPGRADE_DURATION=8  seconds of the measured wrk run in the upgrade run
#   UPGRADE_AT=2        seconds into it when the upgrade starts
#   DRAIN_MAX=40        how long to wait for the old process to go (Palisade's default
#                       drain_timeout is 30 s)
#   WARMUP=1            seconds of unmeasured wrk before each measured run
#   CONNECTIONS=50      wrk connections (wrk -t1 --timeout 5s)
#   HAPROXY_IDLE_CLOSE=1  HAProxy gets `option idle-close-on-response` (2.6+): a stopping worker
#                       closes an idle keep-alive connection after its next response instead of at
#                       once, which races with that request (0: lib.sh's config as it is). nginx has
#                       no such option: its old workers close idle keep-alive connections at once.
#   WAIT_QUIET=0        before each run, wait up to this many seconds for other processes to use
#                       < 10% of a core (for shared machines; 0 = do not wait)
#   RUNS="reload upgrade"                  which run types
#   PROXIES="palisade nginx haproxy"       subset / order (default: those installed)
#   PALISADE_BIN=target/release/palisade   (relative to the crate root; copied before use)
#   PALISADE_ENV="VAR=value ..."           extra environment for Palisade
#   RESULTS=FILE        also write the per-run TSV there
#   KEEP_WORK=1         keep the temp dir: configs and variants, proxy logs, raw wrk output,
#                       driver.json / upgrade.json per run (every reload with its timing)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

RELOADS=${RELOADS:-20}
INVALID=${INVALID:-5}
INTERVAL=${INTERVAL:-0.5}
LEAD=${LEAD:-1}
TAIL=${TAIL:-2}
UPGRADE_DURATION=${UPGRADE_DURATION:-8}
UPGRADE_AT=${UPGRADE_AT:-2}
DRAIN_MAX=${DRAIN_MAX:-40}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-50}
HAPROXY_IDLE_CLOSE=${HAPROXY_IDLE_CLOSE:-1}
WAIT_QUIET=${WAIT_QUIET:-0}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
LOAD_CPU=0
PROXY_CPU=1
WRK_TIMEOUT=5s
MAX_CONNS=4096

for tool in wrk python3 nginx; do
    have "$tool" || die "$tool is required (apt-get install -y wrk nginx-light python3)"
done
for v in RELOADS INVALID UPGRADE_DURATION UPGRADE_AT DRAIN_MAX WARMUP CONNECTIONS HAPROXY_IDLE_CLOSE WAIT_QUIET; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
for v in INTERVAL LEAD TAIL; do
    [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$v must be a number of seconds"
done
((INVALID <= 5)) || die "INVALID is at most 5 (there are five invalid configs per proxy)"
((UPGRADE_AT < UPGRADE_DURATION)) || die "UPGRADE_AT must be below UPGRADE_DURATION"
read -r -a runs <<<"${RUNS:-reload upgrade}"
for r in "${runs[@]}"; do
    [[ $r == reload || $r == upgrade ]] || die "unknown run type $r (known: reload upgrade)"
done
# nginx re-executes argv[0] on USR2 with execve (no PATH search): start it by its full path.
NGINX=$(command -v nginx)

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
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Processes that the proxies start themselves (Palisade's and nginx's successors) are not our
# children; reload_helper.py lists them in RUN/extra-pids. Kill those too on exit, if they are
# still ours (their command line names $WORK).
reload_cleanup() {
    local f pid
    if [[ -n $WORK && -d $WORK/runs ]]; then
        for f in "$WORK"/runs/*/extra-pids; do
            [[ -f $f ]] || continue
            while read -r pid; do
                [[ $pid =~ ^[0-9]+$ ]] && ours "$pid" && PIDS+=("$pid")
            done <"$f"
        done
    fi
    bench_cleanup
}
trap reload_cleanup EXIT

# ours PID: PID runs and its command line names our work dir.
ours() {
    alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$WORK"
}


helper() { on_cpu "$LOAD_CPU" python3 "$here/reload_helper.py" "$@"; }

# ---- upstreams ------------------------------------------------------------------------------------

U1=$(free_port)
U2=$(free_port)
for u in 1 2; do
    port_var=U$u
    write_upstream_conf "$WORK/up$u/upstream.conf" "${!port_var}"
    spawn "up$u/upstream" "$LOAD_CPU" nginx -p "$WORK/up$u" -e "$WORK/up$u/upstream-error.log" \
        -c "$WORK/up$u/upstream.conf"
    wait_port "${!port_var}" 10 || { cat "$WORK/up$u/upstream.log" >&2; die "upstream u$u did not start"; }
done

# ---- one proxy ------------------------------------------------------------------------------------

# prepare KIND RUN_DIR PORT: lib.sh's config for KIND as the base, the variants from it (RUN/v/),
# each one checked with the proxy's own validator, and variant a as the live config. Sets ADMIN
# (Palisade's admin address) and LIVE (the config file the proxy reads).
ADMIN=""
LIVE=""
prepare() {
    local kind=$1 run=$2 port=$3 ext f out
    ADMIN=""
    case $kind in
        palisade)
            ADMIN=127.0.0.1:$(free_port)
            write_palisade_conf "$run/base.toml" "$port" "${ADMIN#*:}" "$U1" "$MAX_CONNS"
            helper variants palisade "$run/base.toml" "$run/v" "$U1" "$U2" "$run/state"
            ext=toml
            ;;
        nginx)
            write_nginx_proxy_conf "$run/base.conf" "$port" "$U1" "$MAX_CONNS"
            helper variants nginx "$run/base.conf" "$run/v" "$U1" "$U2"
            ext=conf
            ;;
        haproxy)
            write_haproxy_conf "$run/base.cfg" "$port" "$U1" "$MAX_CONNS"
            if ((HAPROXY_IDLE_CLOSE)); then
                sed -i 's/^    option http-keep-alive$/&\n    option idle-close-on-response/' "$run/base.cfg"
                grep -q 'idle-close-on-response' "$run/base.cfg" || die "cannot add idle-close-on-response"
            fi
            helper variants haproxy "$run/base.cfg" "$run/v" "$U1" "$U2"
            ext=cfg
            ;;
        *) die "unknown proxy $kind" ;;
    esac
    LIVE=$run/$kind.$ext
    for f in "$run"/v/*."$ext"; do
        cp "$f" "$LIVE"
        if out=$(validate "$kind" "$run" 2>&1); then
            [[ $f == */bad* ]] && die "$kind accepts the invalid $f: $out"
        else
            [[ $f == */bad* ]] || die "$kind refuses its valid variant $f: $out"
        fi
    done
    cp "$run/v/a.$ext" "$LIVE"
}

# validate KIND RUN_DIR: the proxy's own check of $LIVE.
validate() {
    case $1 in
        palisade) "$PALISADE_BIN" validate -c "$LIVE" ;;
        nginx) "$NGINX" -t -p "$2" -e "$2/nginx-validate.log" -c "$LIVE" ;;
        haproxy) haproxy -c -f "$LIVE" ;;
    esac
}

# launch KIND RUN_DIR PORT: starts the proxy on $LIVE; sets LAST_PID (Palisade's process, nginx's
# or HAProxy's master).
launch() {
    local kind=$1 run=$2 port=$3 rel=${2#"$WORK"/}
    case $kind in
        palisade)
            local -a penv=()
            read -r -a penv <<<"${PALISADE_ENV:-}"
            spawn "$rel/palisade" "$PROXY_CPU" env "${penv[@]}" "$PALISADE_BIN" run -c "$LIVE"
            ;;
        nginx)
            spawn "$rel/nginx" "$PROXY_CPU" "$NGINX" -p "$run" -e "$run/nginx-error.log" -c "$LIVE"
            ;;
        haproxy)
            spawn "$rel/haproxy" "$PROXY_CPU" haproxy -W -db -S "$run/master.sock" -f "$LIVE"
            ;;
    esac
    if ! wait_port "$port" 15; then
        cat "$run/$kind.log" >&2 || true
        die "$kind did not start listening on $port (log above)"
    fi
}

# wrk_run RUN_DIR SECONDS URL: the measured run, raw output in RUN/wrk.txt.
wrk_run() {
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${2}s" --timeout "$WRK_TIMEOUT" --latency "$3" \
        >"$1/wrk.txt" 2>&1 || log "warning: wrk exited with an error ($1/wrk.txt)"
}

# warm_up URL: WAIT_QUIET (if set), then unmeasured load.
warm_up() {
    if ((WAIT_QUIET > 0)); then wait_quiet "$WAIT_QUIET" || true; fi
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$1" >/dev/null 2>&1 || true
}

# record KIND RUN_NAME RUN_DIR: appends the run's wrk figures to $results.
record() {
    if python3 "$here/faults_summary.py" parse "$3/wrk.txt" "$1" "$2" >>"$results"; then
        log "$(tail -n 1 "$results")"
    else
        log "warning: no wrk result for $1/$2 (output above); going on"
    fi
}

# stop_extra RUN_DIR: stops the successors listed in RUN/extra-pids.
stop_extra() {
    local pid
    [[ -f $1/extra-pids ]] || return 0
    while read -r pid; do
        if [[ $pid =~ ^[0-9]+$ ]] && ours "$pid"; then stop "$pid"; fi
    done <"$1/extra-pids"
}

# reload_run KIND MODE: MODE is signal or api (api: Palisade only).
reload_run() {
    local kind=$1 mode=$2 run port pid driver url
    run=$WORK/runs/$kind-reload-$mode
    mkdir -p "$run"
    port=$(free_port)
    prepare "$kind" "$run" "$port"
    launch "$kind" "$run" "$port"
    pid=$LAST_PID
    url="http://127.0.0.1:$port/"
    warm_up "$url"

    local dmode=$kind
    [[ $kind == palisade ]] && dmode=palisade-$mode
    helper drive "$dmode" "$port" "$pid" "${ADMIN:--}" "$LIVE" "$run/v" "$RELOADS" "$INVALID" \
        "$INTERVAL" "$LEAD" "$run/driver.json" &
    driver=$!
    PIDS+=("$driver")
    wrk_run "$run" "$RELOAD_SECONDS" "$url"
    wait "$driver" || log "warning: the reload driver failed ($kind $mode)"

    if [[ $kind == haproxy && -S $run/master.sock ]]; then
        python3 - "$run/master.sock" >"$run/show-proc.txt" 2>&1 <<'EOF' || true
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"show proc\n")
s.shutdown(socket.SHUT_WR)
while chunk := s.recv(65536):
    sys.stdout.write(chunk.decode(errors="replace"))
EOF
    fi
    alive "$pid" || log "warning: $kind exited during the run (see $run/$kind.log)"
    stop "$pid"
    record "$kind" "reload-$mode" "$run"
}

# upgrade_run KIND
upgrade_run() {
    local kind=$1 run port pid driver url code
    run=$WORK/runs/$kind-upgrade
    mkdir -p "$run"
    port=$(free_port)
    prepare "$kind" "$run" "$port"
    if [[ $kind == nginx ]]; then
        # nginx ignores USR2 while the parent it started under is alive (with `daemon off`, that is
        # this script), so the upgrade run lets it daemonize; the master is then found by its pid file.
        sed -i 's/^daemon off;$/daemon on;/' "$LIVE"
        grep -q '^daemon on;$' "$LIVE" || die "cannot switch nginx to daemon mode in $LIVE"
    fi
    launch "$kind" "$run" "$port"
    pid=$LAST_PID
    if [[ $kind == nginx ]]; then
        wait "$pid" || die "nginx did not daemonize (see $run/nginx.log)"
        for _ in $(seq 50); do
            [[ -s $run/nginx.pid ]] && break
            sleep 0.1
        done
        pid=$(<"$run/nginx.pid")
        [[ $pid =~ ^[0-9]+$ ]] || die "no nginx master pid in $run/nginx.pid"
        printf '%s\n' "$pid" >>"$run/extra-pids"
    fi
    url="http://127.0.0.1:$port/"
    warm_up "$url"

    helper upgrade "$kind" "$port" "$pid" "${ADMIN:--}" "$run" "$UPGRADE_AT" "$DRAIN_MAX" \
        "$run/upgrade.json" "$PALISADE_BIN" &
    driver=$!
    PIDS+=("$driver")
    wrk_run "$run" "$UPGRADE_DURATION" "$url"
    wait "$driver" || log "warning: the upgrade driver failed ($kind)"

    # Palisade's old process is our child: its exit status says how it ended. nginx's old master
    # is a daemon, and HAProxy's master stays (it re-executed itself; its old worker is its child).
    code=-
    if [[ $kind == palisade ]]; then
        if alive "$pid"; then
            code="still running"
            stop "$pid"
        else
            code=0
            wait "$pid" 2>/dev/null || code=$?
        fi
    elif [[ $kind == haproxy ]]; then
        stop "$pid"
    fi
    printf '%s\n' "$code" >"$run/old-exit"
    stop_extra "$run"
    record "$kind" upgrade "$run"
}

# ---- main -----------------------------------------------------------------------------------------

RELOAD_SECONDS=$(awk -v l="$LEAD" -v n="$((RELOADS + INVALID))" -v i="$INTERVAL" -v t="$TAIL" \
    'BEGIN { s = l + n * i + t; printf "%d\n", (s == int(s)) ? s : int(s) + 1 }')

results=$WORK/results.tsv
printf 'proxy\tscenario\trequests\trps\tnon2xx\tconnect\tread\twrite\ttimeout\tp50_ms\tp99_ms\tmax_ms\n' \
    >"$results"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%MZ)
log "proxies: ${proxies[*]}; runs: ${runs[*]}; upstreams u1 127.0.0.1:$U1, u2 127.0.0.1:$U2; work dir $WORK"
log "proxy	run	requests	rps	non2xx	connect	read	write	timeout	p50_ms	p99_ms	max_ms"
for r in "${runs[@]}"; do
    for kind in "${proxies[@]}"; do
        if [[ $r == reload ]]; then
            reload_run "$kind" signal
            if [[ $kind == palisade ]]; then reload_run palisade api; fi
        else
            upgrade_run "$kind"
        fi
    done
done

if [[ -n ${RESULTS:-} ]]; then cp "$results" "$RESULTS"; fi
echo
echo "Palisade reload/upgrade benchmark: $started, $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
echo "$BINARY_NOTE"
echo "load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
pinning="proxy pinned to CPU $PROXY_CPU, wrk+upstreams to CPU $LOAD_CPU"
((PIN)) || pinning="not pinned"
echo "wrk -t1 -c$CONNECTIONS --timeout $WRK_TIMEOUT after ${WARMUP}s warm-up; reload runs ${RELOAD_SECONDS}s: $RELOADS reloads then $INVALID invalid configs every ${INTERVAL}s from ${LEAD}s; upgrade runs ${UPGRADE_DURATION}s, upgrade at ${UPGRADE_AT}s; $pinning"
python3 "$here/reload_helper.py" report "$WORK"
if [[ -n ${KEEP_WORK:-} ]]; then echo; echo "work dir kept: $WORK"; fi
