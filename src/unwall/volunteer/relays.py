"""Where the headless volunteer relays a client: its own egress, or a relay the broker names
that its operator allowed (docs/protocol.md, sections 1 and 3).

The broker may name, per offer, the egress to relay that client to (`relay_url`). A broker
is not trusted with the volunteer's network: it, another broker of its pool or whoever can
write to their Redis could name `ws://127.0.0.1:8080/internal/admin` and have the volunteer
copy a stranger's bytes into a service on its loopback or LAN. So a broker-named URL is
opened only when

- its path is exactly `/v1/relay` (no other path on an allowed host), with no user or
  password, and
- it is on the origin (scheme, host, port) of the volunteer's own `--egress`, which the
  operator chose and is trusted as given (loopback and `ws://` included: the demo, the
  tests and the lab), or
- its host matches one of the operator's `--relay-host` patterns (`NAME`, `*.NAME`, an IP
  address, each with an optional `:PORT`; `wss://` unless the pattern is written `ws://...`),
  and, for a name, every address it resolves to is an ordinary one: not loopback, private,
  carrier-grade NAT, link-local, multicast, unspecified or reserved (documentation ranges
  pass: nobody's LAN is there, and the lab lives in them). An IP address written in a
  pattern is the operator's own choice, trusted like `--egress`.

The resolution is checked before the volunteer answers the offer, and again at connect:
relays go through a session whose resolver drops refused addresses (no DNS rebinding in
between) and which follows no redirect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from unwall.egress.policy import EgressPolicy

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

RELAY_PATH: Final = "/v1/relay"
MAX_RELAY_URL: Final = 2048
RESOLVE_TIMEOUT: Final = 5.0

#: Documentation ranges (TEST-NET, 2001:db8::/32, 3fff::/20) are not refused: they are
#: nobody's LAN, and the lab and the tests run in them. Everything else the egress refuses
#: by default (loopback, private, CGNAT, link-local, multicast, reserved, ...) is refused.
_ADDRESSES = EgressPolicy.from_strings(
    ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")
)

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PATTERN = re.compile(
    r"(?:(?P<scheme>wss?)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
)


class RelayRefused(Exception):
    """A relay URL the volunteer will not open. ``where`` shows it without secrets (scheme,
    host and port only); ``reason`` says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class RelayHost:
    """One of the operator's `--relay-host` patterns."""

    text: str
    scheme: str  # "wss", or "ws" when the pattern says ws://
    host: str  # a lower-case name, the suffix of a wildcard, or an address
    wildcard: bool
    port: int | None
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    @classmethod
    def parse(cls, text: str) -> RelayHost:
        """`[ws://|wss://]HOST[:PORT]`, HOST a name, `*.NAME` (its subdomains) or an IP address
        (IPv6 in brackets); raise ValueError otherwise."""
        match = _PATTERN.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not a relay host pattern: [ws://|wss://]HOST[:PORT], HOST a "
                "name, *.NAME or an IP address ([IPv6])"
            )
        scheme = match["scheme"] or "wss"
        host = match["host"].lower().rstrip(".")
        port = int(match["port"]) if match["port"] else None
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is out of range")
        address = _address(host.strip("[]"))
        if host.startswith("[") and address is None:
            raise ValueError(f"{text!r}: {host} is not an IPv6 address")
        if address is not None:
            return cls(text, scheme, str(address), False, port, address)
        wildcard = host.startswith("*.")
        name = host[2:] if wildcard else host
        if not _NAME.fullmatch(name) or (wildcard and "." not in name):
            raise ValueError(
                f"{text!r}: {host} is not a host name (write an international name in its "
                "xn-- form; a wildcard is *.NAME, with at least two labels after it)"
            )
        return cls(text, scheme, name, wildcard, port, None)

    def covers(self, host: str, port: int) -> bool:
        """Whether this pattern names `host` (lower case, no brackets) and `port`, whatever
        the scheme."""
        if self.port is not None and port != self.port:
            return False
        if self.address is not None:
            return _address(host) == self.address
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def relay_host(text: str) -> RelayHost:
    """argparse type of `--relay-host`."""
    import argparse

    try:
        return RelayHost.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def address_refusal(address: str) -> str | None:
    """Why a volunteer does not relay to this address (e.g. "a loopback address"), or None."""
    decision = _ADDRESSES.check_address(address)
    if decision.allowed:
        return None
    kind = decision.rule.removeprefix("no ").replace(" addresses", " address")
    return f"{'an' if kind[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {kind}"


class RelayPolicy:
    """Decides the relay URL of each offer; see the module's docstring."""

    def __init__(self, own_egress: str, hosts: Iterable[RelayHost] = ()) -> None:
        self.own_egress = URL(own_egress)
        self.own_origin = _origin(self.own_egress)
        self.hosts = tuple(hosts)

    def check(self, relay_url: str | None) -> tuple[URL, bool]:
        """The URL to relay to, and whether its host's addresses must still be checked
        (a name under a pattern); raise RelayRefused. None: our own egress."""
        if relay_url is None:
            return self.own_egress, False
        url = _parse(relay_url)
        where = show(url)
        if url.raw_path != RELAY_PATH:
            raise RelayRefused(where, f"its path is not {RELAY_PATH}")
        if url.user is not None or url.password is not None:
            raise RelayRefused(where, "it carries a user name or password")
        url = url.with_fragment(None)
        if _origin(url) == self.own_origin:
            return url, False  # our own egress: the operator's choice, trusted as given
        host, port = _host(url), _port(url)
        patterns = [pattern for pattern in self.hosts if pattern.covers(host, port)]
        if not patterns:
            raise RelayRefused(
                where, "it is neither this volunteer's --egress nor under its --relay-host"
            )
        if not any(pattern.scheme == url.scheme for pattern in patterns):
            raise RelayRefused(where, "plain ws:// is refused for it: wss:// only")
        literal = _address(host)
        if literal is not None:
            if any(pattern.address == literal for pattern in patterns):
                return url, False  # an address the operator wrote down
            reason = address_refusal(host)
            if reason is not None:
                raise RelayRefused(where, f"it is {reason}")
            return url, False
        return url, True

    async def vet(self, relay_url: str | None) -> URL:
        """`check`, then resolve a name and refuse it if any of its addresses is refused."""
        url, resolve = self.check(relay_url)
        if resolve:
            host = _host(url)
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT):
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, _port(url), type=socket.SOCK_STREAM
                    )
            except (OSError, UnicodeError, TimeoutError) as exc:
                raise RelayRefused(show(url), f"{host} does not resolve ({exc})") from None
            for info in infos:
                reason = address_refusal(str(info[4][0]))
                if reason is not None:
                    raise RelayRefused(show(url), f"{host} resolves to {reason}")
        return url

    def trusts(self, host: str, port: int) -> bool:
        """Whether a connection to this name needs no address check (our own egress)."""
        _, own_host, own_port = self.own_origin
        return host.lower().rstrip(".") == own_host and port == own_port

    def session(self) -> aiohttp.ClientSession:
        """A session for relays: its resolver drops refused addresses of every name but our
        own egress's, and it follows no redirect (a relay answers 101 or nothing)."""
        trace = aiohttp.TraceConfig()

        async def no_redirect(_session: Any, _context: SimpleNamespace, params: Any) -> None:
            raise RelayRedirected(f"the relay answered {params.response.status}: not followed")

        trace.on_request_redirect.append(no_redirect)
        connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self))
        return aiohttp.ClientSession(connector=connector, trace_configs=[trace])


class RelayRedirected(aiohttp.ClientConnectionError):
    """A relay answered with a redirect; relays never follow one."""


class _GuardedResolver(AbstractResolver):
    def __init__(self, policy: RelayPolicy) -> None:
        self._policy = policy
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        if self._policy.trusts(host, port):
            return results
        allowed = [result for result in results if address_refusal(result["host"]) is None]
        if not allowed:
            raise OSError(f"{host} resolves only to addresses volunteers do not relay to")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def show(url: URL) -> str:
    """A relay URL for a log line: scheme, host and port, never its query (offer, ticket)."""
    default = 443 if url.scheme == "wss" else 80
    port = f":{url.port}" if url.port is not None and url.port != default else ""
    host = url.raw_host or ""
    return f"{url.scheme}://{'[' + host + ']' if ':' in host else host}{port}"[:160]


def _parse(relay_url: str) -> URL:
    if len(relay_url) > MAX_RELAY_URL:
        raise RelayRefused("a URL", f"it is longer than {MAX_RELAY_URL} characters")
    try:
        url = URL(relay_url)
    except (ValueError, TypeError):
        raise RelayRefused("a URL", "it cannot be parsed") from None
    if url.scheme not in ("ws", "wss") or not url.raw_host:
        raise RelayRefused("a URL", "it is not a ws:// or wss:// URL with a host")
    try:
        url.port  # noqa: B018 - a port out of range raises here
    except ValueError:
        raise RelayRefused("a URL", "its port is out of range") from None
    return url


def _host(url: URL) -> str:
    return (url.host or "").lower().rstrip(".")


def _port(url: URL) -> int:
    return url.port or (443 if url.scheme == "wss" else 80)


def _origin(url: URL) -> tuple[str, str, int]:
    return url.scheme, _host(url), _port(url)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
