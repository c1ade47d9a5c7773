#!/usr/bin/env python3
"""Turns one `wrk --latency` output into a TSV line: round, target, rps, p50_ms, p99_ms, cpu, errors,
noise.

Usage: wrk_parse.py WRK_OUTPUT ROUND TARGET CPU_PCT NOISE_PCT
"""

import re
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unknown latency {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def main() -> None:
    path, rnd, target, cpu, noise = sys.argv[1:6]
    text = open(path, encoding="utf-8").read()
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps and p50 and p99):
        sys.exit(f"cannot parse wrk output {path}:\n{text}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    print(
        f"{rnd}\t{target}\t{float(rps.group(1)):.0f}\t{to_ms(p50.group(1)):.3f}"
        f"\t{to_ms(p99.group(1)):.3f}\t{cpu}\t{errors}\t{noise}"
    )


if __name__ == "__main__":
    main()
