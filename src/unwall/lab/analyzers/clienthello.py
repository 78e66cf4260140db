"""The ClientHello body, as TLS (RFC 8446), DTLS (RFC 6347/9147) and QUIC (RFC 9001) carry
it, and its fingerprints: JA3 (Salesforce; extension order matters) and JA4 (FoxIO;
sorted, so that a browser that shuffles its extensions on every connection keeps one
fingerprint).

TLS, DTLS and QUIC differ only in how the handshake message reaches us; the body is the
same except that DTLS puts a cookie after the session id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .analyzer import display_name
from .reader import ByteReader, Malformed

HANDSHAKE_CLIENT_HELLO = 1

EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_USE_SRTP = 14
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D

SRTP_PROFILE_NAMES = {
    0x0001: "SRTP_AES128_CM_HMAC_SHA1_80",
    0x0002: "SRTP_AES128_CM_HMAC_SHA1_32",
    0x0005: "SRTP_NULL_HMAC_SHA1_80",
    0x0006: "SRTP_NULL_HMAC_SHA1_32",
    0x0007: "SRTP_AEAD_AES_128_GCM",
    0x0008: "SRTP_AEAD_AES_256_GCM",
}


def is_grease(value: int) -> bool:
    """RFC 8701 reserved values (0x0a0a, 0x1a1a, ...), which JA3 leaves out."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


#: JA4's two version characters, by wire version
JA4_VERSIONS = {
    0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
    0xFEFC: "d3", 0xFEFD: "d2", 0xFEFF: "d1",
}  # fmt: skip
#: JA4's first character, by transport
JA4_TRANSPORTS = {"tcp": "t", "quic": "q", "dtls": "d"}


def ja4_version(version: int) -> str:
    """JA4's version part: "13" for TLS 1.3, "d2" for DTLS 1.2 (so a DTLS 1.2 hello's JA4
    starts "dd2"), "00" for anything unknown."""
    return JA4_VERSIONS.get(version, "00")


def sha256_12(text: str) -> str:
    """JA4's truncated hash: the first 12 hex digits of SHA-256, or twelve zeros for nothing."""
    if not text:
        return "000000000000"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def hex4(values: list[int] | tuple[int, ...]) -> str:
    return ",".join(f"{value:04x}" for value in values)


def alpn_chars(alpn: tuple[str, ...]) -> str:
    """JA4's ALPN part: the first and last character of the first protocol, "00" if none
    (a protocol that is not alphanumeric ASCII at either end gives hex digits instead)."""
    if not alpn or not alpn[0]:
        return "00"
    first = alpn[0]
    if first[0].isascii() and first[0].isalnum() and first[-1].isascii() and first[-1].isalnum():
        return first[0] + first[-1]
    raw = first.encode("utf-8", "backslashreplace").hex()
    return raw[0] + raw[-1]


@dataclass(frozen=True)
class ClientHello:
    legacy_version: int
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    srtp_profiles: tuple[int, ...] = ()
    supported_versions: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()

    @property
    def highest_version(self) -> int:
        """The highest version offered: from supported_versions if sent, else the legacy
        field (DTLS counts down: 0xfefc is DTLS 1.3)."""
        offered = [v for v in self.supported_versions if not is_grease(v)]
        if not offered:
            return self.legacy_version
        dtls = [v for v in offered if v >> 8 == 0xFE]
        return min(dtls) if dtls else max(offered)

    def ja4(self, transport: str) -> str:
        """JA4 (FoxIO): `{t|q|d}{version}{d|i}{ciphers:02}{extensions:02}{alpn}` `_` the
        sorted cipher suites' hash `_` the sorted extensions' (no SNI, no ALPN) and the
        signature algorithms' hash. GREASE is left out everywhere; order does not count
        except in the signature algorithms."""
        ciphers = [c for c in self.cipher_suites if not is_grease(c)]
        extensions = [e for e in self.extensions if not is_grease(e)]
        version = ja4_version(self.highest_version)
        head = (
            f"{JA4_TRANSPORTS[transport]}{version}{'d' if EXT_SERVER_NAME in extensions else 'i'}"
            f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn_chars(self.alpn)}"
        )
        hashed = sorted(e for e in extensions if e not in (EXT_SERVER_NAME, EXT_ALPN))
        tail = hex4(hashed)
        algorithms = [a for a in self.signature_algorithms if not is_grease(a)]
        if algorithms:
            tail += "_" + hex4(algorithms)
        return f"{head}_{sha256_12(hex4(sorted(ciphers)))}_{sha256_12(tail)}"

    @property
    def has_ech(self) -> bool:
        return EXT_ENCRYPTED_CLIENT_HELLO in self.extensions

    def ja3(self) -> str:
        """`version,ciphers,extensions,groups,point_formats` in decimal, GREASE left out."""

        def join(values: tuple[int, ...]) -> str:
            return "-".join(str(v) for v in values if not is_grease(v))

        return ",".join(
            [
                str(self.legacy_version),
                join(self.cipher_suites),
                join(self.extensions),
                join(self.groups),
                join(self.point_formats),
            ]
        )

    def ja3_md5(self) -> str:
        return hashlib.md5(self.ja3().encode(), usedforsecurity=False).hexdigest()

    def srtp_profile_names(self) -> list[str]:
        return [SRTP_PROFILE_NAMES.get(p, f"0x{p:04x}") for p in self.srtp_profiles]

    def describe(self) -> list[tuple[str, str]]:
        """The findings every ClientHello gives: SNI (or its absence), ALPN, ECH."""
        pairs = [("sni", self.server_name) if self.server_name else ("no-sni", "")]
        if self.alpn:
            pairs.append(("alpn", ",".join(self.alpn)))
        if self.has_ech:
            pairs.append(("ech", "encrypted_client_hello"))
        return pairs


def parse_handshake_client_hello(handshake: bytes, *, dtls: bool = False) -> ClientHello | None:
    """The ClientHello at the start of a TLS handshake stream (type, 24-bit length, body);
    None while the message is still incomplete."""
    if not handshake:
        return None
    if handshake[0] != HANDSHAKE_CLIENT_HELLO:
        raise Malformed(f"handshake message type {handshake[0]} is not a ClientHello")
    if len(handshake) < 4:
        return None
    length = int.from_bytes(handshake[1:4], "big")
    if len(handshake) < 4 + length:
        return None
    return parse_client_hello(handshake[4 : 4 + length], dtls=dtls)


def parse_client_hello(body: bytes, *, dtls: bool = False) -> ClientHello:
    """Parse a ClientHello body (after the handshake header); `Malformed` if it is not one."""
    reader = ByteReader(body)
    legacy_version = reader.u16()
    if legacy_version >> 8 not in (0x03, 0xFE):
        raise Malformed(f"ClientHello version 0x{legacy_version:04x} is neither TLS nor DTLS")
    reader.skip(32)  # random
    if len(reader.vector(1)) > 32:
        raise Malformed("session id longer than 32 bytes")
    if dtls:
        reader.vector(1)  # cookie
    cipher_suites = reader.u16_list(2)
    if not cipher_suites:
        raise Malformed("no cipher suites")
    if not reader.vector(1):
        raise Malformed("no compression methods")
    if reader.at_end():
        return ClientHello(legacy_version, cipher_suites, ())
    fields = _ExtensionFields()
    extensions: list[int] = []
    block = reader.sub(2)
    if not reader.at_end():
        raise Malformed("bytes after the extensions")
    while not block.at_end():
        ext_type = block.u16()
        extensions.append(ext_type)
        fields.parse(ext_type, block.sub(2))
    return ClientHello(
        legacy_version,
        cipher_suites,
        tuple(extensions),
        server_name=fields.server_name,
        alpn=fields.alpn,
        groups=fields.groups,
        point_formats=fields.point_formats,
        srtp_profiles=fields.srtp_profiles,
        supported_versions=fields.supported_versions,
        signature_algorithms=fields.signature_algorithms,
    )


@dataclass
class _ExtensionFields:
    """The extensions the box reads, filled in as they come by."""

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    srtp_profiles: tuple[int, ...] = ()
    supported_versions: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()

    def parse(self, ext_type: int, data: ByteReader) -> None:
        if ext_type == EXT_SERVER_NAME and data.remaining:
            names = data.sub(2)
            while not names.at_end():
                name_type = names.u8()
                name = names.vector(2)
                if name_type == 0 and self.server_name is None:
                    self.server_name = display_name(name)
        elif ext_type == EXT_ALPN:
            protocols = data.sub(2)
            alpn = []
            while not protocols.at_end():
                alpn.append(protocols.vector(1).decode("ascii", "backslashreplace"))
            self.alpn = tuple(alpn)
        elif ext_type == EXT_SUPPORTED_GROUPS:
            self.groups = data.u16_list(2)
        elif ext_type == EXT_EC_POINT_FORMATS:
            self.point_formats = tuple(data.vector(1))
        elif ext_type == EXT_USE_SRTP:
            self.srtp_profiles = data.u16_list(2)
        elif ext_type == EXT_SUPPORTED_VERSIONS and data.remaining:
            self.supported_versions = data.u16_list(1)
        elif ext_type == EXT_SIGNATURE_ALGORITHMS and data.remaining:
            self.signature_algorithms = data.u16_list(2)
