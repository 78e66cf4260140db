"""Table-driven tests of the HTTP proxy request-head parser, using real clients' heads."""

from __future__ import annotations

import pytest

from unwall.client.httpproxy import (
    ForwardRequest,
    HttpProxyError,
    HttpProxyRequestParser,
    TunnelRequest,
    connect_established,
    error_response,
    http_status_for,
)

CURL_UA = b"User-Agent: curl/8.5.0\r\n"
FIREFOX_UA = (
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
)
CHROME_UA = (
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/126.0.0.0 Safari/537.36\r\n"
)
TLS_CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"

Event = TunnelRequest | ForwardRequest | None


def parse_whole(data: bytes) -> tuple[HttpProxyRequestParser, Event]:
    parser = HttpProxyRequestParser()
    parser.receive_data(data)
    return parser, parser.next_event()


def parse_bytewise(data: bytes) -> tuple[HttpProxyRequestParser, list[Event]]:
    parser = HttpProxyRequestParser()
    events = []
    for index in range(len(data)):
        parser.receive_data(data[index : index + 1])
        events.append(parser.next_event())
    return parser, events


def fail_bytewise(data: bytes) -> HttpProxyError:
    parser = HttpProxyRequestParser()
    for index in range(len(data)):
        parser.receive_data(data[index : index + 1])
        try:
            assert parser.next_event() is None
        except HttpProxyError as exc:
            return exc
    raise AssertionError("no HttpProxyError raised")


# --- CONNECT -------------------------------------------------------------------------------

TUNNELS = [
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        + CURL_UA
        + b"Proxy-Connection: Keep-Alive\r\n\r\n",
        TunnelRequest("example.com", 443),
        id="curl",
    ),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\n"
        + FIREFOX_UA
        + b"Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\n"
        + b"Host: example.com:443\r\n\r\n",
        TunnelRequest("example.com", 443),
        id="firefox",
    ),
    pytest.param(
        b"CONNECT www.google.com:443 HTTP/1.1\r\nHost: www.google.com:443\r\n"
        + b"Proxy-Connection: keep-alive\r\n"
        + CHROME_UA
        + b"\r\n",
        TunnelRequest("www.google.com", 443),
        id="chrome",
    ),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        + b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        TunnelRequest("example.com", 443),
        id="curl-proxy-user",
    ),
    pytest.param(
        b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
        TunnelRequest("2001:db8::1", 443),
        id="ipv6-bracketed",
    ),
    pytest.param(
        b"CONNECT [2001:DB8:0:0::1]:8443 HTTP/1.1\r\nHost: x\r\n\r\n",
        TunnelRequest("2001:db8::1", 8443),
        id="ipv6-compressed-on-output",
    ),
    pytest.param(
        b"CONNECT 93.184.216.34:22 HTTP/1.1\r\nHost: 93.184.216.34:22\r\n\r\n",
        TunnelRequest("93.184.216.34", 22),
        id="ipv4",
    ),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.0\r\n\r\n",
        TunnelRequest("example.com", 443),
        id="http-1.0-no-host",
    ),
    pytest.param(
        b"CONNECT Example.COM.:65535 HTTP/1.1\nHost: example.com\n\n",
        TunnelRequest("Example.COM.", 65535),
        id="bare-lf-and-name-as-given",
    ),
    pytest.param(
        b"CONNECT example.com:00443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        TunnelRequest("example.com", 443),
        id="leading-zero-port",
    ),
]


@pytest.mark.parametrize(("head", "expected"), TUNNELS)
def test_connect(head: bytes, expected: TunnelRequest) -> None:
    parser, event = parse_whole(head)
    assert event == expected
    assert parser.trailing_data == b""
    assert parser.next_event() is None


@pytest.mark.parametrize(("head", "expected"), TUNNELS)
def test_connect_bytewise(head: bytes, expected: TunnelRequest) -> None:
    _parser, events = parse_bytewise(head)
    assert events[-1] == expected
    assert events[:-1] == [None] * (len(events) - 1)


@pytest.mark.parametrize(("head", "expected"), TUNNELS)
def test_connect_with_early_tunnel_data(head: bytes, expected: TunnelRequest) -> None:
    # Some clients send the TLS ClientHello without waiting for "200 Connection established".
    parser, event = parse_whole(head + TLS_CLIENT_HELLO_START)
    assert event == expected
    assert parser.trailing_data == TLS_CLIENT_HELLO_START


def test_connect_trailing_data_keeps_growing() -> None:
    parser, event = parse_whole(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03")
    assert event == TunnelRequest("a.example", 443)
    parser.receive_data(b"\x01")
    parser.receive_data(b"")
    parser.receive_data(b"\x02\x00")
    assert parser.next_event() is None
    assert parser.trailing_data == b"\x16\x03\x01\x02\x00"


# --- absolute-URI requests -----------------------------------------------------------------

FORWARDS = [
    pytest.param(
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        + CURL_UA
        + b"Accept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"GET / HTTP/1.1\r\nHost: example.com\r\n"
            + CURL_UA
            + b"Accept: */*\r\nConnection: close\r\n\r\n",
        ),
        id="curl",
    ),
    pytest.param(
        b"GET http://example.com/index.html?q=1&r=%20 HTTP/1.1\r\nHost: example.com\r\n"
        + FIREFOX_UA
        + b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        + b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\n"
        + b"Connection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\nPriority: u=0, i\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"GET /index.html?q=1&r=%20 HTTP/1.1\r\nHost: example.com\r\n"
            + FIREFOX_UA
            + b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
            + b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\n"
            + b"Upgrade-Insecure-Requests: 1\r\nPriority: u=0, i\r\nConnection: close\r\n\r\n",
        ),
        id="firefox-with-query",
    ),
    pytest.param(
        b"POST http://example.com:8080/form HTTP/1.1\r\nHost: example.com:8080\r\n"
        + CURL_UA
        + b"Accept: */*\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n"
        + b"Proxy-Connection: Keep-Alive\r\nContent-Length: 7\r\n"
        + b"Content-Type: application/x-www-form-urlencoded\r\n\r\n",
        ForwardRequest(
            "example.com",
            8080,
            b"POST /form HTTP/1.1\r\nHost: example.com:8080\r\n"
            + CURL_UA
            + b"Accept: */*\r\nContent-Length: 7\r\n"
            + b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n",
        ),
        id="curl-post-port-proxy-auth-stripped",
    ),
    pytest.param(
        b"PUT http://example.com/up HTTP/1.1\r\nHost: example.com\r\n"
        + b"Transfer-Encoding: chunked\r\nConnection: keep-alive, Transfer-Encoding\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"PUT /up HTTP/1.1\r\nHost: example.com\r\n"
            + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        ),
        id="chunked-kept-even-if-named-in-connection",
    ),
    pytest.param(
        b"GET http://example.com/ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n"
        + b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nKeep-Alive: timeout=5\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"GET /ws HTTP/1.1\r\nHost: example.com\r\nSec-WebSocket-Version: 13\r\n"
            + b"Connection: close\r\n\r\n",
        ),
        id="connection-options-dropped",
    ),
    pytest.param(
        b"GET http://example.com/ HTTP/1.1\r\nhost: evil.example\r\nX-A: 1\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"GET / HTTP/1.1\r\nhost: example.com\r\nX-A: 1\r\nConnection: close\r\n\r\n",
        ),
        id="host-replaced-by-uri-authority-keeping-spelling",
    ),
    pytest.param(
        b"GET http://example.com HTTP/1.0\r\nUser-Agent: Wget/1.21\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Wget/1.21\r\n"
            + b"Connection: close\r\n\r\n",
        ),
        id="http-1.0-without-host-and-empty-path-sent-as-1.1",
    ),
    pytest.param(
        b"GET http://example.com?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"GET /?x=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        ),
        id="query-without-path",
    ),
    pytest.param(
        b"OPTIONS http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        ),
        id="options-asterisk",
    ),
    pytest.param(
        b"OPTIONS http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"OPTIONS /x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        ),
        id="options-with-path",
    ),
    pytest.param(
        b"HEAD HTTP://Example.COM:/a HTTP/1.1\r\nHost: Example.COM\r\n\r\n",
        ForwardRequest(
            "Example.COM",
            80,
            b"HEAD /a HTTP/1.1\r\nHost: Example.COM\r\nConnection: close\r\n\r\n",
        ),
        id="scheme-case-and-empty-port",
    ),
    pytest.param(
        b"GET http://[::1]:8080/p HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        ForwardRequest(
            "::1", 8080, b"GET /p HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n"
        ),
        id="ipv6",
    ),
    pytest.param(
        b"GET http://[2001:DB8::1]/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ForwardRequest(
            "2001:db8::1", 80, b"GET / HTTP/1.1\r\nHost: [2001:DB8::1]\r\nConnection: close\r\n\r\n"
        ),
        id="ipv6-default-port",
    ),
    pytest.param(
        b"GET http://10.0.0.1:8000/a/b;c?d HTTP/1.1\r\nHost: 10.0.0.1:8000\r\n"
        + b"X-Folded: one\r\n  two\r\nX-Space:   padded   \r\nX-Bytes: caf\xc3\xa9\r\n\r\n",
        ForwardRequest(
            "10.0.0.1",
            8000,
            b"GET /a/b;c?d HTTP/1.1\r\nHost: 10.0.0.1:8000\r\nX-Folded: one two\r\n"
            + b"X-Space: padded\r\nX-Bytes: caf\xc3\xa9\r\nConnection: close\r\n\r\n",
        ),
        id="obs-fold-joined-ows-trimmed-obs-text-kept",
    ),
    pytest.param(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        + b"Content-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
        ForwardRequest(
            "example.com",
            80,
            b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n"
            + b"Connection: close\r\n\r\n",
        ),
        id="equal-content-lengths-merged",
    ),
    pytest.param(
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n"
        + b"Proxy-Connection: close\r\nConnection: TE\r\nTE: trailers\r\n\r\n",
        ForwardRequest(
            "example.com", 80, b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        ),
        id="several-connection-headers",
    ),
]


@pytest.mark.parametrize(("head", "expected"), FORWARDS)
def test_forward(head: bytes, expected: ForwardRequest) -> None:
    parser, event = parse_whole(head)
    assert event == expected
    assert parser.trailing_data == b""


@pytest.mark.parametrize(("head", "expected"), FORWARDS)
def test_forward_bytewise(head: bytes, expected: ForwardRequest) -> None:
    _parser, events = parse_bytewise(head)
    assert events[-1] == expected
    assert events[:-1] == [None] * (len(events) - 1)


def test_forward_body_start_goes_to_the_exchange() -> None:
    head = (
        b"POST http://example.com/form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 7\r\n\r\n"
    )
    parser, event = parse_whole(head + b"a=1")
    assert isinstance(event, ForwardRequest)
    parser.receive_data(b"&b")
    assert parser.trailing_data == b""
    exchange = parser.exchange()
    assert exchange.data_to_origin() == b"a=1&b"
    exchange.receive_from_application(b"=2")
    assert exchange.data_to_origin() == b"=2"
    assert exchange.request_complete


def test_pipelined_second_request_goes_nowhere() -> None:
    first = b"GET http://example.com/1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    second = b"GET http://other.example/2 HTTP/1.1\r\nHost: other.example\r\n\r\n"
    parser, event = parse_whole(first + second)
    assert isinstance(event, ForwardRequest)
    assert event.head.startswith(b"GET /1 HTTP/1.1\r\n")
    assert parser.next_event() is None
    assert parser.trailing_data == b""
    exchange = parser.exchange()
    assert exchange.data_to_origin() == b""
    assert exchange.request_complete
    exchange.receive_from_application(second)
    assert exchange.data_to_origin() == b""


def test_exchange_before_a_forward_request_is_an_error() -> None:
    parser, event = parse_whole(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(event, TunnelRequest)
    with pytest.raises(RuntimeError):
        parser.exchange()


def test_incomplete_head_waits() -> None:
    parser, event = parse_whole(b"GET http://example.com/ HTTP/1.1\r\nHost: exa")
    assert event is None
    assert parser.next_event() is None
    assert parser.trailing_data == b""


def test_empty_data_is_not_end_of_stream() -> None:
    # h11 reads b"" as EOF; a shell passing an empty read must not break the parse.
    parser = HttpProxyRequestParser()
    parser.receive_data(b"CONNECT a.example:443 HTTP/1.1\r\n")
    parser.receive_data(b"")
    assert parser.next_event() is None
    parser.receive_data(b"Host: a\r\n\r\n")
    assert parser.next_event() == TunnelRequest("a.example", 443)


# --- errors --------------------------------------------------------------------------------

ERRORS = [
    # What the application asked for is not something this proxy does.
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" + CURL_UA + b"\r\n",
        400,
        "this is a proxy",
        id="origin-form",
    ),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "this is a proxy", id="asterisk"),
    pytest.param(
        b"GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        "with CONNECT",
        id="https-absolute",
    ),
    pytest.param(
        b"GET ftp://example.com/f HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        "ftp:// URLs are not supported",
        id="ftp",
    ),
    pytest.param(
        b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        "is not an http:// URL",
        id="authority-form-without-connect",
    ),
    pytest.param(
        b"GET mailto:a@example.com HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "is not an http:// URL",
        id="no-authority",
    ),
    pytest.param(
        b"GET http://example.com/#top HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "is not an http:// URL",
        id="fragment",
    ),
    pytest.param(
        b"GET http://user:pw@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        "user names and passwords",
        id="userinfo",
    ),
    pytest.param(
        b"GET http:///path HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not a valid host", id="empty-host"
    ),
    pytest.param(
        b"GET http://:80/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not a valid host", id="port-only"
    ),
    pytest.param(
        b"GET http://a..b/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not a valid host", id="bad-name"
    ),
    pytest.param(
        b"GET http://%65xample.com/ HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid host",
        id="percent-encoded-host",
    ),
    pytest.param(
        b"GET http://example.com:0/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "1..65535", id="port-0"
    ),
    pytest.param(
        b"GET http://example.com:65536/ HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "1..65535",
        id="port-65536",
    ),
    # CONNECT targets.
    pytest.param(
        b"CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        "with the port",
        id="connect-no-port",
    ),
    pytest.param(
        b"CONNECT example.com: HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        "with the port",
        id="connect-empty-port",
    ),
    pytest.param(
        b"CONNECT [::1] HTTP/1.1\r\nHost: x\r\n\r\n", 400, "with the port", id="connect-v6-no-port"
    ),
    pytest.param(
        b"CONNECT http://example.com:443/ HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "CONNECT needs host:port",
        id="connect-url",
    ),
    pytest.param(b"CONNECT a:0 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "'0' is not", id="port-zero"),
    pytest.param(b"CONNECT a:99999 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "'99999'", id="port-big"),
    pytest.param(b"CONNECT a:+443 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "'\\+443'", id="port-plus"),
    pytest.param(b"CONNECT a:4_43 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "'4_43'", id="port-_"),
    pytest.param(b"CONNECT a:44a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "'44a'", id="port-letters"),
    pytest.param(
        b"CONNECT a:000000443 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "'000000443'", id="port-long"
    ),
    pytest.param(
        b"CONNECT 2001:db8::1:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "IPv6 addresses go in brackets",
        id="ipv6-without-brackets",
    ),
    pytest.param(
        b"CONNECT [::1:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid \\[IPv6\\]:port",
        id="ipv6-unclosed",
    ),
    pytest.param(
        b"CONNECT [::1]443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid \\[IPv6\\]:port",
        id="ipv6-no-colon",
    ),
    pytest.param(
        b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid IPv6 address",
        id="ipv6-zone",
    ),
    pytest.param(
        b"CONNECT [1.2.3.4]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid IPv6 address",
        id="ipv4-in-brackets",
    ),
    pytest.param(
        b"CONNECT [v1.fe]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid IPv6 address",
        id="ipvfuture",
    ),
    pytest.param(
        b"CONNECT 256.1.1.1:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid host",
        id="ipv4-out-of-range",
    ),
    pytest.param(
        b"CONNECT 0x7f.1:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not a valid host",
        id="hex-ipv4",
    ),
    pytest.param(
        b"CONNECT :443 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not a valid host", id="connect-no-host"
    ),
    pytest.param(
        b"CONNECT u@example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "user names and passwords",
        id="connect-userinfo",
    ),
    # Versions.
    pytest.param(
        b"GET http://example.com/ HTTP/2.0\r\nHost: example.com\r\n\r\n",
        505,
        "HTTP/2.0 is not supported",
        id="http-2.0",
    ),
    pytest.param(
        b"CONNECT example.com:443 HTTP/0.9\r\n\r\n", 505, "HTTP/0.9 is not supported", id="0.9"
    ),
    # Heads that are not valid HTTP/1.1, rejected by h11.
    pytest.param(bytes.fromhex("05 01 00"), 400, "not valid HTTP/1.1", id="socks5-on-http-port"),
    pytest.param(b"GET http://example.com/\r\n\r\n", 400, "not valid HTTP", id="http-0.9-line"),
    pytest.param(
        b"\r\nGET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
        "not valid HTTP/1.1",
        id="leading-empty-line",
    ),
    pytest.param(
        b"GET http://ex\xc3\xa4mple.com/ HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "illegal request line",
        id="non-ascii-target",
    ),
    pytest.param(
        b"GET http://example.com/ HTTP/1.1\r\n" + CURL_UA + b"\r\n",
        400,
        "Missing mandatory Host",
        id="http-1.1-no-host",
    ),
    pytest.param(
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nHost: other\r\n\r\n",
        400,
        "multiple Host",
        id="two-hosts",
    ),
    pytest.param(
        b"GET http://example.com/ HTTP/1.1\r\nHost : example.com\r\n\r\n",
        400,
        "illegal header line",
        id="space-before-colon",
    ),
    pytest.param(
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nNo colon\r\n\r\n",
        400,
        "illegal header line",
        id="no-colon",
    ),
    pytest.param(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n",
        400,
        "conflicting Content-Length",
        id="conflicting-content-length",
    ),
    pytest.param(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: -1\r\n\r\n",
        400,
        "bad Content-Length",
        id="negative-content-length",
    ),
    pytest.param(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        501,
        "Only Transfer-Encoding: chunked",
        id="transfer-encoding-gzip",
    ),
    pytest.param(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        501,
        "multiple Transfer-Encoding",
        id="two-transfer-encodings",
    ),
    pytest.param(
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
        id="content-length-and-chunked",
    ),
]


@pytest.mark.parametrize(("head", "status", "message"), ERRORS)
def test_error(head: bytes, status: int, message: str) -> None:
    parser = HttpProxyRequestParser()
    parser.receive_data(head)
    with pytest.raises(HttpProxyError, match=message) as info:
        parser.next_event()
    assert info.value.status == status
    assert info.value.message == str(info.value)
    assert parser.trailing_data == b""


@pytest.mark.parametrize(("head", "status", "message"), ERRORS)
def test_error_bytewise(head: bytes, status: int, message: str) -> None:
    error = fail_bytewise(head)
    assert error.status == status
    assert message.replace("\\", "") in error.message


def test_error_is_sticky() -> None:
    parser = HttpProxyRequestParser()
    parser.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(HttpProxyError) as first:
        parser.next_event()
    parser.receive_data(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(HttpProxyError) as second:
        parser.next_event()
    assert second.value is first.value
    assert parser.trailing_data == b""


def test_h11_error_message_is_bounded() -> None:
    # h11 quotes the bad line; the message goes into a response body, so it is cut short.
    head = b"GET http://example.com/ HTTP/1.1\r\nHost: x\r\nBad" + b"x" * 5000 + b"\r\n\r\n"
    parser = HttpProxyRequestParser()
    parser.receive_data(head)
    with pytest.raises(HttpProxyError) as info:
        parser.next_event()
    assert info.value.status == 400
    assert len(info.value.message) <= 300


# --- size limit ----------------------------------------------------------------------------


def head_of_size(size: int) -> bytes:
    """A valid CONNECT head of exactly ``size`` bytes, padded with one header."""
    start = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


SIZES = [
    pytest.param(HttpProxyRequestParser.MAX_HEAD, None, id="exactly-max"),
    pytest.param(HttpProxyRequestParser.MAX_HEAD + 1, 431, id="one-over"),
    pytest.param(4 * HttpProxyRequestParser.MAX_HEAD, 431, id="far-over"),
]


@pytest.mark.parametrize(("size", "status"), SIZES)
@pytest.mark.parametrize("chunk", [1, 1000, 1 << 20], ids=["bytewise", "1000", "whole"])
def test_head_size_limit(size: int, status: int | None, chunk: int) -> None:
    head = head_of_size(size)
    assert len(head) == size
    parser = HttpProxyRequestParser()
    event: Event = None
    try:
        for start in range(0, size, chunk):
            parser.receive_data(head[start : start + chunk])
            event = parser.next_event()
    except HttpProxyError as exc:
        assert exc.status == status
        assert f"larger than {HttpProxyRequestParser.MAX_HEAD} bytes" in exc.message
    else:
        assert status is None
        assert event == TunnelRequest("example.com", 443)


def test_endless_head_fails_without_end_of_head() -> None:
    parser = HttpProxyRequestParser()
    parser.receive_data(b"GET http://example.com/" + b"a" * HttpProxyRequestParser.MAX_HEAD)
    with pytest.raises(HttpProxyError) as info:
        parser.next_event()
    assert info.value.status == 431


def test_body_does_not_count_towards_head_limit() -> None:
    head = (
        b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100000\r\n\r\n"
    )
    body = b"b" * 100_000
    parser, event = parse_whole(head + body)
    assert isinstance(event, ForwardRequest)
    assert parser.exchange().data_to_origin() == body


# --- responses and status tables -----------------------------------------------------------

RESPONSES = [
    pytest.param(
        400,
        "bad request target",
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 19\r\nX-Content-Type-Options: nosniff\r\n"
        b"Cross-Origin-Resource-Policy: same-origin\r\nConnection: close\r\n\r\n"
        b"bad request target\n",
        id="400",
    ),
    pytest.param(
        431,
        "too big",
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n"
        b"X-Content-Type-Options: nosniff\r\nCross-Origin-Resource-Policy: same-origin\r\n"
        b"Connection: close\r\n\r\ntoo big\n",
        id="431",
    ),
    pytest.param(
        502,
        "h\u00f4te injoignable",
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 18\r\nX-Content-Type-Options: nosniff\r\n"
        b"Cross-Origin-Resource-Policy: same-origin\r\nConnection: close\r\n\r\n"
        b"h\xc3\xb4te injoignable\n",
        id="502-utf8-length-in-bytes",
    ),
    pytest.param(
        599,
        "",
        b"HTTP/1.1 599 Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 1\r\nX-Content-Type-Options: nosniff\r\n"
        b"Cross-Origin-Resource-Policy: same-origin\r\nConnection: close\r\n\r\n\n",
        id="unknown-status",
    ),
]


@pytest.mark.parametrize(("status", "message", "expected"), RESPONSES)
def test_error_response(status: int, message: str, expected: bytes) -> None:
    assert error_response(status, message) == expected


@pytest.mark.parametrize("status", [200, 399, 600])
def test_error_response_rejects_non_error_status(status: int) -> None:
    with pytest.raises(ValueError, match=r"not in 400\.\.599"):
        error_response(status, "x")


def test_connect_established() -> None:
    assert connect_established() == b"HTTP/1.1 200 Connection established\r\n\r\n"


HTTP_FOR_STREAM = [(0, 200), (1, 502), (2, 403), (3, 502), (4, 502), (5, 502), (6, 504)]
HTTP_FOR_STREAM += [(7, 400), (8, 503), (9, 502)]


@pytest.mark.parametrize(("stream_status", "http_status"), HTTP_FOR_STREAM)
def test_http_status_for(stream_status: int, http_status: int) -> None:
    assert http_status_for(stream_status) == http_status


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"http://" + b"a" * 5000 + b"/", id="long-host"),
        pytest.param(b"http://a:" + b"9" * 5000 + b"/", id="long-port"),
        pytest.param(b"x" * 5000, id="long-target"),
    ],
)
def test_quoted_input_in_messages_is_bounded(target: bytes) -> None:
    parser = HttpProxyRequestParser()
    parser.receive_data(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(HttpProxyError) as info:
        parser.next_event()
    assert info.value.status == 400
    assert len(info.value.message) <= 200
    assert "...'" in info.value.message
