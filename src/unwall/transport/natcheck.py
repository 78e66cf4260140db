"""NAT behaviour discovery (RFC 5780): which kind of NAT is between us and the internet.

Two layers, as everywhere in unwall:

- :func:`next_step` is the decision alone: given the answers so far, the next test to send,
  or the verdict. :class:`NatDiscovery` wraps it in a sans-IO engine (STUN transactions,
  retransmissions, a clock passed in), encoding with :mod:`aioice.stun`.
- :func:`discover_nat` is the thin asyncio shell: one UDP socket, bytes in and out.

The tests, all from one socket to a STUN server with two addresses (coturn given two
listening IPs answers them), run in this order:

1. Binding to the primary address: our mapped address X1, and the server's OTHER-ADDRESS.
   X1 equal to our own address means no NAT (`none`); no OTHER-ADDRESS means the server
   cannot tell us more (`unknown`).
2. Filtering (RFC 5780 4.4): a binding request with CHANGE-REQUEST "change IP and port".
   An answer from the other address means endpoint-independent filtering; otherwise
   "change port" alone: an answer means address-dependent, none address-and-port-dependent.
3. Mapping (RFC 5780 4.3): a binding to the alternate IP (primary port) gives X2; X2 == X1
   is endpoint-independent mapping. Otherwise one to the alternate IP and port gives X3:
   X3 == X2 is address-dependent, else address-and-port-dependent; both are `symmetric`.

Filtering runs before mapping on purpose: the mapping tests send to the server's other
address, and an address-dependent filter would from then on let that address in, so a
filtering test after them would see endpoint-independent filtering that is not there.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from aioice import stun

from unwall.wire.nat import NatKind

log = logging.getLogger("unwall.natcheck")

Address = tuple[str, int]
Behaviour = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]

CHANGE_IP: Final = 0x04
CHANGE_PORT: Final = 0x02
STUN_DEFAULT_PORT: Final = 3478


class Probe(enum.Enum):
    """The RFC 5780 tests this module sends."""

    BINDING = "binding"
    FILTER_CHANGE_BOTH = "filtering: change IP and port"
    FILTER_CHANGE_PORT = "filtering: change port"
    MAPPING_ALT_IP = "mapping: alternate IP"
    MAPPING_ALT_BOTH = "mapping: alternate IP and port"


@dataclass(frozen=True)
class Reply:
    """A binding success response: our mapped address, as the server saw it, and more."""

    mapped: Address
    source: Address  # where the response came from
    other: Address | None = None  # OTHER-ADDRESS: the server's second address, if any


@dataclass(frozen=True)
class Refused:
    """A binding error response (e.g. 420 for a server that does not know CHANGE-REQUEST)."""

    code: int
    reason: str


#: What became of one test: a reply, a refusal, or None for no answer in time.
Outcome = Reply | Refused | None


@dataclass(frozen=True)
class Send:
    """Send a binding request for ``probe`` to ``to`` with CHANGE-REQUEST flags ``change``."""

    probe: Probe
    to: Address
    change: int = 0


@dataclass(frozen=True)
class Verdict:
    kind: NatKind
    reason: str
    mapping: Behaviour | None = None
    filtering: Behaviour | None = None
    mapped: Address | None = None

    def describe(self) -> str:
        """The verdict in one line for a log."""
        if self.mapping is None and self.filtering is None:
            return f"{self.kind} ({self.reason})"
        parts = [f"mapping {self.mapping or 'not measured'}"]
        parts.append(f"filtering {self.filtering or 'not measured'}")
        return f"{self.kind} ({', '.join(parts)})"


def next_step(
    local: Address,
    server: Address,
    outcomes: Mapping[Probe, Outcome],
    change_request: bool = True,
) -> Send | Verdict:
    """The next test to run given the ``outcomes`` so far, or the verdict.

    ``local`` is the address our socket is bound to (a concrete address, not 0.0.0.0),
    ``server`` the STUN server's primary address. Without ``change_request`` only plain
    binding requests go out, to the server's two addresses, as a browser with two STUN
    servers sends them: the mapping is measured, the filtering is not (it needs RFC 5780's
    CHANGE-REQUEST, which no browser sends, so a box can single it out) and is taken as
    the strictest, address-and-port-dependent: an endpoint-independent mapping is then
    reported `port-restricted`, which the broker never pairs with a peer it cannot reach.
    """
    if Probe.BINDING not in outcomes:
        return Send(Probe.BINDING, server)
    first = outcomes[Probe.BINDING]
    if first is None:
        return Verdict("unknown", f"no answer from the STUN server at {_show(server)}")
    if isinstance(first, Refused):
        return Verdict("unknown", f"the STUN server refused a binding ({first.code})")
    mapped = first.mapped
    if _same(mapped, local):
        return Verdict("none", "the mapped address is this machine's own", mapped=mapped)
    other = first.other
    if other is None:
        return Verdict(
            "unknown", "the STUN server does not support RFC 5780 (no OTHER-ADDRESS)", mapped=mapped
        )
    if _ip(other[0]) == _ip(server[0]) or other[1] == server[1]:
        why = "the STUN server's OTHER-ADDRESS does not differ from it in IP and port"
        return Verdict("unknown", why, mapped=mapped)

    if not change_request:
        mapping = _mapping(server, other, mapped, outcomes)
        if isinstance(mapping, Send):
            return mapping
        if isinstance(mapping, Verdict):
            return Verdict(mapping.kind, mapping.reason, mapped=mapped)
        assumed: NatKind = "port-restricted" if mapping == "endpoint-independent" else "symmetric"
        why = "plain bindings to two addresses; filtering not measured, taken as the strictest"
        return Verdict(assumed, why, mapping=mapping, mapped=mapped)
    filtering = _filtering(server, other, outcomes)
    if isinstance(filtering, Send | Verdict):
        if isinstance(filtering, Verdict):
            return Verdict(filtering.kind, filtering.reason, mapped=mapped)
        return filtering

    mapping = _mapping(server, other, mapped, outcomes)
    if isinstance(mapping, Send):
        return mapping
    if isinstance(mapping, Verdict):
        return Verdict(mapping.kind, mapping.reason, filtering=filtering, mapped=mapped)
    if mapping != "endpoint-independent":
        kind: NatKind = "symmetric"
    elif filtering == "endpoint-independent":
        kind = "full-cone"
    elif filtering == "address-dependent":
        kind = "restricted"
    else:
        kind = "port-restricted"
    return Verdict(kind, "RFC 5780", mapping=mapping, filtering=filtering, mapped=mapped)


def _filtering(
    server: Address, other: Address, outcomes: Mapping[Probe, Outcome]
) -> Behaviour | Send | Verdict:
    if Probe.FILTER_CHANGE_BOTH not in outcomes:
        return Send(Probe.FILTER_CHANGE_BOTH, server, CHANGE_IP | CHANGE_PORT)
    both = outcomes[Probe.FILTER_CHANGE_BOTH]
    if isinstance(both, Refused):
        return Verdict("unknown", f"the STUN server refused CHANGE-REQUEST ({both.code})")
    if both is not None:
        if not _same(both.source, other):
            return Verdict("unknown", "the STUN server ignored CHANGE-REQUEST")
        return "endpoint-independent"
    if Probe.FILTER_CHANGE_PORT not in outcomes:
        return Send(Probe.FILTER_CHANGE_PORT, server, CHANGE_PORT)
    port = outcomes[Probe.FILTER_CHANGE_PORT]
    if isinstance(port, Refused):
        return Verdict("unknown", f"the STUN server refused CHANGE-REQUEST ({port.code})")
    if port is not None:
        if not _same(port.source, (server[0], other[1])):
            return Verdict("unknown", "the STUN server ignored CHANGE-REQUEST")
        return "address-dependent"
    return "address-and-port-dependent"


def _mapping(
    server: Address, other: Address, mapped: Address, outcomes: Mapping[Probe, Outcome]
) -> Behaviour | Send | Verdict:
    alt_ip = (other[0], server[1])
    if Probe.MAPPING_ALT_IP not in outcomes:
        return Send(Probe.MAPPING_ALT_IP, alt_ip)
    second = outcomes[Probe.MAPPING_ALT_IP]
    if not isinstance(second, Reply):
        return Verdict("unknown", f"the STUN server's other address {_show(alt_ip)} did not answer")
    if _same(second.mapped, mapped):
        return "endpoint-independent"
    if Probe.MAPPING_ALT_BOTH not in outcomes:
        return Send(Probe.MAPPING_ALT_BOTH, other)
    third = outcomes[Probe.MAPPING_ALT_BOTH]
    if not isinstance(third, Reply):
        return Verdict("unknown", f"the STUN server's other address {_show(other)} did not answer")
    if _same(third.mapped, second.mapped):
        return "address-dependent"
    return "address-and-port-dependent"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _same(a: Address, b: Address) -> bool:
    return a[1] == b[1] and _ip(a[0]) == _ip(b[0])


def _show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the sans-IO engine ---------------------------------------------------------------------


@dataclass(frozen=True)
class NatCheckConfig:
    """Retransmission of each test: first after ``rto`` seconds, doubling, ``attempts`` sends
    in all; a test with no answer ``timeout`` seconds after its first send has failed."""

    rto: float = 0.25
    attempts: int = 3
    timeout: float = 1.5
    #: RFC 5780's filtering tests (CHANGE-REQUEST: no browser sends one); False: plain
    #: bindings only, the filtering taken as the strictest (see next_step)
    change_request: bool = True


@dataclass
class _Transaction:
    send: Send
    transaction_id: bytes
    data: bytes
    started: float
    next_send: float
    sent: int = 0


class NatDiscovery:
    """RFC 5780 discovery as a plain object: bytes and time in, bytes and a verdict out."""

    def __init__(
        self, local: Address, server: Address, now: float, config: NatCheckConfig | None = None
    ) -> None:
        self.local = local
        self.server = server
        self.config = config or NatCheckConfig()
        self.outcomes: dict[Probe, Outcome] = {}
        self.verdict: Verdict | None = None
        self._current: _Transaction | None = None
        self._advance(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """What to send now (the current test's request, when it is due)."""
        current = self._current
        if current is None or current.sent >= self.config.attempts or now < current.next_send:
            return []
        current.sent += 1
        current.next_send = now + self.config.rto * (2 ** (current.sent - 1))
        return [(current.data, current.send.to)]

    def receive_datagram(self, data: bytes, source: Address, now: float) -> None:
        """A datagram arrived from ``source``; anything but our current answer is ignored."""
        current = self._current
        if current is None:
            return
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.transaction_id != current.transaction_id:
            return
        if message.message_method != stun.Method.BINDING:
            return
        outcome: Outcome
        if message.message_class == stun.Class.RESPONSE:
            mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
                "MAPPED-ADDRESS"
            )
            if mapped is None:
                return
            other = message.attributes.get("OTHER-ADDRESS")
            outcome = Reply(
                (str(mapped[0]), int(mapped[1])),
                (source[0], source[1]),
                (str(other[0]), int(other[1])) if other is not None else None,
            )
        elif message.message_class == stun.Class.ERROR:
            code, reason = message.attributes.get("ERROR-CODE", (0, ""))
            outcome = Refused(int(code), str(reason))
        else:
            return
        self._finish(outcome, now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (and then :meth:`datagrams_to_send`) is next due."""
        current = self._current
        if current is None:
            return None
        deadline = current.started + self.config.timeout
        if current.sent < self.config.attempts:
            return min(current.next_send, deadline)
        return deadline

    def handle_timer(self, now: float) -> None:
        current = self._current
        if current is not None and now >= current.started + self.config.timeout:
            self._finish(None, now)

    def _finish(self, outcome: Outcome, now: float) -> None:
        assert self._current is not None
        self.outcomes[self._current.send.probe] = outcome
        self._current = None
        self._advance(now)

    def _advance(self, now: float) -> None:
        step = next_step(self.local, self.server, self.outcomes, self.config.change_request)
        if isinstance(step, Verdict):
            self.verdict = step
            return
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        if step.change:
            request.attributes["CHANGE-REQUEST"] = step.change
        self._current = _Transaction(step, request.transaction_id, bytes(request), now, now)


# -- the asyncio shell ----------------------------------------------------------------------

_STUN_URL = re.compile(r"stun:(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]?]+)(?::(?P<port>\d{1,5}))?")


def stun_server_of(ice_servers: Sequence[str]) -> tuple[str, int] | None:
    """The (host, port) of the first `stun:` URL, the one aiortc's ICE agent uses too."""
    for url in ice_servers:
        match = _STUN_URL.fullmatch(url)
        if match:
            host = match["host"].strip("[]")
            return host, int(match["port"] or STUN_DEFAULT_PORT)
    return None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: asyncio.Queue[tuple[bytes, Address]]) -> None:
        self.queue = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable) is no answer; the test times out like any other.
        log.debug("NAT check: %s", exc)


async def discover_nat(
    server: tuple[str, int], local_host: str | None = None, config: NatCheckConfig | None = None
) -> Verdict:
    """Run the RFC 5780 tests against the STUN server ``(host, port)``.

    The socket binds to ``local_host`` (e.g. the one address ICE is told to offer), or else
    to the source address this machine's routes choose for the server. Never raises for a
    network problem: an unreachable or silent server is an `unknown` verdict.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(server[0], server[1], type=socket.SOCK_DGRAM)
    except OSError as exc:
        return Verdict("unknown", f"cannot resolve the STUN server {server[0]}: {exc}")
    family, _, _, _, sockaddr = infos[0]
    server_address = (str(sockaddr[0]), int(sockaddr[1]))
    try:
        host = local_host or _route_source(family, server_address)
        queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(queue), local_addr=(host, 0), family=family
        )
    except OSError as exc:
        return Verdict("unknown", f"cannot open a UDP socket for the NAT check: {exc}")
    try:
        sockname = transport.get_extra_info("sockname")
        local = (str(sockname[0]), int(sockname[1]))
        engine = NatDiscovery(local, server_address, loop.time(), config)
        while engine.verdict is None:
            for data, to in engine.datagrams_to_send(loop.time()):
                transport.sendto(data, to)
            timer = engine.get_timer()
            wait = None if timer is None else max(0.0, timer - loop.time())
            try:
                data, source = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                engine.handle_timer(loop.time())
            else:
                engine.receive_datagram(data, source, loop.time())
        return engine.verdict
    finally:
        transport.close()


async def learn_nat(
    ice_servers: Sequence[str],
    host_addresses: Sequence[str] | None = None,
    override: NatKind | None = None,
    config: NatCheckConfig | None = None,
) -> Verdict:
    """The verdict to report to the broker, logged in one line.

    ``override`` (the `--nat` flag) wins. Otherwise the check runs against the first
    `stun:` server, from the first pinned ICE host address of its family if there is one, so
    that it measures the NAT the ICE agent's own sockets sit behind. A verdict with no
    ``mapped`` address after a check means the server never answered (UDP may be blocked).
    """
    if override is not None:
        log.info("NAT kind %s (set with --nat)", override)
        return Verdict(override, "set with --nat")
    server = stun_server_of(ice_servers)
    if server is None:
        log.info(
            "NAT kind unknown: no stun: ICE server to measure it with (--ice-server stun:HOST:PORT)"
        )
        return Verdict("unknown", "no stun: server configured")
    want_v6 = ":" in server[0]
    local = next((a for a in host_addresses or () if (":" in a) == want_v6), None)
    verdict = await discover_nat(server, local, config)
    log.info("NAT check with stun:%s: %s", _show(server), verdict.describe())
    return verdict


async def learn_nat_kind(
    ice_servers: Sequence[str],
    host_addresses: Sequence[str] | None = None,
    override: NatKind | None = None,
) -> NatKind:
    """The NAT kind alone (see :func:`learn_nat`)."""
    return (await learn_nat(ice_servers, host_addresses, override)).kind


def _route_source(family: int, server: Address) -> str:
    """The local address the kernel would send to ``server`` from (no packet is sent)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(server)
        return str(probe.getsockname()[0])


__all__ = [
    "NatCheckConfig",
    "NatDiscovery",
    "Outcome",
    "Probe",
    "Refused",
    "Reply",
    "Send",
    "Verdict",
    "discover_nat",
    "learn_nat",
    "learn_nat_kind",
    "next_step",
    "stun_server_of",
]
