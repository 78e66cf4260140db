"""DNS analyzer and forged responses: dnslib-made queries and responses over UDP and TCP."""

from __future__ import annotations

import dnslib
import pytest
from lab_samples import (
    aioice_check,
    aioquic_initials,
    bytewise,
    dns_query,
    dns_response,
    feed_all,
    keys,
    noise,
    python_client_hello,
    tcp_framed,
)

from unwall.lab.analyzers import DnsAnalyzer, Finding, forge_response

QUERY = dns_query()

# (id, message, from_client, findings expected, in order)
MESSAGES = [
    ("query-a", QUERY, True, [("query", "news.example"), ("query-type", "news.example A")]),
    (
        "query-aaaa-mixed-case",
        dns_query("NeWs.ExAmPlE", "AAAA"),
        True,
        [("query", "news.example"), ("query-type", "news.example AAAA")],
    ),
    (
        "query-https",
        dns_query("news.example", "HTTPS"),
        True,
        [("query", "news.example"), ("query-type", "news.example HTTPS")],
    ),
    (
        "query-unknown-type",
        dns_query("news.example", "TYPE65000"),
        True,
        [("query", "news.example"), ("query-type", "news.example TYPE65000")],
    ),
    (
        "answer-a",
        dns_response(QUERY, "news.example 60 A 203.0.113.10"),
        False,
        [("answer", "news.example A 203.0.113.10")],
    ),
    (
        "answer-cname-chain",
        dns_response(
            dns_query("www.news.example"),
            "www.news.example 60 CNAME edge.cdn.example",
            "edge.cdn.example 60 A 203.0.113.11",
            "edge.cdn.example 60 A 203.0.113.12",
        ),
        False,
        [
            ("answer", "www.news.example CNAME edge.cdn.example"),
            ("answer", "edge.cdn.example A 203.0.113.11"),
            ("answer", "edge.cdn.example A 203.0.113.12"),
        ],
    ),
    (
        "answer-aaaa",
        dns_response(dns_query("news.example", "AAAA"), "news.example 60 AAAA 2001:db8::10"),
        False,
        [("answer", "news.example AAAA 2001:db8::10")],
    ),
    (
        "answer-of-other-types-not-reported",
        dns_response(dns_query("news.example", "TXT"), 'news.example 60 TXT "v=spf1 -all"'),
        False,
        [],
    ),
    (
        "nxdomain",
        dns_response(dns_query("gone.example"), rcode=dnslib.RCODE.NXDOMAIN),
        False,
        [("rcode", "gone.example NXDOMAIN")],
    ),
    (
        "refused",
        dns_response(QUERY, rcode=dnslib.RCODE.REFUSED),
        False,
        [("rcode", "news.example REFUSED")],
    ),
    ("root-query", dns_query(".", "NS"), True, [("query", "."), ("query-type", ". NS")]),
    (
        "forged",
        forge_response(QUERY, "198.51.100.99"),
        False,
        [("answer", "news.example A 198.51.100.99")],
    ),
]
MESSAGE_IDS = [case[0] for case in MESSAGES]


def pairs(findings: list[Finding]) -> list[tuple[str, str]]:
    assert {f.analyzer for f in findings} <= {"dns"}
    return [(f.key, f.value) for f in findings]


@pytest.mark.parametrize(("name", "message", "from_client", "expected"), MESSAGES, ids=MESSAGE_IDS)
def test_udp_message(
    name: str, message: bytes, from_client: bool, expected: list[tuple[str, str]]
) -> None:
    assert pairs(DnsAnalyzer().feed(message, from_client=from_client)) == expected


@pytest.mark.parametrize(("name", "message", "from_client", "expected"), MESSAGES, ids=MESSAGE_IDS)
def test_tcp_message_fed_bytewise(
    name: str, message: bytes, from_client: bool, expected: list[tuple[str, str]]
) -> None:
    analyzer = DnsAnalyzer(transport="tcp")
    assert pairs(feed_all(analyzer, bytewise(tcp_framed(message)), from_client=from_client)) == (
        expected
    )


def test_query_and_response_on_one_udp_flow() -> None:
    analyzer = DnsAnalyzer()
    assert keys(analyzer.feed(QUERY, from_client=True))["query"] == "news.example"
    answer = dns_response(QUERY, "news.example 60 A 203.0.113.10")
    assert pairs(analyzer.feed(answer, from_client=False)) == [
        ("answer", "news.example A 203.0.113.10")
    ]
    assert analyzer.feed(QUERY, from_client=True) == [], "a retransmission says nothing new"


def test_tcp_connection_with_two_queries_in_one_segment_and_split_answers() -> None:
    analyzer = DnsAnalyzer(transport="tcp")
    second = dns_query("mail.example", "AAAA")
    found = analyzer.feed(tcp_framed(QUERY, second), from_client=True)
    assert [v for k, v in pairs(found) if k == "query"] == ["news.example", "mail.example"]
    answers = tcp_framed(
        dns_response(QUERY, "news.example 60 A 203.0.113.10"),
        dns_response(second, "mail.example 60 AAAA 2001:db8::25"),
    )
    found = feed_all(analyzer, [answers[:3], answers[3:50], answers[50:]], from_client=False)
    assert [v for k, v in pairs(found) if k == "answer"] == [
        "news.example A 203.0.113.10",
        "mail.example AAAA 2001:db8::25",
    ]


def test_a_confirmed_dns_flow_skips_an_odd_datagram() -> None:
    analyzer = DnsAnalyzer()
    assert analyzer.feed(QUERY, from_client=True)
    assert analyzer.feed(noise(40), from_client=False) == []
    assert not analyzer.done
    assert analyzer.feed(dns_query("other.example"), from_client=True)


# (id, first datagram): not DNS.
NOT_DNS = [
    ("quic-initial", aioquic_initials()[0]),
    ("stun-check", aioice_check()),
    ("tls-client-hello", python_client_hello()),
    ("random", noise(300, seed=3)),
    ("short", QUERY[:11]),
    ("truncated-question", QUERY[:-3]),
    ("two-questions", QUERY[:4] + b"\x00\x02" + QUERY[6:]),
    ("query-claiming-answers", QUERY[:6] + b"\x00\x01" + QUERY[8:]),
    ("update-opcode", QUERY[:2] + bytes([QUERY[2] | 0x28]) + QUERY[3:]),
    ("label-runs-past-end", QUERY[:12] + b"\x3fnews"),
    ("compression-loop", QUERY[:12] + b"\xc0\x0c\x00\x01\x00\x01"),
]


@pytest.mark.parametrize(("name", "datagram"), NOT_DNS, ids=[case[0] for case in NOT_DNS])
def test_other_datagrams_give_nothing_and_give_up(
    name: str, datagram: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    analyzer = DnsAnalyzer()
    assert analyzer.feed(datagram, from_client=True) == []
    assert analyzer.done
    assert not caplog.records


@pytest.mark.parametrize(
    "stream",
    [b"\x00\x05hello", b"\xff\xff" + bytes(100), python_client_hello()],
    ids=["shorter-than-a-header", "larger-than-the-budget", "tls"],
)
def test_tcp_stream_that_is_not_dns(stream: bytes) -> None:
    analyzer = DnsAnalyzer(transport="tcp")
    assert analyzer.feed(stream, from_client=True) == []
    assert analyzer.done


# (id, query, address, ttl, expected answer type)
FORGERIES = [
    ("a", dns_query("news.example", "A"), "203.0.113.66", 60, dnslib.QTYPE.A),
    ("aaaa", dns_query("news.example", "AAAA"), "2001:db8::66", 300, dnslib.QTYPE.AAAA),
    ("0x20-case-kept", dns_query("nEwS.eXaMpLe", "A"), "203.0.113.66", 0, dnslib.QTYPE.A),
    (
        "with-edns",
        bytes(dnslib.DNSRecord(q=dnslib.DNSQuestion("news.example"), ar=[dnslib.EDNS0()]).pack()),
        "203.0.113.66",
        60,
        dnslib.QTYPE.A,
    ),
]


@pytest.mark.parametrize(
    ("name", "query", "address", "ttl", "rtype"), FORGERIES, ids=[c[0] for c in FORGERIES]
)
def test_forge_response(name: str, query: bytes, address: str, ttl: int, rtype: int) -> None:
    asked = dnslib.DNSRecord.parse(query)
    forged = dnslib.DNSRecord.parse(forge_response(query, address, ttl=ttl))
    assert forged.header.id == asked.header.id
    assert forged.header.qr == 1 and forged.header.rd == asked.header.rd
    assert forged.header.rcode == dnslib.RCODE.NOERROR
    assert [str(q.qname) for q in forged.questions] == [str(asked.q.qname)]
    assert forged.q.qtype == asked.q.qtype
    assert len(forged.rr) == 1
    (answer,) = forged.rr
    assert (str(answer.rname), answer.rtype, str(answer.rdata), answer.ttl) == (
        str(asked.q.qname),
        rtype,
        address,
        ttl,
    )


@pytest.mark.parametrize(
    ("query", "address", "ttl", "message"),
    [
        (noise(20, seed=4), "203.0.113.1", 60, "needs a DNS query"),
        (dns_response(QUERY), "203.0.113.1", 60, "not a response"),
        (QUERY, "news.example", 60, "IPv4 or IPv6 address"),
        (QUERY, "203.0.113.1", -1, "TTL"),
        (QUERY, "203.0.113.1", 2**31, "TTL"),
    ],
    ids=["garbage", "response", "name-not-address", "negative-ttl", "ttl-too-large"],
)
def test_forge_response_refuses(query: bytes, address: str, ttl: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        forge_response(query, address, ttl=ttl)
