"""The monitoring box's daemon: inspects first packets, poisons DNS, logs every flow.

It runs inside the box namespace. Netfilter hands it the first packets of each flow over
NFQUEUE (iptables-nft: the kernel here has no nft `queue` statement); its verdict goes back
as a packet mark that the rules copy into the flow's conntrack mark, so the rest of the
flow never leaves the kernel. The queue has no bypass: with the daemon dead, undecided
flows are dropped (the box fails closed). Flow accounting comes from conntrack events.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unwall.lab.analyzers.dns import describe_message, forge_response
from unwall.lab.flowlog import FlowLog, FlowRow
from unwall.lab.inspector import MARK_ALLOW, MARK_DROP, MARK_RST, Inspector
from unwall.lab.profile import CensorProfile, name_matches
from unwall.lab.topology import BOX_INSIDE_IP, CENSORED_NET

log = logging.getLogger("unwall.lab.box")

QUEUE_NUM = 0
_CENSORED = ipaddress.IPv4Network(CENSORED_NET)
VERDICT_NAMES = {MARK_ALLOW: "allow", MARK_DROP: "drop", MARK_RST: "rst"}


def box_rules(profile: CensorProfile | None = None) -> list[list[str]]:
    """iptables-nft commands (box namespace) that route first packets to the daemon."""
    ipt = ["iptables"]
    udp_block: list[list[str]] = []
    if profile is not None and profile.udp_block:
        # Only TCP leaves the censored network; conntrack still logs each attempt.
        udp_block = [[*ipt, "-A", "FORWARD", "-i", "b0", "-p", "udp", "-j", "DROP"]]
    return [
        *udp_block,
        # Every DNS query from the censored network goes to the box's own resolver.
        [*ipt, "-t", "nat", "-A", "PREROUTING", "-i", "b0", "-p", "udp", "--dport", "53",
         "-j", "DNAT", "--to-destination", f"{BOX_INSIDE_IP}:53"],
        [*ipt, "-A", "FORWARD", "-m", "mark", "!", "--mark", "0", "-j", "CONNMARK", "--save-mark"],
        [*ipt, "-A", "FORWARD", "-m", "connmark", "--mark", str(MARK_ALLOW), "-j", "ACCEPT"],
        [*ipt, "-A", "FORWARD", "-p", "tcp", "-m", "connmark", "--mark", str(MARK_RST),
         "-j", "REJECT", "--reject-with", "tcp-reset"],
        [*ipt, "-A", "FORWARD", "-m", "connmark", "--mark", str(MARK_RST), "-j", "DROP"],
        [*ipt, "-A", "FORWARD", "-m", "connmark", "--mark", str(MARK_DROP), "-j", "DROP"],
        # No --queue-bypass: without the daemon, undecided packets are dropped.
        [*ipt, "-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM)],
    ]  # fmt: skip


def throttle_commands(profile: CensorProfile) -> list[list[str]]:
    """tc commands (box namespace) that shape traffic with the throttled networks.

    Downloads leave the box on b0 (towards the censored network), uploads on b1: each gets
    an htb tree whose default class is unlimited and whose throttled class holds the rate.
    """
    commands: list[list[str]] = []
    if not profile.throttle_ip:
        return commands
    for device, direction in (("b0", "src"), ("b1", "dst")):
        commands += [
            ["tc", "qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "10"],
            ["tc", "class", "add", "dev", device, "parent", "1:", "classid", "1:10", "htb",
             "rate", "10gbit"],
            ["tc", "class", "add", "dev", device, "parent", "1:", "classid", "1:20", "htb",
             "rate", profile.throttle_rate, "ceil", profile.throttle_rate],
        ]  # fmt: skip
        for network in profile.throttle_ip:
            commands.append(
                ["tc", "filter", "add", "dev", device, "parent", "1:", "protocol", "ip", "prio",
                 "1", "u32", "match", "ip", direction, str(network), "flowid", "1:20"]
            )  # fmt: skip
    return commands


class Box:
    def __init__(self, profile: CensorProfile, db_path: Path, upstream_dns: str) -> None:
        self.profile = profile
        self.inspector = Inspector(profile, CENSORED_NET)
        self.log = FlowLog(db_path)
        self.upstream_dns = upstream_dns
        self._flow_ids: dict[object, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- NFQUEUE ------------------------------------------------------------------------

    def on_packet(self, packet: object) -> None:
        data: bytes = packet.get_payload()  # type: ignore[attr-defined]
        decision = self.inspector.packet(data, time.time())
        if decision is None:
            packet.accept()  # type: ignore[attr-defined]
            return
        if decision.repeat:  # decided and logged already; queued before its mark was set
            packet.set_mark(decision.mark)  # type: ignore[attr-defined]
            packet.repeat()  # type: ignore[attr-defined]
            return
        flow = decision.flow
        key = flow.key
        row = FlowRow(key.protocol, key.client, key.client_port, key.server, key.server_port)
        flow_id = self._flow_ids.get(key)
        if flow_id is None:
            flow_id = self.log.flow_seen(row, flow.first_seen)
            self._flow_ids[key] = flow_id
        self.log.add_findings(
            flow_id, [(f.analyzer, f.key, f.value) for f in decision.new_findings]
        )
        if decision.mark is None:
            packet.accept()  # type: ignore[attr-defined]
            return
        verdict = VERDICT_NAMES[decision.mark]
        self.log.set_verdict(flow_id, verdict, flow.reason)
        self._flow_ids.pop(key, None)
        if decision.mark != MARK_ALLOW:
            log.info("blocked %s: %s (%s)", key, flow.reason, verdict)
            if self.profile.residual_seconds and key.protocol == "tcp":
                self._spawn(self._residual(key.client, key.server, key.server_port))
        packet.set_mark(decision.mark)  # type: ignore[attr-defined]
        packet.repeat()  # type: ignore[attr-defined]

    async def _residual(self, client: str, server: str, port: int) -> None:
        """After a hit, the same client, server and port are dropped for a while."""
        rule = ["FORWARD", "-s", client, "-d", server, "-p", "tcp", "--dport", str(port),
                "-j", "DROP"]  # fmt: skip
        await _run("iptables", "-I", *rule)
        try:
            await asyncio.sleep(self.profile.residual_seconds)
        finally:
            await _run("iptables", "-D", *rule)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- conntrack events ---------------------------------------------------------------

    async def follow_conntrack(self) -> None:
        process = await asyncio.create_subprocess_exec(
            "conntrack", "-E", "-e", "NEW,DESTROY", "-o", "timestamp,extended",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                self._conntrack_line(line.decode(errors="replace"))
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def _conntrack_line(self, line: str) -> None:
        event = parse_conntrack_event(line)
        if event is None or ipaddress.IPv4Address(event.src) not in _CENSORED:
            return
        row = FlowRow(event.protocol, event.src, event.sport, event.dst, event.dport)
        if event.type == "NEW":
            self.log.flow_seen(row, event.time)
        else:
            self.log.flow_ended(row, event.start, event.time, event.counters)

    # -- DNS ----------------------------------------------------------------------------

    async def serve_dns(self) -> None:
        loop = asyncio.get_running_loop()
        box = self

        class Resolver(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                box._spawn(box._answer(self.transport, data, addr))  # type: ignore[arg-type]

        await loop.create_datagram_endpoint(Resolver, local_addr=(BOX_INSIDE_IP, 53))
        await asyncio.Event().wait()

    async def _answer(
        self, transport: asyncio.DatagramTransport, query: bytes, addr: tuple[str, int]
    ) -> None:
        try:
            described = describe_message(query)
        except ValueError:
            log.info("dropped a datagram to the DNS port that is not DNS, from %s", addr[0])
            return
        names = [value for key, value in described if key == "query"]
        name = names[0].split()[0] if names else ""
        # The lab speaks IPv4: A questions get the forged address; AAAA ones go upstream
        # (the zone has none), so the client ends up with the forged A.
        asks_ipv4 = not any(k == "query-type" and v.endswith(" AAAA") for k, v in described)
        if name and asks_ipv4 and name_matches(name, self.profile.dns_poison):
            self.log.dns(time.time(), addr[0], name, self.profile.dns_answer, True)
            transport.sendto(forge_response(query, self.profile.dns_answer), addr)
            log.info("poisoned DNS for %s asked by %s", name, addr[0])
            return
        answer = await _ask(self.upstream_dns, query)
        if answer is None:
            return
        try:
            answers = [value for key, value in describe_message(answer) if key == "answer"]
        except ValueError:
            answers = []
        self.log.dns(time.time(), addr[0], name, "; ".join(answers), False)
        transport.sendto(answer, addr)


async def _ask(server: str, query: bytes, timeout: float = 3.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()

    class Upstream(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not reply.done():
                reply.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=(server, 53))
    try:
        transport.sendto(query)
        return await asyncio.wait_for(reply, timeout)
    except TimeoutError:
        return None
    finally:
        transport.close()


async def _run(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await process.wait()


_FIELD = re.compile(r"(\w+)=(\S+)")
_STAMP = re.compile(r"\s*\[(\d+\.\d+)\]\s+\[(NEW|DESTROY)\]\s+ipv4\s+\d+\s+(tcp|udp)\s")


@dataclass(frozen=True)
class ConntrackEvent:
    time: float
    type: str  # NEW or DESTROY
    protocol: str
    src: str
    dst: str
    sport: int
    dport: int
    #: packets and bytes of the original direction, then of the reply (DESTROY only)
    counters: tuple[int, int, int, int] = (0, 0, 0, 0)
    start: float | None = None


def parse_conntrack_event(line: str) -> ConntrackEvent | None:
    """One line of `conntrack -E -o timestamp,extended` (None unless tcp/udp over IPv4)."""
    stamp = _STAMP.match(line)
    if stamp is None:
        return None
    first: dict[str, str] = {}
    counters: list[int] = []
    seen_src = 0
    for key, value in _FIELD.findall(line):
        if key == "src":
            seen_src += 1
        if seen_src == 1 and key not in first:
            first[key] = value
        if key in ("packets", "bytes"):
            counters.append(int(value))
    if not {"src", "dst", "sport", "dport"} <= first.keys():
        return None
    when = float(stamp.group(1))
    padded = [*counters, 0, 0, 0, 0][:4]
    delta = re.search(r"delta-time=(\d+)", line)
    return ConntrackEvent(
        time=when,
        type=stamp.group(2),
        protocol=stamp.group(3),
        src=first["src"],
        dst=first["dst"],
        sport=int(first["sport"]),
        dport=int(first["dport"]),
        counters=(padded[0], padded[1], padded[2], padded[3]),
        start=when - int(delta.group(1)) if delta else None,
    )


async def run_box(profile: CensorProfile, db_path: Path, upstream_dns: str) -> None:
    from netfilterqueue import NetfilterQueue

    box = Box(profile, db_path, upstream_dns)
    queue = NetfilterQueue()
    queue.bind(QUEUE_NUM, box.on_packet, max_len=4096)
    loop = asyncio.get_running_loop()
    loop.add_reader(queue.get_fd(), lambda: queue.run(block=False))
    log.info("box inspecting (profile %s), logging to %s", profile.source, db_path)
    try:
        await asyncio.gather(box.follow_conntrack(), box.serve_dns())
    finally:
        loop.remove_reader(queue.get_fd())
        queue.unbind()
        box.log.close()
