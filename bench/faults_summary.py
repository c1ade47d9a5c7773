#!/usr/bin/env python3
"""Helpers for faults.sh: parse one wrk run, poll the chaos control API, print the report.

Usage:
  faults_summary.py parse WRK_OUTPUT PROXY SCENARIO     one TSV line (see COLUMNS) on stdout
  faults_summary.py poll CONTROL_ADDR END_MS OUT        GET / every 0.25 s until the Unix time
                                                        END_MS (milliseconds), TSV to OUT
  faults_summary.py report WORK_DIR                     tables and summary from WORK_DIR
"""

import csv
import json
import os
import re
import sys
import time
import urllib.request

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


def poll(control: str, end_ms: str, out: str) -> None:
    """Samples every upstream's request count; the first sample is taken at once."""
    start = time.monotonic()
    deadline = start + max(0.0, int(end_ms) / 1000 - time.time())
    with open(out, "w", encoding="utf-8") as f:
        while True:
            now = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://{control}/", timeout=1) as rsp:
                    state = json.load(rsp)
                counts = " ".join(f"{u['name']}={u['requests']}" for u in state)
                f.write(f"{now - start:.3f}\t{counts}\n")
                f.flush()
            except OSError as e:
                f.write(f"{now - start:.3f}\terror {e}\n")
            if now >= deadline:
                return
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def recovery(path: str) -> str | None:
    """u2's share after healing, and when it came back, from a poll file."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            t, _, rest = line.rstrip("\n").partition("\t")
            if rest.startswith("error"):
                continue
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
    return (f"u2 served {served} of {total} upstream requests in the {t1 - t0:.1f} s after healing "
            f"({share}; fair share 33%); back in rotation (+{BACK_THRESHOLD} requests): {back_s}")


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
        text += f" (attempted = {100 * attempted / requests:.1f}% of client requests)"
    ej = [f"{k} {v:.0f}" for k, v in sorted(ejections.items())] or ["none"]
    text += "; outlier_ejections_total: " + ", ".join(ej)
    return text


def fnum(v: str) -> float | None:
    return None if v in ("", "-") else float(v)


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


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
                  f"{pct:>8.2f} {fmt_ms(fnum(r['p50_ms'])):>8} {fmt_ms(fnum(r['p99_ms'])):>8} "
                  f"{fmt_ms(fnum(r['max_ms'])):>8}  {', '.join(detail)}")
            run = os.path.join(work, "runs", f"{s}-{r['proxy']}")
            m = metrics(os.path.join(run, "resilience-metrics.txt"), int(r["requests"]))
            if m:
                notes.append(f"  {r['proxy']}: {m}")
            poll_file = os.path.join(run, "recovery-poll.tsv")
            if os.path.exists(poll_file):
                rec = recovery(poll_file)
                notes.append(f"  {r['proxy']}: {rec or 'no recovery samples'}")
        for n in notes:
            print(n)

    print()
    base = next((r for r in rows if r["scenario"] == "baseline" and r["proxy"] == "palisade"), None)
    base_p99 = fnum(base["p99_ms"]) if base else None
    print(f"Summary: Palisade's p99 against its own baseline p99 ({fmt_ms(base_p99)} ms); target "
          f"within {P99_TARGET:.0f}x for {' and '.join(P99_TARGET_SCENARIOS)}. "
          "errors = non-2xx/3xx + socket errors (% of attempts).")
    for s in scenarios:
        pal = next((r for r in rows if r["scenario"] == s and r["proxy"] == "palisade"), None)
        ratio = ""
        if pal and base_p99:
            p99 = fnum(pal["p99_ms"])
            if p99 is not None:
                x = p99 / base_p99
                ratio = f"palisade p99 {fmt_ms(p99)} ms = {x:.1f}x baseline"
                if s in P99_TARGET_SCENARIOS:
                    ratio += " (target met)" if x <= P99_TARGET else " (TARGET NOT MET)"
        elif pal:
            ratio = "palisade p99 -, no Palisade baseline run"
        errs = []
        for r in (r for r in rows if r["scenario"] == s):
            e, pct = errors_of(r)
            errs.append(f"{r['proxy']} {e} ({pct:.2f}%)")
        print(f"{s:<9} {ratio:<50} errors: {', '.join(errs)}")


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "parse":
        parse(*args)
    elif cmd == "poll":
        poll(*args)
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
