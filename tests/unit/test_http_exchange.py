"""The HTTP proxy's forwarded exchange, sans-IO: one request, its response, nothing after.

Issue 22, row 7: the proxy used to copy bytes after the first request head, so an origin
that ignores ``Connection: close`` answered the application's next request, meant for
another site. These drive ForwardExchange with real heads, whole and byte by byte.
"""

from __future__ import annotations

import h11
import pytest

from unwall.client.httpproxy import (
    ForwardExchange,
    ForwardRequest,
    HttpProxyError,
    HttpProxyRequestParser,
)

GET = b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl/8.5.0\r\n\r\n"
GET_10 = b"GET http://a.example/ HTTP/1.0\r\nUser-Agent: Wget/1.21\r\n\r\n"
HEAD = b"HEAD http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"
CLOSE = b"Connection: close\r\n"


def start(request: bytes) -> tuple[ForwardRequest, ForwardExchange, bytes]:
    parser = HttpProxyRequestParser()
    parser.receive_data(request)
    event = parser.next_event()
    assert isinstance(event, ForwardRequest)
    exchange = parser.exchange()
    return event, exchange, exchange.data_to_origin()


def respond(exchange: ForwardExchange, response: bytes, bytewise: bool) -> bytes:
    out = b""
    pieces = [response[i : i + 1] for i in range(len(response))] if bytewise else [response]
    for piece in pieces:
        exchange.receive_from_origin(piece)
        out += exchange.data_to_application()
    return out


def read_as(role: type[h11.CLIENT] | type[h11.SERVER], data: bytes, request: bytes) -> list[object]:
    """What an h11 peer reads from ``data``: a byte-by-byte exchange re-frames the body into
    smaller chunks, which must mean the same thing."""
    peer = h11.Connection(role)
    if role is h11.CLIENT:
        method = request.split(b" ", 1)[0]
        peer.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        peer.send(h11.EndOfMessage())
    else:
        peer.receive_data(request)
        assert isinstance(peer.next_event(), h11.Request)
    peer.receive_data(data)
    peer.receive_data(b"")
    events: list[object] = []
    body = b""
    while (event := peer.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
        if isinstance(event, h11.ConnectionClosed):
            break
        if isinstance(event, h11.Data):
            body += event.data
        else:
            events.append(event)
    return [*events, body]


# (request, the origin's bytes, what the application gets, complete before the origin closes)
RESPONSES = [
    pytest.param(
        GET,
        # Keeps its connection alive and answers a second request nobody forwarded to it.
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n"
        b"Connection: keep-alive\r\n\r\nhello"
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nanother",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + CLOSE + b"\r\nhello",
        True,
        id="content-length-keep-alive-then-more",
    ),
    pytest.param(
        GET,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\n" + CLOSE + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
        True,
        id="chunked-with-trailers",
    ),
    pytest.param(
        GET_10,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + CLOSE + b"\r\nhello",
        True,
        id="chunked-to-an-http-1.0-application-is-close-delimited",
    ),
    pytest.param(
        GET,
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        + CLOSE
        + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        False,
        id="close-delimited-becomes-chunked",
    ),
    pytest.param(
        HEAD,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n" + CLOSE + b"\r\n",
        True,
        id="head-has-no-body",
    ),
    pytest.param(
        GET,
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 1234\r\n\r\nleftover',
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 1234\r\n' + CLOSE + b"\r\n",
        True,
        id="304-has-no-body",
    ),
    pytest.param(
        GET,
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 204 No Content\r\n" + CLOSE + b"\r\n",
        True,
        id="204-has-no-body",
    ),
    pytest.param(
        GET,
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + CLOSE + b"\r\nok",
        True,
        id="1xx-passes",
    ),
    pytest.param(
        GET_10,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + CLOSE + b"\r\nok",
        True,
        id="no-1xx-to-http-1.0",
    ),
    pytest.param(
        GET,
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nUpgrade: h2c\r\n"
        b"Proxy-Connection: keep-alive\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-End: 2\r\nContent-Length: 0\r\n" + CLOSE + b"\r\n",
        True,
        id="hop-by-hop-dropped",
    ),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("request_head", "response", "expected", "complete"), RESPONSES)
def test_response(
    request_head: bytes, response: bytes, expected: bytes, complete: bool, bytewise: bool
) -> None:
    _, exchange, body = start(request_head)
    assert body == b""
    assert exchange.request_complete
    out = respond(exchange, response, bytewise)
    assert exchange.response_complete is complete
    if not complete:
        exchange.receive_from_origin(b"")
        out += exchange.data_to_application()
        assert exchange.response_complete
    if bytewise:
        assert read_as(h11.CLIENT, out, request_head) == read_as(h11.CLIENT, expected, request_head)
    else:
        assert out == expected
    # Nothing after the end goes anywhere, even if the origin goes on.
    exchange.receive_from_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmore")
    assert exchange.data_to_application() == b""


def test_curl_reusing_its_connection_for_another_site_gets_a_new_exchange() -> None:
    """What curl did: the second request, meant for b.example, went to a.example's
    connection. Now it is not forwarded; the application, told Connection: close, sends it
    again on a new connection, where it gets its own exchange."""
    second = b"GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"
    _, exchange, _ = start(GET)
    exchange.receive_from_application(second)
    assert exchange.data_to_origin() == b""
    exchange.receive_from_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    assert exchange.data_to_application().endswith(b"Connection: close\r\n\r\na")
    assert exchange.response_complete
    request, _, _ = start(second)
    assert request.host == "b.example"


REQUEST_BODIES = [
    pytest.param(
        b"POST http://a.example/up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\n",
        b"hello",
        b"hello",
        id="content-length",
    ),
    pytest.param(
        b"POST http://a.example/up HTTP/1.1\r\nHost: a.example\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nX-Sum: 9\r\n\r\n",
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\nX-Sum: 9\r\n\r\n",
        id="chunked-with-trailers",
    ),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("head", "body", "expected"), REQUEST_BODIES)
def test_request_body_then_nothing(
    head: bytes, body: bytes, expected: bytes, bytewise: bool
) -> None:
    pipelined = b"GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"
    _, exchange, out = start(head)
    data = body + pipelined
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        exchange.receive_from_application(piece)
        out += exchange.data_to_origin()
    if bytewise:
        assert read_as(h11.SERVER, out, head) == read_as(h11.SERVER, expected, head)
    else:
        assert out == expected
    assert exchange.request_complete


def test_an_early_answer_ends_the_request() -> None:
    head = b"PUT http://a.example/up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 100\r\n\r\n"
    _, exchange, _ = start(head + b"0123456789")
    exchange.receive_from_origin(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
    assert exchange.data_to_application().startswith(b"HTTP/1.1 413 ")
    assert exchange.response_complete and not exchange.request_complete
    exchange.receive_from_application(b"x" * 90)
    assert exchange.data_to_origin() == b""


def test_expect_100_continue() -> None:
    head = (
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    request, exchange, _ = start(head)
    assert b"Expect: 100-continue\r\n" in request.head
    exchange.receive_from_origin(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert exchange.data_to_application() == b"HTTP/1.1 100 Continue\r\n\r\n"
    exchange.receive_from_application(b"ok")
    assert exchange.data_to_origin() == b"ok"
    exchange.receive_from_origin(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert exchange.data_to_application().startswith(b"HTTP/1.1 201 Created\r\n")
    assert exchange.response_complete


ORIGIN_ERRORS = [
    pytest.param(b"", False, id="closed-before-a-response"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", False, id="closed-in-the-head"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", False, id="not-http"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", False, id="101"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", True, id="cut-short"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True, id="bad-chunk"
    ),
]


@pytest.mark.parametrize(("response", "started"), ORIGIN_ERRORS)
def test_origin_errors_are_502_and_sticky(response: bytes, started: bool) -> None:
    _, exchange, _ = start(GET)
    exchange.receive_from_origin(response)
    with pytest.raises(HttpProxyError) as first:
        exchange.data_to_application()
        exchange.receive_from_origin(b"")
        exchange.data_to_application()
    assert first.value.status == 502
    assert exchange.response_started is started
    with pytest.raises(HttpProxyError) as second:
        exchange.data_to_origin()
    assert second.value is first.value


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="closed-mid-body"),
        pytest.param(b"zz\r\n", id="bad-chunk"),
    ],
)
def test_application_errors_are_400(body: bytes) -> None:
    head = (
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    _, exchange, _ = start(head + b"3\r\nabc\r\n")
    exchange.receive_from_application(body or b"")
    with pytest.raises(HttpProxyError) as info:
        exchange.data_to_origin()
    assert info.value.status == 400


# --- a web page's request to the proxy itself (issue 22, row 11) ---------------------------

PROBES = [
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8118\r\nSec-Fetch-Site: same-site\r\n"
        b"Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: empty\r\n\r\n",
        False,
        id="chromium-no-cors-fetch",
    ),
    pytest.param(
        b"GET /static/page.js HTTP/1.1\r\nHost: localhost:8118\r\nSec-Fetch-Dest: script\r\n\r\n",
        False,
        id="script-tag",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8118\r\nOrigin: http://127.0.0.1:9000\r\n"
        b"Content-Length: 0\r\n\r\n",
        False,
        id="form-post-without-fetch-metadata",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8118\r\nUser-Agent: curl/8.5.0\r\n\r\n",
        True,
        id="curl-pointed-at-the-proxy-gets-told",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8118\r\nSec-Fetch-Site: none\r\n"
        b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\nSec-Fetch-User: ?1\r\n\r\n",
        True,
        id="a-person-typing-the-proxy-address-gets-told",
    ),
]


@pytest.mark.parametrize(("head", "answer"), PROBES)
def test_a_web_pages_request_to_the_proxy_gets_no_answer(head: bytes, answer: bool) -> None:
    parser = HttpProxyRequestParser()
    parser.receive_data(head)
    with pytest.raises(HttpProxyError, match="this is a proxy") as info:
        parser.next_event()
    assert info.value.answer is answer
