#!/usr/bin/env bash
# Throughput/latency of Palisade against nginx and HAProxy as reverse proxies, one core each.
#
#   wrk (CPU 0) -> proxy (CPU 1, one worker) -> nginx "hello" upstream (CPU 0)
#
# Runs "direct" (wrk -> upstream) and every installed proxy in interleaved rounds
# (direct, palisade, nginx, haproxy, direct, palisade, ...) so that machine noise hits all of them
# alike, then prints the median of the rounds per target and Palisade's ratios.
#
# Environment:
#   ROUNDS=3            rounds (each target runs once per round)
#   DURATION=10         seconds per measured wrk run
#   WARMUP=2            seconds of unmeasured wrk before each measured run
#   CONNECTIONS=50      wrk connections (wrk uses 1 thread)
#   PALISADE_BIN=target/release/palisade   (relative to the crate root; copied before use)
#   PALISADE_ENV="VAR=value ..."           extra environment for Palisade (e.g. MIMALLOC_* knobs)
#   PROXIES="palisade nginx haproxy"       subset / order to run
#   WAIT_QUIET=0        before each run, wait up to this many seconds for other processes to use
#                       < 10% of a core (for shared machines; 0 = do not wait)
#   RESULTS=FILE        also write the per-run TSV there
#   KEEP_WORK=1         keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
LOAD_CPU=0
PROXY_CPU=1

for tool in wrk taskset python3 nginx; do
    have "$tool" || die "$tool is required (apt-get install -y wrk nginx-light util-linux python3)"
done
(($(nproc) >= 2)) || die "needs at least 2 CPUs (proxy on CPU 1, load and upstream on CPU 0)"

bench_init
read -r -a proxies <<<"${PROXIES:-$(available_proxies)}"
((${#proxies[@]} > 0)) || die "no proxy to test"
pin_palisade
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

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

# busy_ticks: user+nice+system of all CPUs, and steal, from /proc/stat (clock ticks).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4, $9}' /proc/stat; }

# children_ticks: CPU time of this shell's waited-for children (`times`, second line), in ticks.
# `times` must run in this shell (not in $(...)), hence the file.
children_ticks() {
    times >"$WORK/times"
    awk -v hz="$clk_tck" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d\n", t * hz + 0.5
    }' "$WORK/times"
}

upstream_port=$(free_port)
start_upstream "$upstream_port" "$LOAD_CPU"
upstream_pid=$LAST_PID

results=$WORK/results.tsv
printf 'round\ttarget\trps\tp50_ms\tp99_ms\tcpu_pct\terrors\tnoise_pct\n' >"$results"

# run_one ROUND TARGET: one warm-up and one measured wrk run against TARGET, appended to $results.
# cpu_pct is the proxy's CPU time over the run (100 = one core). noise_pct estimates other work on
# the machine during the run: all CPU time (user+system, both cores, plus steal) minus what the
# proxy, the upstream and wrk used, in % of one core. Interrupt/softirq time is left out on both sides.
run_one() {
    local round=$1 target=$2 port pid="" out cpu="-"
    local p0=0 p1=0 u0 u1 w0 w1 b0 b1 s0 s1 noise
    if [[ $target == direct ]]; then
        port=$upstream_port
    else
        port=$(free_port)
        start_proxy "$target" "$port" "$upstream_port" "$PROXY_CPU" 4096
        pid=$LAST_PID
    fi
    local url="http://127.0.0.1:$port/"
    if ((${WAIT_QUIET:-0} > 0)); then wait_quiet "$WAIT_QUIET" || true; fi
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
    out=$WORK/wrk-$target-$round.txt
    if [[ -n $pid ]]; then p0=$(cpu_ticks "$pid"); fi
    u0=$(cpu_ticks "$upstream_pid")
    children_ticks >"$WORK/w0"
    read -r b0 s0 < <(busy_ticks)
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$out"
    read -r b1 s1 < <(busy_ticks)
    children_ticks >"$WORK/w1"
    u1=$(cpu_ticks "$upstream_pid")
    if [[ -n $pid ]]; then
        p1=$(cpu_ticks "$pid")
        cpu=$(((p1 - p0) * 100 / (clk_tck * DURATION)))
        stop "$pid"
    fi
    w0=$(<"$WORK/w0") w1=$(<"$WORK/w1")
    noise=$(((b1 - b0 + s1 - s0 - (p1 - p0) - (u1 - u0) - (w1 - w0)) * 100 / (clk_tck * DURATION)))
    ((noise < 0)) && noise=0
    python3 "$here/wrk_parse.py" "$out" "$round" "$target" "$cpu" "$noise" >>"$results"
    log "$(tail -n 1 "$results")"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "upstream: nginx on 127.0.0.1:$upstream_port (CPU $LOAD_CPU); proxies on CPU $PROXY_CPU"
log "rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS proxies=${proxies[*]}"
log "round	target	rps	p50_ms	p99_ms	cpu_pct	errors	noise_pct"
for round in $(seq "$ROUNDS"); do
    for target in direct "${proxies[@]}"; do
        run_one "$round" "$target"
    done
done

if [[ -n ${RESULTS:-} ]]; then cp "$results" "$RESULTS"; fi
echo
echo "Palisade benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
echo "$BINARY_NOTE"
echo "load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg) (anything well above ~1.5 means other work shared the cores)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds, median per target; proxy pinned to CPU $PROXY_CPU, wrk+upstream to CPU $LOAD_CPU"
python3 "$here/summarize.py" "$results"
