"""QUIC Initial analyzer: the ClientHello decrypted out of real client Initials (aioquic,
Chromium), in one datagram or several, in order or not."""

from __future__ import annotations

import pytest
from aioquic.quic.packet import QuicProtocolVersion
from lab_samples import (
    aioice_check,
    aioquic_initials,
    dns_query,
    feed_all,
    fixture_datagrams,
    keys,
    noise,
    openssl_dtls_client_hello,
    python_client_hello,
)

from unwall.lab.analyzers import QuicInitialAnalyzer
from unwall.lab.analyzers.quic import VERSIONS, InitialKeys, long_headers

LONG_ALPN = [f"proto-{i:03d}-" + "x" * 40 for i in range(60)]  # makes a 4-datagram hello
CHROMIUM = [data for _, data in fixture_datagrams("chromium-quic")]

# (id, the client's datagrams in the order sent, findings expected)
INITIALS = [
    ("aioquic-v1", aioquic_initials(), {"version": "v1", "sni": "news.example", "alpn": "h3"}),
    (
        "aioquic-v2",
        aioquic_initials(version=QuicProtocolVersion.VERSION_2),
        {"version": "v2", "sni": "news.example", "alpn": "h3"},
    ),
    ("aioquic-no-sni", aioquic_initials(server_name=None), {"version": "v1", "no-sni": ""}),
    (
        "aioquic-two-alpn",
        aioquic_initials(server_name="Video.Example", alpn=("h3", "hq-interop")),
        {"sni": "video.example", "alpn": "h3,hq-interop"},
    ),
    (
        "aioquic-hello-over-4-datagrams",
        aioquic_initials(alpn=LONG_ALPN),
        {"sni": "news.example", "alpn": ",".join(LONG_ALPN)},
    ),
    # Chromium scatters overlapping CRYPTO frames over two Initials; the third datagram
    # is its retransmission, cut differently.
    (
        "chromium",
        CHROMIUM,
        {"version": "v1", "sni": "news.example", "alpn": "h3", "ech": "encrypted_client_hello"},
    ),
]
INITIAL_IDS = [case[0] for case in INITIALS]


@pytest.mark.parametrize(("name", "datagrams", "expected"), INITIALS, ids=INITIAL_IDS)
@pytest.mark.parametrize("order", ["as-sent", "reversed"])
def test_client_hello_findings(
    name: str, datagrams: list[bytes], expected: dict[str, str], order: str
) -> None:
    analyzer = QuicInitialAnalyzer()
    findings = feed_all(analyzer, datagrams if order == "as-sent" else datagrams[::-1])
    assert analyzer.done
    assert {f.analyzer for f in findings} == {"quic"}
    assert keys(findings).items() >= expected.items()
    assert len(findings) == len(keys(findings))


def test_findings_come_with_the_datagram_that_completes_the_hello() -> None:
    datagrams = aioquic_initials(alpn=LONG_ALPN)
    assert len(datagrams) == 4
    analyzer = QuicInitialAnalyzer()
    counts = [len(analyzer.feed(d, from_client=True)) for d in datagrams]
    assert counts[:3] == [0, 0, 0] and counts[3] > 0
    assert not QuicInitialAnalyzer().feed(datagrams[1], from_client=True)


def test_chromium_hello_needs_its_first_two_datagrams() -> None:
    analyzer = QuicInitialAnalyzer()
    assert analyzer.feed(CHROMIUM[0], from_client=True) == []
    assert not analyzer.done
    assert keys(analyzer.feed(CHROMIUM[1], from_client=True))["sni"] == "news.example"


def test_server_datagrams_are_not_read() -> None:
    analyzer = QuicInitialAnalyzer()
    assert analyzer.feed(aioquic_initials()[0], from_client=False) == []
    assert not analyzer.done


def test_a_stray_datagram_after_the_first_initial_is_skipped() -> None:
    datagrams = aioquic_initials(alpn=LONG_ALPN)
    analyzer = QuicInitialAnalyzer()
    assert analyzer.feed(datagrams[0], from_client=True) == []
    assert analyzer.feed(b"\x40" + noise(40, seed=1), from_client=True) == []  # short header
    assert analyzer.feed(_flip(datagrams[1], 300), from_client=True) == []  # does not decrypt
    assert not analyzer.done
    assert feed_all(analyzer, datagrams[1:])


# RFC 9001 appendix A.1 and RFC 9369 appendix A.1: keys for DCID 0x8394c8f03e515708.
KEY_VECTORS = [
    (
        0x00000001,
        "1f369613dd76d5467730efcbe3b1a22d",
        "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2",
    ),
    (
        0x6B3343CF,
        "8b1a0bc121284290a29e0971b5cd045d",
        "91f73e2351d8fa91660e909f",
        "45b95e15235d6f45a6b19cbcb0294ba9",
    ),
]


@pytest.mark.parametrize(("version", "key", "iv", "hp"), KEY_VECTORS, ids=["v1", "v2"])
def test_initial_keys_match_the_rfc(version: int, key: str, iv: str, hp: str) -> None:
    keys_ = InitialKeys.for_client(VERSIONS[version], bytes.fromhex("8394c8f03e515708"))
    assert (keys_.key.hex(), keys_.iv.hex(), keys_.hp.hex()) == (key, iv, hp)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


FIRST = aioquic_initials()[0]
FIRST_END = next(long_headers(FIRST)).end  # aioquic pads the datagram after its Initial

# (id, first client datagram): not the start of a QUIC connection we can read.
NOT_INITIALS = [
    ("tls-client-hello", python_client_hello()),
    ("dns-query", dns_query()),
    ("stun-check", aioice_check()),
    ("dtls-client-hello", openssl_dtls_client_hello()),
    ("random", noise(1200, seed=2)),
    ("short-header", b"\x43" + noise(1199, seed=3)),
    ("unknown-version", FIRST[:1] + b"\x1a\x2a\x3a\x4a" + FIRST[5:]),
    ("version-negotiation", b"\xc0\x00\x00\x00\x00\x08" + noise(8, seed=4) + b"\x00" + bytes(8)),
    ("ciphertext-flipped", _flip(FIRST, FIRST_END // 2)),
    ("tag-flipped", _flip(FIRST, FIRST_END - 1)),
    ("dcid-changed", _flip(FIRST, 7)),
    ("truncated-to-100", FIRST[:100]),
    ("truncated-inside-the-packet", FIRST[: FIRST_END - 1]),
    ("cid-too-long", FIRST[:5] + b"\x15" + FIRST[6:]),
    ("length-past-end", FIRST[:40]),
    ("handshake-packet-only", b"\xe0" + FIRST[1:]),
]


@pytest.mark.parametrize(("name", "datagram"), NOT_INITIALS, ids=[c[0] for c in NOT_INITIALS])
def test_other_datagrams_give_nothing_and_give_up(
    name: str, datagram: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    analyzer = QuicInitialAnalyzer()
    assert analyzer.feed(datagram, from_client=True) == []
    assert analyzer.done
    assert not caplog.records
