#!/usr/bin/env bash
# What N idle keep-alive client connections cost each proxy in resident memory.
#
# For each proxy (Palisade, nginx, HAProxy; one worker each, pinned to CPU 1, in front of the nginx
# "hello" upstream on CPU 0): start it, send a few requests, read VmRSS (before); open N client
# connections that each send one request, read the answer and then idle (bench/idle_clients.py);
# then sample VmRSS every second: "peak" is the highest sample, "idle" the value once it has settled
# (at least SETTLE seconds, then until three samples in a row move less than 1%, at most SETTLE_MAX
# seconds; a proxy that frees buffers of idle connections, or an allocator that returns memory late,
# only shows it there). Checks the connections are still open, closes the clients and reads VmRSS
# once more (closed). Prints before/peak/idle, the idle delta and KiB per connection.
# RSS is /proc/PID/status VmRSS, summed over the process and its direct children (nginx master +
# worker); the delta (idle - before) is what counts.
#
# Environment:
#   CONNECTIONS=10000   idle connections (needs about that many descriptors: see `ulimit -Hn`)
#   SETTLE=15           minimum seconds of idleness before the idle reading (Palisade in-progress
#                       builds release idle buffers after several seconds; a short SETTLE misses it)
#   SETTLE_MAX=40       maximum seconds to wait for RSS to settle
#   PALISADE_BIN=target/release/palisade   (relative to the crate root)
#   PROXIES="palisade nginx haproxy"
#   KEEP_WORK=1         keep the temp dir
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

CONNECTIONS=${CONNECTIONS:-10000}
SETTLE=${SETTLE:-15}
SETTLE_MAX=${SETTLE_MAX:-40}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
LOAD_CPU=0
PROXY_CPU=1

for tool in taskset python3 nginx; do
    have "$tool" || die "$tool is required"
done

bench_init
read -r -a proxies <<<"${PROXIES:-$(available_proxies)}"
((${#proxies[@]} > 0)) || die "no proxy to test"
pin_palisade

# Every process started from here inherits the raised soft limit (the proxy needs N + its upstream
# connections, the client N).
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
if ((CONNECTIONS + 512 > nofile)); then
    die "CONNECTIONS=$CONNECTIONS needs more descriptors than the hard limit ($nofile); lower it"
fi
max_conns=$((CONNECTIONS + 256))

upstream_port=$(free_port)
start_upstream "$upstream_port" "$LOAD_CPU"

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

rows=$WORK/rows.tsv
: >"$rows"
for proxy in "${proxies[@]}"; do
    port=$(free_port)
    start_proxy "$proxy" "$port" "$upstream_port" "$PROXY_CPU" "$max_conns"
    pid=$LAST_PID
    # A few requests first, so "before" is a proxy that has served traffic (lazy initialisation done,
    # an upstream connection pooled), not a freshly exec'd one.
    taskset -c "$LOAD_CPU" python3 "$here/idle_clients.py" --port "$port" --count 20 --hold 0 \
        2>>"$WORK/clients-$proxy.log"
    sleep 1
    before=$(tree_rss_kib "$pid")

    status=$WORK/status-$proxy
    rm -f "$status"
    taskset -c "$LOAD_CPU" python3 "$here/idle_clients.py" --port "$port" \
        --count "$CONNECTIONS" --hold 300 --status-file "$status" 2>>"$WORK/clients-$proxy.log" &
    client=$!
    PIDS+=("$client")
    deadline=$((SECONDS + 240))
    until [[ -s $status ]]; do
        ((SECONDS < deadline)) || die "$proxy: the clients did not finish setting up in 240 s"
        kill -0 "$client" 2>/dev/null || { cat "$WORK/clients-$proxy.log" >&2; die "$proxy: idle_clients.py exited"; }
        sleep 0.5
    done
    # Sample once a second until settled: SETTLE s at least, then 3 samples within 1% of each other.
    peak=0 samples=()
    for ((t = 1; t <= SETTLE_MAX; t++)); do
        sleep 1
        rss=$(tree_rss_kib "$pid")
        samples+=("$rss")
        ((rss > peak)) && peak=$rss
        n=${#samples[@]}
        if ((t >= SETTLE && n >= 3)); then
            lo=${samples[n - 3]} hi=${samples[n - 3]}
            for v in "${samples[@]:n-3}"; do
                ((v < lo)) && lo=$v
                ((v > hi)) && hi=$v
            done
            ((100 * (hi - lo) <= hi)) && break
        fi
    done
    after=${samples[-1]}
    log "$proxy: RSS KiB each second after setup: ${samples[*]}"
    read -r _ ok failed open _ <"$status"
    ok=${ok#ok=} failed=${failed#failed=} open=${open#open=}

    stop "$client"
    sleep 2
    closed=$(tree_rss_kib "$pid")
    stop "$pid"

    delta=$((after - before))
    per=$(awk -v d="$delta" -v n="$open" 'BEGIN { if (n > 0) printf "%.1f", d / n; else print "-" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$(mib "$before")" "$(mib "$peak")" \
        "$(mib "$after")" "$(mib "$delta")" "$per" "$(mib "$closed")" "$ok" "$failed" "$open" "$t" >>"$rows"
    log "$proxy: before ${before} KiB, peak ${peak} KiB, idle ${after} KiB (after ${t} s), after close ${closed} KiB; ok=$ok failed=$failed open=$open"
done

echo
echo "Idle keep-alive connections: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, kernel $(uname -r), CONNECTIONS=$CONNECTIONS"
[[ -n $BINARY_NOTE ]] && echo "$BINARY_NOTE"
echo "RSS in MiB; delta = idle - before; KiB/conn = delta / open connections"
printf '%-9s %8s %8s %8s %9s %9s %8s %7s %7s %7s %6s\n' proxy before peak idle "delta" \
    "KiB/conn" closed ok failed open "idle@"
while IFS=$'\t' read -r proxy before peak after delta per closed ok failed open t; do
    printf '%-9s %8s %8s %8s %9s %9s %8s %7s %7s %7s %5ss\n' "$proxy" "$before" "$peak" "$after" \
        "$delta" "$per" "$closed" "$ok" "$failed" "$open" "$t"
done <"$rows"
pal=$(awk -F'\t' '$1 == "palisade" { print $5 }' "$rows")
if [[ -n $pal ]]; then
    if awk -v d="$pal" 'BEGIN { exit !(d < 64) }'; then verdict=met; else verdict="NOT met"; fi
    echo
    echo "target (Palisade: $CONNECTIONS idle keep-alive connections cost < 64 MiB RSS): ${pal} MiB, $verdict"
fi
