"""Real bytes for the analyzer tests: made here by real implementations (Python's ssl,
aioquic, pyOpenSSL, aioice, dnslib, h11, http.client), or read from the fixtures that
fixtures/capture.py recorded from curl, Chromium and aiortc on loopback."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import random
import socket
import ssl
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aioice
import aioice.ice
import aioice.stun
import dnslib
import h11
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from OpenSSL import SSL

from unwall.lab.analyzers import Finding

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HOST = "news.example"


def keys(findings: Sequence[Finding]) -> dict[str, str]:
    """{key: value} of one analyzer's findings (the last one wins for repeated keys)."""
    return {finding.key: finding.value for finding in findings}


def feed_all(
    analyzer: Any, payloads: Sequence[bytes], *, from_client: bool = True
) -> list[Finding]:
    found: list[Finding] = []
    for payload in payloads:
        found += analyzer.feed(payload, from_client=from_client)
    return found


def noise(size: int, seed: int = 0) -> bytes:
    """Random bytes, the same on every run."""
    return random.Random(seed).randbytes(size)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- fixtures ------------------------------------------------------------------------------


@functools.cache
def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def fixture_stream(name: str) -> bytes:
    """A TCP capture's client bytes, as one stream."""
    return b"".join(bytes.fromhex(chunk) for chunk in fixture(name)["chunks"])


def fixture_datagrams(name: str) -> list[tuple[bool, bytes]]:
    """A UDP capture's datagrams as (from_client, payload)."""
    return [(d["from_client"], bytes.fromhex(d["hex"])) for d in fixture(name)["datagrams"]]


# -- TLS -----------------------------------------------------------------------------------


def python_client_hello(
    server_name: str | None = HOST, alpn: Sequence[str] = ("h2", "http/1.1")
) -> bytes:
    """What Python's ssl module (OpenSSL) sends first as a TLS client."""
    context = ssl.create_default_context()
    if server_name is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        connection.do_handshake()
    return outgoing.read()


def reframe_tls_records(stream: bytes, record_size: int) -> bytes:
    """The same handshake bytes re-cut into records of at most `record_size` bytes, as
    circumvention tools do to split a ClientHello's SNI across records."""
    handshake, position = b"", 0
    while position < len(stream):
        length = int.from_bytes(stream[position + 3 : position + 5], "big")
        handshake += stream[position + 5 : position + 5 + length]
        position += 5 + length
    records = b""
    for start in range(0, len(handshake), record_size):
        piece = handshake[start : start + record_size]
        records += b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece
    return records


# -- QUIC ----------------------------------------------------------------------------------


def aioquic_initials(
    server_name: str | None = HOST,
    alpn: Sequence[str] = ("h3",),
    version: int | None = None,
) -> list[bytes]:
    """The datagrams an aioquic client sends first (its Initial packets)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=list(alpn), server_name=server_name
    )
    if version is not None:
        configuration.supported_versions = [version]
    client = QuicConnection(configuration=configuration)
    client.connect(("127.0.0.1", 4433), now=0)
    return [data for data, _ in client.datagrams_to_send(now=0)]


# -- DTLS ----------------------------------------------------------------------------------


def openssl_dtls_client_hello(
    srtp_profiles: bytes | None = b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80",
    server_name: bytes | None = None,
) -> bytes:
    """The first datagram of an OpenSSL (pyOpenSSL) DTLS 1.2 client, as aiortc at its
    defaults set one up when `srtp_profiles` is given and OpenSSL had no DTLS 1.3 (a
    one-record ClientHello; OpenSSL 4.1's default 1.3 one is fragmented)."""
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_max_proto_version(0xFEFD)  # DTLS 1.2
    if srtp_profiles:
        context.set_tlsext_use_srtp(srtp_profiles)
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    if server_name:
        connection.set_tlsext_host_name(server_name)
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


def refragment_dtls(datagram: bytes, fragment_size: int) -> list[bytes]:
    """A one-record DTLS ClientHello re-sent as handshake fragments of `fragment_size`
    bytes, one record per datagram (what a client does when the hello exceeds the MTU)."""
    record_header, body = datagram[:13], datagram[13:]
    handshake_header, hello = body[:12], body[12:]
    datagrams = []
    for offset in range(0, len(hello), fragment_size):
        piece = hello[offset : offset + fragment_size]
        fragment = (
            handshake_header[:6] + offset.to_bytes(3, "big") + len(piece).to_bytes(3, "big")
        ) + piece
        header = record_header[:11] + len(fragment).to_bytes(2, "big")
        datagrams.append(header + fragment)
    return datagrams


# -- STUN ----------------------------------------------------------------------------------


def aioice_agent(controlling: bool) -> aioice.Connection:
    agent = aioice.Connection(ice_controlling=controlling)
    agent.remote_username = "rUfr"
    agent.remote_password = "remote-password-22chars"
    return agent


def aioice_check(controlling: bool = True) -> bytes:
    """An ICE connectivity check, built by aioice's own `build_request` and signed as its
    `StunProtocol.request` signs it."""
    agent = aioice_agent(controlling)
    local = aioice.Candidate("1", 1, "udp", 2130706431, "198.51.100.10", 50000, "host")
    protocol: Any = types.SimpleNamespace(local_candidate=local)
    remote = aioice.Candidate("2", 1, "udp", 2130706431, "203.0.113.20", 50001, "host")
    request = agent.build_request(aioice.ice.CandidatePair(protocol, remote), nominate=True)
    assert agent.remote_password is not None
    request.add_message_integrity(agent.remote_password.encode())
    return bytes(request)


def aioice_binding_success(request: bytes, mapped: tuple[str, int]) -> bytes:
    """The success response aioice's `request_received` sends for a check."""
    message = aioice.stun.parse_message(request)
    response = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING,
        message_class=aioice.stun.Class.RESPONSE,
        transaction_id=message.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = mapped
    response.add_message_integrity(b"local-password-22chars")
    return bytes(response)


def aioice_error_response(request: bytes, code: tuple[int, str]) -> bytes:
    """The error response from aioice's own `respond_error`."""
    sent: list[bytes] = []
    protocol: Any = types.SimpleNamespace(
        send_stun=lambda message, addr: sent.append(bytes(message))
    )
    agent = aioice_agent(controlling=False)
    agent.respond_error(aioice.stun.parse_message(request), ("203.0.113.20", 50001), protocol, code)
    return sent[0]


def stun_with_software(software: str) -> bytes:
    """A plain binding request of the kind a STUN client sends a server, with SOFTWARE."""
    message = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    message.attributes["SOFTWARE"] = software
    message.add_fingerprint()
    return bytes(message)


# -- DNS -----------------------------------------------------------------------------------


def dns_query(name: str = HOST, qtype: str = "A") -> bytes:
    return bytes(dnslib.DNSRecord.question(name, qtype).pack())


def dns_response(query: bytes, *records: str, rcode: int = 0) -> bytes:
    """A response to `query` with answers in zone-file form ("news.example 60 A 1.2.3.4")."""
    response = dnslib.DNSRecord.parse(query).reply()
    response.header.rcode = rcode
    for record in records:
        response.add_answer(*dnslib.RR.fromZone(record))
    return bytes(response.pack())


def tcp_framed(*messages: bytes) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages)


# -- HTTP ----------------------------------------------------------------------------------


def h11_request(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    client = h11.Connection(our_role=h11.CLIENT)
    data = client.send(h11.Request(method=method, target=target, headers=list(headers)))
    assert data is not None
    return data


def http_client_request(host: str, path: str, method: str = "GET") -> bytes:
    """What Python's http.client writes for a request, read off a socket pair."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        connection = http.client.HTTPConnection(host)
        connection.sock = ours
        connection.request(method, path, headers={"User-Agent": "lab-test"})
        theirs.settimeout(2)
        data = b""
        while b"\r\n\r\n" not in data:
            data += theirs.recv(65536)
        return data


def udp_flow_packets(
    datagrams: Sequence[tuple[bool, bytes]],
    client: tuple[str, int] = ("198.51.100.10", 40000),
    server: tuple[str, int] = ("203.0.113.50", 50000),
) -> list[bytes]:
    """A UDP flow, (from_client, datagram) each, as IPv4 packets between a censored host
    (`client`) and a peer outside (`server`)."""
    import struct

    out = []
    for from_client, datagram in datagrams:
        (src, sport), (dst, dport) = (client, server) if from_client else (server, client)
        udp = struct.pack("!HHHH", sport, dport, 8 + len(datagram), 0) + datagram
        header = bytes([0x45, 0]) + struct.pack("!HHHBBH", 20 + len(udp), 1, 0x4000, 64, 17, 0)
        out.append(header + bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + udp)
    return out


def tcp_flow_packets(
    payload: bytes,
    client: tuple[str, int] = ("198.51.100.10", 40000),
    server: tuple[str, int] = ("203.0.113.60", 443),
) -> list[bytes]:
    """A TCP flow as IPv4 packets: the handshake, then `payload` from the client."""
    import struct

    def packet(
        src: tuple[str, int], dst: tuple[str, int], flags: int, seq: int, data: bytes
    ) -> bytes:
        tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, flags, 65535, 0, 0) + data
        header = bytes([0x45, 0]) + struct.pack("!HHHBBH", 20 + len(tcp), 1, 0x4000, 64, 6, 0)
        return (
            header + bytes(map(int, src[0].split("."))) + bytes(map(int, dst[0].split("."))) + tcp
        )

    return [
        packet(client, server, 0x02, 100, b""),
        packet(server, client, 0x12, 500, b""),
        packet(client, server, 0x10, 101, b""),
        packet(client, server, 0x18, 101, payload),
    ]


def box_verdict(profile: Any, packets: Sequence[bytes]) -> tuple[int | None, str, list[str]]:
    """Feed one flow's IPv4 packets to a box inspector with this profile, until it decides:
    the mark (None: undecided), the reason, and the box's `suspected` findings on the way."""
    from unwall.lab.inspector import Inspector

    inspector = Inspector(profile)
    suspected: list[str] = []
    for number, packet in enumerate(packets):
        decision = inspector.packet(packet, now=float(number))
        assert decision is not None
        suspected += [f.value for f in decision.new_findings if f.key == "suspected"]
        if decision.mark is not None:
            return decision.mark, decision.flow.reason, suspected
    return None, "", suspected
