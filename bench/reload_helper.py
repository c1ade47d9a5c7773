#!/usr/bin/env python3
"""Helpers for reload.sh: config variants, the reload and upgrade drivers, and the report.

Usage:
  reload_helper.py variants KIND BASE OUTDIR U1 U2 [STATE_DIR]
      KIND is palisade, nginx or haproxy; BASE is lib.sh's config for one upstream (U1). Writes
      OUTDIR/a.EXT and OUTDIR/b.EXT (the two valid variants) and OUTDIR/bad1.EXT .. bad5.EXT (five
      invalid ones) and OUTDIR/bad.txt (what is wrong with each).
  reload_helper.py drive MODE PORT PID ADMIN LIVE VARDIR RELOADS INVALID INTERVAL LEAD OUT
      MODE is palisade-signal, palisade-api, nginx or haproxy. From its start, waits LEAD s, then
      every INTERVAL s applies the other valid variant (RELOADS times, starting with b), then pushes
      the INVALID bad variants; after each step it checks from outside which variant serves.
      Writes a JSON summary to OUT.
  reload_helper.py upgrade KIND PORT PID ADMIN RUN_DIR AT DRAIN_MAX OUT [BINARY]
      Waits AT s, then upgrades the running KIND in place (Palisade: SIGUSR2 after replacing
      BINARY by a fresh copy; nginx: USR2, WINCH, QUIT; HAProxy: master USR2) and times when the
      new process serves and when the old one is gone. Writes new pids to RUN_DIR/extra-pids as it
      learns them (reload.sh kills those on exit) and a JSON summary to OUT.
  reload_helper.py report WORK_DIR
      The tables and the PASS/FAIL lines.

Which variant serves is read from two marker routes: variant a answers `GET /a` with the header
`X-Variant: a` and has no `/b` route (so `/b` falls through to the catch-all route); variant b the
other way round. Variant b also has a second upstream endpoint. Each probe is a new connection, so
it sees what a new client would see.
"""

import csv
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

EXT = {"palisade": "toml", "nginx": "conf", "haproxy": "cfg"}
# How long a reload may take to become visible before it counts as not applied.
APPLY_TIMEOUT = 5.0
# After an invalid push, how long the old variant must keep serving before the next step.
INVALID_WATCH = 0.3


# ---- config variants ------------------------------------------------------------------------------


def once(text: str, old: str, new: str) -> str:
    """Replaces the one occurrence of `old`; a missing or repeated anchor means lib.sh changed."""
    n = text.count(old)
    if n != 1:
        sys.exit(f"reload_helper: anchor {old!r} found {n} times in the base config (expected 1)")
    return text.replace(old, new)


def once_re(text: str, pattern: str, repl: str) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.M)
    if n != 1:
        sys.exit(f"reload_helper: pattern {pattern!r} matched {n} times in the base config")
    return new


def palisade_variants(base: str, u1: str, u2: str, state: str) -> tuple[str, str, list]:
    tail = (
        "\n[reload]\n"
        "watch = false\n"
        f'state_dir = "{state}"\n'
        "history = 100\n\n"
        "[reload.auto_rollback]\n"
        "enabled = false\n"
    )
    one = f'endpoints = ["127.0.0.1:{u1}"]'

    def variant(v: str, cluster: str = "up", endpoints: str | None = None) -> str:
        # Routes match in file order, so the marker route goes before the catch-all.
        route = (
            "[[routes]]\n"
            f'name = "variant-{v}"\n'
            f'match = {{ path = "/{v}" }}\n'
            f'cluster = "{cluster}"\n'
            f'response_headers = {{ set = {{ "x-variant" = "{v}" }} }}\n\n'
        )
        text = once(base, "[[routes]]\n", route + "[[routes]]\n")
        if endpoints is not None:
            text = once(text, one, f"endpoints = [{endpoints}]")
        return text + tail

    a = variant("a")
    b = variant("b", endpoints=f'"127.0.0.1:{u1}", "127.0.0.1:{u2}"')
    bads = [
        ("TOML syntax error (unclosed table header)", a + '\n[[routes]\nname = "broken"\n'),
        ("unknown field runtime.workerz", once(a, "workers = 1\n", "workers = 1\nworkerz = 1\n")),
        ("route names a cluster that does not exist", variant("a", cluster="nowhere")),
        ("endpoint port 70000", variant("a", endpoints='"127.0.0.1:70000"')),
        ("idle_timeout = \"300 parsecs\"", once(a, 'idle_timeout = "300s"', 'idle_timeout = "300 parsecs"')),
    ]
    return a, b, bads


def nginx_variants(base: str, u1: str, u2: str) -> tuple[str, str, list]:
    def location(v: str, header: str | None = None) -> str:
        return (f"        location = /{v} {{ add_header X-Variant {header or v} always; "
                f'return 200 "{v}\\n"; }}\n')

    def variant(v: str, two: bool, extra: str = "") -> str:
        text = once(base, "        location / {\n", location(v) + extra + "        location / {\n")
        if two:
            text = once(text, f"        server 127.0.0.1:{u1};\n",
                        f"        server 127.0.0.1:{u1};\n        server 127.0.0.1:{u2};\n")
        return text

    a = variant("a", False)
    b = variant("b", True)
    bads = [
        ("missing semicolon after worker_processes", once(a, "worker_processes 1;", "worker_processes 1")),
        ("unknown directive proxy_frobnicate", variant("a", False, "        proxy_frobnicate on;\n")),
        ("duplicate location = /a", variant("a", False, location("a"))),
        ("listen port 99999", once_re(a, r"listen 127\.0\.0\.1:\d+", "listen 127.0.0.1:99999")),
        ("unknown variable in add_header", variant("a", False, location("x", "$no_such_variable"))),
    ]
    return a, b, bads


def haproxy_variants(base: str, u1: str, u2: str) -> tuple[str, str, list]:
    bind = re.search(r"^    bind 127\.0\.0\.1:\d+\n", base, re.M)
    if not bind:
        sys.exit("reload_helper: no bind line in the HAProxy base config")
    server1 = f"    server up1 127.0.0.1:{u1} maxconn 10000\n"

    def variant(v: str, two: bool) -> str:
        rule = (f'    http-request return status 200 content-type text/plain string "{v}" '
                f"hdr X-Variant {v} if {{ path /{v} }}\n")
        text = once(base, bind.group(0), bind.group(0) + rule)
        if two:
            text = once(text, server1, server1 + f"    server up2 127.0.0.1:{u2} maxconn 10000\n")
        return text

    a = variant("a", False)
    b = variant("b", True)
    bads = [
        ("unknown keyword in the frontend", once(a, bind.group(0), bind.group(0) + "    frobnicate on\n")),
        ("default_backend names a backend that does not exist",
         once(a, "default_backend be\n", "default_backend nowhere\n")),
        ("server port 99999", once(a, server1, "    server up1 127.0.0.1:99999 maxconn 10000\n")),
        ("timeout client 300parsecs", once(a, "timeout client 300s", "timeout client 300parsecs")),
        ("nbthread zero", once(a, "nbthread 1\n", "nbthread zero\n")),
    ]
    return a, b, bads


def variants(kind: str, base_path: str, outdir: str, u1: str, u2: str, state: str = "") -> None:
    base = open(base_path, encoding="utf-8").read()
    if kind == "palisade":
        a, b, bads = palisade_variants(base, u1, u2, state)
    elif kind == "nginx":
        a, b, bads = nginx_variants(base, u1, u2)
    elif kind == "haproxy":
        a, b, bads = haproxy_variants(base, u1, u2)
    else:
        sys.exit(f"reload_helper: unknown kind {kind}")
    os.makedirs(outdir, exist_ok=True)
    ext = EXT[kind]
    for name, text in [("a", a), ("b", b)] + [(f"bad{i}", t) for i, (_, t) in enumerate(bads, 1)]:
        with open(os.path.join(outdir, f"{name}.{ext}"), "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(outdir, "bad.txt"), "w", encoding="utf-8") as f:
        for i, (what, _) in enumerate(bads, 1):
            f.write(f"bad{i}\t{what}\n")


# ---- probes ---------------------------------------------------------------------------------------


def request(port: int, path: str, method: str = "GET", body: bytes | None = None,
            timeout: float = 2.0) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        rsp = conn.getresponse()
        data = rsp.read()
        return rsp.status, {k.lower(): v for k, v in rsp.getheaders()}, data
    finally:
        conn.close()


def serving(port: int) -> str | None:
    """'a' or 'b' when exactly that variant answers, '?' when neither or both, None on an error."""
    try:
        _, ha, _ = request(port, "/a")
        _, hb, _ = request(port, "/b")
    except (OSError, http.client.HTTPException):
        return None
    a = ha.get("x-variant") == "a"
    b = hb.get("x-variant") == "b"
    return "a" if a and not b else "b" if b and not a else "?"


def wait_serving(port: int, want: str, timeout: float) -> tuple[float | None, int]:
    """Seconds until `want` serves (None: not within timeout), and how many probes failed."""
    t0 = time.monotonic()
    errors = 0
    while True:
        got = serving(port)
        now = time.monotonic()
        if got == want:
            return now - t0, errors
        if got is None:
            errors += 1
        if now - t0 > timeout:
            return None, errors
        time.sleep(0.01)


def admin_json(admin: str, path: str) -> dict:
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def reload_counts(admin: str) -> dict:
    """palisade_config_reloads_total by result (0 when the series does not exist yet)."""
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {"success": 0, "failure": 0}
    for m in re.finditer(r'^palisade_config_reloads_total\{result="(\w+)"\}\s+([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d))
    return sorted(out)


def sleep_until(t: float) -> bool:
    """Sleeps until monotonic time t; False when t had already passed (the schedule slipped)."""
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)
        return True
    return False


# ---- reload driver --------------------------------------------------------------------------------


def drive(mode: str, port: str, pid: str, admin: str, live: str, vardir: str, reloads: str,
          invalid: str, interval: str, lead: str, out: str) -> None:
    start = time.monotonic()
    port_n, pid_n = int(port), int(pid)
    n_reloads, n_invalid, step, lead_s = int(reloads), int(invalid), float(interval), float(lead)
    kind = mode.split("-")[0]
    ext = EXT[kind]

    def text(name: str) -> str:
        return open(os.path.join(vardir, f"{name}.{ext}"), encoding="utf-8").read()

    def put_file(body: str) -> None:
        tmp = live + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, live)

    def trigger(body: str) -> tuple[bool, str]:
        """Applies `body` the way MODE does; (request accepted, detail)."""
        if mode == "palisade-api":
            try:
                status, _, data = request(int(admin.rsplit(":", 1)[1]), "/config", "POST",
                                          body.encode(), timeout=10)
            except (OSError, http.client.HTTPException) as e:
                return False, f"POST failed: {e}"
            try:
                result = json.loads(data).get("result", "?")
            except ValueError:
                result = data[:80].decode(errors="replace")
            return status == 200, f"{status} {result}"
        put_file(body)
        sig = signal.SIGUSR2 if mode == "haproxy" else signal.SIGHUP
        try:
            os.kill(pid_n, sig)
        except OSError as e:
            return False, f"signal failed: {e}"
        return True, sig.name

    res: dict = {"mode": mode, "reloads": [], "invalid": []}
    initial, _ = wait_serving(port_n, "a", APPLY_TIMEOUT)
    res["initial_a"] = initial is not None
    if kind == "palisade":
        res["before"] = {
            "counts": reload_counts(admin),
            "version": admin_json(admin, "/server_info").get("config_version"),
        }
    current = "a"
    for i in range(n_reloads):
        want = "b" if current == "a" else "a"
        on_time = sleep_until(start + lead_s + i * step)
        t0 = time.monotonic()
        accepted, detail = trigger(text(want))
        triggered = time.monotonic() - t0
        took, probe_errors = wait_serving(port_n, want, APPLY_TIMEOUT)
        res["reloads"].append({
            "n": i + 1, "to": want, "accepted": accepted, "detail": detail,
            "trigger_s": round(triggered, 4),
            "applied_s": None if took is None else round(triggered + took, 4),
            "probe_errors": probe_errors, "late": not on_time,
        })
        if took is not None:
            current = want
    if kind == "palisade":
        res["after_valid"] = {"version": admin_json(admin, "/server_info").get("config_version")}
    for j in range(n_invalid):
        sleep_until(start + lead_s + (n_reloads + j) * step)
        accepted, detail = trigger(text(f"bad{j + 1}"))
        time.sleep(INVALID_WATCH)
        still = serving(port_n)
        res["invalid"].append({"n": j + 1, "accepted": accepted, "detail": detail,
                               "still_serving": still})
    # Leave a valid file behind, so nothing reads an invalid one later (no signal: it is running).
    if mode != "palisade-api":
        put_file(text(current))
    res["final_variant"] = serving(port_n)
    if kind == "palisade":
        # A refused SIGHUP reload is only visible in the history: give the last one a moment.
        deadline = time.monotonic() + 5
        while True:
            hist = admin_json(admin, "/config/history")
            rejected = [e for e in hist["entries"] if e.get("outcome") == "rejected"]
            if len(rejected) >= n_invalid or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        res["after"] = {
            "counts": reload_counts(admin),
            "version": admin_json(admin, "/server_info").get("config_version"),
            "running": hist.get("running"),
            "history": {},
        }
        for e in hist["entries"]:
            key = f"{e.get('trigger')}/{e.get('outcome')}"
            res["after"]["history"][key] = res["after"]["history"].get(key, 0) + 1
        res["after"]["rejected_problems"] = [e.get("problems", [])[:1] for e in rejected]
    res["elapsed_s"] = round(time.monotonic() - start, 3)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)


# ---- upgrade driver -------------------------------------------------------------------------------


def upgrade(kind: str, port: str, pid: str, admin: str, run: str, at: str, drain_max: str,
            out: str, binary: str = "") -> None:
    start = time.monotonic()
    port_n, old = int(port), int(pid)
    limit = float(drain_max)
    extra = os.path.join(run, "extra-pids")
    res: dict = {"kind": kind, "old_pid": old}

    def note_pid(p: int) -> None:
        with open(extra, "a", encoding="utf-8") as f:
            f.write(f"{p}\n")

    def wait_gone(pids: list[int], timeout: float) -> float | None:
        t_end = time.monotonic() + timeout
        while any(alive(p) for p in pids):
            if time.monotonic() > t_end:
                return None
            time.sleep(0.02)
        return round(time.monotonic() - t0, 3)

    sleep_until(start + float(at))
    t0 = time.monotonic()
    if kind == "palisade":
        # A deploy replaces the file at the binary's path: same bytes, new inode.
        shutil.copy2(binary, binary + ".new")
        os.replace(binary + ".new", binary)
        os.kill(old, signal.SIGUSR2)
        new = None
        while time.monotonic() - t0 < 60:
            try:
                p = admin_json(admin, "/server_info").get("pid")
            except (OSError, ValueError, http.client.HTTPException):
                p = None
            if p and p != old:
                new = int(p)
                note_pid(new)
                break
            time.sleep(0.02)
        res["new_pid"] = new
        res["new_serving_s"] = None if new is None else round(time.monotonic() - t0, 3)
        res["old_gone_s"] = wait_gone([old], limit)
    elif kind == "nginx":
        pidfile = os.path.join(run, "nginx.pid")
        old_workers = children(old)
        os.kill(old, signal.SIGUSR2)
        new = None
        while time.monotonic() - t0 < 10:
            try:
                p = int(open(pidfile, encoding="utf-8").read().strip() or 0)
            except (OSError, ValueError):
                p = 0
            if p and p != old and os.path.exists(pidfile + ".oldbin") and children(p):
                new = p
                note_pid(new)
                break
            time.sleep(0.02)
        res["new_pid"] = new
        res["new_serving_s"] = None if new is None else round(time.monotonic() - t0, 3)
        if new is not None:
            # The documented sequence: old workers stop gracefully, then the old master quits.
            os.kill(old, signal.SIGWINCH)
            res["old_workers_gone_s"] = wait_gone(old_workers, limit)
            os.kill(old, signal.SIGQUIT)
            res["old_gone_s"] = wait_gone([old], limit)
        else:
            res["old_gone_s"] = None
    elif kind == "haproxy":
        old_workers = children(old)
        os.kill(old, signal.SIGUSR2)
        new = None
        while time.monotonic() - t0 < 10:
            fresh = [p for p in children(old) if p not in old_workers]
            if fresh:
                new = fresh[0]
                break
            time.sleep(0.02)
        res["old_worker_pids"] = old_workers
        res["new_pid"] = new
        res["new_serving_s"] = None if new is None else round(time.monotonic() - t0, 3)
        res["old_gone_s"] = wait_gone(old_workers, limit)
    else:
        sys.exit(f"reload_helper: unknown kind {kind}")
    try:
        status, _, _ = request(port_n, "/")
        res["probe_after"] = status
    except (OSError, http.client.HTTPException) as e:
        res["probe_after"] = str(e)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)


# ---- report ---------------------------------------------------------------------------------------


def load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def recorded_failures(run: str, proxy: str, d: dict) -> str:
    """How many failed reloads the proxy itself reports: Palisade's reloads_total{result="failure"},
    nginx's [emerg] lines in its error log, HAProxy's master `show proc` failed-reload count."""
    try:
        if proxy == "palisade":
            n = d.get("after", {}).get("counts", {}).get("failure", 0) - \
                d.get("before", {}).get("counts", {}).get("failure", 0)
            return f"{n} (metrics)"
        if proxy == "nginx":
            text = open(os.path.join(run, "nginx-error.log"), encoding="utf-8").read()
            return f"{text.count('[emerg]')} ([emerg] in error log)"
        if proxy == "haproxy":
            text = open(os.path.join(run, "show-proc.txt"), encoding="utf-8").read()
            m = re.search(r"master\s+\d+\s+\[failed: (\d+)\]", text)
            return f"{m.group(1) if m else 0} (show proc)"
    except OSError:
        pass
    return "?"


def report(work: str) -> None:
    rows = list(csv.DictReader(open(os.path.join(work, "results.tsv"), encoding="utf-8"),
                               delimiter="\t"))
    verdicts = []

    def errs(r: dict) -> int:
        return sum(int(r[k]) for k in ("non2xx", "connect", "read", "write", "timeout"))

    reload_rows = [r for r in rows if r["scenario"] != "upgrade"]
    notes: list[str] = []
    if reload_rows:
        print("\nReload under load (wrk -t1, one run per line; reloads alternate variants b and a):\n")
        print("| proxy | trigger | requests | req/s | non-2xx | socket errors c/r/w/t | p99 ms "
              "| max ms | reloads applied | apply time median / max | invalid pushes: 422 answers, "
              "old variant still serving, failures the proxy records |")
        print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |")
        for r in reload_rows:
            d = load(os.path.join(work, "runs", f"{r['proxy']}-{r['scenario']}", "driver.json"))
            rel = d.get("reloads", [])
            ok = [x["applied_s"] for x in rel if x.get("applied_s") is not None]
            times = (f"{statistics.median(ok) * 1000:.0f} / {max(ok) * 1000:.0f} ms" if ok else "-")
            inv = d.get("invalid", [])
            api = r["scenario"] == "reload-api"
            refused = sum(1 for x in inv if not x["accepted"]) if api else "-"
            kept = sum(1 for x in inv if x["still_serving"] == "a")
            own = recorded_failures(os.path.join(work, "runs", f"{r['proxy']}-{r['scenario']}"),
                                    r["proxy"], d)
            inv_s = f"{refused}, {kept} of {len(inv)}, {own}" if inv else "-"
            print(f"| {r['proxy']} | {r['scenario'].removeprefix('reload-')} | {int(r['requests']):,} "
                  f"| {int(r['rps']):,} | {r['non2xx']} | {r['connect']}/{r['read']}/{r['write']}/"
                  f"{r['timeout']} | {r['p99_ms']} | {r['max_ms']} | {len(ok)} of {len(rel)} "
                  f"| {times} | {inv_s} |")
            late = sum(1 for x in rel if x.get("late"))
            if late:
                notes.append(f"{r['proxy']} {r['scenario']}: {late} reloads started late (the previous "
                             "one took longer than the interval to show)")
            if r["proxy"] == "palisade":
                name = f"Palisade, {r['scenario']}"
                verdicts.append((f"{name}: {len(rel)} reloads under load, zero client-visible errors",
                                 errs(r) == 0 and len(ok) == len(rel) and len(rel) > 0,
                                 f"{errs(r)} errors, {len(ok)} of {len(rel)} applied"))
                if inv:
                    before = d.get("after_valid", {}).get("version")
                    after = d.get("after", {})
                    fail = after.get("counts", {}).get("failure", 0) - \
                        d.get("before", {}).get("counts", {}).get("failure", 0)
                    hist = sum(v for k, v in after.get("history", {}).items() if k.endswith("/rejected"))
                    good = (errs(r) == 0 and after.get("version") == before and fail == len(inv)
                            and hist == len(inv) and kept == len(inv)
                            and (not api or refused == len(inv)))
                    verdicts.append((
                        f"{name}: {len(inv)} invalid configs under load: zero client errors, running "
                        "version unchanged, failures in history and metrics", good,
                        f"version {before} -> {after.get('version')}, reloads_total failure +{fail}, "
                        f"history rejected {hist}, " + (f"422 answers {refused}, " if api else "")
                        + f"old variant kept {kept}"))
            else:
                verdicts.append((f"{r['proxy']}, {len(rel)} reloads (same check, for comparison)",
                                 errs(r) == 0 and len(ok) == len(rel) and len(rel) > 0,
                                 f"{errs(r)} errors, {len(ok)} of {len(rel)} applied"))

        for n in notes:
            print(f"\nNote: {n}")

    up_rows = [r for r in rows if r["scenario"] == "upgrade"]
    if up_rows:
        print("\nBinary upgrade under load (one upgrade per run):\n")
        print("| proxy | how | requests | req/s | non-2xx | socket errors c/r/w/t | p99 ms | max ms "
              "| new process serving after | old process gone after | old exit status |")
        print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
        how = {"palisade": "SIGUSR2 (socket handoff)", "nginx": "USR2, WINCH, QUIT",
               "haproxy": "master USR2 (= reload)"}
        for r in up_rows:
            run = os.path.join(work, "runs", f"{r['proxy']}-upgrade")
            u = load(os.path.join(run, "upgrade.json"))
            try:
                code = open(os.path.join(run, "old-exit"), encoding="utf-8").read().strip()
            except OSError:
                code = "-"

            def sec(v: float | None) -> str:
                return "never" if v is None else f"{v:.2f} s"

            print(f"| {r['proxy']} | {how.get(r['proxy'], '?')} | {int(r['requests']):,} "
                  f"| {int(r['rps']):,} | {r['non2xx']} | {r['connect']}/{r['read']}/{r['write']}/"
                  f"{r['timeout']} | {r['p99_ms']} | {r['max_ms']} | {sec(u.get('new_serving_s'))} "
                  f"| {sec(u.get('old_gone_s'))} | {code} |")
            good = (errs(r) == 0 and u.get("new_pid") is not None and u.get("old_gone_s") is not None
                    and code in ("0", "-"))
            label = ("Palisade: binary upgrade under load: zero refused connections, zero failed "
                     "requests, the old process exits after drain" if r["proxy"] == "palisade"
                     else f"{r['proxy']}, upgrade (same check, for comparison)")
            verdicts.append((label, good,
                             f"connect errors {r['connect']}, other errors {errs(r) - int(r['connect'])}, "
                             f"pid {u.get('old_pid')} -> {u.get('new_pid')}, old gone "
                             f"{sec(u.get('old_gone_s'))}, exit {code}"))

    if verdicts:
        print()
        for label, good, detail in verdicts:
            print(f"{'PASS' if good else 'FAIL'}  {label} ({detail})")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    funcs = {"variants": variants, "drive": drive, "upgrade": upgrade, "report": report}
    if cmd not in funcs:
        sys.exit(__doc__)
    funcs[cmd](*args)


if __name__ == "__main__":
    main()
