#!/usr/bin/env python3
"""Summarises compare.sh's per-run TSV: median per target, then Palisade's ratios.

Usage: summarize.py RESULTS.tsv
"""

import csv
import statistics
import sys


def num(value: str | None) -> float | None:
    return None if value in (None, "", "-") else float(value)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    order: list[str] = []
    for r in rows:
        if r["target"] not in order:
            order.append(r["target"])

    print()
    print("Medians over the rounds. best = the highest round (noise only ever slows a run down).")
    print("req/s per CPU-s = req/s divided by the proxy's own CPU time (1.0 = one core): less")
    print("sensitive to other load than req/s itself. noise = CPU used by other processes during")
    print("the run, % of one core (median); above ~10% that target's figures are disturbed.")
    print(f"{'target':<9} {'req/s':>7} {'best':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU':>5} "
          f"{'req/CPU-s':>9} {'errors':>6} {'noise':>5}  req/s(noise%) of each round")
    med: dict[str, tuple[float, float, float]] = {}
    eff: dict[str, float | None] = {}
    for t in order:
        rs = [r for r in rows if r["target"] == t]
        rps = statistics.median(float(r["rps"]) for r in rs)
        best = max(float(r["rps"]) for r in rs)
        p50 = statistics.median(float(r["p50_ms"]) for r in rs)
        p99 = statistics.median(float(r["p99_ms"]) for r in rs)
        cpus = [c for c in (num(r["cpu_pct"]) for r in rs) if c is not None]
        cpu = statistics.median(cpus) if cpus else None
        effs = [float(r["rps"]) / (c / 100) for r in rs if (c := num(r["cpu_pct"]))]
        eff[t] = statistics.median(effs) if effs else None
        errors = sum(int(r["errors"]) for r in rs)
        noises = [n for n in (num(r.get("noise_pct")) for r in rs) if n is not None]
        noise = f"{statistics.median(noises):.0f}%" if noises else "-"
        med[t] = (rps, p50, p99)
        cpu_s = f"{cpu:.0f}%" if cpu is not None else "-"
        eff_s = f"{eff[t]:.0f}" if eff[t] else "-"
        each = " ".join(f"{float(r['rps']):.0f}({r.get('noise_pct') or '-'})" for r in rs)
        print(f"{t:<9} {rps:>7.0f} {best:>7.0f} {p50:>7.3f} {p99:>7.3f} {cpu_s:>5} {eff_s:>9} "
              f"{errors:>6} {noise:>5}  {each}")

    if "palisade" not in med:
        return
    p = med["palisade"]
    others = [t for t in ("nginx", "haproxy") if t in med]
    if not others:
        return
    print()
    for t in others:
        o = med[t]
        e = ""
        if eff.get("palisade") and eff.get(t):
            e = f"   req/CPU-s {eff['palisade'] / eff[t]:.2f}x"
        print(f"palisade / {t:<8} req/s {p[0] / o[0]:.2f}x   p99 {p[2] / o[2]:.2f}x{e}"
              "   (p99 below 1.00x is better for Palisade)")
    best = max(others, key=lambda t: med[t][0])
    b = med[best]
    rps_ok = "met" if p[0] >= b[0] else "NOT met"
    p99_ok = "met" if p[2] <= b[2] else "NOT met"
    print(f"target: >= 1.0x the req/s of the better of nginx/HAProxy (here {best}) with p99 no worse:"
          f" req/s {p[0] / b[0]:.2f}x {rps_ok}, p99 {p[2] / b[2]:.2f}x {p99_ok}")


if __name__ == "__main__":
    main()
