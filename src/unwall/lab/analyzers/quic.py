"""QUIC over UDP: the ClientHello inside a client's Initial packets.

Initial packets are encrypted, but with keys anyone can derive from the Destination
Connection ID in the clear (RFC 9001, section 5.2): so can a censor, and real ones do.
QUIC v1 (RFC 9000) and v2 (RFC 9369) are read; other versions are left alone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .analyzer import FlowAnalyzer
from .clienthello import parse_handshake_client_hello
from .reader import ByteReader, Malformed
from .reassembly import FragmentAssembler

MAX_CID = 20
# A ClientHello spans a few Initial packets at most; a flow that has not finished one
# after this many client datagrams is not worth more of the box's time.
MAX_CLIENT_DATAGRAMS = 16

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C


@dataclass(frozen=True)
class QuicVersion:
    number: int
    label: str
    initial_salt: bytes
    initial_type: int  # the long header's packet type bits that mean Initial
    retry_type: int
    key_label: bytes  # HKDF label prefix: b"quic" (v1) or b"quicv2"


VERSIONS = {
    version.number: version
    for version in (
        QuicVersion(
            0x00000001,
            "v1",
            bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
            initial_type=0,
            retry_type=3,
            key_label=b"quic",
        ),
        QuicVersion(
            0x6B3343CF,
            "v2",
            bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
            initial_type=1,
            retry_type=0,
            key_label=b"quicv2",
        ),
    )
}


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3's HKDF-Expand-Label (RFC 8446, section 7.1) with an empty context."""
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + b"\x00"
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


@dataclass(frozen=True)
class InitialKeys:
    """The client's Initial packet protection keys."""

    key: bytes
    iv: bytes
    hp: bytes

    @classmethod
    def for_client(cls, version: QuicVersion, dcid: bytes) -> InitialKeys:
        initial_secret = hmac.new(version.initial_salt, dcid, hashlib.sha256).digest()
        secret = hkdf_expand_label(initial_secret, b"client in", 32)
        prefix = version.key_label
        return cls(
            key=hkdf_expand_label(secret, prefix + b" key", 16),
            iv=hkdf_expand_label(secret, prefix + b" iv", 12),
            hp=hkdf_expand_label(secret, prefix + b" hp", 16),
        )


@dataclass(frozen=True)
class LongHeader:
    start: int  # where the packet starts in its datagram
    first_byte: int  # still under header protection
    version: int
    packet_type: int
    dcid: bytes
    pn_offset: int
    end: int  # where the packet ends (packets may be coalesced in one datagram)


def long_headers(datagram: bytes) -> Iterator[LongHeader]:
    """The long-header packets of a datagram, up to the first one that cannot be
    delimited (a short header, padding, a Retry, an unknown version)."""
    position = 0
    while position < len(datagram) and datagram[position] & 0x80:
        reader = ByteReader(datagram, position)
        first_byte = reader.u8()
        version = VERSIONS.get(reader.u32())
        if version is None:
            return
        dcid = reader.vector(1)
        scid = reader.vector(1)
        if len(dcid) > MAX_CID or len(scid) > MAX_CID:
            raise Malformed("connection id longer than 20 bytes")
        packet_type = (first_byte >> 4) & 0x03
        if packet_type == version.retry_type:
            return
        if packet_type == version.initial_type:
            reader.skip(reader.varint())  # token
        length = reader.varint()
        pn_offset = reader.position
        end = pn_offset + length
        if end > len(datagram):
            raise Malformed("packet length past the end of the datagram")
        yield LongHeader(position, first_byte, version.number, packet_type, dcid, pn_offset, end)
        position = end


def decrypt_packet(datagram: bytes, header: LongHeader, keys: InitialKeys) -> bytes:
    """Remove header protection and decrypt the payload (RFC 9001, sections 5.3 and 5.4)."""
    sample_offset = header.pn_offset + 4
    sample = datagram[sample_offset : sample_offset + 16]
    if len(sample) < 16 or sample_offset + 16 > header.end:
        raise Malformed("packet too short to sample for header protection")
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    first_byte = header.first_byte ^ (mask[0] & 0x0F)
    pn_length = (first_byte & 0x03) + 1
    protected_pn = datagram[header.pn_offset : header.pn_offset + pn_length]
    pn_bytes = bytes(b ^ m for b, m in zip(protected_pn, mask[1 : 1 + pn_length], strict=True))
    aad = bytes([first_byte]) + datagram[header.start + 1 : header.pn_offset] + pn_bytes
    # Client packet numbers start at 0, so early ones need no reconstruction from the
    # truncated encoding (RFC 9000, appendix A.3).
    nonce = (int.from_bytes(keys.iv, "big") ^ int.from_bytes(pn_bytes, "big")).to_bytes(12, "big")
    try:
        return AESGCM(keys.key).decrypt(
            nonce, datagram[header.pn_offset + pn_length : header.end], aad
        )
    except InvalidTag:
        raise Malformed("Initial packet does not decrypt with keys from its DCID") from None


def crypto_frames(plaintext: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of each CRYPTO frame in an Initial packet's frames."""
    reader = ByteReader(plaintext)
    while not reader.at_end():
        frame_type = reader.varint()
        if frame_type == FRAME_PADDING:
            reader.skip_zeros()
        elif frame_type == FRAME_PING:
            pass
        elif frame_type in (FRAME_ACK, FRAME_ACK_ECN):
            reader.varint()  # largest acknowledged
            reader.varint()  # delay
            ranges = reader.varint()
            reader.varint()  # first range
            for _ in range(2 * ranges + (3 if frame_type == FRAME_ACK_ECN else 0)):
                reader.varint()
        elif frame_type == FRAME_CRYPTO:
            offset = reader.varint()
            yield offset, reader.take(reader.varint())
        elif frame_type == FRAME_CONNECTION_CLOSE:
            reader.varint()  # error code
            reader.varint()  # frame type
            reader.skip(reader.varint())
        else:
            raise Malformed(f"frame type 0x{frame_type:x} is not allowed in an Initial packet")


class QuicInitialAnalyzer(FlowAnalyzer):
    """Decrypts the client's Initial packets and reads the ClientHello in their CRYPTO
    frames, which may be split over several packets and datagrams and arrive out of order.

    Findings: `version` ("v1"), `sni` (or `no-sni`), `alpn` ("h3"), `ech` if offered. The
    first client datagram decides: if it holds no Initial that decrypts, this flow is not
    QUIC (or not its beginning) and the analyzer gives up.
    """

    name = "quic"

    def __init__(self) -> None:
        super().__init__()
        self._version: QuicVersion | None = None
        self._keys: InitialKeys | None = None
        self._crypto = FragmentAssembler()
        self._client_datagrams = 0

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        if not from_client:
            return []
        self._client_datagrams += 1
        try:
            decrypted = self._read_initials(payload)
        except Malformed:
            if self._version is None or self._client_datagrams == 1:
                raise
            return []  # a stray datagram in a flow already known to be QUIC
        if not decrypted and self._version is None:
            raise Malformed("the first client datagram holds no QUIC Initial packet")
        hello = parse_handshake_client_hello(self._crypto.contiguous())
        if hello is None or self._version is None:
            if self._client_datagrams >= MAX_CLIENT_DATAGRAMS:
                raise Malformed("no complete ClientHello in the client's first datagrams")
            return []
        self._finish()
        return [("version", self._version.label), *hello.describe()]

    def _read_initials(self, datagram: bytes) -> int:
        """Decrypt the datagram's client Initial packets into the CRYPTO stream; returns
        how many there were."""
        if not datagram[0] & 0x80 or int.from_bytes(datagram[1:5], "big") not in VERSIONS:
            return 0  # decided on the first bytes, so that other UDP flows cost next to nothing
        count = 0
        for header in long_headers(datagram):
            version = VERSIONS[header.version]
            if header.packet_type != version.initial_type:
                continue
            if self._version is None:
                keys = InitialKeys.for_client(version, header.dcid)
                plaintext = decrypt_packet(datagram, header, keys)
                self._version, self._keys = version, keys
            elif version is self._version and self._keys is not None:
                plaintext = decrypt_packet(datagram, header, self._keys)
            else:
                continue
            for offset, data in crypto_frames(plaintext):
                self._crypto.add(offset, data)
            count += 1
        return count
