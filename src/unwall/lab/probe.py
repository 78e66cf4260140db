"""Measure a path the way the presets describe it: round-trip time, and loss per direction.

A prober sends numbered UDP datagrams at a steady rate to an echo server across the path;
the server answers each one with how many of this run's datagrams it has received so far.
So the prober knows, without any clock shared between the two ends:
- upstream loss: 1 - (datagrams the server received) / (datagrams sent);
- downstream loss: 1 - (answers received) / (answers the server sent);
- the round-trip time of every answered datagram.

The lab runs the echo server in its internet namespace (`PROBE_PORT` on the open site's
address) and `unwall lab probe` runs the prober in the censored namespace.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import struct
import time
from dataclasses import dataclass, field
from typing import Any

PROBE_PORT = 7  # the echo service's port
MAGIC = b"UWPR"
_REQUEST = struct.Struct("!4s8sIQ")  # magic, run id, sequence number, send time (ns)
_ANSWER = struct.Struct("!4s8sIQI")  # ... and the count of this run's datagrams received
REPORT_SEQ = 0xFFFFFFFF  # "how many have you received?", not counted
REPORT_TRIES = 40
PAD = 64  # bytes of padding after the header: small packets, as ICE checks and ACKs are
#: socket buffers that ride out a busy machine: a stalled reader must not turn into "loss"
SOCKET_BUFFER = 8 << 20


def roomy_buffers(transport: asyncio.BaseTransport) -> None:
    """Large send and receive buffers (forced as root, where the sysctl caps are lower)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for forced, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # *BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


class EchoServer(asyncio.DatagramProtocol):
    """Answers each probe with the number of its run's probes received so far."""

    def __init__(self, max_runs: int = 64) -> None:
        self.received: dict[bytes, int] = {}
        self.max_runs = max_runs

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]
        roomy_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < _REQUEST.size or not data.startswith(MAGIC):
            return
        _, run, seq, sent = _REQUEST.unpack_from(data)
        if run not in self.received and len(self.received) >= self.max_runs:
            self.received.pop(next(iter(self.received)))  # forget the oldest run
        count = self.received.get(run, 0)
        if seq != REPORT_SEQ:
            count += 1
            self.received[run] = count
        self.transport.sendto(
            _ANSWER.pack(MAGIC, run, seq, sent, count) + data[_REQUEST.size :], addr
        )


@dataclass
class ProbeResult:
    sent: int
    server_received: int
    answers: int
    rtts_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def up_loss(self) -> float:
        return 1 - self.server_received / self.sent if self.sent else 0.0

    @property
    def down_loss(self) -> float:
        return 1 - self.answers / self.server_received if self.server_received else 0.0

    def as_dict(self) -> dict[str, Any]:
        rtts = self.rtts_ms
        return {
            "sent": self.sent,
            "server_received": self.server_received,
            "answers": self.answers,
            "up_loss": round(self.up_loss, 5),
            "down_loss": round(self.down_loss, 5),
            "rtt_ms_mean": round(statistics.fmean(rtts), 2) if rtts else None,
            "rtt_ms_median": round(statistics.median(rtts), 2) if rtts else None,
            "rtt_ms_min": round(min(rtts), 2) if rtts else None,
            "rtt_ms_p99": round(statistics.quantiles(rtts, n=100)[98], 2)
            if len(rtts) > 1
            else None,
            "rtt_ms_max": round(max(rtts), 2) if rtts else None,
            "rtt_ms_stdev": round(statistics.pstdev(rtts), 2) if rtts else None,
        }


class _Prober(asyncio.DatagramProtocol):
    def __init__(self, run: bytes) -> None:
        self.run = run
        self.seen: set[int] = set()
        self.rtts_ms: list[float] = []
        self.server_count = 0
        self.report = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        roomy_buffers(transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < _ANSWER.size:
            return
        magic, run, seq, sent, count = _ANSWER.unpack_from(data)
        if magic != MAGIC or run != self.run:
            return
        self.server_count = max(self.server_count, count)
        if seq == REPORT_SEQ:
            if not self.report.done():
                self.report.set_result(count)
            return
        if seq in self.seen:
            return
        self.seen.add(seq)
        self.rtts_ms.append((time.monotonic_ns() - sent) / 1e6)


async def probe(
    address: str, port: int = PROBE_PORT, count: int = 10_000, rate: float = 2000.0
) -> ProbeResult:
    """Send `count` probes at `rate` per second; wait for stragglers; ask for the count."""
    loop = asyncio.get_running_loop()
    run = os.urandom(8)
    transport, prober = await loop.create_datagram_endpoint(
        lambda: _Prober(run), remote_addr=(address, port)
    )
    pad = bytes(PAD)
    try:
        start = time.monotonic()
        for seq in range(count):
            due = start + seq / rate
            delay = due - time.monotonic()
            if delay > 0.002:
                await asyncio.sleep(delay)
            transport.sendto(_REQUEST.pack(MAGIC, run, seq, time.monotonic_ns()) + pad)
        # Stragglers: wait until answers stop coming for a second (or 10 s in all).
        last, deadline = len(prober.seen), time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            if len(prober.seen) == last:
                break
            last = len(prober.seen)
        for _ in range(REPORT_TRIES):
            transport.sendto(_REQUEST.pack(MAGIC, run, REPORT_SEQ, time.monotonic_ns()) + pad)
            try:
                await asyncio.wait_for(asyncio.shield(prober.report), 0.5)
                break
            except TimeoutError:
                continue
        else:
            raise TimeoutError(f"the echo server at {address}:{port} never reported its count")
        return ProbeResult(count, prober.server_count, len(prober.seen), prober.rtts_ms)
    finally:
        transport.close()
