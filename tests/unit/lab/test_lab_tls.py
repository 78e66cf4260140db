"""TLS ClientHello analyzer: SNI, ALPN, ECH and JA3 from real ClientHellos, however the
bytes are cut; nothing from anything else."""

from __future__ import annotations

import hashlib

import pytest
from lab_samples import (
    aioquic_initials,
    bytewise,
    dns_query,
    feed_all,
    fixture_stream,
    keys,
    noise,
    python_client_hello,
    reframe_tls_records,
)

from unwall.lab.analyzers import MAX_BUFFER, TlsAnalyzer
from unwall.lab.analyzers.clienthello import is_grease

PYTHON_HELLO = python_client_hello()

# (id, the client's first bytes, findings expected among the analyzer's)
HELLOS = [
    ("python-ssl", PYTHON_HELLO, {"sni": "news.example", "alpn": "h2,http/1.1"}),
    ("python-ssl-no-alpn", python_client_hello(alpn=()), {"sni": "news.example"}),
    ("python-ssl-no-sni", python_client_hello(server_name=None), {"no-sni": ""}),
    ("python-ssl-upper-case", python_client_hello("NEWS.Example"), {"sni": "news.example"}),
    ("curl", fixture_stream("curl-tls"), {"sni": "news.example", "alpn": "h2,http/1.1"}),
    (
        "chromium",
        fixture_stream("chromium-tls"),
        {"sni": "news.example", "alpn": "h2,http/1.1", "ech": "encrypted_client_hello"},
    ),
    # The same ClientHello re-cut into many small records, SNI split between them.
    ("records-of-40", reframe_tls_records(PYTHON_HELLO, 40), {"sni": "news.example"}),
    ("records-of-1", reframe_tls_records(PYTHON_HELLO, 1), {"sni": "news.example"}),
    (
        "chromium-records-of-100",
        reframe_tls_records(fixture_stream("chromium-tls"), 100),
        {"sni": "news.example", "ech": "encrypted_client_hello"},
    ),
]
HELLO_IDS = [case[0] for case in HELLOS]


def segments(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(("name", "stream", "expected"), HELLOS, ids=HELLO_IDS)
@pytest.mark.parametrize("cut", ["whole", "bytewise", "segments-of-100", "segments-of-1448"])
def test_client_hello_findings(
    name: str, stream: bytes, expected: dict[str, str], cut: str
) -> None:
    pieces = {
        "whole": [stream],
        "bytewise": bytewise(stream),
        "segments-of-100": segments(stream, 100),
        "segments-of-1448": segments(stream, 1448),
    }[cut]
    analyzer = TlsAnalyzer()
    findings = feed_all(analyzer, pieces)
    assert analyzer.done
    assert {f.analyzer for f in findings} == {"tls"}
    found = keys(findings)
    assert found.items() >= expected.items()
    assert ("sni" in found) != ("no-sni" in found)
    assert found["ja3"] == hashlib.md5(found["client-hello"].encode()).hexdigest()
    assert len(findings) == len(found), "each finding is reported once"


@pytest.mark.parametrize(("name", "stream", "expected"), HELLOS, ids=HELLO_IDS)
def test_ja3_is_the_same_however_the_hello_is_cut(
    name: str, stream: bytes, expected: dict[str, str]
) -> None:
    whole = keys(TlsAnalyzer().feed(stream, from_client=True))
    pieces = keys(feed_all(TlsAnalyzer(), segments(stream, 7)))
    assert whole == pieces


def test_ja3_leaves_out_grease() -> None:
    ja3 = keys(TlsAnalyzer().feed(fixture_stream("chromium-tls"), from_client=True))["client-hello"]
    version, ciphers, extensions, groups, _formats = ja3.split(",")
    assert version == "771"
    for field in (ciphers, extensions, groups):
        values = [int(v) for v in field.split("-")]
        assert values and not any(is_grease(v) for v in values)
    assert "4588" in groups.split("-")  # X25519MLKEM768, the key share that makes it 1.8 KB


def test_fingerprints_tell_clients_apart() -> None:
    fingerprints = {
        name: keys(TlsAnalyzer().feed(fixture_stream(name), from_client=True))["ja3"]
        for name in ("curl-tls", "chromium-tls")
    }
    fingerprints["python"] = keys(TlsAnalyzer().feed(PYTHON_HELLO, from_client=True))["ja3"]
    assert len(set(fingerprints.values())) == 3


@pytest.mark.parametrize("cut", [1, 2, 5, 6, 100, len(PYTHON_HELLO) - 1])
def test_truncated_hello_waits_for_more(cut: int) -> None:
    analyzer = TlsAnalyzer()
    assert analyzer.feed(PYTHON_HELLO[:cut], from_client=True) == []
    assert not analyzer.done
    assert keys(analyzer.feed(PYTHON_HELLO[cut:], from_client=True))["sni"] == "news.example"


def test_server_bytes_are_not_read() -> None:
    analyzer = TlsAnalyzer()
    assert analyzer.feed(PYTHON_HELLO, from_client=False) == []
    assert not analyzer.done
    assert keys(analyzer.feed(PYTHON_HELLO, from_client=True))["sni"] == "news.example"


def test_nothing_more_after_done() -> None:
    analyzer = TlsAnalyzer()
    assert analyzer.feed(PYTHON_HELLO, from_client=True)
    assert analyzer.feed(PYTHON_HELLO, from_client=True) == []


def _with_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


# (id, client bytes): not a ClientHello, or a broken one; the analyzer gives up.
NOT_HELLOS = [
    ("http", b"GET / HTTP/1.1\r\nHost: news.example\r\n\r\n"),
    ("ssh", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
    ("quic-initial", aioquic_initials()[0]),
    ("dns-over-tcp", len(dns_query()).to_bytes(2, "big") + dns_query()),
    ("random", noise(600, seed=1)),
    ("zeros", bytes(600)),
    ("single-0x17", b"\x17"),
    ("record-version-2", b"\x16\x02\x00\x00\x10" + bytes(16)),
    ("server-hello", _with_byte(PYTHON_HELLO, 5, 2)),
    ("application-data-record", b"\x17\x03\x03\x00\x05hello"),
    ("empty-record", b"\x16\x03\x01\x00\x00"),
    ("record-too-long", b"\x16\x03\x01\x48\x01" + bytes(100)),
    (
        "alert-after-first-record",
        reframe_tls_records(PYTHON_HELLO, 100)[:105] + b"\x15\x03\x03\x00\x02\x02\x28",
    ),
    ("hello-larger-than-the-budget", b"\x16\x03\x01\x00\x04\x01\xff\xff\xff"),
    ("session-id-too-long", _with_byte(PYTHON_HELLO, 5 + 4 + 2 + 32, 33)),
    ("cipher-list-too-long", _with_byte(PYTHON_HELLO, 5 + 4 + 2 + 32 + 1 + 32, 0xFF)),
    ("cipher-list-length-odd", _with_byte(PYTHON_HELLO, 5 + 4 + 2 + 32 + 1 + 32 + 1, 0xFF)),
]


@pytest.mark.parametrize(("name", "data"), NOT_HELLOS, ids=[case[0] for case in NOT_HELLOS])
def test_other_bytes_give_nothing_and_give_up(
    name: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    analyzer = TlsAnalyzer()
    assert analyzer.feed(data, from_client=True) == []
    assert analyzer.done
    assert not caplog.records, "a malformed input must not look like a bug"


def test_gives_up_once_the_budget_is_spent() -> None:
    # A ClientHello announced at 16368 bytes, sent in 4 KiB records: the records around it
    # would take the stream past the budget, and the box stops buffering there.
    header = b"\x16\x03\x01\x10\x00"
    first = header + b"\x01\x00\x3f\xf0" + bytes(4092)
    filler = header + bytes(4096)
    assert 3 * len(filler) < MAX_BUFFER < 4 * len(filler)
    analyzer = TlsAnalyzer()
    assert feed_all(analyzer, [first, filler, filler]) == []
    assert not analyzer.done
    assert analyzer.feed(filler, from_client=True) == []
    assert analyzer.done


def test_empty_payload_is_ignored() -> None:
    analyzer = TlsAnalyzer()
    assert analyzer.feed(b"", from_client=True) == []
    assert not analyzer.done


# -- JA4 and the box's [tls] rule -----------------------------------------------------------

CHROMIUM_156 = "t13d1517h2_8daaf6152771_cb7bf5808d99"
PYTHON_JA4 = "t13d1812h1_85036bcba153_d41ae481755e"  # Python 3.11's ssl (OpenSSL 3), h2 and 1.1


def _ja4(stream: bytes) -> str:
    return keys(TlsAnalyzer().feed(stream, from_client=True))["ja4"]


def test_ja4_of_browsers_and_of_unwalls_broker_channel() -> None:
    """JA4 sorts what Chromium shuffles: two of its hellos, two JA3s, one JA4, the one in the
    box's reference; curl_cffi's Chrome (the client's broker channel) gives the same JA4;
    Python's ssl (what the client used before) another."""
    from unwall.lab.profile import browser_tls_reference

    chromium = fixture_stream("chromium156-tls")
    assert _ja4(chromium) == CHROMIUM_156
    assert _ja4(fixture_stream("chromium-tls")) == "t13d1516h2_8daaf6152771_806a8c22fdea"
    assert _ja4(fixture_stream("curl-cffi-tls")) == CHROMIUM_156
    assert CHROMIUM_156 in browser_tls_reference()
    python = _ja4(python_client_hello())
    assert python.startswith("t13d") and python not in browser_tls_reference()


async def test_the_broker_channels_hello_is_chromiums_today() -> None:
    """Live: what unwall.transport.brokerhttp's chrome engine sends now (not a fixture), to
    a listener on loopback, has Chromium 156's JA4; the python engine's does not."""
    import asyncio

    from unwall.transport.brokerhttp import HttpFailed, open_http

    async def hello_of(engine: str) -> bytes:
        got = bytearray()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while len(got) < 4096 and (data := await asyncio.wait_for(reader.read(4096), 2)):
                    got.extend(data)
            except TimeoutError:
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        http = open_http(engine)
        try:
            with pytest.raises(HttpFailed):  # the listener answers nothing
                await http.post(f"https://localhost:{port}/v1/sealed", b"x", {}, 5.0, 5.0, 100)
        finally:
            await http.aclose()
            server.close()
            await server.wait_closed()
        return bytes(got)

    assert _ja4(await hello_of("chrome")) == CHROMIUM_156
    assert _ja4(await hello_of("python")) != CHROMIUM_156


def _tls_verdict(rule: dict[str, object], hello: bytes) -> tuple[int | None, str, list[str]]:
    from lab_samples import box_verdict, tcp_flow_packets

    from unwall.lab.profile import CensorProfile

    return box_verdict(CensorProfile.from_dict({"tls": rule}), tcp_flow_packets(hello))


@pytest.mark.parametrize("action", ["flag", "drop"])
def test_the_tls_rule_suspects_a_hello_no_browser_sends(action: str) -> None:
    from unwall.lab.inspector import MARK_ALLOW, MARK_DROP

    mark, _, suspected = _tls_verdict(
        {"allow": "browsers", "action": action}, python_client_hello()
    )
    assert suspected == [f"tls ja4 {_ja4(python_client_hello())} to news.example: not a browser's"]
    assert mark == (MARK_DROP if action == "drop" else MARK_ALLOW)
    for browser in ("chromium156-tls", "curl-cffi-tls"):
        mark, _, suspected = _tls_verdict(
            {"allow": "browsers", "action": action}, fixture_stream(browser)
        )
        assert (mark, suspected) == (MARK_ALLOW, [])


def test_the_tls_rule_watches_only_its_names() -> None:
    hello = python_client_hello()
    assert _tls_verdict({"allow": "browsers", "names": ["broker.*"]}, hello)[2] == []
    assert _tls_verdict({"allow": "browsers", "names": ["*.example"]}, hello)[2] != []
    no_name = python_client_hello(server_name=None)
    (objection,) = _tls_verdict({"allow": "browsers"}, no_name)[2]
    assert objection.endswith(" to no name: not a browser's")
    assert _tls_verdict({}, hello)[2] == []  # no allow-list: the rule is off


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"allow": "firefox"}, '[tls] allow must be a list of patterns or "browsers"'),
        ({"allow": ["t13*"], "names": "*"}, "[tls] names must be a list of patterns"),
        ({"allow": ["t13*"], "action": "rst"}, "[tls] action must be one of"),
        ({"alow": ["t13*"]}, "unknown key(s) ['alow'] in [tls]"),
    ],
)
def test_bad_tls_rules_are_named(table: dict[str, object], message: str) -> None:
    from unwall.lab.profile import CensorProfile, ProfileError

    with pytest.raises(ProfileError) as error:
        CensorProfile.from_dict({"tls": table})
    assert message in str(error.value)
