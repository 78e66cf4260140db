"""HTTP proxy request heads for the client's local proxy, parsed sans-IO with h11.

Why h11 and not a parser of our own: HTTP/1.1 head syntax is full of places where two
parsers can disagree (obs-fold, whitespace before the colon, duplicate Content-Length, bare
LF), and a proxy that disagrees with the origin is a request-smuggling hazard. h11 already
rejects or normalises these as RFC 9112 asks; this module only reads the request target.

Why only the head: the proxy reads one request per application connection. CONNECT turns
the connection into a tunnel; an absolute-URI request (``GET http://host/path``) is rewritten
to origin form with ``Connection: close`` so that the origin ends the connection after its
response, and the application opens a new connection for its next request. Bodies and
responses therefore flow unchanged and are never parsed here.

Why only http:// absolute URIs: an https:// URI would make the proxy the TLS client, which
means holding the application's trust decisions; applications use CONNECT for https.

What the rewritten head changes, nothing else: the request line goes to origin form; the Host
header takes the URI's authority, less an empty ":" port (RFC 9112 section 3.2.2 tells a
proxy to ignore the received Host); Connection, Proxy-Connection, Keep-Alive,
Proxy-Authorization and every header named in Connection are dropped; ``Connection: close``
is appended. Other headers keep their order and their name's spelling; their values are
what h11 parsed (surrounding whitespace trimmed, obs-fold joined with a space, duplicate
equal Content-Lengths merged, Transfer-Encoding lower-cased). A head with both
Content-Length and Transfer-Encoding is refused (400) rather than forwarded, since the two
framings together are how requests get smuggled.
"""

from __future__ import annotations

import http
import ipaddress
import re
from dataclasses import dataclass
from typing import ClassVar

import h11

from unwall.client.socks5 import is_valid_host_name

__all__ = [
    "ForwardRequest",
    "HttpProxyError",
    "HttpProxyRequestParser",
    "TunnelRequest",
    "connect_established",
    "error_response",
    "http_status_for",
]


@dataclass(frozen=True)
class TunnelRequest:
    """``CONNECT host:port``: open a TCP tunnel. An IPv6 ``host`` comes without brackets."""

    host: str
    port: int


@dataclass(frozen=True)
class ForwardRequest:
    """An absolute-URI request to forward: ``head`` is the rewritten head, ready to send."""

    host: str
    port: int
    head: bytes


class HttpProxyError(Exception):
    """The application's request cannot be served; answer ``error_response(status, message)``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Dropped from forwarded heads: this hop's connection management and the proxy's credentials,
# which would otherwise leak to the origin.
_HOP_BY_HOP = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization"))

# Never dropped even when named in Connection: the body is copied unchanged, so the origin
# needs its framing to find where it ends.
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))

_ABSOLUTE_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)")

_CONNECTION_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class HttpProxyRequestParser:
    """One application connection to the HTTP proxy port, up to the end of its request head.

    Feed bytes with ``receive_data`` and call ``next_event`` until it returns a request
    (None means it needs more bytes). Then ``trailing_data`` is what followed the head: the
    start of the body, or tunnel data sent early; it goes on unchanged and the shell stops
    using this object.
    """

    MAX_HEAD: ClassVar[int] = 16 * 1024

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.MAX_HEAD)
        self._received = 0
        self._request: TunnelRequest | ForwardRequest | None = None
        self._trailing = bytearray()
        self._error: HttpProxyError | None = None

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the application socket. Empty bytes are ignored.

        h11 would read ``b""`` as end of stream; the end of the connection is the shell's
        business, so it is not passed on.
        """
        if not data or self._error is not None:
            return
        if self._request is not None:
            self._trailing += data
            return
        self._received += len(data)
        self._h11.receive_data(data)

    def next_event(self) -> TunnelRequest | ForwardRequest | None:
        """The request once its head is complete, else None.

        Raises HttpProxyError on input this proxy cannot serve, and again on every later call.
        """
        if self._error is not None:
            raise self._error
        if self._request is not None:
            return None
        try:
            request = self._read_request()
        except HttpProxyError as exc:
            self._error = exc
            raise
        return request

    @property
    def trailing_data(self) -> bytes:
        """Bytes after the request head, to forward unchanged."""
        return bytes(self._trailing)

    def _read_request(self) -> TunnelRequest | ForwardRequest | None:
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise _head_too_large(self.MAX_HEAD) from exc
            raise HttpProxyError(
                exc.error_status_hint, f"the request is not valid HTTP/1.1: {exc}"[:300]
            ) from exc
        if event is h11.NEED_DATA:
            return None
        # In its first state a server-side h11 connection yields only requests; EOF, the other
        # possibility, is never passed to it.
        assert isinstance(event, h11.Request), event
        trailing, _closed = self._h11.trailing_data
        # h11 checks the size only while the head is incomplete, so a big head that arrives
        # in one piece needs this check too.
        if self._received - len(trailing) > self.MAX_HEAD:
            raise _head_too_large(self.MAX_HEAD)
        request = _interpret(event)
        self._trailing += trailing
        self._request = request
        return request


def _quote(text: str) -> str:
    """``text`` quoted for an error message, cut short: the message becomes a response body."""
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _head_too_large(limit: int) -> HttpProxyError:
    return HttpProxyError(431, f"the request head is larger than {limit} bytes")


def _interpret(event: h11.Request) -> TunnelRequest | ForwardRequest:
    if event.http_version not in (b"1.0", b"1.1"):
        raise HttpProxyError(
            505, f"HTTP/{event.http_version.decode()} is not supported; this proxy speaks HTTP/1.1"
        )
    # h11 has checked that the target is visible ASCII.
    target = event.target.decode("ascii")
    if event.method == b"CONNECT":
        if "/" in target:
            raise HttpProxyError(400, f"CONNECT needs host:port, not {_quote(target)}")
        host, port = _parse_authority(target, default_port=None)
        return TunnelRequest(host, port)
    if target.startswith("/") or target == "*":
        raise HttpProxyError(
            400,
            "this is a proxy, not a web server: configure it as the application's HTTP proxy "
            "so that requests carry a full http:// URL",
        )
    match = _ABSOLUTE_URI.fullmatch(target)
    if match is None:
        raise HttpProxyError(400, f"the request target {_quote(target)} is not an http:// URL")
    scheme, authority, path_and_query = match.groups()
    if scheme.lower() == "https":
        raise HttpProxyError(
            400, "https:// URLs go through the proxy with CONNECT; the application should use it"
        )
    if scheme.lower() != "http":
        raise HttpProxyError(
            400, f"{_quote(scheme)[1:-1]}:// URLs are not supported; only http:// and CONNECT"
        )
    host, port = _parse_authority(authority, default_port=80)
    if not path_and_query:
        # RFC 9112 section 3.2.4: an empty path is "/" except for OPTIONS, where it is "*".
        origin_target = "*" if event.method == b"OPTIONS" else "/"
    elif path_and_query.startswith("?"):
        origin_target = "/" + path_and_query
    else:
        origin_target = path_and_query
    return ForwardRequest(host, port, _rewrite_head(event, origin_target, authority))


def _parse_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]``; IPv6 comes back compressed and without brackets."""
    if "@" in authority:
        raise HttpProxyError(400, "user names and passwords in proxied URLs are not supported")
    if authority.startswith("["):
        close = authority.find("]")
        after = authority[close + 1 :]
        if close == -1 or (after and not after.startswith(":")):
            raise HttpProxyError(400, f"{_quote(authority)} is not a valid [IPv6]:port")
        host = _ipv6_literal(authority[1:close])
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = authority.partition(":")
        if ":" in port_text:
            raise HttpProxyError(400, f"IPv6 addresses go in brackets: [{_quote(authority)[1:-1]}]")
        if not is_valid_host_name(host):
            raise HttpProxyError(400, f"{_quote(host)} is not a valid host name")
        port_text = port_text if colon else None
    return host, _parse_port(port_text, default_port)


def _ipv6_literal(text: str) -> str:
    # ipaddress accepts a "%zone" suffix, which means nothing to the egress.
    if "%" not in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            pass
    raise HttpProxyError(400, f"[{_quote(text)[1:-1]}] is not a valid IPv6 address")


def _parse_port(text: str | None, default_port: int | None) -> int:
    if not text:
        # RFC 3986 lets "host:" mean the scheme's default port, as "host" does.
        if default_port is None:
            raise HttpProxyError(400, "CONNECT needs host:port, with the port")
        return default_port
    # int() would also take "+80", " 80" and "8_0".
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 0xFFFF):
        raise HttpProxyError(400, f"port {_quote(text)} is not in 1..65535")
    return int(text)


def _rewrite_head(event: h11.Request, origin_target: str, authority: str) -> bytes:
    raw_headers = event.headers.raw_items()
    names = {name.lower() for name, _ in raw_headers}
    if _FRAMING.issubset(names):
        # RFC 9112 section 6.3 has an intermediary strip Content-Length here; refusing is
        # simpler, and no honest client sends both.
        raise HttpProxyError(400, "the request has both Content-Length and Transfer-Encoding")
    named_in_connection = {
        option.strip().lower()
        for name, value in raw_headers
        if name.lower() == b"connection"
        for option in value.split(b",")
    }
    dropped = (_HOP_BY_HOP | named_in_connection) - _FRAMING
    # "host:" is legal (default port) but some origins mishandle it in Host.
    authority_bytes = authority.removesuffix(":").encode("ascii")
    lines = [event.method + b" " + origin_target.encode("ascii") + b" HTTP/" + event.http_version]
    if b"host" not in names:
        # HTTP/1.0 requests may lack Host; the origin still needs it for virtual hosting.
        lines.append(b"Host: " + authority_bytes)
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered == b"host":
            # Keeps the client's spelling and position; h11 has rejected duplicates.
            lines.append(name + b": " + authority_bytes)
        elif lowered not in dropped:
            lines.append(name + b": " + value)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response with a text/plain body, closing the connection."""
    if not 400 <= status <= 599:
        raise ValueError(f"error status {status} is not in 400..599")
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = (message + "\n").encode("utf-8")
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii") + body


def connect_established() -> bytes:
    """The answer to a CONNECT whose stream the egress accepted."""
    return _CONNECTION_ESTABLISHED


# protocol.md section 5, stream reply status -> HTTP proxy status.
_HTTP_STATUS_FOR = {0: 200, 1: 502, 2: 403, 3: 502, 4: 502, 5: 502, 6: 504, 7: 400, 8: 503}


def http_status_for(stream_status: int) -> int:
    """The HTTP status for a stream-reply status; one this version does not know is 502."""
    return _HTTP_STATUS_FOR.get(stream_status, 502)
