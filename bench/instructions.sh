#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind (callgrind): a figure that the
# noise of a shared machine does not move, for comparing two builds of Palisade (for example
# before and after a change to the request path). Wall-clock throughput is compare.sh's job.
#
#   bench/instructions.sh [BIN ...]     default: target/release/palisade
#
# For each binary: one chaos upstream (examples/chaos.rs), Palisade (one worker, no access log)
# under callgrind, then h2load --h1 with N1 and with N2 requests over 10 connections; the
# difference of the two totals divided by N2 - N1 is the cost of one request, start-up excluded.
#
# Environment: N1=2000, N2=12000, CHAOS_BIN=target/release/examples/chaos, KEEP_WORK=1.
# Needs valgrind and h2load (apt-get install -y valgrind nghttp2-client).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$here/lib.sh"

N1=${N1:-2000}
N2=${N2:-12000}
CHAOS_BIN=${CHAOS_BIN:-$root/target/release/examples/chaos}
for tool in valgrind h2load python3; do
    have "$tool" || die "$tool is required (apt-get install -y valgrind nghttp2-client python3)"
done
[[ -x $CHAOS_BIN ]] || die "build it first: cargo build --release --example chaos"
((N2 > N1)) || die "N2 must be larger than N1"

bench_init

# One upstream for every run.
start chaos 0 "$CHAOS_BIN" --upstreams 1 --names up --control 127.0.0.1:0
for _ in $(seq 100); do
    grep -q '^control ' "$WORK/chaos.log" 2>/dev/null && break
    sleep 0.1
done
upstream=$(awk '/^upstream / {print $3}' "$WORK/chaos.log")
[[ -n $upstream ]] || die "the chaos upstream did not start (see $WORK/chaos.log)"

# total_instructions BIN N: callgrind's total for a Palisade run serving N requests.
total_instructions() {
    local bin=$1 n=$2 port admin cfg out pid
    port=$(free_port)
    admin=$(free_port)
    cfg=$WORK/palisade-$n.toml
    out=$WORK/callgrind-$n.out
    # The same Palisade config compare.sh uses (lib.sh), pointed at the chaos upstream.
    write_palisade_conf "$cfg" "$port" "$admin" "${upstream##*:}" 10000
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run -c "$cfg" \
        >"$WORK/valgrind-$n.log" 2>&1 &
    pid=$!
    wait_port "$port" 60 || die "Palisade under valgrind did not start (see $WORK/valgrind-$n.log)"
    h2load --h1 -n "$n" -c 10 "http://127.0.0.1:$port/" >"$WORK/h2load-$n.log" 2>&1
    grep -q "$n succeeded" "$WORK/h2load-$n.log" || die "not every request succeeded (see $WORK/h2load-$n.log)"
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

bins=("$@")
((${#bins[@]} > 0)) || bins=("$root/target/release/palisade")
printf '%-40s %14s\n' "binary" "instr/request"
for bin in "${bins[@]}"; do
    a=$(total_instructions "$bin" "$N1")
    b=$(total_instructions "$bin" "$N2")
    printf '%-40s %14.0f\n' "$bin" "$(python3 -c "print(($b - $a) / ($N2 - $N1))")"
done
