"""DTLS for the aiortc engine, as a browser's: DTLS 1.3 shaped like Chromium's, its
certificate and the SRTP profiles it offers, and what goes on the wire (`dtlswire`).

Nothing changes in aiortc until `install()` (called by `engine.install_patches`).
"""

from __future__ import annotations

import logging
from typing import Any

import aiortc.rtcdtlstransport as aiortc_dtls
from OpenSSL import SSL
from OpenSSL._util import lib as openssl

from unwall.transport.aiortc_engine.dtlswire import MTU, Shaper
from unwall.transport.internals import Needs

log = logging.getLogger("unwall.webrtc")

# -- On the wire, as a browser is ----------------------------------------------------------
#
# The box fingerprints every WebRTC flow (see unwall.lab.analyzers: dtls, stun). Two of the
# things it sees are ours to shape with aiortc, and are shaped here as Debian's Chromium 156
# sends them (captured in tests/unit/lab/fixtures/chromium-*.json; the ICE connectivity
# checks, the third, are shaped in `ice`):
# - the DTLS certificate: P-256, subject and issuer CN=WebRTC, a 64-bit serial with its top
#   bit set (what BoringSSL's BN_pseudo_rand(64) gives WebRTC), valid from a day ago for 31
#   days, no extensions. aiortc's own has a random hex CN and a 20-byte serial;
# - the SRTP profiles offered (use_srtp), in Chromium's order: AES128_CM_SHA1_80 first,
#   then AEAD_AES_256_GCM and AEAD_AES_128_GCM (aiortc puts the GCM ones first).
# - the handshake: DTLS 1.3 with Chromium's ClientHello (see "DTLS 1.3 as Chromium's" below)
#   and Chromium's layout on the wire (`dtlswire`).


def _browser_like_certificate(key: Any) -> Any:
    import datetime
    import secrets

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "WebRTC")])
    now = datetime.datetime.now(tz=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(63) | (1 << 63))
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


CHROMIUM_SRTP_ORDER = (
    b"SRTP_AES128_CM_SHA1_80",
    b"SRTP_AEAD_AES_256_GCM",
    b"SRTP_AEAD_AES_128_GCM",
)


def _srtp_rank(profile: Any) -> int:
    name = profile.openssl_profile
    return (
        CHROMIUM_SRTP_ORDER.index(name) if name in CHROMIUM_SRTP_ORDER else len(CHROMIUM_SRTP_ORDER)
    )


# -- DTLS 1.3 as Chromium's ----------------------------------------------------------------------
#
# Chromium 156 offers DTLS 1.3 and 1.2 with this ClientHello (JA4 dd3i140900_fa23b50283d1_
# 01b4b87481e4): 3 TLS 1.3 suites then 11 TLS 1.2 ones in this order; these 9 signature
# algorithms (rsa_pkcs1_sha1 among them, which OpenSSL keeps only at security level 0);
# groups X25519MLKEM768, X25519, P-256, P-384 with key shares for the first two; no
# session tickets and no encrypt-then-MAC; a 1,200-byte MTU (the 1,413-byte hello in two
# fragments). OpenSSL 4.1 (cryptography 51) writes the same, told so here; aiortc leaves
# OpenSSL at its defaults. With a 1.2-only peer both ends fall back to DTLS 1.2.
# Measured: docs/research/dtls13.md; the box's view: docs/fingerprints.md.

DTLS_1_2, DTLS_1_3 = 0xFEFD, 0xFEFC
NO_ENCRYPT_THEN_MAC = 1 << 19  # SSL_OP_NO_ENCRYPT_THEN_MAC (ssl.h); not exported
TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:"
    b"AES128-GCM-SHA256:AES128-SHA:AES256-SHA:@SECLEVEL=0"
)
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
SIGNATURE_ALGORITHMS = (
    b"ECDSA+SHA256:rsa_pss_rsae_sha256:RSA+SHA256:ECDSA+SHA384:rsa_pss_rsae_sha384:"
    b"RSA+SHA384:rsa_pss_rsae_sha512:RSA+SHA512:RSA+SHA1"
)
GROUPS = b"*X25519MLKEM768:*X25519:P-256:P-384"  # '*': send a key share for it
#: What a transport's DTLS shaper is kept under (set at its handshake).
SHAPER = "_unwall_shaper"
#: Set on a transport (before its handshake) to the key agreed in the SDP
#: (`sdp.DTLS_REWRITE`) when the other end is unwall too and restores what `dtlswire`
#: rewrites; None otherwise.
REWRITE = "_unwall_dtls_rewrite"


def dtls13_possible() -> bool:
    """This OpenSSL speaks DTLS 1.3 (4.1 and later: cryptography 51) and cryptography's
    bindings have the two calls pyOpenSSL lacks (groups and signature algorithms)."""
    return (
        openssl.OpenSSL_version_num() >= 0x40100000
        and hasattr(openssl, "SSL_CTX_set1_curves_list")
        and hasattr(openssl, "SSL_CTX_set1_sigalgs_list")
    )


def shape_context(ctx: SSL.Context) -> None:
    """Make an aiortc DTLS context (tickets off, its certificate, use_srtp) Chromium's."""
    ctx.set_min_proto_version(DTLS_1_2)
    ctx.set_max_proto_version(DTLS_1_3)
    ctx.set_options(NO_ENCRYPT_THEN_MAC)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.set_tls13_ciphersuites(TLS13_SUITES)
    if openssl.SSL_CTX_set1_sigalgs_list(ctx._context, SIGNATURE_ALGORITHMS) != 1:
        raise SSL.Error("OpenSSL refused Chromium's signature algorithms")
    # cryptography has no SSL_CTX_set1_groups_list: set1_curves_list is the same control
    # (SSL_CTRL_SET_GROUPS_LIST) and takes the '*' key-share marks.
    if openssl.SSL_CTX_set1_curves_list(ctx._context, GROUPS) != 1:
        raise SSL.Error("OpenSSL refused Chromium's groups")


def _shaped_context(original: Any) -> Any:
    def _create_ssl_context(self: Any, srtp_profiles: Any) -> SSL.Context:
        ctx: SSL.Context = original(self, srtp_profiles)
        shape_context(ctx)
        return ctx

    return _create_ssl_context


def _shaped_handshake(original: Any, shaped: bool) -> Any:
    async def _do_handshake(self: Any) -> None:
        shaper = Shaper(getattr(self, REWRITE, None))
        setattr(self, SHAPER, shaper)
        connection = self._ssl
        if shaped:
            # A memory BIO has no MTU to ask: OpenSSL would cut its flights for its
            # smallest one (256-byte fragments). Chromium's is 1,200.
            connection.set_options(SSL.OP_NO_QUERY_MTU)
            connection.set_ciphertext_mtu(MTU)
        write = connection.bio_write

        def bio_write(data: bytes) -> int:
            try:
                data = shaper.incoming(data)
            except Exception:  # never into aiortc's receive loop: OpenSSL judges the bytes
                log.debug("a DTLS datagram the shaper could not read", exc_info=True)
            return write(data) if data else 0

        connection.bio_write = bio_write  # what aiortc gives OpenSSL passes the shaper
        try:
            await original(self)
        finally:
            shaper.handshake_done()  # no hello to restore after it, whatever arrives

    return _do_handshake


async def _write_ssl(self: Any) -> None:
    """aiortc's, but whole: everything OpenSSL wrote, as datagrams of whole records."""
    data = b""
    while True:  # a memory BIO gives up to what is asked: a flight is far below 64 KiB
        try:
            chunk = self._ssl.bio_read(65536)
        except SSL.Error:  # nothing (more) to send
            break
        if not chunk:
            break
        data += chunk
        if len(chunk) < 65536:
            break
    if not data:
        return
    shaper = getattr(self, SHAPER, None) or Shaper()
    try:
        datagrams = shaper.outgoing(data)
    except Exception:  # never into SCTP's send: as OpenSSL wrote it
        log.debug("DTLS output the shaper could not read", exc_info=True)
        datagrams = [data]
    for datagram in datagrams:
        await self.transport._send(datagram)
        self._RTCDtlsTransport__tx_bytes += len(datagram)
        self._RTCDtlsTransport__tx_packets += 1


def _transport_of(pc: Any) -> Any:
    if pc.sctp is None:
        raise ValueError("the peer connection has no data channel")
    return pc.sctp.transport


def agree_rewrite(pc: Any, key: bytes | None) -> None:
    """The key under which a peer connection's DTLS is shaped as between two unwall ends
    (`dtlswire`), or None: not at all; before its handshake."""
    setattr(_transport_of(pc), REWRITE, key)


# -- applying the patches ------------------------------------------------------------------------


def check() -> None:
    """IncompatibleDependency unless aiortc has every private this module replaces or uses."""
    need = Needs("aiortc")
    need.function(aiortc_dtls, "generate_certificate", params=("key",))
    if need.attribute(aiortc_dtls, "SRTP_PROFILES"):
        profiles = aiortc_dtls.SRTP_PROFILES
        need.require(
            isinstance(profiles, list)
            and all(hasattr(profile, "openssl_profile") for profile in profiles),
            "rtcdtlstransport.SRTP_PROFILES is no longer a list of profiles with "
            "an openssl_profile",
        )
    need.function(
        aiortc_dtls.RTCCertificate, "_create_ssl_context", params=("self", "srtp_profiles")
    )
    transport = aiortc_dtls.RTCDtlsTransport
    need.function(transport, "_do_handshake", params=("self",))
    need.function(transport, "_write_ssl", params=("self",))
    need.instance_attributes(
        transport,
        "_ssl",
        "transport",
        "_RTCDtlsTransport__tx_bytes",
        "_RTCDtlsTransport__tx_packets",
    )
    need.verify()
    bindings = Needs("pyOpenSSL")
    bindings.function(SSL.Connection, "set_ciphertext_mtu")
    bindings.function(SSL.Context, "set_tls13_ciphersuites")
    bindings.verify()


_installed = False


def install() -> None:
    """Shape aiortc's DTLS as Chromium's (once; `check` first): its certificate, SRTP
    profiles, handshake (where this OpenSSL has DTLS 1.3) and datagrams."""
    global _installed
    if _installed:
        return
    check()
    aiortc_dtls.SRTP_PROFILES.sort(key=_srtp_rank)  # in place: aiortc's transports share the list
    aiortc_dtls.generate_certificate = _browser_like_certificate
    shaped = dtls13_possible()
    transport = aiortc_dtls.RTCDtlsTransport
    if shaped:
        certificate = aiortc_dtls.RTCCertificate
        certificate._create_ssl_context = _shaped_context(  # type: ignore[method-assign]
            certificate._create_ssl_context
        )
    else:
        log.warning(
            "this OpenSSL (%s) has no DTLS 1.3: WebRTC handshakes are OpenSSL's DTLS 1.2, "
            "which a censor can tell from a browser's; ./bootstrap installs the cryptography "
            "that has it",
            openssl_version(),
        )
    transport._do_handshake = _shaped_handshake(  # type: ignore[method-assign]
        transport._do_handshake, shaped
    )
    transport._write_ssl = _write_ssl  # type: ignore[method-assign]
    _installed = True


def openssl_version() -> str:
    """The OpenSSL that pyOpenSSL runs on (cryptography's), as it names itself."""
    return str(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())
