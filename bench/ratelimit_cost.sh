#!/usr/bin/env bash
# What a local rate limit costs when it is configured but not hit.
#
#   wrk -t1 -c50 (CPU 0) -> Palisade (CPU 1, one worker) -> nginx "hello" upstream (CPU 0)
#
# Two configs, identical but for one thing: "plain" has no rate limit; "limited" applies a local
# policy keyed on client_ip (every request counted, one key: all wrk connections come from
# 127.0.0.1) at 1,000,000/s, so every request takes a decision and none is refused. They run
# alternately (plain, limited, plain, limited, ...), a fresh Palisade each time, so that machine
# noise hits both alike; the report gives the median of each and their ratio (target: limited
# within 5% of plain), and checks from /metrics that the policy did decide every request.
#
# Environment:
#   ROUNDS=3            rounds (each config runs once per round)
#   DURATION=10         seconds per measured wrk run
#   WARMUP=2            seconds of unmeasured wrk before each
#   CONNECTIONS=50      wrk connections
#   KEY=client_ip       the policy's key (e.g. header:x-api-key; wrk sends no such header, so all
#                       requests share the empty value's bucket)
#   WAIT_QUIET=0        before each run, wait up to this many seconds for the machine to be quiet
#   PALISADE_BIN=target/release/palisade   (copied before use)
#   RESULTS=FILE        also write the per-run TSV there
#   KEEP_WORK=1         keep the temp dir
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR disable=SC1091
source "$here/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
KEY=${KEY:-client_ip}
PALISADE_BIN=${PALISADE_BIN:-$root/target/release/palisade}
[[ $PALISADE_BIN == /* ]] || PALISADE_BIN=$root/$PALISADE_BIN
LOAD_CPU=0
PROXY_CPU=1

for tool in wrk curl python3 nginx; do
    have "$tool" || die "$tool is required"
done
[[ -x $PALISADE_BIN ]] || die "$PALISADE_BIN not found: cargo build --release"
for v in ROUNDS DURATION WARMUP CONNECTIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
# shellcheck disable=SC2034  # read by lib.sh's on_cpu and spawn
PIN=1
if ! have taskset || (($(nproc) < 2)); then
    # shellcheck disable=SC2034
    PIN=0
    log "note: not pinning (needs taskset and 2 CPUs); figures will include CPU contention"
fi

bench_init
pin_palisade
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# write_cost_conf FILE PORT ADMIN_PORT UPSTREAM_PORT VARIANT (plain | limited)
write_cost_conf() {
    local file=$1 port=$2 admin=$3 up=$4 variant=$5 limits=""
    [[ $variant == limited ]] && limits='rate_limits = ["not-hit"]'
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

EOF
        if [[ $variant == limited ]]; then
            cat <<EOF
[[rate_limits]]
name = "not-hit"
key = ["$KEY"]
rate = "1000000/s"

EOF
        fi
        cat <<EOF
[listeners.bench]
listen = "127.0.0.1:$port"
max_connections = 4096
idle_timeout = "300s"
max_requests_per_connection = 0

[[routes]]
name = "all"
match = { path_prefix = "/" }
cluster = "up"
$limits

[clusters.up]
endpoints = ["127.0.0.1:$up"]
EOF
    } >"$file"
}

upstream_port=$(free_port)
start_upstream "$upstream_port" "$LOAD_CPU"
results=$WORK/results.tsv
printf 'round\tvariant\trps\tp50_ms\tp99_ms\tcpu\terrors\tnoise\tdecisions\n' >"$results"
clk_tck=$(getconf CLK_TCK)

run_one() {
    local round=$1 variant=$2 port admin pid out t0 t1 cpu decisions
    port=$(free_port)
    admin=127.0.0.1:$(free_port)
    write_cost_conf "$WORK/palisade-$variant.toml" "$port" "${admin#*:}" "$upstream_port" "$variant"
    "$PALISADE_BIN" validate -c "$WORK/palisade-$variant.toml" >/dev/null 2>&1 ||
        die "palisade validate failed: $("$PALISADE_BIN" validate -c "$WORK/palisade-$variant.toml" 2>&1)"
    spawn "palisade-$variant-$round" "$PROXY_CPU" "$PALISADE_BIN" run -c "$WORK/palisade-$variant.toml"
    pid=$LAST_PID
    wait_port "$port" 15 || { cat "$WORK/palisade-$variant-$round.log" >&2; die "palisade did not start"; }
    if ((${WAIT_QUIET:-0} > 0)); then wait_quiet "$WAIT_QUIET" || true; fi
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null
    out=$WORK/wrk-$variant-$round.txt
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    on_cpu "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$out"
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    cpu=$(((t1 - t0) * 100 / (clk_tck * DURATION)))
    decisions=$(curl -s -m 5 "http://$admin/metrics" |
        awk '/^palisade_ratelimit_decisions_total\{/ {s += $NF} END {printf "%d", s}')
    stop "$pid"
    python3 "$here/wrk_parse.py" "$out" "$round" "$variant" "$cpu" "-" |
        awk -v d="$decisions" '{print $0 "\t" d}' >>"$results"
    log "$(tail -n 1 "$results")"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "rounds=$ROUNDS duration=${DURATION}s connections=$CONNECTIONS key=$KEY; work dir $WORK"
log "round	variant	rps	p50_ms	p99_ms	cpu	errors	noise	decisions"
for round in $(seq "$ROUNDS"); do
    for variant in plain limited; do
        run_one "$round" "$variant"
    done
done

if [[ -n ${RESULTS:-} ]]; then cp "$results" "$RESULTS"; fi
echo
echo "Palisade rate-limit cost: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, kernel $(uname -r)"
echo "$BINARY_NOTE"
echo "load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds alternating; policy key $KEY at 1000000/s (never hit)"
python3 - "$results" <<'EOF'
import csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = {}
print()
print(f"{'variant':<8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU':>5} {'req/CPU-s':>9} {'errors':>6} {'decisions':>10}  req/s of each round")
for v in ("plain", "limited"):
    rs = [r for r in rows if r["variant"] == v]
    rps = statistics.median(float(r["rps"]) for r in rs)
    p50 = statistics.median(float(r["p50_ms"]) for r in rs)
    p99 = statistics.median(float(r["p99_ms"]) for r in rs)
    cpu = statistics.median(float(r["cpu"]) for r in rs)
    eff = statistics.median(float(r["rps"]) / max(float(r["cpu"]), 1) * 100 for r in rs)
    errors = sum(int(r["errors"]) for r in rs)
    dec = sum(int(r["decisions"] or 0) for r in rs)
    med[v] = (rps, eff)
    print(f"{v:<8} {rps:>8.0f} {p50:>7.3f} {p99:>7.3f} {cpu:>4.0f}% {eff:>9.0f} {errors:>6} {dec:>10}  "
          + " ".join(f"{float(r['rps']):.0f}" for r in rs))
ratio = med["limited"][0] / med["plain"][0]
eratio = med["limited"][1] / med["plain"][1]
print()
print(f"limited / plain: req/s {ratio:.3f}x, req per CPU-second {eratio:.3f}x")
print(f"target: within 5% (>= 0.95x): {'met' if ratio >= 0.95 else 'NOT met'}")
EOF
if [[ -n ${KEEP_WORK:-} ]]; then echo; echo "work dir kept: $WORK"; fi
