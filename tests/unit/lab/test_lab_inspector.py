"""The box's inspector: real IPv4 packets carrying real TLS, QUIC, HTTP and DNS bytes in,
a verdict (conntrack mark) and findings out."""

from __future__ import annotations

import dataclasses
import random
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from lab_samples import (
    aioquic_initials,
    dns_query,
    dns_response,
    http_client_request,
    noise,
    python_client_hello,
)

from unwall.lab.analyzers import Finding
from unwall.lab.inspector import (
    DECIDE_AFTER_PACKETS,
    MARK_ALLOW,
    MARK_DROP,
    MARK_RST,
    REMEMBER_VERDICT_SECONDS,
    Decision,
    FlowKey,
    Inspector,
    ParsedPacket,
    parse_ipv4,
)
from unwall.lab.profile import CensorProfile

CLIENT = "198.51.100.10"
SERVER = "203.0.113.80"
RESOLVER = "203.0.113.254"

TCP, UDP, ICMP = 6, 17, 1
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# -- packets ------------------------------------------------------------------------------


def ipv4(src: str, dst: str, protocol: int, body: bytes, options: bytes = b"") -> bytes:
    """An IPv4 packet (no checksum: the inspector does not check it)."""
    assert len(options) % 4 == 0
    header_length = 20 + len(options)
    return (
        bytes([0x40 | header_length // 4, 0])
        + struct.pack("!HHHBBH", header_length + len(body), 0x1234, 0x4000, 64, protocol, 0)
        + bytes(int(part) for part in src.split("."))
        + bytes(int(part) for part in dst.split("."))
        + options
        + body
    )


def tcp_segment(
    sport: int,
    dport: int,
    flags: int,
    payload: bytes = b"",
    options: bytes = b"",
    seq: int = 1000,
    ack: int = 2000,
) -> bytes:
    assert len(options) % 4 == 0
    offset = (20 + len(options)) // 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 65535, 0, 0)
        + options
        + payload
    )


def udp_datagram(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    flags: int = ACK | PSH,
    payload: bytes = b"",
    seq: int = 1000,
    ack: int = 2000,
) -> bytes:
    return ipv4(src, dst, TCP, tcp_segment(sport, dport, flags, payload, seq=seq, ack=ack))


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    return ipv4(src, dst, UDP, udp_datagram(sport, dport, payload))


def tcp_flow(
    first_data: bytes | None, server: str = SERVER, port: int = 443, client_port: int = 40000
) -> list[bytes]:
    """A client's connection: the three-way handshake, then its first data, if any."""
    packets = [
        tcp(CLIENT, client_port, server, port, SYN, seq=1000),
        tcp(server, port, CLIENT, client_port, SYN | ACK, seq=5000, ack=1001),
        tcp(CLIENT, client_port, server, port, ACK, seq=1001, ack=5001),
    ]
    if first_data is not None:
        packets.append(
            tcp(CLIENT, client_port, server, port, ACK | PSH, first_data, seq=1001, ack=5001)
        )
    return packets


def quic_flow(server_name: str, server: str = SERVER, client_port: int = 50000) -> list[bytes]:
    """The client's first Initial datagram, the server's answer, one more client datagram."""
    return [
        udp(CLIENT, client_port, server, 443, aioquic_initials(server_name)[0]),
        udp(server, 443, CLIENT, client_port, noise(1200, seed=1)),
        udp(CLIENT, client_port, server, 443, noise(60, seed=2)),
    ]


TLS_NEWS = python_client_hello("news.test")
TLS_NEWS_SUBDOMAIN = python_client_hello("www.news.test")
TLS_ALLOWED = python_client_hello("allowed.test")
HTTP_NEWS = http_client_request("news.test", "/")
HTTP_ALLOWED = http_client_request("allowed.test", "/")


def feed(inspector: Inspector, packets: list[bytes], now: float = 0.0) -> list[Decision]:
    decisions = []
    for packet in packets:
        decision = inspector.packet(packet, now)
        assert decision is not None
        decisions.append(decision)
    return decisions


# -- decisions ----------------------------------------------------------------------------

SNI_RST = {"sni": {"block": ["news.test"], "action": "rst"}}
SNI_DROP = {"sni": {"block": ["news.test"], "action": "drop"}}
HOST_RST = {"host": {"block": ["news.test"], "action": "rst"}}
HOST_DROP = {"host": {"block": ["news.test"], "action": "drop"}}
IP_BLOCK = {"ip": {"block": [f"{SERVER}/32"]}}
EVERYTHING = {**SNI_RST, **HOST_RST, "dns": {"poison": ["news.test"]}}

WAIT: int | None = None  # undecided: the packet passes and the inspector asks again
#: the marks of a flow allowed only because DECIDE_AFTER_PACKETS went by
WAIT_THEN_ALLOW = [WAIT] * (DECIDE_AFTER_PACKETS - 1) + [MARK_ALLOW]


@dataclass(frozen=True)
class Case:
    id: str
    profile: dict[str, Any]
    packets: list[bytes]
    #: the mark decided for each packet in turn (None: undecided)
    marks: list[int | None]
    #: in the flow's reason once decided
    reason: str


CASES = [
    # IP blocks act on the first packet, whatever it carries.
    Case(
        "ip-tcp-syn",
        IP_BLOCK,
        tcp_flow(TLS_ALLOWED)[:1],
        [MARK_DROP],
        f"ip {SERVER} in {SERVER}/32",
    ),
    Case(
        "ip-network",
        {"ip": {"block": ["203.0.113.0/24"]}},
        tcp_flow(None, port=80)[:1],
        [MARK_DROP],
        f"ip {SERVER} in 203.0.113.0/24",
    ),
    Case("ip-udp-quic", IP_BLOCK, quic_flow("allowed.test")[:1], [MARK_DROP], f"in {SERVER}/32"),
    Case(
        "ip-icmp",
        IP_BLOCK,
        [ipv4(CLIENT, SERVER, ICMP, b"\x08\x00\x00\x00\x00\x01\x00\x01")],
        [MARK_DROP],
        f"in {SERVER}/32",
    ),
    Case(
        "ip-server-speaks-first",
        IP_BLOCK,
        [tcp(SERVER, 443, CLIENT, 40000, SYN | ACK)],
        [MARK_DROP],
        f"ip {SERVER} in",
    ),
    # SNI in a TLS ClientHello: the handshake passes, the ClientHello decides.
    Case(
        "sni-rst",
        SNI_RST,
        tcp_flow(TLS_NEWS),
        [WAIT, WAIT, WAIT, MARK_RST],
        "sni news.test matches",
    ),
    Case(
        "sni-drop",
        SNI_DROP,
        tcp_flow(TLS_NEWS),
        [WAIT, WAIT, WAIT, MARK_DROP],
        "sni news.test matches",
    ),
    Case(
        "sni-subdomain",
        SNI_RST,
        tcp_flow(TLS_NEWS_SUBDOMAIN),
        [WAIT, WAIT, WAIT, MARK_RST],
        "sni www.news.test matches news.test",
    ),
    Case(
        "sni-port-8443", SNI_RST, tcp_flow(TLS_NEWS, port=8443), [WAIT, WAIT, WAIT, MARK_RST], "sni"
    ),
    Case(
        "sni-allowed-name",
        SNI_RST,
        tcp_flow(TLS_ALLOWED),
        [WAIT, WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
    # The same names in a QUIC Initial: UDP, so a reset is a drop.
    Case("quic-sni-rst", SNI_RST, quic_flow("news.test")[:1], [MARK_DROP], "sni news.test matches"),
    Case(
        "quic-sni-drop", SNI_DROP, quic_flow("news.test")[:1], [MARK_DROP], "sni news.test matches"
    ),
    Case(
        "quic-allowed-name",
        SNI_RST,
        quic_flow("allowed.test"),
        [WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
    # The Host of an HTTP request.
    Case(
        "host-rst",
        HOST_RST,
        tcp_flow(HTTP_NEWS, port=80),
        [WAIT, WAIT, WAIT, MARK_RST],
        "host news.test matches",
    ),
    Case(
        "host-drop",
        HOST_DROP,
        tcp_flow(HTTP_NEWS, port=80),
        [WAIT, WAIT, WAIT, MARK_DROP],
        "host news.test matches",
    ),
    Case(
        "host-allowed-name",
        HOST_RST,
        tcp_flow(HTTP_ALLOWED, port=80),
        [WAIT, WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
    # Each list applies to its own protocol only.
    Case(
        "sni-list-ignores-host",
        SNI_RST,
        tcp_flow(HTTP_NEWS, port=80),
        [WAIT, WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
    Case(
        "host-list-ignores-sni",
        HOST_RST,
        tcp_flow(TLS_NEWS),
        [WAIT, WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
    Case(
        "dns-poison-list-is-not-a-block",
        {"dns": {"poison": ["news.test"]}},
        tcp_flow(TLS_NEWS),
        [WAIT, WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
    # Allowed: once every analyzer is done (and three packets went by) or after
    # DECIDE_AFTER_PACKETS packets.
    Case(
        "unknown-tcp-protocol",
        EVERYTHING,
        tcp_flow(b"SSH-2.0-OpenSSH_9.6\r\n", port=22),
        [WAIT, WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
    Case(
        "tcp-without-data",
        EVERYTHING,
        tcp_flow(None) + [tcp(CLIENT, 40000, SERVER, 443, ACK)] * (DECIDE_AFTER_PACKETS - 3),
        WAIT_THEN_ALLOW,
        "nothing to object to",
    ),
    Case(
        "server-speaks-first",
        EVERYTHING,
        tcp_flow(None, port=25)
        + [tcp(SERVER, 25, CLIENT, 40000, payload=b"220 mail.test ESMTP\r\n")]
        * (DECIDE_AFTER_PACKETS - 3),
        WAIT_THEN_ALLOW,
        "nothing to object to",
    ),
    Case(
        "dns-query",
        EVERYTHING,
        [udp(CLIENT, 53000, RESOLVER, 53, dns_query("news.test"))] * DECIDE_AFTER_PACKETS,
        WAIT_THEN_ALLOW,
        "nothing to object to",
    ),
    Case(
        "icmp",
        EVERYTHING,
        [ipv4(CLIENT, SERVER, ICMP, b"\x08\x00\x00\x00\x00\x01\x00\x01")] * 3,
        [WAIT, WAIT, MARK_ALLOW],
        "nothing to object to",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_decisions(case: Case) -> None:
    assert len(case.packets) == len(case.marks)
    inspector = Inspector(CensorProfile.from_dict(case.profile))
    decisions = feed(inspector, case.packets)
    assert [decision.mark for decision in decisions] == case.marks
    assert [decision.new_flow for decision in decisions] == [True] + [False] * (len(decisions) - 1)
    flow = decisions[-1].flow
    assert all(decision.flow is flow for decision in decisions)
    assert flow.packets == len(case.packets)
    assert flow.verdict == case.marks[-1]
    assert case.reason in flow.reason


def test_undecided_flow_has_no_verdict() -> None:
    inspector = Inspector(CensorProfile.from_dict(SNI_RST))
    for decision in feed(inspector, tcp_flow(None)):
        assert decision.mark is None
        assert decision.flow.verdict is None
        assert decision.flow.reason == ""


# -- flows and findings -------------------------------------------------------------------


def test_reply_packets_belong_to_the_clients_flow() -> None:
    inspector = Inspector(CensorProfile())
    syn, syn_ack, ack = tcp_flow(None, client_port=40001)
    expected = FlowKey("tcp", CLIENT, 40001, SERVER, 443)
    first = inspector.packet(syn, 0.0)
    reply = inspector.packet(syn_ack, 0.1)
    third = inspector.packet(ack, 0.2)
    assert first is not None and reply is not None and third is not None
    assert first.flow.key == reply.flow.key == third.flow.key == expected
    assert str(expected) == f"tcp {CLIENT}:40001 > {SERVER}:443"
    assert (first.new_flow, reply.new_flow, third.new_flow) == (True, False, False)
    assert third.flow.packets == 3
    assert third.flow.first_seen == 0.0


def test_a_reply_seen_first_is_still_keyed_client_first() -> None:
    inspector = Inspector(CensorProfile())
    decision = inspector.packet(udp(RESOLVER, 53, CLIENT, 53001, noise(30)), 0.0)
    assert decision is not None
    assert decision.flow.key == FlowKey("udp", CLIENT, 53001, RESOLVER, 53)


def test_the_inside_network_decides_which_side_is_the_client() -> None:
    inspector = Inspector(CensorProfile(), inside_net="203.0.113.0/24")
    decision = inspector.packet(tcp(CLIENT, 40000, SERVER, 443, SYN), 0.0)
    assert decision is not None
    assert decision.flow.key == FlowKey("tcp", SERVER, 443, CLIENT, 40000)


def test_each_five_tuple_is_its_own_flow() -> None:
    inspector = Inspector(CensorProfile())
    packets = [
        tcp(CLIENT, 40000, SERVER, 443, SYN),
        tcp(CLIENT, 40001, SERVER, 443, SYN),
        tcp(CLIENT, 40000, SERVER, 80, SYN),
        tcp(CLIENT, 40000, RESOLVER, 443, SYN),
        udp(CLIENT, 40000, SERVER, 443, noise(40)),
        tcp(SERVER, 443, CLIENT, 40000, SYN | ACK),
    ]
    assert [d.new_flow for d in feed(inspector, packets)] == [True] * 5 + [False]


# (id, a flow's packets, findings expected among the flow's)
FINDINGS: list[tuple[str, list[bytes], list[Finding]]] = [
    (
        "tls",
        tcp_flow(TLS_NEWS),
        [Finding("tls", "sni", "news.test"), Finding("tls", "alpn", "h2,http/1.1")],
    ),
    (
        "http",
        tcp_flow(HTTP_NEWS, port=80),
        [Finding("http", "request", "GET / HTTP/1.1"), Finding("http", "host", "news.test")],
    ),
    (
        "quic",
        quic_flow("news.test"),
        [
            Finding("quic", "version", "v1"),
            Finding("quic", "sni", "news.test"),
            Finding("quic", "alpn", "h3"),
        ],
    ),
    (
        "dns-query-and-answer",
        [
            udp(CLIENT, 53000, RESOLVER, 53, dns_query("news.test")),
            udp(
                RESOLVER,
                53,
                CLIENT,
                53000,
                dns_response(dns_query("news.test"), "news.test 60 A 203.0.113.80"),
            ),
        ],
        [
            Finding("dns", "query", "news.test"),
            Finding("dns", "query-type", "news.test A"),
            Finding("dns", "answer", "news.test A 203.0.113.80"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("packets", "expected"), [case[1:] for case in FINDINGS], ids=[case[0] for case in FINDINGS]
)
def test_findings_are_recorded_on_the_flow(packets: list[bytes], expected: list[Finding]) -> None:
    inspector = Inspector(CensorProfile())
    decisions = feed(inspector, packets)
    flow = decisions[-1].flow
    for finding in expected:
        assert finding in flow.findings
    # Each packet's decision carries the findings that packet brought, and together they
    # are the flow's.
    assert [f for d in decisions for f in d.new_findings] == flow.findings


def test_findings_come_with_the_packet_that_carried_them() -> None:
    inspector = Inspector(CensorProfile())
    decisions = feed(inspector, tcp_flow(TLS_ALLOWED))
    assert [d.new_findings for d in decisions[:3]] == [[], [], []]
    assert Finding("tls", "sni", "allowed.test") in decisions[3].new_findings


def test_a_decided_flow_is_forgotten() -> None:
    inspector = Inspector(CensorProfile.from_dict(SNI_RST))
    packets = tcp_flow(TLS_NEWS)
    decided = feed(inspector, packets)[-1]
    assert decided.mark == MARK_RST
    # The kernel handles the rest of the flow. A packet netfilter queued before the mark
    # was set gets the same verdict (judged afresh, the middle of a flow looks innocent and
    # its mark would overwrite the verdict); a SYN on the same 5-tuple, or any packet some
    # time later, starts afresh.
    straggler = inspector.packet(packets[-1], 1.0)
    assert straggler is not None
    assert (straggler.mark, straggler.repeat, straggler.new_findings) == (MARK_RST, True, [])
    assert straggler.flow is decided.flow
    syn = inspector.packet(packets[0], 1.0)
    assert syn is not None and syn.new_flow and not syn.repeat
    inspector = Inspector(CensorProfile.from_dict(SNI_RST))
    decided = feed(inspector, packets)[-1]
    again = inspector.packet(packets[-1], 1.0 + REMEMBER_VERDICT_SECONDS)
    assert again is not None
    assert again.new_flow
    assert again.flow is not decided.flow
    assert again.flow.packets == 1
    assert again.flow.first_seen == 1.0 + REMEMBER_VERDICT_SECONDS
    assert decided.flow.verdict == MARK_RST  # the old flow keeps its verdict


# (id, the (offset, length) of the ClientHello's bytes in each of the client's segments)
SEGMENTS = [
    ("in-order", [(0, 100), (100, None)]),
    ("split-in-three", [(0, 5), (5, 200), (200, None)]),
]
MISORDERED_SEGMENTS = [
    ("first-retransmitted", [(0, 100), (0, 100), (100, None)]),
    ("reordered", [(100, None), (0, 100)]),
]


def split_hello_flow(pieces: list[tuple[int, int | None]]) -> list[bytes]:
    """TLS_NEWS in segments with real sequence numbers (client ISN 1000, server 5000)."""
    packets = [
        tcp(CLIENT, 40000, SERVER, 443, SYN, seq=1000, ack=0),
        tcp(SERVER, 443, CLIENT, 40000, SYN | ACK, seq=5000, ack=1001),
        tcp(CLIENT, 40000, SERVER, 443, ACK, seq=1001, ack=5001),
    ]
    for start, end in pieces:
        data = TLS_NEWS[start:end]
        packets.append(tcp(CLIENT, 40000, SERVER, 443, payload=data, seq=1001 + start, ack=5001))
    return packets


def decide(packets: list[bytes]) -> Decision:
    inspector = Inspector(CensorProfile.from_dict(SNI_RST))
    for packet in packets:
        decision = inspector.packet(packet, 0.0)
        assert decision is not None
        if decision.mark is not None:
            return decision
    raise AssertionError("no decision")


@pytest.mark.parametrize(
    "pieces", [case[1] for case in SEGMENTS], ids=[case[0] for case in SEGMENTS]
)
def test_a_client_hello_split_across_segments(pieces: list[tuple[int, int | None]]) -> None:
    decision = decide(split_hello_flow(pieces))
    assert decision.mark == MARK_RST
    assert decision.flow.packets == 3 + len(pieces)


@pytest.mark.parametrize(
    "pieces",
    [case[1] for case in MISORDERED_SEGMENTS],
    ids=[case[0] for case in MISORDERED_SEGMENTS],
)
def test_a_misordered_client_hello_is_still_blocked(
    pieces: list[tuple[int, int | None]],
) -> None:
    assert decide(split_hello_flow(pieces)).mark == MARK_RST


def test_an_ip_block_is_checked_again_for_a_new_flow() -> None:
    inspector = Inspector(CensorProfile.from_dict(IP_BLOCK))
    syn = tcp(CLIENT, 40000, SERVER, 443, SYN)
    marks = [d.mark for d in feed(inspector, [syn, syn, syn])]  # retransmitted SYNs
    assert marks == [MARK_DROP] * 3


# -- expiry -------------------------------------------------------------------------------

# (id, first seen, now, idle, whether the flow is still known)
EXPIRY = [
    ("young", 100.0, 150.0, 120.0, True),
    ("exactly-idle", 100.0, 220.0, 120.0, True),
    ("older", 100.0, 220.5, 120.0, False),
    ("short-idle", 100.0, 102.0, 1.0, False),
    ("default-idle-kept", 0.0, 120.0, None, True),
    ("default-idle-expired", 0.0, 121.0, None, False),
]


@pytest.mark.parametrize(
    ("first_seen", "now", "idle", "kept"),
    [case[1:] for case in EXPIRY],
    ids=[case[0] for case in EXPIRY],
)
def test_expire(first_seen: float, now: float, idle: float | None, kept: bool) -> None:
    inspector = Inspector(CensorProfile())
    syn, syn_ack, _ack = tcp_flow(None)
    assert inspector.packet(syn, first_seen) is not None
    if idle is None:
        inspector.expire(now)
    else:
        inspector.expire(now, idle=idle)
    decision = inspector.packet(syn_ack, now)
    assert decision is not None
    assert decision.new_flow is not kept


def test_expire_leaves_other_flows_alone() -> None:
    inspector = Inspector(CensorProfile())
    old = tcp(CLIENT, 40000, SERVER, 443, SYN)
    new = tcp(CLIENT, 40001, SERVER, 443, SYN)
    feed(inspector, [old], now=0.0)
    feed(inspector, [new], now=100.0)
    inspector.expire(150.0, idle=120.0)
    assert [d.new_flow for d in feed(inspector, [old, new], now=150.0)] == [True, False]


# -- parsing ------------------------------------------------------------------------------

IPV6_SYN = (
    bytes([0x60, 0, 0, 0])
    + struct.pack("!HBB", 20, TCP, 64)
    + bytes(15)
    + b"\x01"
    + bytes(15)
    + b"\x02"
    + tcp_segment(40000, 443, SYN)
)
TCP_SYN = tcp(CLIENT, 40000, SERVER, 443, SYN)
DNS_QUERY = dns_query("news.test")
UDP_DNS = udp(CLIENT, 53000, RESOLVER, 53, DNS_QUERY)

# (id, bytes, what parse_ipv4 gives)
PARSED: list[tuple[str, bytes, ParsedPacket | None]] = [
    ("tcp-syn", TCP_SYN, ParsedPacket("tcp", CLIENT, 40000, SERVER, 443, b"", True)),
    (
        "tcp-syn-ack",
        tcp(SERVER, 443, CLIENT, 40000, SYN | ACK),
        ParsedPacket("tcp", SERVER, 443, CLIENT, 40000, b"", False),
    ),
    (
        "tcp-data",
        tcp(CLIENT, 40000, SERVER, 80, ACK | PSH, b"GET / HTTP/1.1\r\n"),
        ParsedPacket("tcp", CLIENT, 40000, SERVER, 80, b"GET / HTTP/1.1\r\n", False),
    ),
    (
        "tcp-rst",
        tcp(SERVER, 443, CLIENT, 40000, RST | ACK),
        ParsedPacket("tcp", SERVER, 443, CLIENT, 40000, b"", False),
    ),
    (
        "tcp-syn-fin",
        tcp(CLIENT, 40000, SERVER, 443, SYN | FIN),
        ParsedPacket("tcp", CLIENT, 40000, SERVER, 443, b"", True),
    ),
    (
        "tcp-options",
        ipv4(
            CLIENT,
            SERVER,
            TCP,
            tcp_segment(40000, 443, ACK, b"data", options=b"\x01\x01\x08\x0a" + bytes(8)),
        ),
        ParsedPacket("tcp", CLIENT, 40000, SERVER, 443, b"data", False),
    ),
    (
        "ip-options",
        ipv4(CLIENT, SERVER, UDP, udp_datagram(5000, 53, b"x"), options=b"\x01\x01\x01\x00"),
        ParsedPacket("udp", CLIENT, 5000, SERVER, 53, b"x", False),
    ),
    (
        "udp",
        UDP_DNS,
        ParsedPacket("udp", CLIENT, 53000, RESOLVER, 53, DNS_QUERY, False),
    ),
    (
        "udp-empty",
        udp(CLIENT, 5000, SERVER, 9, b""),
        ParsedPacket("udp", CLIENT, 5000, SERVER, 9, b"", False),
    ),
    (
        "trailing-padding",  # Ethernet pads short frames; the total length says where to stop
        TCP_SYN + bytes(6),
        ParsedPacket("tcp", CLIENT, 40000, SERVER, 443, b"", True),
    ),
    (
        "icmp",
        ipv4(CLIENT, SERVER, ICMP, b"\x08\x00\x00\x00\x00\x01\x00\x01"),
        ParsedPacket("other", CLIENT, 0, SERVER, 0, b"", False),
    ),
    (
        "tcp-truncated",
        TCP_SYN[:30],
        ParsedPacket("other", CLIENT, 0, SERVER, 0, b"", False),
    ),
    (
        "udp-truncated",
        UDP_DNS[:25],
        ParsedPacket("other", CLIENT, 0, RESOLVER, 0, b"", False),
    ),
    (
        "total-length-too-short",
        TCP_SYN[:2] + struct.pack("!H", 24) + TCP_SYN[4:],
        ParsedPacket("other", CLIENT, 0, SERVER, 0, b"", False),
    ),
    (
        "total-length-zero",
        TCP_SYN[:2] + b"\x00\x00" + TCP_SYN[4:],
        ParsedPacket("other", CLIENT, 0, SERVER, 0, b"", False),
    ),
    (
        "header-length-past-the-end",
        bytes([0x4F]) + TCP_SYN[1:20],
        ParsedPacket("other", CLIENT, 0, SERVER, 0, b"", False),
    ),
    ("empty", b"", None),
    ("one-byte", b"\x45", None),
    ("shorter-than-a-header", TCP_SYN[:19], None),
    ("ipv6", IPV6_SYN, None),
    ("version-5", bytes([0x55]) + TCP_SYN[1:], None),
    ("version-0", bytes(40), None),
]


@pytest.mark.parametrize(
    ("data", "expected"), [case[1:] for case in PARSED], ids=[case[0] for case in PARSED]
)
def test_parse_ipv4(data: bytes, expected: ParsedPacket | None) -> None:
    parsed = parse_ipv4(data)
    # Sequence numbers are checked on their own below.
    if parsed is not None:
        parsed = dataclasses.replace(parsed, seq=0, syn=False)
    assert parsed == expected


def test_parse_ipv4_tcp_sequence_and_syn() -> None:
    syn = parse_ipv4(tcp(CLIENT, 40000, SERVER, 443, SYN, seq=123456))
    assert syn is not None and syn.syn and syn.seq == 123456
    data = parse_ipv4(tcp(CLIENT, 40000, SERVER, 443, ACK | PSH, b"x", seq=4294967295))
    assert data is not None and not data.syn and data.seq == 4294967295


@pytest.mark.parametrize(
    "data",
    [b"", b"\x45", TCP_SYN[:19], IPV6_SYN, bytes([0x55]) + TCP_SYN[1:]],
    ids=["empty", "one-byte", "short", "ipv6", "version-5"],
)
def test_the_inspector_ignores_what_is_not_ipv4(data: bytes) -> None:
    assert Inspector(CensorProfile.from_dict(EVERYTHING)).packet(data, 0.0) is None


def test_the_inspector_never_raises_on_garbage() -> None:
    """Random bytes with an IPv4 version nibble, whole and cut short, through one
    inspector that blocks everything it can."""
    rng = random.Random(7)
    inspector = Inspector(CensorProfile.from_dict({**EVERYTHING, **IP_BLOCK}))
    headers = [TCP_SYN[:20], UDP_DNS[:20], tcp(SERVER, 443, CLIENT, 40000)[:20]]
    for _round in range(500):
        body = rng.randbytes(rng.randrange(0, 200))
        header = bytearray(rng.choice(headers))
        if rng.random() < 0.3:
            header[0] = 0x40 | rng.randrange(16)
            header[2:4] = rng.randbytes(2)
        data = bytes(header) + body
        data = data[: rng.randrange(len(data) + 1)] if rng.random() < 0.3 else data
        inspector.packet(data, float(_round))
        parse_ipv4(data)
