#!/usr/bin/env python3
"""Helpers for faults.sh: parse one wrk run, poll the chaos control API, print the report.

Usage:
  faults_summary.py parse WRK_OUTPUT PROXY SCENARIO     one TSV line (see COLUMNS) on stdout
  faults_summary.py recover CONTROL_ADDR ORIGIN HEAL_AFTER DURATION OUT
      heals u2 at ORIGIN + HEAL_AFTER (Unix seconds), then samples the chaos request counts every
      0.25 s until ORIGIN + DURATION; TSV to OUT
  faults_summary.py report WORK_DIR                     tables and summary from WORK_DIR
"""

import csv
import json
import os
import re
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wrk_parse import to_ms  # noqa: E402  (shared with compare.sh's parser)

COLUMNS = [
    "proxy", "scenario", "requests", "rps", "non2xx", "connect", "read", "write", "timeout",
    "p50_ms", "p99_ms", "max_ms",
]

# Scenarios whose Palisade p99 must stay within this factor of its baseline p99.
P99_TARGET = 5.0
P99_TARGET_SCENARIOS = ("slow", "hang")
# u2's request count must grow by this much after healing before it counts as back in rotation:
# active health checks alone add about one request per second.
BACK_THRESHOLD = 20


def parse(path: str, proxy: str, scenario: str) -> None:
    text = open(path, encoding="utf-8").read()
    done = re.search(r"^\s*(\d+) requests in", text, re.M)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    # "    Latency   avg   stdev   max   +/- stdev"
    lat = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (done and rps):
        sys.exit(f"cannot parse wrk output {path}:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socks = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]

    def ms(m: re.Match[str] | None, group: int = 1) -> str:
        return f"{to_ms(m.group(group)):.3f}" if m else "-"

    row = [
        proxy, scenario, done.group(1), f"{float(rps.group(1)):.0f}",
        non2xx.group(1) if non2xx else "0", *map(str, socks),
        ms(p50), ms(p99), ms(lat, 3),
    ]
    print("\t".join(row))


def counts(control: str) -> str:
    with urllib.request.urlopen(f"http://{control}/", timeout=2) as rsp:
        return " ".join(f"{u['name']}={u['requests']}" for u in json.load(rsp))


def recover(control: str, origin: str, heal_after: str, duration: str, out: str) -> None:
    """At ORIGIN + HEAL_AFTER (Unix seconds), samples the request counts and sets u2 to `ok`; then
    samples them every 0.25 s until ORIGIN + DURATION. Times in OUT are from the heal request."""
    heal_at = float(origin) + float(heal_after)
    end_at = float(origin) + float(duration)
    time.sleep(max(0.0, heal_at - time.time()))
    with open(out, "w", encoding="utf-8") as f:
        before = counts(control)
        sent = time.time()
        req = urllib.request.Request(f"http://{control}/u2/ok", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=3) as rsp:
                rsp.read()
            f.write(f"# heal answered after {time.time() - sent:.3f} s\n")
        except OSError as e:
            f.write(f"# heal failed: {e}\n")
        f.write(f"0.000\t{before}\n")
        while True:
            now = time.time()
            try:
                f.write(f"{now - sent:.3f}\t{counts(control)}\n")
            except OSError as e:
                f.write(f"# {now - sent:.3f} sample failed: {e}\n")
            f.flush()
            if now >= end_at:
                return
            time.sleep(min(0.25, max(0.0, end_at - time.time())))


def recovery(path: str) -> str | None:
    """u2's share after healing, and when it came back, from a poll file."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            t, _, rest = line.rstrip("\n").partition("\t")
            counts = dict(kv.split("=", 1) for kv in rest.split())
            samples.append((float(t), {k: int(v) for k, v in counts.items()}))
    if len(samples) < 2:
        return None
    t0, c0 = samples[0]
    t1, c1 = samples[-1]
    served = c1["u2"] - c0["u2"]
    total = sum(c1.values()) - sum(c0.values())
    back = next((t - t0 for t, c in samples if c["u2"] - c0["u2"] >= BACK_THRESHOLD), None)
    share = f"{100 * served / total:.1f}%" if total else "-"
    back_s = f"{back:.2f} s after healing" if back is not None else f"not within {t1 - t0:.1f} s"
    text = (f"u2 served {served} of {total} upstream requests in the {t1 - t0:.1f} s after healing "
            f"({share}; fair share 33%); back in rotation (+{BACK_THRESHOLD} requests): {back_s}")
    with open(path, encoding="utf-8") as f:
        head = f.readline()
    if head.startswith("#"):
        text += f" [{head[2:].strip()}]"
    return text


def metrics(path: str, requests: int) -> str | None:
    """Palisade's retry and ejection counters at the end of a run, one line."""
    if not os.path.exists(path):
        return None
    retries: dict[str, float] = {}
    ejections: dict[str, float] = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"(palisade_\w+)\{([^}]*)\}\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        value = float(m.group(3))
        if m.group(1) == "palisade_retries_total":
            key = f"{labels.get('kind', '?')} {labels.get('outcome', '?')}"
            retries[key] = retries.get(key, 0) + value
        elif m.group(1) == "palisade_outlier_ejections_total":
            key = labels.get("reason", "?")
            ejections[key] = ejections.get(key, 0) + value
    parts = [f"{k} {v:.0f}" for k, v in sorted(retries.items())] or ["none"]
    text = "retries_total: " + ", ".join(parts)
    attempted = retries.get("retry attempted", 0)
    if requests:
        text += f" (attempted = {100 * attempted / requests:.2f}% of client requests)"
    ej = [f"{k} {v:.0f}" for k, v in sorted(ejections.items())] or ["none"]
    text += "; outlier_ejections_total: " + ", ".join(ej)
    return text


def histogram(path: str) -> dict[float, float]:
    """Cumulative bucket counts of Palisade's `palisade_request_duration_seconds` (all routes)."""
    out: dict[float, float] = {}
    if not os.path.exists(path):
        return out
    for line in open(path, encoding="utf-8"):
        m = re.match(r'palisade_request_duration_seconds_bucket\{([^}]*)\}\s+(\S+)', line)
        if not m:
            continue
        le = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).get("le", "+Inf")
        bound = float("inf") if le == "+Inf" else float(le)
        out[bound] = out.get(bound, 0) + float(m.group(2))
    return out


def server_side(run: str) -> dict[str, str] | None:
    """Palisade's own view of the measured run: request-duration histogram after minus before.
    Unlike wrk's percentiles it has no coordinated-omission correction, and it misses time spent
    in socket buffers before Palisade reads a request."""
    before = histogram(os.path.join(run, "metrics-before.txt"))
    after = histogram(os.path.join(run, "metrics.txt"))
    if not after:
        return None
    delta = sorted((b, after[b] - before.get(b, 0)) for b in after)
    total = delta[-1][1]
    if total <= 0:
        return None

    def quantile(q: float) -> str:
        for bound, cum in delta:
            if cum >= q * total:
                return "+Inf" if bound == float("inf") else f"{bound * 1000:g}"
        return "?"

    def above(limit: float) -> str:
        below = max((cum for bound, cum in delta if bound <= limit), default=0)
        return str(int(total - below))

    return {"total": str(int(total)), "p50": quantile(0.5), "p99": quantile(0.99),
            "100ms": above(0.1), "500ms": above(0.5), "1s": above(1.0)}


def server_side_text(own: dict[str, str]) -> str:
    return (f"own histogram (no CO correction): {own['total']} requests, p50 <= {own['p50']} ms, "
            f"p99 <= {own['p99']} ms (bucket bounds); > 100 ms: {own['100ms']}, "
            f"> 500 ms: {own['500ms']}, > 1 s: {own['1s']}")


def fnum(v: str) -> float | None:
    return None if v in ("", "-") else float(v)


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fmt_pct(p: float) -> str:
    return "<0.01" if 0 < p < 0.01 else f"{p:.2f}"


def errors_of(r: dict[str, str]) -> tuple[int, float]:
    """Client-visible errors (non-2xx/3xx + socket errors) and their % of attempts."""
    sock = sum(int(r[k]) for k in ("connect", "read", "write", "timeout"))
    errors = int(r["non2xx"]) + sock
    attempts = int(r["requests"]) + sock
    return errors, (100 * errors / attempts if attempts else 0.0)


def report(work: str) -> None:
    with open(os.path.join(work, "results.tsv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    described: dict[str, str] = {}
    with open(os.path.join(work, "scenarios.tsv"), encoding="utf-8") as f:
        for line in f:
            name, _, text = line.rstrip("\n").partition("\t")
            described[name] = text
    scenarios: list[str] = []
    for r in rows:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])

    for s in scenarios:
        print()
        print(f"== {s}: {described.get(s, '')}")
        print(f"{'proxy':<9} {'requests':>9} {'req/s':>7} {'errors':>8} {'error %':>8} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  error detail")
        notes = []
        for r in (r for r in rows if r["scenario"] == s):
            errors, pct = errors_of(r)
            detail = []
            if int(r["non2xx"]):
                detail.append(f"non-2xx {r['non2xx']}")
            for k in ("connect", "read", "write", "timeout"):
                if int(r[k]):
                    detail.append(f"{k} {r[k]}")
            print(f"{r['proxy']:<9} {int(r['requests']):>9} {int(r['rps']):>7} {errors:>8} "
                  f"{fmt_pct(pct):>8} {fmt_ms(fnum(r['p50_ms'])):>8} {fmt_ms(fnum(r['p99_ms'])):>8} "
                  f"{fmt_ms(fnum(r['max_ms'])):>8}  {', '.join(detail)}")
            run = os.path.join(work, "runs", f"{s}-{r['proxy']}")
            m = metrics(os.path.join(run, "resilience-metrics.txt"), int(r["requests"]))
            if m:
                notes.append(f"  {r['proxy']}: {m}")
            own = server_side(run)
            if own:
                notes.append(f"  {r['proxy']}: {server_side_text(own)}")
            poll_file = os.path.join(run, "recovery-poll.tsv")
            if os.path.exists(poll_file):
                rec = recovery(poll_file)
                notes.append(f"  {r['proxy']}: {rec or 'no recovery samples'}")
        for n in notes:
            print(n)

    print()
    base = next((r for r in rows if r["scenario"] == "baseline" and r["proxy"] == "palisade"), None)
    base_p99 = fnum(base["p99_ms"]) if base else None
    print(f"Summary: Palisade's wrk p99 against its own baseline wrk p99 ({fmt_ms(base_p99)} ms); "
          f"target within {P99_TARGET:.0f}x for {' and '.join(P99_TARGET_SCENARIOS)}. own p99 = "
          "Palisade's histogram (bucket bound). errors = non-2xx/3xx + socket errors (% of attempts).")
    for s in scenarios:
        pal = next((r for r in rows if r["scenario"] == s and r["proxy"] == "palisade"), None)
        ratio = ""
        if pal and base_p99:
            p99 = fnum(pal["p99_ms"])
            if p99 is not None:
                x = p99 / base_p99
                ratio = f"palisade p99 {fmt_ms(p99)} ms = {x:.1f}x baseline"
                if s in P99_TARGET_SCENARIOS:
                    ratio += " (met)" if x <= P99_TARGET else " (NOT MET)"
            own = server_side(os.path.join(work, "runs", f"{s}-palisade"))
            if own:
                ratio += f"; own p99 <= {own['p99']} ms"
        elif pal:
            ratio = "palisade p99 -, no Palisade baseline run"
        errs = []
        for r in (r for r in rows if r["scenario"] == s):
            e, pct = errors_of(r)
            errs.append(f"{r['proxy']} {e} ({fmt_pct(pct)}%)")
        print(f"{s:<9} {ratio:<72} errors: {', '.join(errs)}")


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "parse":
        parse(*args)
    elif cmd == "recover":
        recover(*args)
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
