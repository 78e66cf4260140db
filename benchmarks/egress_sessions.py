"""The egress with many concurrent sessions: memory and CPU per session (issue 12, part 5).

    .venv/bin/python benchmarks/egress_sessions.py [--sessions N] [--seconds S]
        [--streams-per-second R] [--size BYTES] [--runs K] [--json PATH]

N QUIC sessions (200 by default) reach a real `unwall egress` process on loopback, each
through a relay WebSocket of its own, as volunteers carry them. Each session browses: it
opens R small streams a second (1 by default, at most 4 in flight), each fetching SIZE bytes
(16 KiB) from a local server, for S seconds (20). Read from /proc: the egress's RSS before
any session, with the N sessions open and idle, at its peak under the load, and 5 s after
they close; its CPU time during the load. Per session: RSS (idle and loaded) and CPU
(CPU-seconds per session-second, i.e. the share of a core one browsing session costs);
per stream and per MB the same CPU. Streams completed and their latency (open to last
byte) say whether the egress kept up: on this 2-core machine the load generator (N aioquic
clients in one process) shares the cores with the egress, so its CPU is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from egress_memory import RelaySession, relay_session, rss_mb
from spread import report

from unwall.local import LocalBridge, cpu_seconds
from unwall.transport.quic import QuicSession, read_header
from unwall.wire.streamheader import StreamReplyDecoder, StreamStatus, StreamTarget

IN_FLIGHT = 4
OPEN_BATCH = 25  # sessions opened at once (the egress bounds pending handshakes per address)


async def _fetch(session: QuicSession, port: int) -> int:
    """One stream: the target, its reply, then every byte until EOF; the bytes read."""
    stream = session.open_stream()
    got = 0
    try:
        await stream.write(StreamTarget("127.0.0.1", port).encode())
        reply = await asyncio.wait_for(read_header(stream, StreamReplyDecoder(), "reply"), 10)
        if reply.status != StreamStatus.OK:
            raise RuntimeError(f"stream refused: {StreamStatus(reply.status).name}")
        while chunk := await stream.read():
            got += len(chunk)
    finally:
        if not stream.at_eof:
            stream.reset()
        session.stream_finished(stream)
    return got


async def _browse(
    session: QuicSession,
    port: int,
    rate: float,
    until: float,
    latencies: list[float],
    outcomes: Counter[str],
) -> int:
    """Open `rate` streams a second (at most IN_FLIGHT at once) until `until`."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    fetched = 0
    running: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal fetched
        started = time.monotonic()
        try:
            fetched += await asyncio.wait_for(_fetch(session, port), 20)
            latencies.append(time.monotonic() - started)
            outcomes["ok"] += 1
        except Exception as exc:  # counted, not raised: the run goes on
            outcomes[type(exc).__name__] += 1
        finally:
            slots.release()

    next_at = time.monotonic()
    while time.monotonic() < until and not session.is_closed:
        await slots.acquire()
        task = asyncio.ensure_future(one())
        running.add(task)
        task.add_done_callback(running.discard)
        next_at += 1.0 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*running, return_exceptions=True)
    return fetched


async def one_run(sessions: int, seconds: float, rate: float, size: int) -> dict[str, float]:
    body = b"x" * size

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    me = os.getpid()
    with tempfile.TemporaryDirectory(prefix="unwall-sessions-") as workdir:
        bridge = LocalBridge(Path(workdir))
        try:
            # One load generator on one address stands for many volunteers.
            egress = await bridge.start_egress(
                extra=("--sessions-per-address", "100000", "--sessions-per-network", "100000")
            )
            await asyncio.sleep(1.0)
            before = rss_mb(egress.pid)
            # One connection per session: no pool limit (aiohttp's default is 100).
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                opened: list[RelaySession] = []
                while len(opened) < sessions:
                    batch = min(OPEN_BATCH, sessions - len(opened))
                    opened += await asyncio.gather(
                        *(relay_session(http, bridge) for _ in range(batch))
                    )
                await asyncio.sleep(2.0)
                idle = rss_mb(egress.pid)
                latencies: list[float] = []
                outcomes: Counter[str] = Counter()
                cpu_egress, cpu_load = cpu_seconds(egress.pid), cpu_seconds(me)
                started = time.monotonic()
                until = started + seconds
                browsing = [
                    asyncio.ensure_future(
                        _browse(r.session, port, rate, until, latencies, outcomes)
                    )
                    for r in opened
                ]
                peak = idle
                while not all(task.done() for task in browsing):
                    peak = max(peak, rss_mb(egress.pid))
                    await asyncio.sleep(0.25)
                elapsed = time.monotonic() - started
                cpu_egress = cpu_seconds(egress.pid) - cpu_egress
                cpu_load = cpu_seconds(me) - cpu_load
                fetched = sum(task.result() for task in browsing)
                for relay in opened:
                    relay.session.close(0, "done")
                await asyncio.sleep(0.5)
                for relay in opened:
                    await relay.close()
            await asyncio.sleep(5.0)
            after = rss_mb(egress.pid)
        finally:
            await bridge.stop_all()
    server.close()
    latencies.sort()
    streams = max(1, outcomes["ok"])
    megabytes = max(fetched, 1) / 1e6
    return {
        "rss_before_mb": round(before, 1),
        "rss_sessions_idle_mb": round(idle, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_close_mb": round(after, 1),
        "rss_per_session_idle_kb": round((idle - before) * 1024 / sessions, 1),
        "rss_per_session_loaded_kb": round((peak - before) * 1024 / sessions, 1),
        "egress_cpu_s": round(cpu_egress, 2),
        "egress_core_share_per_session_pct": round(100 * cpu_egress / elapsed / sessions, 3),
        "egress_cpu_ms_per_stream": round(1000 * cpu_egress / streams, 3),
        "egress_cpu_s_per_mb": round(cpu_egress / megabytes, 3),
        "load_generator_cpu_s": round(cpu_load, 2),
        "streams_per_s": round(outcomes["ok"] / elapsed, 1),
        "streams_failed": sum(n for k, n in outcomes.items() if k != "ok"),
        "mb_per_s": round(megabytes / elapsed, 2),
        "stream_latency_median_ms": round(1000 * statistics.median(latencies or [0.0]), 1),
        "stream_latency_p99_ms": round(
            1000 * (latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0), 1
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams-per-second", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=16 * 1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = [
        asyncio.run(one_run(args.sessions, args.seconds, args.streams_per_second, args.size))
        for _ in range(args.runs)
    ]
    settings = {
        "sessions": args.sessions,
        "seconds": args.seconds,
        "streams_per_second_per_session": args.streams_per_second,
        "stream_bytes": args.size,
    }
    report(settings, runs, args.json, digits=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
