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
