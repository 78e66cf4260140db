"""HTTP/1.x analyzer: the request line and host of requests written by curl, h11 and
http.client, however the head is cut."""

from __future__ import annotations

import pytest
from lab_samples import (
    bytewise,
    feed_all,
    fixture_stream,
    h11_request,
    http_client_request,
    keys,
    noise,
    python_client_hello,
)

from unwall.lab.analyzers import MAX_BUFFER, HttpAnalyzer

# (id, the client's first bytes, request line, host; "" for no host)
REQUESTS = [
    (
        "curl-origin-form",
        fixture_stream("curl-http"),
        "GET /articles?id=7 HTTP/1.1",
        "news.example",
    ),
    (
        "curl-proxy-absolute-form",
        fixture_stream("curl-http-proxy"),
        "GET http://news.example/front HTTP/1.1",
        "news.example",
    ),
    (
        "curl-connect",
        fixture_stream("curl-connect"),
        "CONNECT news.example:80 HTTP/1.1",
        "news.example",
    ),
    (
        "h11-get",
        h11_request("GET", "/", [("Host", "News.Example")]),
        "GET / HTTP/1.1",
        "news.example",
    ),
    (
        "h11-post-with-body-in-the-same-segment",
        h11_request("POST", "/form", [("Host", "news.example"), ("Content-Length", "9")])
        + b"q=blocked",
        "POST /form HTTP/1.1",
        "news.example",
    ),
    (
        "http-client-host-with-port",
        http_client_request("news.example:8080", "/x"),
        "GET /x HTTP/1.1",
        "news.example",
    ),
    (
        "http-client-head",
        http_client_request("news.example", "/", method="HEAD"),
        "HEAD / HTTP/1.1",
        "news.example",
    ),
    (
        "ipv6-literal",
        h11_request("GET", "/", [("Host", "[2001:db8::1]:8080")]),
        "GET / HTTP/1.1",
        "2001:db8::1",
    ),
    (
        "host-header-in-capitals-after-others",
        b"GET / HTTP/1.1\r\nAccept: */*\r\nHOST:  news.example.  \r\n\r\n",
        "GET / HTTP/1.1",
        "news.example",
    ),
    (
        "bare-lf-line-ends",
        b"GET / HTTP/1.1\nHost: news.example\n\n",
        "GET / HTTP/1.1",
        "news.example",
    ),
    ("http-1.0-without-host", b"GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0", ""),
    (
        "absolute-form-with-userinfo-and-port",
        b"GET http://user@news.example:8080/a?b=c HTTP/1.1\r\nHost: other.example\r\n\r\n",
        "GET http://user@news.example:8080/a?b=c HTTP/1.1",
        "news.example",
    ),
]
REQUEST_IDS = [case[0] for case in REQUESTS]


@pytest.mark.parametrize(("name", "stream", "request_line", "host"), REQUESTS, ids=REQUEST_IDS)
@pytest.mark.parametrize("bytewise_", [False, True], ids=["whole", "bytewise"])
def test_request_findings(
    name: str, stream: bytes, request_line: str, host: str, bytewise_: bool
) -> None:
    analyzer = HttpAnalyzer()
    findings = feed_all(analyzer, bytewise(stream) if bytewise_ else [stream])
    assert analyzer.done
    expected = {"request": request_line, "host": host} if host else {"request": request_line}
    if not host:
        expected["no-host"] = ""
    assert keys(findings) == expected
    assert {f.analyzer for f in findings} == {"http"}


def test_head_split_at_every_point_gives_the_same_findings() -> None:
    stream = fixture_stream("curl-http")
    whole = HttpAnalyzer().feed(stream, from_client=True)
    for cut in range(1, len(stream)):
        analyzer = HttpAnalyzer()
        assert analyzer.feed(stream[:cut], from_client=True) == []
        assert not analyzer.done
        assert analyzer.feed(stream[cut:], from_client=True) == whole


def test_server_bytes_are_not_read() -> None:
    analyzer = HttpAnalyzer()
    assert analyzer.feed(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", from_client=False) == []
    assert not analyzer.done


# (id, client bytes): not an HTTP/1.x request.
NOT_HTTP = [
    ("tls", python_client_hello()),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("ssh", b"SSH-2.0-OpenSSH_9.2p1\r\n"),
    ("lower-case-method", b"get / HTTP/1.1\r\nHost: news.example\r\n\r\n"),
    ("method-without-space", b"GETX / HTTP/1.1\r\n\r\n"),
    ("single-letter", b"X"),
    ("http-0.9", b"GET /\r\n\r\n"),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: news.example\r\n\r\n"),
    ("random", noise(500, seed=5)),
]


@pytest.mark.parametrize(("name", "data"), NOT_HTTP, ids=[case[0] for case in NOT_HTTP])
def test_other_bytes_give_nothing_and_give_up(
    name: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    analyzer = HttpAnalyzer()
    assert analyzer.feed(data, from_client=True) == []
    assert analyzer.done
    assert not caplog.records


def test_a_method_prefix_waits_for_more() -> None:
    analyzer = HttpAnalyzer()
    for piece in (b"C", b"ONN", b"EC"):
        assert analyzer.feed(piece, from_client=True) == []
        assert not analyzer.done
    assert analyzer.feed(b"X", from_client=True) == []
    assert analyzer.done


def test_a_head_larger_than_the_budget_is_given_up() -> None:
    analyzer = HttpAnalyzer()
    head = b"GET / HTTP/1.1\r\nCookie: " + b"c" * MAX_BUFFER
    assert feed_all(analyzer, [head[i : i + 1400] for i in range(0, len(head), 1400)]) == []
    assert analyzer.done
