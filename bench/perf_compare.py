#!/usr/bin/env python3
"""Compares `perf record` samples of several proxies per request served (used by profile.sh).

Usage: perf_compare.py FREQ_HZ SECONDS DIR NAME...
  For each NAME, reads DIR/NAME.data (perf record -F FREQ_HZ over SECONDS) and DIR/NAME.rps (the
  request rate during the recording). Prints CPU microseconds per request, split kernel/user, and the
  symbols where the first NAME (Palisade) spends the most more than the cheapest of the others.
"""

import collections
import re
import subprocess
import sys


def load(path: str) -> collections.Counter:
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout
    counts: collections.Counter = collections.Counter()
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.match(r"\S+ (.*?) \((.*)\)$", line)
        sym, dso = (m.group(1), m.group(2)) if m else (line, "?")
        where = "kernel" if "kernel" in dso else dso.rsplit("/", 1)[-1]
        counts[(where, sym)] += 1
    return counts


def main() -> None:
    hz, secs, folder, names = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
    per_req: dict[str, dict] = {}
    for name in names:
        rps = float(open(f"{folder}/{name}.rps", encoding="utf-8").read().strip())
        counts = load(f"{folder}/{name}.data")
        per_req[name] = {k: v / hz / (rps * secs) * 1e6 for k, v in counts.items()}
        total = sum(per_req[name].values())
        kernel = sum(v for k, v in per_req[name].items() if k[0] == "kernel")
        print(f"{name:<9} {rps:>8.0f} req/s   CPU per request {total:5.1f} us"
              f" = kernel {kernel:5.1f} + user {total - kernel:5.1f}")
    if len(names) < 2:
        return
    first, others = names[0], names[1:]
    keys = set().union(*(set(d) for d in per_req.values()))

    def extra(k):
        return per_req[first].get(k, 0) - min(per_req[o].get(k, 0) for o in others)

    print()
    print(f"where {first} spends more per request than the cheapest of {', '.join(others)} (us/request):")
    print(f"{'symbol':<72} " + " ".join(f"{n[:8]:>8}" for n in names))
    for k in sorted(keys, key=extra, reverse=True)[:25]:
        label = f"[{k[0][:8]}] {k[1]}"[:72]
        print(f"{label:<72} " + " ".join(f"{per_req[n].get(k, 0):8.2f}" for n in names))


if __name__ == "__main__":
    main()
