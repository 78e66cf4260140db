"""The link emulator's shell: holds each packet crossing the box for its due time.

It runs in the box namespace as its own process (`unwall lab _link`), beside the box's
inspector, on the packets of an iptables-nft NFQUEUE rule in the *mangle FORWARD* chain:
packets are held on their way through the box, never in a sender's OUTPUT path (where a
held packet would still count against its socket and throttle the sender), and they reach
the box's inspector and its filter rules after the delay, so nothing bypasses the censor.
The queue has no bypass: if this process dies, the link is down (fails closed).

The decisions are :mod:`unwall.lab.link`'s; this file only copies the first bytes of each
packet (its length is in the IP header), asks the model, and gives each packet its verdict
when it is due: later ACCEPT, or DROP at once for a lost one. SIGHUP re-reads the link
description from the state file (packets already held keep their due times).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from unwall.lab.link import Link, LinkSpec, link_from_state

log = logging.getLogger("unwall.lab.link")

QUEUE_NUM = 1
#: packets the kernel may hold for us: 50 Mbit/s x 150 ms is about 600 full-size packets
#: per direction; this leaves room for bursts and slower links with deep queues
QUEUE_MAX_LEN = 32768
COPY_BYTES = 4  # the IP header's first word: version, length
STATS_INTERVAL = 1.0
UP_IFACE, DOWN_IFACE = "b0", "b1"  # packets arriving on b0 go up (censored -> internet)


def emulator_rules(add: bool = True) -> list[list[str]]:
    """iptables-nft commands (box namespace) that send forwarded packets to the emulator."""
    op = "-A" if add else "-D"
    return [
        ["iptables", "-t", "mangle", op, "FORWARD", "-i", UP_IFACE, "-o", DOWN_IFACE,
         "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM)],
        ["iptables", "-t", "mangle", op, "FORWARD", "-i", DOWN_IFACE, "-o", UP_IFACE,
         "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM)],
    ]  # fmt: skip


def write_link_state(path: Path, spec: LinkSpec) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(spec.to_dict(), indent=2))
    temp.replace(path)


def read_link_state(path: Path) -> LinkSpec:
    return link_from_state(json.loads(path.read_text()))


class DelayLine:
    def __init__(self, spec: LinkSpec, up_ifindex: int) -> None:
        self.link = Link(spec)
        self.up_ifindex = up_ifindex
        self.held: tuple[deque[tuple[float, Any]], deque[tuple[float, Any]]] = (
            deque(),
            deque(),
        )
        self.max_held = 0

    def reconfigure(self, spec: LinkSpec) -> None:
        self.link = Link(spec)
        log.info("link is now %s", spec.describe())

    def on_packet(self, packet: Any) -> None:
        header = packet.get_payload()
        size = int.from_bytes(header[2:4], "big") if len(header) >= 4 else 0
        up = packet.indev == self.up_ifindex
        direction = self.link.up if up else self.link.down
        due = direction.admit(size, time.monotonic())
        if due is None:
            packet.drop()
            return
        held = self.held[0 if up else 1]
        held.append((due, packet))

    def release(self, now: float) -> float | None:
        """Accept every packet that is due; the time of the next one (None: none held)."""
        next_due: float | None = None
        total = 0
        for held in self.held:
            while held and held[0][0] <= now:
                held.popleft()[1].accept()
            if held:
                total += len(held)
                due = held[0][0]
                next_due = due if next_due is None else min(next_due, due)
        self.max_held = max(self.max_held, total)
        return next_due

    def stats(self) -> dict[str, Any]:
        return {**self.link.stats(), "held_max": self.max_held, "time": time.time()}


def run_delay_line(state: Path) -> int:
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    link_path = state / "link.json"
    stats_path = state / "link-stats.json"
    line = DelayLine(read_link_state(link_path), socket.if_nametoindex(UP_IFACE))
    queue = NetfilterQueue()
    queue.bind(
        QUEUE_NUM, line.on_packet, max_len=QUEUE_MAX_LEN, mode=COPY_PACKET, range=COPY_BYTES,
        sock_len=8 << 20,
    )  # fmt: skip
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno())
    reload_requested = stop_requested = False

    def on_hup(signum: int, frame: object) -> None:
        nonlocal reload_requested
        reload_requested = True

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    poller = select.epoll()
    poller.register(queue.get_fd(), select.EPOLLIN)
    poller.register(wake_read.fileno(), select.EPOLLIN)
    log.info("link emulator running: %s", line.link.spec.describe())
    (state / "link.ready").write_text(str(os.getpid()))
    next_stats = time.monotonic() + STATS_INTERVAL
    next_due: float | None = None
    try:
        while not stop_requested:
            now = time.monotonic()
            wait = next_stats - now if next_due is None else min(next_due, next_stats) - now
            events = poller.poll(max(wait, 0.0))
            for fd, _ in events:
                if fd == wake_read.fileno():
                    with contextlib.suppress(BlockingIOError):
                        wake_read.recv(64)
                else:
                    queue.run(block=False)
            if reload_requested:
                reload_requested = False
                try:
                    line.reconfigure(read_link_state(link_path))
                except (OSError, ValueError) as exc:
                    log.error("kept the old link: cannot read %s: %s", link_path, exc)
            now = time.monotonic()
            next_due = line.release(now)
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL
                temp = stats_path.with_suffix(".tmp")
                temp.write_text(json.dumps(line.stats()))
                temp.replace(stats_path)
    finally:
        poller.close()
        queue.unbind()
    return 0
