"""DTLS for the aiortc engine: its certificate and the SRTP profiles it offers, as a
browser's.

Nothing changes in aiortc until `install()` (called by `engine.install_patches`).
"""

from __future__ import annotations

from typing import Any

import aiortc.rtcdtlstransport as aiortc_dtls

from unwall.transport.internals import Needs

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
# The DTLS handshake itself is OpenSSL's and cannot be made Chromium's: Chromium offers
# DTLS 1.3 (supported_versions, key_share with X25519MLKEM768, TLS 1.3 suites), and the
# OpenSSL that aiortc runs on (cryptography's) has no DTLS 1.3; extension order and the
# ServerHello's layout are fixed inside OpenSSL. See docs/fingerprints.md.


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
    need.verify()


_installed = False


def install() -> None:
    """Shape aiortc's certificate and SRTP profiles as Chromium's (once; `check` first)."""
    global _installed
    if _installed:
        return
    check()
    aiortc_dtls.SRTP_PROFILES.sort(key=_srtp_rank)  # in place: aiortc's transports share the list
    aiortc_dtls.generate_certificate = _browser_like_certificate
    _installed = True
