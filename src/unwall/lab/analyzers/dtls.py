"""DTLS over UDP (RFC 6347, RFC 9147): fingerprints of the handshake.

WebRTC keys its media with DTLS-SRTP (RFC 5764): its ClientHello carries the use_srtp
extension, which other DTLS (VPNs, CoAP, ...) does not. The fingerprints of the
ClientHello (JA3, JA4), of the ServerHello (JA3S, JA4S) and of the certificates that DTLS
1.2 sends in the clear then tell one WebRTC stack from another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .analyzer import FlowAnalyzer
from .clienthello import HANDSHAKE_CLIENT_HELLO, parse_client_hello
from .reader import ByteReader, Malformed
from .reassembly import MAX_BUFFER, FragmentAssembler
from .serverhello import (
    HANDSHAKE_CERTIFICATE,
    HANDSHAKE_SERVER_HELLO,
    describe_certificate,
    first_certificate,
    parse_server_hello,
)

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


def _shares_flow_with_dtls(first_byte: int) -> bool:
    """STUN (0-3) and TURN ChannelData (64-79) come before DTLS on a WebRTC flow (RFC 7983)."""
    return first_byte <= 3 or 64 <= first_byte <= 79


#: handshake messages kept per direction (ClientHello or ServerHello, Certificate, ...)
MAX_MESSAGES = 8
#: datagrams after the ClientHello within which the server's flight must show
MAX_DATAGRAMS_AFTER_HELLO = 24


def _is_unified_header(first_byte: int) -> bool:
    """A DTLS 1.3 ciphertext record (RFC 9147 section 4): 0b001xxxxx."""
    return 0x20 <= first_byte <= 0x3F


def plaintext_handshake_fragments(datagram: bytes) -> Iterator[HandshakeFragment]:
    """The handshake fragments of the epoch-0 records in a datagram; encrypted records,
    ChangeCipherSpec and alerts are stepped over, and a DTLS 1.3 ciphertext record (which
    has no length of its own when it is the last) ends the datagram."""
    reader = ByteReader(datagram)
    while not reader.at_end():
        if _is_unified_header(datagram[reader.position]):
            return
        content_type = reader.u8()
        version = reader.u16()
        epoch = reader.u16()
        reader.skip(6)  # sequence number
        record = reader.sub(2)
        if version not in RECORD_VERSIONS:
            raise Malformed("not a DTLS record")
        if content_type != CONTENT_HANDSHAKE or epoch:
            continue
        while not record.at_end():
            msg_type = record.u8()
            length = record.u24()
            message_seq = record.u16()
            offset = record.u24()
            data = record.vector(3)
            if offset + len(data) > length:
                raise Malformed("handshake fragment past the end of its message")
            yield HandshakeFragment(msg_type, length, message_seq, offset, data)


class _Message:
    def __init__(self, fragment: HandshakeFragment) -> None:
        if fragment.length > MAX_BUFFER:
            raise Malformed(f"a handshake message larger than {MAX_BUFFER} bytes")
        self.msg_type = fragment.msg_type
        self.length = fragment.length
        self.parts = FragmentAssembler()
        self.parsed = False

    def add(self, fragment: HandshakeFragment) -> bytes | None:
        """The whole message once all of it has come, else None."""
        if fragment.length != self.length or fragment.msg_type != self.msg_type:
            raise Malformed("fragments of one handshake message disagree")
        self.parts.add(fragment.offset, fragment.data)
        body = self.parts.contiguous()
        return body[: self.length] if len(body) >= self.length else None


class DtlsAnalyzer(FlowAnalyzer):
    """Follows the plaintext part of a flow's DTLS handshake, from either direction (in
    WebRTC the DTLS client is whichever peer the SDP made active, not the flow's initiator).

    Findings: from the ClientHello `client-hello` (the JA3 string), `ja3` (its md5), `ja4`,
    `srtp` (the SRTP profiles offered: this is WebRTC), `sni` and `alpn` when present; from
    the ServerHello `server-hello` (the JA3S string), `ja3s`, `ja4s` and `dtls-version` (the
    version chosen); and for each certificate sent in the clear (DTLS 1.2: the server's and,
    as WebRTC asks for it, the client's) `server-cert` or `client-cert`, as
    `key;validity;subject;serial` (see `describe_certificate`). STUN and TURN datagrams are
    skipped; a flow whose first other datagram is not a ClientHello is not DTLS.
    """

    name = "dtls"

    def __init__(self) -> None:
        super().__init__()
        #: the direction (from_client) the ClientHello came from: the DTLS client's
        self._client_side: bool | None = None
        self._messages: dict[tuple[bool, int], _Message] = {}
        self._seen: set[str] = set()  # "client-hello", "server-hello", "server-cert", ...
        self._after_hello = 0

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        if _shares_flow_with_dtls(payload[0]):
            return []
        if self._client_side is None and payload[0] != CONTENT_HANDSHAKE:
            raise Malformed("neither a DTLS handshake record nor STUN")
        if self._client_side is not None:
            self._after_hello += 1
        pairs: list[tuple[str, str]] = []
        fragments = list(plaintext_handshake_fragments(payload))
        if not self._messages and not fragments:
            raise Malformed("DTLS records with no plaintext handshake to start with")
        for fragment in fragments:
            if not self._messages and fragment.msg_type != HANDSHAKE_CLIENT_HELLO:
                raise Malformed("a DTLS handshake that does not start with a ClientHello")
            key = (from_client, fragment.message_seq)
            message = self._messages.get(key)
            if message is None:
                if sum(1 for d, _ in self._messages if d == from_client) >= MAX_MESSAGES:
                    continue
                message = self._messages[key] = _Message(fragment)
            if message.parsed:
                continue
            body = message.add(fragment)
            if body is not None:
                message.parsed = True
                pairs += self._message(fragment.msg_type, body, from_client)
        if self._finished():
            self._finish()
        return pairs

    def _message(self, msg_type: int, body: bytes, from_client: bool) -> list[tuple[str, str]]:
        if msg_type == HANDSHAKE_CLIENT_HELLO and "client-hello" not in self._seen:
            self._seen.add("client-hello")
            self._client_side = from_client
            hello = parse_client_hello(body, dtls=True)
            pairs = [
                ("client-hello", hello.ja3()),
                ("ja3", hello.ja3_md5()),
                ("ja4", hello.ja4("dtls")),
            ]
            if hello.srtp_profiles:
                pairs.append(("srtp", ",".join(hello.srtp_profile_names())))
            if hello.server_name:
                pairs.append(("sni", hello.server_name))
            if hello.alpn:
                pairs.append(("alpn", ",".join(hello.alpn)))
            return pairs
        if self._client_side is None:
            return []
        from_server = from_client != self._client_side
        if msg_type == HANDSHAKE_SERVER_HELLO and from_server and "server-hello" not in self._seen:
            server = parse_server_hello(body)
            if server.is_retry_request:
                return []  # the real ServerHello follows the client's second hello
            self._seen.add("server-hello")
            if server.version == 0xFEFC:
                self._seen.add("encrypted")  # DTLS 1.3: the certificates are encrypted
            return [
                ("server-hello", server.ja3s()),
                ("ja3s", server.ja3s_md5()),
                ("ja4s", server.ja4s("dtls")),
                ("dtls-version", server.version_name),
            ]
        if msg_type == HANDSHAKE_CERTIFICATE:
            role = "server-cert" if from_server else "client-cert"
            if role not in self._seen:
                self._seen.add(role)
                return [(role, describe_certificate(first_certificate(body)))]
        return []

    def _finished(self) -> bool:
        seen = self._seen
        if {"client-hello", "server-hello"} <= seen and (
            "encrypted" in seen or {"server-cert", "client-cert"} <= seen
        ):
            return True
        return self._after_hello >= MAX_DATAGRAMS_AFTER_HELLO
