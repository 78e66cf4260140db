"""DTLS over UDP (RFC 6347, RFC 9147): a fingerprint of the ClientHello.

WebRTC keys its media with DTLS-SRTP (RFC 5764): its ClientHello carries the use_srtp
extension, which other DTLS (VPNs, CoAP, ...) does not. The JA3 fingerprint then tells
one WebRTC stack from another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .analyzer import FlowAnalyzer
from .clienthello import HANDSHAKE_CLIENT_HELLO, parse_client_hello
from .reader import ByteReader, Malformed
from .reassembly import MAX_BUFFER, FragmentAssembler

CONTENT_HANDSHAKE = 22
# Record-layer versions a ClientHello travels under: DTLS 1.0 and 1.2 (DTLS 1.3 keeps
# these in its plaintext records).
RECORD_VERSIONS = frozenset({0xFEFF, 0xFEFD})


@dataclass(frozen=True)
class HandshakeFragment:
    msg_type: int
    length: int  # of the whole message
    message_seq: int
    offset: int
    data: bytes


def handshake_fragments(datagram: bytes) -> Iterator[HandshakeFragment]:
    """The handshake fragments in a datagram of plaintext DTLS records; `Malformed` on any
    other record."""
    reader = ByteReader(datagram)
    while not reader.at_end():
        content_type = reader.u8()
        version = reader.u16()
        epoch = reader.u16()
        if content_type != CONTENT_HANDSHAKE or version not in RECORD_VERSIONS or epoch:
            raise Malformed("not a plaintext DTLS handshake record")
        reader.skip(6)  # sequence number
        record = reader.sub(2)
        while not record.at_end():
            msg_type = record.u8()
            length = record.u24()
            message_seq = record.u16()
            offset = record.u24()
            data = record.vector(3)
            if offset + len(data) > length:
                raise Malformed("handshake fragment past the end of its message")
            yield HandshakeFragment(msg_type, length, message_seq, offset, data)


def _shares_flow_with_dtls(first_byte: int) -> bool:
    """STUN (0-3) and TURN ChannelData (64-79) come before DTLS on a WebRTC flow (RFC 7983)."""
    return first_byte <= 3 or 64 <= first_byte <= 79


class DtlsAnalyzer(FlowAnalyzer):
    """Reassembles the first DTLS ClientHello of a flow, from either direction (in WebRTC
    the DTLS client is whichever peer the SDP made active, not the flow's initiator).

    Findings: `client-hello` (the JA3 string), `ja3` (its md5), `srtp` (the SRTP profiles
    offered, "SRTP_AEAD_AES_128_GCM,SRTP_AES128_CM_HMAC_SHA1_80": this is WebRTC), and
    `sni` and `alpn` when present. STUN and TURN datagrams before the handshake are
    skipped; anything else that is not a ClientHello makes the analyzer give up.
    """

    name = "dtls"

    def __init__(self) -> None:
        super().__init__()
        self._first: HandshakeFragment | None = None
        self._message = FragmentAssembler()

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        if _shares_flow_with_dtls(payload[0]):
            return []
        if payload[0] != CONTENT_HANDSHAKE:
            raise Malformed("neither a DTLS handshake record nor STUN")
        for fragment in handshake_fragments(payload):
            if fragment.msg_type != HANDSHAKE_CLIENT_HELLO:
                raise Malformed("a DTLS handshake that does not start with a ClientHello")
            if self._first is None:
                if fragment.length > MAX_BUFFER:
                    raise Malformed(f"a ClientHello larger than {MAX_BUFFER} bytes")
                self._first = fragment
            if fragment.message_seq != self._first.message_seq:
                continue  # a later ClientHello (after a HelloVerifyRequest): the first one will do
            if fragment.length != self._first.length:
                raise Malformed("fragments of one ClientHello disagree on its length")
            self._message.add(fragment.offset, fragment.data)
        if self._first is None:
            return []
        body = self._message.contiguous()
        if len(body) < self._first.length:
            return []
        self._finish()
        hello = parse_client_hello(body[: self._first.length], dtls=True)
        pairs = [("client-hello", hello.ja3()), ("ja3", hello.ja3_md5())]
        if hello.srtp_profiles:
            pairs.append(("srtp", ",".join(hello.srtp_profile_names())))
        if hello.server_name:
            pairs.append(("sni", hello.server_name))
        if hello.alpn:
            pairs.append(("alpn", ",".join(hello.alpn)))
        return pairs
