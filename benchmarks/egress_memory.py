"""Does the egress give memory back after a stream flood? (issue 11, row 2)

    .venv/bin/python benchmarks/egress_memory.py [--sessions N] [--seconds S] [--runs R]
                                                 [--json PATH]

The attack of the issue's row 2, done for real on loopback: N QUIC sessions (82 in the
issue) reach a real `unwall egress` process straight through its relay WebSocket, as a
fake volunteer would carry them, and open streams as fast as they can for S seconds to
a local server that holds each connection for a second. The egress's RSS (from /proc) is
read before, at its peak, and 5 s and 30 s after the flood stops; then a second flood,
and its peak and what is held 30 s after (a leak would grow; memory kept for reuse does
not); streams opened and refused as `busy` are counted. Several runs, each against a fresh
egress; the median and spread are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from spread import report

from unwall.local import LocalBridge
from unwall.transport import quic
from unwall.transport.quic import FlowControlledConnection, QuicSession, read_header
from unwall.wire import ticket
from unwall.wire.streamheader import (
    StreamReplyDecoder,
    StreamStatus,
    StreamTarget,
    encode_voucher,
)

HOLD = 1.0
WORKERS_PER_SESSION = 40


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RelaySession:
    """One QUIC session straight through a relay WebSocket of its own."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, pin: str) -> None:
        self.ws = ws
        self.session = QuicSession(
            FlowControlledConnection(configuration=quic.client_configuration(1200)),
            name="attacker",
            pin=pin,
        )
        self._sends: set[asyncio.Task[None]] = set()
        self.reader = asyncio.ensure_future(self._receive())
        self.session.set_sender(self._send)
        self.session.connect()

    def _send(self, data: bytes) -> None:
        task = asyncio.ensure_future(self.ws.send_bytes(data))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _receive(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                self.session.datagram_received(message.data)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def relay_session(http: aiohttp.ClientSession, bridge: LocalBridge) -> RelaySession:
    """A session through a relay of its own, vouched for as a broker of the bridge would
    (a relay ticket, then the client's voucher: docs/protocol.md §3.1)."""
    offer = secrets.token_urlsafe(16)
    key = ticket.derive_key(bridge.secret)
    relay = ticket.mint(key, offer, ticket.RELAY, time.time())
    url = f"{bridge.egress_url}?offer={offer}&ticket={relay}"
    attacker = RelaySession(await http.ws_connect(url, max_msg_size=0), bridge.pin)
    await asyncio.wait_for(attacker.session.ready, 20)
    secret = os.urandom(ticket.SECRET_SIZE)
    shown = ticket.Voucher(ticket.mint(key, offer, ticket.commit(secret), time.time()), secret)
    stream = attacker.session.open_stream()
    await stream.write(encode_voucher(shown))
    stream.write_eof()
    reply = await read_header(stream, StreamReplyDecoder(), "the voucher's reply")
    if reply.status != StreamStatus.OK:
        raise RuntimeError(f"the egress refused the voucher: {reply.reason}")
    return attacker


async def _worker(session: QuicSession, port: int, until: float, outcomes: Counter[str]) -> None:
    header = StreamTarget("127.0.0.1", port).encode()
    while time.monotonic() < until and not session.is_closed:
        stream = session.open_stream()
        try:
            await stream.write(header)
            reply = await asyncio.wait_for(read_header(stream, StreamReplyDecoder(), "reply"), 10)
            outcomes[StreamStatus(reply.status).name.lower()] += 1
            if reply.status == StreamStatus.OK:
                while await stream.read():
                    pass
            else:
                await asyncio.sleep(0.05)
        except Exception as exc:  # the attacker does not care why
            outcomes[type(exc).__name__] += 1
        finally:
            if not stream.at_eof:
                stream.reset()
            session.stream_finished(stream)


async def _flood(
    bridge: LocalBridge, egress_pid: int, sessions: int, seconds: float, port: int
) -> tuple[float, Counter[str]]:
    """One flood; returns the egress's peak RSS during it, and the streams' outcomes."""
    outcomes: Counter[str] = Counter()
    async with aiohttp.ClientSession() as http:
        opened = await asyncio.gather(*(relay_session(http, bridge) for _ in range(sessions)))
        until = time.monotonic() + seconds
        workers = [
            asyncio.ensure_future(_worker(attacker.session, port, until, outcomes))
            for attacker in opened
            for _ in range(WORKERS_PER_SESSION)
        ]
        peak = 0.0
        while not all(w.done() for w in workers):
            peak = max(peak, rss_mb(egress_pid))
            await asyncio.sleep(0.25)
        for attacker in opened:
            attacker.session.close(0, "done")
        await asyncio.sleep(0.5)
        for attacker in opened:
            await attacker.close()
    return peak, outcomes


async def one_run(sessions: int, seconds: float) -> dict[str, float | int]:
    """Two floods, 30 s apart, against one egress: what it holds after each, and whether
    the second grows it further (a leak would) or reuses what the first left."""

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(HOLD)
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="unwall-memory-") as workdir:
        bridge = LocalBridge(Path(workdir))
        try:
            # One load generator on one address stands for many volunteers.
            egress = await bridge.start_egress(
                extra=("--sessions-per-address", "100000", "--sessions-per-network", "100000")
            )
            await asyncio.sleep(1.0)
            before = rss_mb(egress.pid)
            peak, outcomes = await _flood(bridge, egress.pid, sessions, seconds, port)
            await asyncio.sleep(5.0)
            after_5 = rss_mb(egress.pid)
            await asyncio.sleep(25.0)
            after_30 = rss_mb(egress.pid)
            peak_2, _ = await _flood(bridge, egress.pid, sessions, seconds, port)
            await asyncio.sleep(30.0)
            after_2 = rss_mb(egress.pid)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{bridge.egress_port}/v1/health") as resp,
            ):
                held = await resp.json()
        finally:
            await bridge.stop_all()
    server.close()
    return {
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_5s_mb": round(after_5, 1),
        "rss_after_30s_mb": round(after_30, 1),
        "rss_second_peak_mb": round(peak_2, 1),
        "rss_after_second_30s_mb": round(after_2, 1),
        "sessions_after": held["sessions"],
        "connections_after": held["connections"],
        "streams_ok": outcomes["ok"],
        "streams_busy": outcomes["busy"],
        "streams_other": sum(n for k, n in outcomes.items() if k not in ("ok", "busy")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=82)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = [asyncio.run(one_run(args.sessions, args.seconds)) for _ in range(args.runs)]
    settings = {"sessions": args.sessions, "seconds": args.seconds, "runs": args.runs}
    report(settings, runs, args.json, digits=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
