"""Which of this machine's addresses an unwall peer shows in its SDP (both engines).

A host candidate names an interface's address. A private one (RFC 1918, CGNAT 100.64/10,
link-local, IPv6 ULA, loopback) tells the broker and every peer which network the user sits
on and is of no use across the internet: browsers hide theirs behind `<uuid>.local` mDNS
names, and Snowflake strips them. unwall's rule, for the aiortc engine (`unwall.transport.
aiortc_engine`) and the Chromium engine (`unwall.transport.chromium`) alike:

- Addresses pinned with `--host-address` (`webrtc.set_host_addresses`) were asked for by
  name, and are offered as they are (127.0.0.1 in the demo and the tests, the namespace's
  TEST-NET address in the lab). With pins, no other host address is offered.
- Otherwise a host candidate with a private address is left out of the SDP, unless
  `UNWALL_PRIVATE_HOST_CANDIDATES=1` (or `allow_private(True)`) asks for it (two peers
  on one LAN with no STUN server, say). Public addresses and mDNS names stay.
- A server-reflexive candidate's related address (`raddr`: the host address behind it) is
  shown as `0.0.0.0` (`::`), port 0, when it is private and was not asked for, as Chromium
  does when it hides its addresses.

Only what is shown changes: ICE still gathers on every interface (a server-reflexive
candidate is found through the private address's socket) and checks from it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

#: Addresses that are not offered unless asked for.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "169.254.0.0/16",  # link-local
        "127.0.0.0/8",
        "fc00::/7",  # unique local (ULA)
        "fe80::/10",  # link-local
        "::1/128",
    )
)

#: UNWALL_PRIVATE_HOST_CANDIDATES=1 offers private host addresses too (the default: not).
_allow_private = os.environ.get("UNWALL_PRIVATE_HOST_CANDIDATES") == "1"


def allow_private(allowed: bool) -> None:
    """Offer private host addresses too (process-wide; the environment sets the default)."""
    global _allow_private
    _allow_private = allowed


def private_allowed() -> bool:
    return _allow_private


def is_private(address: str) -> bool:
    """True for an address in PRIVATE_NETWORKS; False for anything else (a public address,
    an mDNS name)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in PRIVATE_NETWORKS)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _pinned(address: str, pinned: Sequence[str]) -> bool:
    ip = _ip(address)
    return ip is not None and ip in {_ip(each) for each in pinned}


def offered(address: str, pinned: Sequence[str] | None) -> bool:
    """Whether a host candidate on `address` may be shown, with these pinned addresses."""
    if _ip(address) is None:
        return True  # an mDNS name: that is the hiding
    if pinned is not None:
        return _pinned(address, pinned)
    return _allow_private or not is_private(address)


def related_shown(address: str, pinned: Sequence[str] | None) -> bool:
    """Whether a reflexive or relay candidate may show `address` as its related address:
    unless it is private and was not asked for (a relay's is its public mapped address)."""
    if _allow_private or not is_private(address):
        return True
    return pinned is not None and _pinned(address, pinned)


def hidden_related(address: str) -> str:
    return "::" if ":" in address else "0.0.0.0"


def filter_candidate_line(line: str, pinned: Sequence[str] | None) -> str | None:
    """One `a=candidate:` line (or its value) as it may be shown: None to leave it out,
    else the line, with a related address that is not offered hidden."""
    parts = line.split()
    if len(parts) < 8 or parts[6] != "typ":
        return line
    if parts[7] == "host":
        return line if offered(parts[4], pinned) else None
    if "raddr" in parts:
        index = parts.index("raddr")
        if index + 1 < len(parts) and not related_shown(parts[index + 1], pinned):
            parts[index + 1] = hidden_related(parts[index + 1])
            if index + 3 < len(parts) and parts[index + 2] == "rport":
                parts[index + 3] = "0"
            return " ".join(parts)
    return line


def filter_sdp(sdp: str, pinned: Sequence[str] | None) -> str:
    """The SDP with its candidate lines filtered by `filter_candidate_line`."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    kept: list[str] = []
    for line in sdp.split(newline):
        if line.startswith("a=candidate:"):
            filtered = filter_candidate_line(line, pinned)
            if filtered is None:
                continue
            line = filtered
        kept.append(line)
    return newline.join(kept)
