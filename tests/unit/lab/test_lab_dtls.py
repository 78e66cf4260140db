"""DTLS analyzer: JA3 and SRTP profiles of OpenSSL and aiortc ClientHellos, whole or
fragmented, after the STUN that precedes them on a WebRTC flow."""

from __future__ import annotations

import hashlib

import pytest
from lab_samples import (
    aioice_check,
    aioquic_initials,
    feed_all,
    fixture_datagrams,
    keys,
    noise,
    openssl_dtls_client_hello,
    python_client_hello,
    refragment_dtls,
)

from unwall.lab.analyzers import DtlsAnalyzer

WEBRTC_HELLO = openssl_dtls_client_hello()
PLAIN_HELLO = openssl_dtls_client_hello(srtp_profiles=None)
AIORTC_FLOW = fixture_datagrams("aiortc-webrtc")

# (id, datagrams with direction, findings expected among the analyzer's, keys that must not be)
HELLOS = [
    (
        "openssl-with-srtp",
        [(True, WEBRTC_HELLO)],
        {"srtp": "SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_HMAC_SHA1_80"},
        {"sni"},
    ),
    ("openssl-plain", [(True, PLAIN_HELLO)], {}, {"srtp", "sni"}),
    (
        "openssl-with-sni",
        [(True, openssl_dtls_client_hello(srtp_profiles=None, server_name=b"VPN.Example"))],
        {"sni": "vpn.example"},
        {"srtp"},
    ),
    (
        "aiortc-flow-stun-first-hello-from-the-answerer",
        AIORTC_FLOW,
        {
            "srtp": "SRTP_AEAD_AES_256_GCM,SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_HMAC_SHA1_80",
            "client-hello": "65277,49195-52393-49161-49162,"
            "65281-11-10-14-22-23-13,29-23-30-24-25,0",
        },
        {"sni"},
    ),
    (
        "fragments-of-64-one-per-datagram",
        [(True, d) for d in refragment_dtls(WEBRTC_HELLO, 64)],
        {"srtp": "SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_HMAC_SHA1_80"},
        set(),
    ),
    (
        "fragments-out-of-order",
        [(True, d) for d in refragment_dtls(WEBRTC_HELLO, 50)[::-1]],
        {"srtp": "SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_HMAC_SHA1_80"},
        set(),
    ),
    (
        "fragments-in-one-datagram",
        [(True, b"".join(refragment_dtls(WEBRTC_HELLO, 30)))],
        {"srtp": "SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_HMAC_SHA1_80"},
        set(),
    ),
]


@pytest.mark.parametrize(
    ("name", "datagrams", "expected", "absent"), HELLOS, ids=[c[0] for c in HELLOS]
)
def test_client_hello_findings(
    name: str,
    datagrams: list[tuple[bool, bytes]],
    expected: dict[str, str],
    absent: set[str],
) -> None:
    analyzer = DtlsAnalyzer()
    findings = []
    for from_client, datagram in datagrams:
        findings += analyzer.feed(datagram, from_client=from_client)
    found = keys(findings)
    assert {f.analyzer for f in findings} == {"dtls"}
    assert found.items() >= expected.items()
    assert not absent & found.keys()
    assert found["client-hello"].startswith("65277,")  # legacy version 0xfefd: DTLS 1.2
    assert found["ja3"] == hashlib.md5(found["client-hello"].encode()).hexdigest()


def test_fingerprint_is_stable_and_tells_webrtc_from_other_dtls() -> None:
    def ja3(datagram: bytes) -> str:
        return keys(DtlsAnalyzer().feed(datagram, from_client=True))["ja3"]

    assert ja3(WEBRTC_HELLO) == ja3(openssl_dtls_client_hello()), "random and cookie left out"
    assert ja3(WEBRTC_HELLO) == ja3(b"".join(refragment_dtls(WEBRTC_HELLO, 40)))
    assert ja3(WEBRTC_HELLO) != ja3(PLAIN_HELLO)


def test_stun_before_the_handshake_is_skipped() -> None:
    analyzer = DtlsAnalyzer()
    assert analyzer.feed(aioice_check(), from_client=True) == []
    assert not analyzer.done
    assert keys(analyzer.feed(WEBRTC_HELLO, from_client=False))["srtp"]


def test_a_fragment_at_a_time_waits_for_the_rest() -> None:
    fragments = refragment_dtls(WEBRTC_HELLO, 64)
    analyzer = DtlsAnalyzer()
    assert feed_all(analyzer, fragments[:-1]) == []
    assert not analyzer.done
    assert analyzer.feed(fragments[-1], from_client=True)


def test_a_second_hello_after_the_first_says_nothing() -> None:
    analyzer = DtlsAnalyzer()
    assert analyzer.feed(WEBRTC_HELLO, from_client=True)
    assert analyzer.feed(WEBRTC_HELLO, from_client=True) == []


def _with_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


# (id, datagram): not the start of a DTLS handshake.
NOT_HELLOS = [
    ("tls-record", python_client_hello()),
    ("quic-initial", aioquic_initials()[0]),
    ("rtp-like", b"\x80\x60" + noise(170, seed=8)),
    ("random", noise(200, seed=9)),
    ("application-data", _with_byte(WEBRTC_HELLO, 0, 23)),
    ("change-cipher-spec", b"\x14\xfe\xfd" + bytes(8) + b"\x00\x01\x01"),
    ("epoch-1", _with_byte(WEBRTC_HELLO, 4, 1)),
    ("record-version-tls", _with_byte(WEBRTC_HELLO, 1, 0x03)),
    ("server-hello", _with_byte(WEBRTC_HELLO, 13, 2)),
    ("truncated-record", WEBRTC_HELLO[:-1]),
    ("fragment-past-its-message", _with_byte(WEBRTC_HELLO, 13 + 3, 0x10)),
    ("hello-larger-than-the-budget", _with_byte(WEBRTC_HELLO, 13 + 1, 0x7F)),
    ("cipher-list-odd", _with_byte(WEBRTC_HELLO, 13 + 12 + 2 + 32 + 1 + 1 + 1, 0x03)),
]


@pytest.mark.parametrize(("name", "datagram"), NOT_HELLOS, ids=[c[0] for c in NOT_HELLOS])
def test_other_datagrams_give_nothing_and_give_up(
    name: str, datagram: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    analyzer = DtlsAnalyzer()
    assert analyzer.feed(datagram, from_client=True) == []
    assert analyzer.done
    assert not caplog.records
