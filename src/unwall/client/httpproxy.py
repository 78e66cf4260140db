"""The client's HTTP proxy, sans-IO with h11: request heads, and one forwarded exchange.

Why h11 and not a parser of our own: HTTP/1.1 head syntax is full of places where two
parsers can disagree (obs-fold, whitespace before the colon, duplicate Content-Length, bare
LF), and a proxy that disagrees with the origin is a request-smuggling hazard. h11 already
rejects or normalises these as RFC 9112 asks; this module reads the request target and
lets h11 frame the bodies and the response.

One request per application connection. CONNECT turns the connection into a tunnel. An
absolute-URI request (``GET http://host/path``) becomes one exchange (:class:`ForwardExchange`):
its head rewritten to origin form with ``Connection: close``, its body framed by h11 and
nothing after its end; the response parsed by h11 and passed on with ``Connection: close``,
and the connection closed when it ends. Copying bytes after the first head would let an
origin that ignores ``Connection: close`` answer the application's next request, meant for
another site (issue 22, row 7); parsing the response is what makes its end known. Splitting
each following request into a stream of its own would keep the application's connection
alive, but it means ordering responses from several origins on one connection; a new
connection to a loopback proxy costs nothing worth that. A request pipelined after the first
is never read as a request: it goes nowhere, and the application, told ``Connection: close``,
sends it again on a new connection (RFC 9112 section 9.3.2).

Why only http:// absolute URIs: an https:// URI would make the proxy the TLS client, which
means holding the application's trust decisions; applications use CONNECT for https.

What the rewritten head changes, nothing else: the request line goes to origin form and
HTTP/1.1 (an intermediary sends its own version, RFC 9110 section 2.5); the Host header
comes first and takes the URI's authority, less an empty ":" port (RFC 9112 section 3.2.2
tells a proxy to ignore the received Host); Connection, Proxy-Connection, Keep-Alive,
Proxy-Authorization and every header named in Connection are dropped; ``Connection: close``
is appended. Other headers keep their order and their name's spelling; their values are
what h11 parsed (surrounding whitespace trimmed, obs-fold joined with a space, duplicate
equal Content-Lengths merged, Transfer-Encoding lower-cased). A head with both
Content-Length and Transfer-Encoding is refused (400) rather than forwarded, since the two
framings together are how requests get smuggled.

A request in origin form (``GET / HTTP/1.1``) is for a web server, not a proxy: a person who
points curl at the proxy, or types its address into a browser (``Sec-Fetch-Site: none``), is
told so (400); one that carries other ``Sec-Fetch-*`` values or an ``Origin`` is a web page
probing for the proxy, and gets no answer at all (issue 22, row 11): any answer, even an
error, would tell the page that something listens here. The
errors that are sent carry ``Cross-Origin-Resource-Policy: same-origin``, so a page that
loads one as a subresource gets a network error, as from a closed port.
"""

from __future__ import annotations

import http
import ipaddress
import re
from dataclasses import dataclass
from typing import ClassVar, NoReturn

import h11

from unwall.client.socks5 import is_valid_host_name

__all__ = [
    "ForwardExchange",
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
    """An absolute-URI request to forward: ``head`` is the rewritten head, ready to send; the
    body and the response go through the parser's :meth:`~HttpProxyRequestParser.exchange`."""

    host: str
    port: int
    head: bytes


class HttpProxyError(Exception):
    """The application's request cannot be served; answer ``error_response(status, message)``,
    unless ``answer`` is False: then close without a word (a web page's request to the proxy
    itself, whose answer would tell the page that unwall runs here)."""

    def __init__(self, status: int, message: str, *, answer: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.answer = answer


# Dropped from forwarded heads: this hop's connection management and the proxy's credentials,
# which would otherwise leak to the origin.
_HOP_BY_HOP = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization"))

# Dropped from forwarded response heads: this hop's connection management (h11 writes the
# framing again for the application).
_HOP_BY_HOP_RESPONSE = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"upgrade"))

# Never dropped even when named in Connection: h11 frames the body by them on both sides.
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
    #: an origin's response head; Set-Cookie and CSP headers make them bigger than requests
    MAX_RESPONSE_HEAD: ClassVar[int] = 64 * 1024

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.MAX_HEAD)
        self._received = 0
        self._request: TunnelRequest | ForwardRequest | None = None
        self._origin: h11.Connection | None = None  # the forwarded request's, once written
        self._trailing = bytearray()
        self._error: HttpProxyError | None = None

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the application socket. Empty bytes are ignored.

        h11 would read ``b""`` as end of stream; the end of the connection is the shell's
        business, so it is not passed on.
        """
        if not data or self._error is not None:
            return
        if isinstance(self._request, TunnelRequest):
            self._trailing += data
            return
        # Before the head, and after a ForwardRequest's head (the body, for the exchange).
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
        """Bytes after a CONNECT's head, to forward unchanged. Empty for a ForwardRequest,
        whose body goes through :meth:`exchange`."""
        return bytes(self._trailing)

    def exchange(self) -> ForwardExchange:
        """The rest of a ForwardRequest's connection: its body and its response. The parser
        is not used after this."""
        if not isinstance(self._request, ForwardRequest) or self._origin is None:
            raise RuntimeError("exchange() comes after next_event() returned a ForwardRequest")
        return ForwardExchange(self._h11, self._origin)

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
        interpreted = _interpret(event)
        request: TunnelRequest | ForwardRequest
        if isinstance(interpreted, TunnelRequest):
            # Tunnel data sent early; h11 keeps its copy, which is never read.
            self._trailing += trailing
            request = interpreted
        else:
            self._origin = h11.Connection(
                h11.CLIENT, max_incomplete_event_size=self.MAX_RESPONSE_HEAD
            )
            head = self._origin.send(interpreted.request)
            assert head is not None
            request = ForwardRequest(interpreted.host, interpreted.port, head)
        self._request = request
        return request


class ForwardExchange:
    """One forwarded request and its response, sans-IO; after it the connection closes.

    Two h11 connections: the application's (server side, which has read the request head)
    and the origin's (client side, which has written the rewritten head). Feed the
    application's bytes with ``receive_from_application`` and send ``data_to_origin()`` to the
    origin; feed the origin's with ``receive_from_origin`` and send ``data_to_application()``
    to the application. ``b""`` fed to either means that side closed. When
    ``response_complete`` is set, close both: nothing after the response's end goes anywhere.

    Both ``data_to_*`` raise HttpProxyError when a side breaks HTTP/1.1 (400 for the
    application, 502 for the origin), and again on every later call; if
    ``response_started``, the application already has a head and can only see the connection
    abort.

    The response goes on as h11 parsed it: status, reason and headers unchanged except that
    Connection, Keep-Alive, Proxy-Connection, Upgrade and the headers named in Connection are
    dropped and ``Connection: close`` added; h11 frames the body again for the application
    (chunked, or up to the close for an HTTP/1.0 application; none after HEAD, 204 or 304).
    1xx responses other than 101 pass (not to HTTP/1.0 applications); a 101 was never asked
    for, since Upgrade is not forwarded, and is an error.
    """

    def __init__(self, application: h11.Connection, origin: h11.Connection) -> None:
        self._app = application
        self._origin = origin
        self._to_origin = bytearray()
        self._to_app = bytearray()
        self._app_closed = False
        self._origin_closed = False
        self._error: HttpProxyError | None = None
        self.request_complete = False
        self.response_started = False
        self.response_complete = False

    def receive_from_application(self, data: bytes) -> None:
        """What the application sent after the head; ``b""`` when it closed. Once the request
        or the response is complete, dropped: a pipelined request never reaches this origin,
        nor the rest of a body the origin answered early."""
        if self.request_complete or self.response_complete or self._app_closed:
            return
        self._app_closed = not data
        self._app.receive_data(data)

    def receive_from_origin(self, data: bytes) -> None:
        """What the origin sent; ``b""`` when it closed."""
        if self.response_complete or self._origin_closed:
            return
        self._origin_closed = not data
        self._origin.receive_data(data)

    def data_to_origin(self) -> bytes:
        """The request's body so far, framed as its head says."""
        self._check()
        while not (self.request_complete or self.response_complete):
            try:
                event = self._app.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Data):
                    self._to_origin += self._origin.send(event) or b""
                elif isinstance(event, h11.EndOfMessage):
                    self._to_origin += self._origin.send(event) or b""
                    self.request_complete = True
                else:  # ConnectionClosed before the body's end: h11 raises first
                    raise h11.RemoteProtocolError(f"unexpected {event!r}")
            except h11.ProtocolError as exc:
                self._fail(400, f"the application's request body is not valid HTTP/1.1: {exc}")
        return self._take(self._to_origin)

    def data_to_application(self) -> bytes:
        """The response so far: 1xx, head, body, as the application expects them."""
        self._check()
        while not self.response_complete:
            try:
                event = self._origin.next_event()
                if not isinstance(event, h11.Event):  # NEED_DATA, or PAUSED after the end
                    break
                self._to_app += self._forward(event)
            except h11.ProtocolError as exc:
                self._fail(502, f"the site's response is not valid HTTP/1.1: {exc}")
        return self._take(self._to_app)

    def _forward(self, event: h11.Event) -> bytes:
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                raise h11.RemoteProtocolError("101 Switching Protocols, never asked for")
            if self._app.their_http_version != b"1.1":
                return b""
            informational = h11.InformationalResponse(
                status_code=event.status_code,
                headers=_end_to_end(event.headers.raw_items()),
                reason=event.reason,
            )
            return self._app.send(informational) or b""
        if isinstance(event, h11.Response):
            self.response_started = True
            response = h11.Response(
                status_code=event.status_code,
                headers=[*_end_to_end(event.headers.raw_items()), (b"Connection", b"close")],
                reason=event.reason,
            )
            return self._app.send(response) or b""
        if isinstance(event, h11.Data):
            return self._app.send(event) or b""
        if isinstance(event, h11.EndOfMessage):
            self.response_complete = True
            # Trailers need chunked framing, which an HTTP/1.0 application does not get.
            trailers = event.headers.raw_items() if self._app.their_http_version == b"1.1" else []
            return self._app.send(h11.EndOfMessage(headers=trailers)) or b""
        raise h11.RemoteProtocolError("the connection closed before the response")

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, status: int, message: str) -> NoReturn:
        self._error = HttpProxyError(status, message[:300])
        raise self._error

    @staticmethod
    def _take(buffer: bytearray) -> bytes:
        data = bytes(buffer)
        buffer.clear()
        return data


def _end_to_end(raw_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's headers less this hop's (RFC 9110 section 7.6.1), framing kept for h11."""
    named_in_connection = {
        option.strip().lower()
        for name, value in raw_headers
        if name.lower() == b"connection"
        for option in value.split(b",")
    }
    dropped = (_HOP_BY_HOP_RESPONSE | named_in_connection) - _FRAMING
    return [(name, value) for name, value in raw_headers if name.lower() not in dropped]


def _quote(text: str) -> str:
    """``text`` quoted for an error message, cut short: the message becomes a response body."""
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _head_too_large(limit: int) -> HttpProxyError:
    return HttpProxyError(431, f"the request head is larger than {limit} bytes")


@dataclass(frozen=True)
class _Rewritten:
    """An absolute-URI request as it goes to the origin, before h11 writes it."""

    host: str
    port: int
    request: h11.Request


def _from_a_web_page(event: h11.Request) -> bool:
    """Whether a browser sent this on a web page's behalf: fetch metadata (W3C Fetch Metadata
    Request Headers) other than ``Sec-Fetch-Site: none``, which is a person's own doing (the
    address typed), or an Origin. A browser sends what it proxies in absolute form; a request
    in origin form that a page caused is a page probing for the proxy itself."""
    headers = dict(event.headers)  # names lower-cased by h11
    if b"origin" in headers:
        return True
    fetch_metadata = any(name.startswith(b"sec-fetch-") for name in headers)
    return fetch_metadata and headers.get(b"sec-fetch-site") != b"none"


def _interpret(event: h11.Request) -> TunnelRequest | _Rewritten:
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
            answer=not _from_a_web_page(event),
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
    return _Rewritten(host, port, _rewrite_request(event, origin_target, authority))


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


def _rewrite_request(event: h11.Request, origin_target: str, authority: str) -> h11.Request:
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
    headers: list[tuple[bytes, bytes]] = []
    if b"host" not in names:
        # HTTP/1.0 requests may lack Host; the origin still needs it for virtual hosting.
        headers.append((b"Host", authority_bytes))
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered == b"host":
            # Keeps the client's spelling; h11 has rejected duplicates, and writes it first.
            headers.append((name, authority_bytes))
        elif lowered not in dropped:
            headers.append((name, value))
    headers.append((b"Connection", b"close"))
    try:
        return h11.Request(method=event.method, target=origin_target, headers=headers)
    except h11.LocalProtocolError as exc:  # h11 parsed these very headers; never seen
        raise HttpProxyError(400, f"the request cannot be forwarded: {exc}"[:300]) from exc


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response with a text/plain body, closing the connection.

    ``Cross-Origin-Resource-Policy: same-origin``: a page that loads it as a subresource
    (``<img>``, ``fetch(..., {mode: "no-cors"})``) gets a network error, as from a closed
    port, rather than a response that says a proxy listens here."""
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
        "X-Content-Type-Options: nosniff\r\n"
        "Cross-Origin-Resource-Policy: same-origin\r\n"
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
