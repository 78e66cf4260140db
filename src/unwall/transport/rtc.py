"""The one place that configures aiortc/aioice for unwall.

Two rules hold everywhere:
- ICE servers are always explicit. aiortc falls back to a public STUN server when given
  none (`iceServers=None`); unwall passes a list, empty by default, so nothing outside the
  operator's configuration is ever contacted.
- The host addresses ICE offers can be pinned (`set_host_addresses`). aioice skips
  loopback when it gathers host candidates, and would otherwise offer this machine's
  external interface; the demo and the tests keep all traffic on 127.0.0.1 this way, and
  the lab uses it to name a namespace's address.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

log = logging.getLogger("unwall.rtc")

DATA_CHANNEL_LABEL = "unwall"

_original_get_host_addresses = aioice.ice.get_host_addresses
_pinned_addresses: list[str] | None = None


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _pinned_addresses is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [
        address
        for address in _pinned_addresses
        if (":" in address and use_ipv6) or (":" not in address and use_ipv4)
    ]


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Offer only these addresses as ICE host candidates (None: aioice's own choice).

    This replaces `aioice.ice.get_host_addresses` process-wide: aioice has no per-connection
    setting for it, and every peer connection in one unwall process wants the same answer.
    """
    global _pinned_addresses
    _pinned_addresses = list(addresses) if addresses is not None else None
    aioice.ice.get_host_addresses = _get_host_addresses


def rtc_configuration(ice_servers: Sequence[str] = ()) -> RTCConfiguration:
    """A configuration with exactly these ICE servers (`stun:host:port`, `turn:...`)."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


def new_peer_connection(ice_servers: Sequence[str] = ()) -> RTCPeerConnection:
    return RTCPeerConnection(configuration=rtc_configuration(ice_servers))


def remote_max_message_size(pc: RTCPeerConnection) -> int | None:
    """The peer's SDP max-message-size once SCTP is negotiated (None if unknown)."""
    sctp = pc.sctp
    if sctp is None:
        return None
    size = getattr(sctp, "_remote_max_message_size", None)
    return int(size) if size else None


def answer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="answer")


def offer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="offer")
