"""The server's side of a (D)TLS handshake as the box sees it: the ServerHello and its
fingerprints (JA3S, JA4S), and the properties of a certificate sent in the clear (TLS 1.2
and DTLS 1.2 send certificates unencrypted; 1.3 encrypts them).
"""

from __future__ import annotations

import hashlib
import warnings

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .clienthello import (
    EXT_ALPN,
    EXT_SUPPORTED_VERSIONS,
    JA4_TRANSPORTS,
    alpn_chars,
    hex4,
    ja4_version,
    sha256_12,
)
from .reader import ByteReader, Malformed

HANDSHAKE_SERVER_HELLO = 2
HANDSHAKE_CERTIFICATE = 11
#: RFC 8446 4.1.3: SHA-256 of "HelloRetryRequest"
HELLO_RETRY_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()

VERSION_NAMES = {0xFEFC: "DTLS 1.3", 0xFEFD: "DTLS 1.2", 0xFEFF: "DTLS 1.0", 0x0304: "TLS 1.3",
                 0x0303: "TLS 1.2", 0x0302: "TLS 1.1", 0x0301: "TLS 1.0"}  # fmt: skip


class ServerHello:
    def __init__(
        self,
        legacy_version: int,
        cipher_suite: int,
        extensions: tuple[int, ...],
        selected_version: int | None,
        alpn: tuple[str, ...],
        random: bytes = b"",
    ) -> None:
        self.random = random
        self.legacy_version = legacy_version
        self.cipher_suite = cipher_suite
        self.extensions = extensions
        self.selected_version = selected_version
        self.alpn = alpn

    @property
    def is_retry_request(self) -> bool:
        """A TLS/DTLS 1.3 HelloRetryRequest: a ServerHello with this fixed random."""
        return self.random == HELLO_RETRY_RANDOM

    @property
    def version(self) -> int:
        """The version the handshake goes on with."""
        return self.selected_version if self.selected_version is not None else self.legacy_version

    @property
    def version_name(self) -> str:
        return VERSION_NAMES.get(self.version, f"0x{self.version:04x}")

    def ja3s(self) -> str:
        """`version,cipher,extensions` in decimal (the extensions in the order sent)."""
        extensions = "-".join(str(e) for e in self.extensions)
        return f"{self.legacy_version},{self.cipher_suite},{extensions}"

    def ja3s_md5(self) -> str:
        return hashlib.md5(self.ja3s().encode(), usedforsecurity=False).hexdigest()

    def ja4s(self, transport: str) -> str:
        """JA4S (FoxIO): `{t|q|d}{version}{extensions:02}{alpn}` `_` the cipher `_` the hash
        of the extensions in the order sent (a server answers in its own fixed order)."""
        head = (
            f"{JA4_TRANSPORTS[transport]}{ja4_version(self.version)}"
            f"{min(len(self.extensions), 99):02d}{alpn_chars(self.alpn)}"
        )
        return f"{head}_{self.cipher_suite:04x}_{sha256_12(hex4(self.extensions))}"


def parse_server_hello(body: bytes) -> ServerHello:
    """A ServerHello body (after the handshake header), TLS or DTLS; `Malformed` if not one."""
    reader = ByteReader(body)
    legacy_version = reader.u16()
    if legacy_version >> 8 not in (0x03, 0xFE):
        raise Malformed(f"ServerHello version 0x{legacy_version:04x} is neither TLS nor DTLS")
    random = reader.take(32)
    if len(reader.vector(1)) > 32:
        raise Malformed("session id longer than 32 bytes")
    cipher_suite = reader.u16()
    reader.u8()  # compression method
    extensions: list[int] = []
    selected: int | None = None
    alpn: tuple[str, ...] = ()
    if not reader.at_end():
        block = reader.sub(2)
        while not block.at_end():
            ext_type = block.u16()
            data = block.sub(2)
            extensions.append(ext_type)
            if ext_type == EXT_SUPPORTED_VERSIONS and data.remaining >= 2:
                selected = data.u16()
            elif ext_type == EXT_ALPN and data.remaining:
                protocols = data.sub(2)
                if not protocols.at_end():
                    alpn = (protocols.vector(1).decode("ascii", "backslashreplace"),)
    return ServerHello(legacy_version, cipher_suite, tuple(extensions), selected, alpn, random)


def first_certificate(body: bytes) -> bytes:
    """The first (the end entity's) DER certificate of a TLS 1.2 Certificate message body."""
    reader = ByteReader(body)
    chain = reader.sub(3)
    if chain.at_end():
        raise Malformed("an empty certificate chain")
    return chain.vector(3)


def describe_certificate(der: bytes) -> str:
    """What a certificate shows of its maker: `key;validity;subject;serial`, e.g.
    `ec-secp256r1;30d;CN=WebRTC;serial 8B`, with the validity in whole days."""
    try:
        with warnings.catch_warnings():  # e.g. a zero or negative serial: still described
            warnings.simplefilter("ignore")
            certificate = x509.load_der_x509_certificate(der)
        validity = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        subject = certificate.subject.rfc4514_string()
    except (ValueError, x509.InvalidVersion) as exc:
        raise Malformed(f"certificate: {exc}") from None
    try:
        key: object = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None  # a key type or curve this box does not know
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"ec-{key.curve.name}"
    elif isinstance(key, rsa.RSAPublicKey):
        kind = f"rsa-{key.key_size}"
    elif isinstance(key, ed25519.Ed25519PublicKey):
        kind = "ed25519"
    elif isinstance(key, ed448.Ed448PublicKey):
        kind = "ed448"
    elif key is None:
        kind = "unsupported"
    else:
        kind = type(key).__name__
    days = round(validity.total_seconds() / 86400)
    serial_bytes = der_serial_length(der)
    return f"{kind};{days}d;{subject};serial {serial_bytes}B"


def _der_header(reader: ByteReader) -> tuple[int, int]:
    """A DER element's tag and content length."""
    tag = reader.u8()
    length = reader.u8()
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4:
            raise Malformed("a DER length of more than 4 bytes")
        length = reader.uint(size)
    return tag, length


def der_serial_length(der: bytes) -> int:
    """How many bytes the issuer chose for the serial number, as it encoded them (a parsed
    integer no longer shows leading zeros). The zero byte DER puts before a serial whose
    top bit is set is not counted: it comes and goes with the random first bit."""
    reader = ByteReader(der)
    for _ in range(2):  # Certificate, then TBSCertificate: both SEQUENCEs
        tag, _length = _der_header(reader)
        if tag != 0x30:
            raise Malformed("a certificate that is not a DER SEQUENCE")
    tag, length = _der_header(reader)
    if tag == 0xA0:  # [0] version
        reader.skip(length)
        tag, length = _der_header(reader)
    if tag != 0x02 or length == 0:
        raise Malformed("no serial number where a certificate has it")
    content = reader.take(length)
    padded = length > 1 and content[0] == 0 and content[1] & 0x80
    return length - 1 if padded else length
