"""What the aiortc engine's SDP shows of its candidates (`unwall.transport.hostcandidates`
decides which), and the line by which two unwall ends agree to shape DTLS between them.

Nothing changes in aiortc until `install()` (called by `engine.install_patches`).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import secrets
from typing import Any

import aiortc.rtcpeerconnection as aiortc_pc
import aiortc.sdp
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceCandidate
from aiortc.sdp import MediaDescription

from unwall.transport import hostcandidates
from unwall.transport.aiortc_engine.dtlswire import KEY_SIZE
from unwall.transport.internals import Needs
from unwall.transport.webrtc import pinned_host_addresses

# -- what the SDP shows: no private host address unless asked for ---------------------------
#
# aiortc writes every local candidate into the SDP, and the first one's address into its
# `c=` line. The candidates shown are filtered by `hostcandidates` (pinned addresses as
# they are; otherwise no private host address, and a reflexive candidate's private related
# address hidden); ICE itself keeps them all (a reflexive candidate is found through the
# private address's socket, and checks still leave from it).

#: aiortc's own, which the patch wraps (set by `install`)
_original_add_transport_description: Any = None


def _shown_candidates(candidates: list[RTCIceCandidate]) -> list[RTCIceCandidate]:
    pinned = pinned_host_addresses()
    shown: list[RTCIceCandidate] = []
    for candidate in candidates:
        if candidate.type == "host":
            if hostcandidates.offered(candidate.ip, pinned):
                shown.append(candidate)
        elif candidate.relatedAddress and not hostcandidates.related_shown(
            candidate.relatedAddress, pinned
        ):
            shown.append(
                dataclasses.replace(
                    candidate,
                    relatedAddress=hostcandidates.hidden_related(candidate.relatedAddress),
                    relatedPort=0,
                )
            )
        else:
            shown.append(candidate)
    return shown


def _add_transport_description(media: MediaDescription, dtlsTransport: RTCDtlsTransport) -> None:
    _original_add_transport_description(media, dtlsTransport)
    media.ice_candidates = _shown_candidates(media.ice_candidates)
    if media.ice_candidates:
        media.host = media.ice_candidates[0].ip
        media.port = media.ice_candidates[0].port
    else:
        media.host = aiortc_pc.DISCARD_HOST
        media.port = aiortc_pc.DISCARD_PORT


# -- two unwall ends: DTLS shaped between them (dtlswire) ---------------------------------------
#
# An aiortc end that offers writes this session-level attribute into its offer, with a key
# of its own: it restores what `dtlswire` rewrites (ClientHello extension order, ServerHello
# layout) and draws the extension order under that key. An aiortc end that answers echoes
# the line, key and all; where both SDPs carry it, both ends rewrite. A browser has never
# heard of it, ignores it and writes none, and then nothing is rewritten (protocol.md §2).
# The SDP travels over the broker's channel, never where the box reads.

DTLS_REWRITE = "a=x-unwall-dtls:rewrite"
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{22}")


def new_rewrite_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def with_dtls_rewrite(sdp: str, key: bytes) -> str:
    """The SDP with `DTLS_REWRITE` and the key among its session attributes (before the
    first m=)."""
    at = sdp.find("\r\nm=")
    if at < 0:
        return sdp
    text = base64.urlsafe_b64encode(key).rstrip(b"=").decode()
    return f"{sdp[:at]}\r\n{DTLS_REWRITE} {text}{sdp[at:]}"


def dtls_rewrite_key(sdp: str) -> bytes | None:
    """The key of an SDP's `DTLS_REWRITE` line (at the session level), or None (no line, or
    not a key of the right size: nothing is rewritten then)."""
    at = sdp.find("\nm=")
    session = sdp if at < 0 else sdp[:at]
    for line in session.splitlines():
        name, _, value = line.strip().partition(" ")
        if name == DTLS_REWRITE and _KEY_TEXT.fullmatch(value):
            return base64.urlsafe_b64decode(value + "==")
    return None


# -- applying the patch --------------------------------------------------------------------------


def check() -> None:
    """IncompatibleDependency unless aiortc has every private this module replaces or uses."""
    need = Needs("aiortc")
    need.function(aiortc_pc, "add_transport_description", params=("media", "dtlsTransport"))
    need.attribute(aiortc_pc, "DISCARD_HOST", "DISCARD_PORT")
    if need.attribute(aiortc.sdp, "MediaDescription"):
        need.instance_attributes(aiortc.sdp.MediaDescription, "ice_candidates", "host", "port")
    fields = {field.name for field in dataclasses.fields(RTCIceCandidate)}
    for name in ("type", "ip", "port", "relatedAddress", "relatedPort"):
        need.require(name in fields, f"RTCIceCandidate has no field {name}")
    need.verify()


_installed = False


def install() -> None:
    """Filter the candidates aiortc writes into an SDP (once; `check` first)."""
    global _installed, _original_add_transport_description
    if _installed:
        return
    check()
    _original_add_transport_description = aiortc_pc.add_transport_description
    aiortc_pc.add_transport_description = _add_transport_description
    _installed = True
