"""Which destinations the egress connects to (docs/protocol.md, section 5, "Egress policy").

The egress is a door into whatever network it runs in, so by default it refuses, after name
resolution, every address that is not an ordinary public one: loopback, private (RFC 1918,
fc00::/7), link-local, carrier-grade NAT (100.64.0.0/10), multicast, unspecified, reserved,
broadcast, documentation and benchmarking ranges, and IPv6 addresses that embed such an IPv4
address (IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96, NAT64 64:ff9b::/96 and 6to4
2002::/16). IPv6 addresses outside global unicast (2000::/3) are refused as reserved. An
allow-list of networks overrides all of this (for tests and the lab), and a port list may
restrict destination ports.

Names that resolve to a mix of allowed and refused addresses: the name is not refused as a
whole. :meth:`EgressPolicy.resolve` drops the refused addresses (logging them at debug
level) and returns the rest, and the egress connects only to the returned addresses, never
to the name itself, so a DNS answer cannot slip a refused address past the check (no
re-resolution, no rebinding window). Refusing the whole name would gain no safety, since
refused addresses are never contacted, and would break sites whose DNS publishes a stray
private address next to public ones. Only when every address is refused does
:meth:`resolve` raise :class:`PolicyDenied`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from unwall import logs

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


def _table(*entries: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(network), kind) for network, kind in entries)


# Order matters where ranges nest: the first match names the range in the reason.
_REFUSED_IPV4 = _table(
    ("255.255.255.255/32", "the broadcast address"),
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an address reserved for IETF protocol assignments"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
)

# ::/128 and ::1/128 lie inside ::/96 (IPv4-compatible), so they are checked before the
# embedded-IPv4 forms; the rest are checked after them.
_REFUSED_IPV6_EXACT = _table(
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
)
_REFUSED_IPV6 = _table(
    ("fc00::/7", "a private (unique local) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("2001:2::/48", "a benchmarking address"),
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

_PORT_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    reason: str
    #: for a refusal: the rule that refused, naming no address (what a client may be told
    #: about a name it asked for: the reason would reveal what the egress's DNS answered)
    rule: str = field(default="", compare=False)


class PolicyDenied(Exception):
    """The egress policy refuses this destination; ``reason`` says why."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"the egress does not connect to {host} port {port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class NameNotResolved(Exception):
    """The destination name did not resolve to any address."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"{host} does not resolve ({detail}); check the name's spelling")
        self.host = host
        self.detail = detail


@dataclass
class EgressPolicy:
    """The egress's destination policy; the default refuses non-public addresses."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: frozenset[int] | None = None

    @classmethod
    def from_strings(cls, allow: Iterable[str] = (), ports: str | None = None) -> EgressPolicy:
        """Build a policy from networks such as "10.0.0.0/8" and ports such as "80,443,8000-8100".

        A bare address counts as a one-address network. A single string for ``allow`` is
        one network, not a sequence of characters.
        """
        entries = (allow,) if isinstance(allow, str) else tuple(allow)
        networks = tuple(_parse_network(entry) for entry in entries)
        allowed_ports = None if ports is None else _parse_ports(ports)
        return cls(allow_networks=networks, allowed_ports=allowed_ports)

    def check_port(self, port: int) -> PolicyDecision:
        if not 1 <= port <= 65535:
            return PolicyDecision(False, f"port {port} is not a TCP port (1-65535)")
        if self.allowed_ports is not None and port not in self.allowed_ports:
            return PolicyDecision(False, f"port {port} is not among the ports this egress allows")
        return PolicyDecision(True, f"port {port} is allowed")

    def check_address(self, ip: str | IPAddress) -> PolicyDecision:
        """Decide one address; raise ValueError if ``ip`` is a string that is not one."""
        address = _parse_address(ip) if isinstance(ip, str) else ip
        for network in self.allow_networks:
            if address in network:
                return PolicyDecision(True, f"{address} is in the allow-list ({network})")
        if isinstance(address, ipaddress.IPv4Address):
            return _check_table(address, _REFUSED_IPV4)
        refused = _find(address, _REFUSED_IPV6_EXACT)
        if refused is not None:
            return refused
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            ipv4, kind = embedded
            inner = self.check_address(ipv4)
            return PolicyDecision(
                inner.allowed, f"{address} is {kind} for {ipv4}; {inner.reason}", inner.rule
            )
        refused = _find(address, _REFUSED_IPV6)
        if refused is not None:
            return refused
        if address not in _GLOBAL_UNICAST:
            return PolicyDecision(
                False,
                f"{address} is a reserved address (outside global unicast, 2000::/3)",
                "no reserved addresses",
            )
        return PolicyDecision(True, f"{address} is a public address")

    async def resolve(self, host: str, port: int, *, resolver: Resolver | None = None) -> list[str]:
        """Return the allowed addresses of ``host`` to connect to, in resolver order.

        IP literals are checked, not resolved. Raises PolicyDenied if the port or every
        address is refused, NameNotResolved if the name has no addresses.
        """
        port_decision = self.check_port(port)
        if not port_decision.allowed:
            raise PolicyDenied(host, port, port_decision.reason)
        literal = _try_parse_address(host)
        if literal is not None:
            decision = self.check_address(literal)
            if not decision.allowed:
                raise PolicyDenied(host, port, decision.reason)
            return [str(literal)]

        answers = await _lookup(host, port, resolver or _getaddrinfo)
        allowed: list[str] = []
        refused: list[PolicyDecision] = []
        seen: set[str] = set()
        for answer in answers:
            address = _try_parse_address(answer)
            key = answer if address is None else str(address)
            if key in seen:
                continue
            seen.add(key)
            if address is None:
                refused.append(
                    PolicyDecision(False, f"{answer!r} is not an IP address", "IP addresses only")
                )
                continue
            decision = self.check_address(address)
            if decision.allowed:
                allowed.append(key)
            else:
                refused.append(decision)
        if not allowed:
            # Name the rules, never the addresses: the reason goes back to the client, and
            # whoever asks must not learn what the egress's resolver answers.
            rules = sorted({decision.rule or "refused addresses" for decision in refused})
            reason = (
                f"{host} resolves only to addresses the egress refuses "
                f"(its policy: {', '.join(rules)})"
            )
            raise PolicyDenied(host, port, reason)
        if refused and logs.showing():  # names the host and its addresses
            logger.debug(
                "%s: dropping refused addresses, connecting only to %s: %s",
                host,
                ", ".join(allowed),
                "; ".join(decision.reason for decision in refused),
            )
        return allowed


async def _getaddrinfo(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [
        str(sockaddr[0])
        for family, _type, _proto, _canonname, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


async def _lookup(host: str, port: int, resolver: Resolver) -> list[str]:
    try:
        answers = await resolver(host, port)
    except NameNotResolved:
        raise
    except (OSError, UnicodeError) as exc:
        raise NameNotResolved(host, str(exc) or type(exc).__name__) from exc
    if not answers:
        raise NameNotResolved(host, "the name has no addresses")
    return answers


def _find(address: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> PolicyDecision | None:
    for network, kind in table:
        if address in network:
            return PolicyDecision(False, f"{address} is {kind} ({network})", _rule(kind))
    return None


def _rule(kind: str) -> str:
    """'a private address' -> 'no private addresses': the rule, for a client's ears."""
    words = kind.removeprefix("the ").removeprefix("an ").removeprefix("a ")
    words = words.replace("address", "addresses", 1) if "address" in words else words
    return f"no {words}"


def _check_table(address: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> PolicyDecision:
    refused = _find(address, table)
    if refused is not None:
        return refused
    return PolicyDecision(True, f"{address} is a public address")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """Return the IPv4 address an IPv6 address carries, and what kind of address it is."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "an IPv4-mapped address"
    if address in _NAT64:
        return low32, "a NAT64 address"
    if address.sixtofour is not None:
        return address.sixtofour, "a 6to4 address"
    if address in _IPV4_COMPATIBLE:
        return low32, "an IPv4-compatible address"
    return None


def _parse_address(text: str) -> IPAddress:
    address = _try_parse_address(text)
    if address is None:
        raise ValueError(f"{text!r} is not an IP address")
    return address


def _try_parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(
            f"allow-list entry {text!r} is not a network; write it like 10.0.0.0/8 or fd00::/8 "
            f"({exc})"
        ) from None


def _parse_ports(text: str) -> frozenset[int]:
    ports: set[int] = set()
    for item in text.split(","):
        match = _PORT_ITEM.fullmatch(item.strip())
        if match is None:
            raise ValueError(
                f"port list {text!r}: {item.strip()!r} is not a port or a range of ports; "
                "write it like 80,443,8000-8100"
            )
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        for port in (first, last):
            if not 1 <= port <= 65535:
                raise ValueError(f"port list {text!r}: {port} is not a TCP port (1-65535)")
        if last < first:
            raise ValueError(
                f"port list {text!r}: the range {first}-{last} is backwards; write {last}-{first}"
            )
        ports.update(range(first, last + 1))
    return frozenset(ports)
