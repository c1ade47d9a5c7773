#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections, sends one request on each, reads the response, then idles.

Used by idle_memory.sh to measure what idle connections cost a proxy. Progress goes to stderr; once
every connection has had its answer (or failed), a status line is written to --status-file and then
rewritten every second while holding:

    ready ok=9998 failed=2 open=9998 elapsed=3.1

`open` counts the connections the server has not closed. The process exits after --hold seconds,
or at once on SIGTERM/SIGINT, closing every connection.
"""

import argparse
import asyncio
import os
import resource
import signal
import sys
import time


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if need > soft:
        sys.exit(f"idle_clients: need {need} descriptors but RLIMIT_NOFILE is {soft}")


async def read_response(reader: asyncio.StreamReader) -> int:
    """Reads one response (head + Content-Length body); returns the status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "transfer-encoding":
            raise RuntimeError("chunked response not expected from the bench upstream")
    if length:
        await reader.readexactly(length)
    return status


class Conn:
    __slots__ = ("reader", "writer", "closed")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False


async def open_one(args, sem: asyncio.Semaphore, conns: list, stats: dict) -> None:
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "User-Agent: palisade-idle-bench\r\n\r\n"
    ).encode()
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port), timeout=args.timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            stats["failed"] += 1
            stats["last_error"] = f"connect: {e!r}"
            return
        try:
            writer.write(request)
            await writer.drain()
            status = await asyncio.wait_for(read_response(reader), timeout=args.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError,
                RuntimeError) as e:
            stats["failed"] += 1
            stats["last_error"] = f"request: {e!r}"
            writer.close()
            return
        if status != 200:
            stats["failed"] += 1
            stats["last_error"] = f"status {status}"
            writer.close()
            return
        stats["ok"] += 1
        conns.append(Conn(reader, writer))


async def watch(conn: Conn) -> None:
    """Completes when the server closes the connection (EOF or error)."""
    try:
        await conn.reader.read(1)
    except (OSError, asyncio.CancelledError):
        pass
    conn.closed = True


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=200, help="connections being set up at once")
    p.add_argument("--timeout", type=float, default=10.0, help="per connect / per response, seconds")
    p.add_argument("--hold", type=float, default=60.0, help="seconds to hold (max 600)")
    p.add_argument("--status-file")
    args = p.parse_args()
    args.hold = min(max(args.hold, 0.0), 600.0)
    raise_nofile(args.count + 64)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    start = time.monotonic()
    stats = {"ok": 0, "failed": 0, "last_error": ""}
    conns: list[Conn] = []
    sem = asyncio.Semaphore(args.concurrency)
    await asyncio.gather(*(open_one(args, sem, conns, stats) for _ in range(args.count)))
    watchers = [asyncio.create_task(watch(c)) for c in conns]
    setup = time.monotonic() - start
    print(
        f"idle_clients: {stats['ok']} ok, {stats['failed']} failed in {setup:.1f}s"
        + (f" (last error: {stats['last_error']})" if stats["failed"] else ""),
        file=sys.stderr,
    )

    def write_status() -> None:
        if not args.status_file:
            return
        open_count = sum(1 for c in conns if not c.closed)
        tmp = args.status_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(
                f"ready ok={stats['ok']} failed={stats['failed']} open={open_count} "
                f"elapsed={time.monotonic() - start:.1f}\n"
            )
        os.replace(tmp, args.status_file)

    deadline = time.monotonic() + args.hold
    while not stop.is_set():
        write_status()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            await asyncio.wait_for(stop.wait(), timeout=min(1.0, left))
        except asyncio.TimeoutError:
            pass
    write_status()
    for t in watchers:
        t.cancel()
    for c in conns:
        c.writer.close()
    await asyncio.gather(*watchers, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
