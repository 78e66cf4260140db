"""All analyzers together, as the box runs them: `analyzers_for` picks them by content, real
flows come out with the right findings and only those, and no input makes any of them
raise, log a bug or dawdle."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

import pytest
from lab_samples import (
    aioice_check,
    aioquic_initials,
    dns_query,
    dns_response,
    fixture_datagrams,
    fixture_stream,
    h11_request,
    noise,
    openssl_dtls_client_hello,
    python_client_hello,
    refragment_dtls,
    tcp_framed,
)

from unwall.lab.analyzers import (
    Analyzer,
    DnsAnalyzer,
    DtlsAnalyzer,
    Finding,
    HttpAnalyzer,
    QuicInitialAnalyzer,
    StunAnalyzer,
    TlsAnalyzer,
    analyzers_for,
)

Packet = tuple[bool, bytes]  # (from_client, transport payload)
Transport = Literal["tcp", "udp"]


def run_flow(
    protocol: Transport, dst_port: int, packets: list[Packet]
) -> set[tuple[str, str, str]]:
    """Feed a flow's packets to every analyzer the box would pick, as the box does."""
    analyzers = analyzers_for(protocol, dst_port, 40000)
    found: list[Finding] = []
    for from_client, payload in packets:
        for analyzer in analyzers:
            if not analyzer.done:
                found += analyzer.feed(payload, from_client=from_client)
    return {(f.analyzer, f.key, f.value) for f in found}


def client(*payloads: bytes) -> list[Packet]:
    return [(True, payload) for payload in payloads]


def segments(data: bytes, size: int) -> list[Packet]:
    return client(*(data[i : i + size] for i in range(0, len(data), size)))


QUERY = dns_query()

# (id, protocol, destination port, packets, analyzers expected to report, findings among them)
FLOWS = [
    (
        "tls-on-443",
        "tcp",
        443,
        segments(fixture_stream("chromium-tls"), 1448),
        {"tls"},
        {("tls", "sni", "news.example")},
    ),
    (
        "tls-on-an-odd-port",
        "tcp",
        8081,
        segments(python_client_hello(), 10),
        {"tls"},
        {("tls", "sni", "news.example")},
    ),
    (
        "http-on-an-odd-port",
        "tcp",
        8443,
        client(h11_request("GET", "/", [("Host", "news.example")])),
        {"http"},
        {("http", "host", "news.example")},
    ),
    (
        "dns-over-tcp",
        "tcp",
        53,
        [*segments(tcp_framed(QUERY), 5), (False, tcp_framed(dns_response(QUERY)))],
        {"dns"},
        {("dns", "query", "news.example")},
    ),
    (
        "dns-over-udp",
        "udp",
        53,
        [
            (True, QUERY),
            (False, dns_response(QUERY, "news.example 60 A 203.0.113.10")),
        ],
        {"dns"},
        {("dns", "answer", "news.example A 203.0.113.10")},
    ),
    (
        "dns-over-udp-on-another-port",
        "udp",
        5353,
        client(QUERY),
        {"dns"},
        {("dns", "query", "news.example")},
    ),
    (
        "quic-chromium",
        "udp",
        443,
        client(*(d for _, d in fixture_datagrams("chromium-quic"))),
        {"quic"},
        {("quic", "sni", "news.example"), ("quic", "alpn", "h3")},
    ),
    (
        "quic-aioquic-on-an-odd-port",
        "udp",
        4433,
        client(*aioquic_initials(alpn=("h3",))),
        {"quic"},
        {("quic", "sni", "news.example")},
    ),
    (
        "webrtc-aiortc",
        "udp",
        55555,
        fixture_datagrams("aiortc-webrtc"),
        {"stun", "dtls"},
        {("stun", "binding-request", "magic-cookie"), ("stun", "ice-role", "controlling")},
    ),
    (
        "webrtc-fragmented-hello",
        "udp",
        55555,
        client(aioice_check(), *refragment_dtls(openssl_dtls_client_hello(), 60)),
        {"stun", "dtls"},
        {("dtls", "srtp", "SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_HMAC_SHA1_80")},
    ),
    (
        "plain-dtls",
        "udp",
        4433,
        client(openssl_dtls_client_hello(srtp_profiles=None)),
        {"dtls"},
        set(),
    ),
    ("ssh", "tcp", 22, client(b"SSH-2.0-OpenSSH_9.2p1\r\n"), set(), set()),
    ("tcp-noise", "tcp", 443, segments(noise(3000, seed=10), 1000), set(), set()),
    ("udp-noise", "udp", 443, client(*(noise(1200, seed=s) for s in range(5))), set(), set()),
]


@pytest.mark.parametrize(
    ("name", "protocol", "port", "packets", "reporters", "expected"),
    FLOWS,
    ids=[case[0] for case in FLOWS],
)
def test_flow(
    name: str,
    protocol: Transport,
    port: int,
    packets: list[Packet],
    reporters: set[str],
    expected: set[tuple[str, str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = run_flow(protocol, port, packets)
    assert {analyzer for analyzer, _, _ in found} == reporters
    assert expected <= found
    assert not caplog.records


@pytest.mark.parametrize(
    ("protocol", "dst_port", "src_port", "names"),
    [
        ("tcp", 443, 40000, ["tls", "http"]),
        ("tcp", 80, 40000, ["tls", "http"]),
        ("tcp", 53, 40000, ["tls", "http", "dns"]),
        ("tcp", 40000, 53, ["tls", "http", "dns"]),
        ("udp", 443, 40000, ["dns", "quic", "stun", "dtls"]),
        ("udp", 53, 40000, ["dns", "quic", "stun", "dtls"]),
    ],
)
def test_analyzers_for(protocol: Transport, dst_port: int, src_port: int, names: list[str]) -> None:
    chosen = analyzers_for(protocol, dst_port, src_port)
    assert [a.name for a in chosen] == names
    assert not any(a.done for a in chosen)
    again = analyzers_for(protocol, dst_port, src_port)
    assert not {id(a) for a in chosen} & {id(a) for a in again}, "fresh instances per flow"


def test_analyzers_for_an_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="tcp"):
        analyzers_for("sctp", 5000, 5000)  # type: ignore[arg-type]


FACTORIES: list[Callable[[], Analyzer]] = [
    TlsAnalyzer,
    HttpAnalyzer,
    lambda: DnsAnalyzer(transport="udp"),
    lambda: DnsAnalyzer(transport="tcp"),
    QuicInitialAnalyzer,
    StunAnalyzer,
    DtlsAnalyzer,
]
FACTORY_IDS = ["tls", "http", "dns-udp", "dns-tcp", "quic", "stun", "dtls"]

SAMPLES = [
    python_client_hello(),
    fixture_stream("chromium-tls"),
    fixture_stream("curl-http"),
    h11_request("GET", "/", [("Host", "news.example")]),
    QUERY,
    tcp_framed(QUERY),
    dns_response(QUERY, "news.example 60 A 203.0.113.10"),
    aioquic_initials()[0],
    *(d for _, d in fixture_datagrams("chromium-quic")),
    aioice_check(),
    openssl_dtls_client_hello(),
]


def mutations(sample: bytes, rng: random.Random) -> list[bytes]:
    """Truncations, bit flips, overwritten length fields, spliced tails."""
    out = [sample[: rng.randrange(len(sample))] for _ in range(8)]
    for _ in range(16):
        data = bytearray(sample)
        for _ in range(rng.randint(1, 4)):
            index = rng.randrange(len(data))
            data[index] = rng.choice([0x00, 0xFF, data[index] ^ (1 << rng.randrange(8))])
        out.append(bytes(data))
    cut = rng.randrange(len(sample))
    out.append(sample[:cut] + rng.randbytes(rng.randrange(200)))
    return out


@pytest.mark.parametrize("factory", FACTORIES, ids=FACTORY_IDS)
def test_no_input_makes_an_analyzer_raise_or_log(
    factory: Callable[[], Analyzer], caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(20240601)
    for sample in SAMPLES:
        for mutant in mutations(sample, rng):
            for from_client in (True, False):
                analyzer = factory()
                for piece in (mutant[:7], mutant[7:], mutant):
                    result = analyzer.feed(piece, from_client=from_client)
                    assert isinstance(result, list)
    for size in (1, 2, 3, 5, 13, 20, 64, 1200):
        for seed in range(30):
            factory().feed(noise(size, seed=seed), from_client=True)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_an_unexpected_error_costs_the_flow_not_the_box(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(TlsAnalyzer):
        def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
            raise IndexError("a bug")

    analyzer = Broken()
    assert analyzer.feed(python_client_hello(), from_client=True) == []
    assert analyzer.done
    assert "no longer inspecting this flow" in caplog.text


def test_non_matching_flows_are_cheap() -> None:
    # 2000 flows of one noise packet through every analyzer: the box's common case.
    payloads = [noise(1200, seed=s) for s in range(1000)]
    started = time.perf_counter()
    protocols: tuple[Transport, ...] = ("tcp", "udp")
    for payload in payloads:
        for protocol in protocols:
            for analyzer in analyzers_for(protocol, 443, 40000):
                analyzer.feed(payload, from_client=True)
    per_flow = (time.perf_counter() - started) / (2 * len(payloads))
    assert per_flow < 200e-6, f"{per_flow * 1e6:.0f} µs per non-matching flow"


def test_finding_reads_well_in_a_log() -> None:
    assert str(Finding("tls", "sni", "news.example")) == "tls sni=news.example"
    assert str(Finding("tls", "no-sni", "")) == "tls no-sni"
