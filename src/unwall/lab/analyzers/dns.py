"""DNS over UDP and over TCP (RFC 1035): the names asked for and the addresses given back,
and the forged answer the box's DNS poisoning sends."""

from __future__ import annotations

import ipaddress
from typing import Literal

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from .analyzer import FlowAnalyzer, display_name
from .reader import Malformed
from .reassembly import MAX_BUFFER

HEADER_SIZE = 12
OPCODE_QUERY = 0
ANSWER_TYPES = frozenset({QTYPE.A, QTYPE.AAAA, QTYPE.CNAME})


class DnsAnalyzer(FlowAnalyzer):
    """Parses DNS messages in both directions of a flow.

    Findings for a query: `query` ("news.example") and `query-type` ("news.example AAAA");
    for a response: `answer` ("news.example A 203.0.113.10", "www.news.example CNAME
    news.example") and, when it is not NOERROR, `rcode` ("news.example NXDOMAIN").

    Over UDP each datagram is one message; the first one decides whether the flow is DNS
    at all (a strict header check, then a full parse), since a DNS header has no magic
    number to spot. Over TCP (`transport="tcp"`) messages carry a 2-byte length prefix; the
    first `MAX_BUFFER` bytes of each direction are read.
    """

    name = "dns"

    def __init__(self, transport: Literal["udp", "tcp"] = "udp") -> None:
        super().__init__()
        self._tcp = transport == "tcp"
        self._confirmed = False
        # Per direction (client, server): bytes not yet framed, bytes read so far.
        self._pending = {True: b"", False: b""}
        self._consumed = {True: 0, False: 0}

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        if not self._tcp:
            return self._message(payload)
        pairs: list[tuple[str, str]] = []
        for message in self._frames(payload, from_client):
            pairs += self._message(message)
        return pairs

    def _frames(self, payload: bytes, from_client: bool) -> list[bytes]:
        if self._consumed[from_client] >= MAX_BUFFER:
            if self._consumed[not from_client] >= MAX_BUFFER:
                self._finish()
            return []
        data = self._pending[from_client] + payload
        messages = []
        while len(data) >= 2:
            length = int.from_bytes(data[:2], "big")
            if length < HEADER_SIZE:
                raise Malformed(f"a {length}-byte DNS message")
            if 2 + length > MAX_BUFFER:
                raise Malformed(f"a DNS message larger than {MAX_BUFFER} bytes")
            if len(data) < 2 + length:
                if len(data) >= 2 + HEADER_SIZE and not self._confirmed:
                    check_header(data[2 : 2 + HEADER_SIZE])  # judge a new flow early
                break
            messages.append(data[2 : 2 + length])
            data = data[2 + length :]
            self._consumed[from_client] += 2 + length
        self._pending[from_client] = data
        return messages

    def _message(self, message: bytes) -> list[tuple[str, str]]:
        try:
            pairs = describe_message(message)
        except Malformed:
            if self._confirmed:
                return []  # one odd message on a flow already seen to be DNS: skip it
            raise
        self._confirmed = True
        return pairs


def describe_message(message: bytes) -> list[tuple[str, str]]:
    """The findings one DNS message gives; `Malformed` if it is not a plain DNS query or
    response with one question."""
    is_response = check_header(message)
    record = _parse(message)
    question = record.q
    qname = _name(question.qname)
    if not is_response:
        return [("query", qname), ("query-type", f"{qname} {_type_name(question.qtype)}")]
    pairs = []
    rcode = int(record.header.rcode)
    if rcode != RCODE.NOERROR:
        name = RCODE.forward.get(rcode) or f"RCODE{rcode}"
        pairs.append(("rcode", f"{qname} {name}"))
    for rr in record.rr:
        if rr.rtype in ANSWER_TYPES:
            value = _name(rr.rdata.label) if rr.rtype == QTYPE.CNAME else str(rr.rdata)
            pairs.append(("answer", f"{_name(rr.rname)} {_type_name(rr.rtype)} {value}"))
    return pairs


def check_header(message: bytes) -> bool:
    """Whether the message is a response; `Malformed` unless its header is that of a
    plain query or response with one question (all a client sends, in practice)."""
    if len(message) < HEADER_SIZE:
        raise Malformed("shorter than a DNS header")
    is_response = bool(message[2] & 0x80)
    opcode = (message[2] >> 3) & 0x0F
    qdcount, ancount, nscount, arcount = (
        int.from_bytes(message[i : i + 2], "big") for i in range(4, 12, 2)
    )
    if opcode != OPCODE_QUERY or qdcount != 1:
        raise Malformed("not a standard query with one question")
    if not is_response and (ancount or nscount or arcount > 1):
        raise Malformed("a query with answers")
    return is_response


def forge_response(query_payload: bytes, address: str, ttl: int = 60) -> bytes:
    """A response to this DNS query (a UDP payload, no TCP length prefix) that answers
    with `address`: an A record for an IPv4 address, AAAA for IPv6.

    The response keeps the query's id, flags and question exactly (including the case of
    the name, which resolvers using 0x20 randomization check), as a censor's injector must
    for the client to accept it.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"forge_response needs an IPv4 or IPv6 address, not {address!r}") from None
    if not 0 <= ttl < 2**31:
        raise ValueError(f"a DNS TTL is between 0 and 2^31 - 1 seconds, not {ttl}")
    try:
        query = _parse(query_payload)
    except Malformed as exc:
        raise ValueError(f"forge_response needs a DNS query: {exc}") from None
    if query.header.qr or not query.questions:
        raise ValueError("forge_response needs a DNS query with a question, not a response")
    reply = query.reply()
    if ip.version == 4:
        answer = RR(query.q.qname, QTYPE.A, rdata=A(str(ip)), ttl=ttl)
    else:
        answer = RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(str(ip)), ttl=ttl)
    reply.add_answer(answer)
    return bytes(reply.pack())


def _parse(message: bytes) -> DNSRecord:
    try:
        return DNSRecord.parse(message)
    except Exception as exc:
        # dnslib signals bad input with DNSError, but also with whatever its buffer code
        # trips over (struct errors, IndexError, UnicodeDecodeError): all mean "not DNS".
        raise Malformed(f"not a DNS message ({type(exc).__name__})") from None


def _name(label: object) -> str:
    parts = getattr(label, "label", None)
    if not isinstance(parts, tuple):
        raise Malformed("a DNS name dnslib could not read")
    return display_name(b".".join(parts)) if parts else "."


def _type_name(rtype: int) -> str:
    name = QTYPE.forward.get(rtype)
    return str(name) if name else f"TYPE{rtype}"
