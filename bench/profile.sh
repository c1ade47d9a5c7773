#!/usr/bin/env bash
# Where the CPU goes, per request: samples each proxy with `perf record` while wrk loads it (same
# topology as compare.sh: proxy alone on CPU 1, wrk + upstream on CPU 0), then prints CPU
# microseconds per request (kernel / user) and the symbols where Palisade spends more than the
# cheapest of nginx and HAProxy. With CALLGRAPH=1 it also records Palisade with DWARF call graphs
# and leaves the file for `perf report`.
#
# Needs `perf` (software cpu-clock events are enough; hardware counters are not used).
#
# Environment:
#   SECONDS_RECORDED=6  seconds of sampling (wrk runs 4 s longer around it)
#   FREQ=4999           sampling frequency (Hz)
#   CONNECTIONS=50      wrk connections
#   PALISADE_BIN=target/release/palisade   (relative to the crate root; copied before use)
#   PALISADE_ENV="VAR=value ..."           extra environment for Palisade
#   PROXIES="palisade nginx haproxy"
#   CALLGRAPH=0         1: also record Palisade with call graphs into OUT/palisade-callgraph.data
#   OUT=DIR             keep perf data there (default: a temp dir removed at exit)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

SECONDS_RECORDED=${SECONDS_RECORDED:-6}
FREQ=${FREQ:-4999}
CONNECTIONS=${CONNECTIONS:-50}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
LOAD_CPU=0
PROXY_CPU=1

for tool in perf wrk taskset python3 nginx; do
    have "$tool" || die "$tool is required (apt-get install -y linux-perf wrk nginx-light)"
done

bench_init
read -r -a proxies <<<"${PROXIES:-$(available_proxies)}"
((${#proxies[@]} > 0)) || die "no proxy to test"
pin_palisade
perf_dir=${OUT:-$WORK/perf}
mkdir -p "$perf_dir"

upstream_port=$(free_port)
start_upstream "$upstream_port" "$LOAD_CPU"

# record KIND FILE [perf options...]: loads KIND with wrk and samples it for SECONDS_RECORDED.
record() {
    local kind=$1 file=$2 port pid target wrk_pid
    shift 2
    port=$(free_port)
    start_proxy "$kind" "$port" "$upstream_port" "$PROXY_CPU" 4096
    pid=$LAST_PID
    target=$pid
    # nginx: sample the worker, not the master.
    if [[ $kind == nginx ]]; then target=$(pgrep -P "$pid" | head -n 1); fi
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$((SECONDS_RECORDED + 4))s" \
        "http://127.0.0.1:$port/" >"$perf_dir/$kind.wrk" &
    wrk_pid=$!
    sleep 2
    perf record -e cpu-clock -F "$FREQ" "$@" -p "$target" -o "$file" -- sleep "$SECONDS_RECORDED" \
        >"$perf_dir/$kind.perf.log" 2>&1
    wait "$wrk_pid"
    awk '/Requests\/sec/ {print $2}' "$perf_dir/$kind.wrk" >"$perf_dir/$kind.rps"
    stop "$pid"
}

for kind in "${proxies[@]}"; do
    log "recording $kind..."
    record "$kind" "$perf_dir/$kind.data"
done
echo "CPU per request, $(date -u +%Y-%m-%dT%H:%MZ), wrk -c$CONNECTIONS, ${SECONDS_RECORDED}s at ${FREQ} Hz"
[[ -n $BINARY_NOTE ]] && echo "$BINARY_NOTE"
python3 "$here/perf_compare.py" "$FREQ" "$SECONDS_RECORDED" "$perf_dir" "${proxies[@]}"

if [[ ${CALLGRAPH:-0} == 1 && " ${proxies[*]} " == *" palisade "* ]]; then
    log "recording palisade with call graphs..."
    record palisade "$perf_dir/palisade-callgraph.data" --call-graph dwarf,32768
    echo
    echo "call graphs: perf report -i $perf_dir/palisade-callgraph.data --no-children"
    [[ -n ${OUT:-} ]] || echo "(set OUT=DIR to keep the file; this temp dir is removed now)"
fi
