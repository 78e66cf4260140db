"""TURN for the aiortc engine: aioice's relay candidates, kept from the one send that would
make coturn drop the whole allocation.

Nothing changes in aioice until `install()` (called by `engine.install_patches`).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import aioice.candidate
import aioice.ice

from unwall.transport.internals import Needs

log = logging.getLogger("unwall.rtc")


# -- TURN: never relay to a peer's private host address --------------------------------------
#
# aioice pairs our relay candidate with every remote candidate, the peer's host candidates
# too. A peer behind a NAT offers its private address as its host candidate; relaying a
# check there makes the TURN server send to an address it has no route to. coturn (4.6)
# treats the failed send on the relay socket (ENETUNREACH, or an ICMP error reported on the
# next send, or EPERM from a firewall) as fatal and deletes the whole allocation, silently:
# its next request from us finds a fresh session without a nonce (438 "Wrong nonce"), and
# the retry with that nonce a session without an allocation (400). Every later relayed
# check, to the peer's server-reflexive or relay candidate, fails the same way, so ICE
# fails although the relay was gathered and all but one of its pairs would have worked.
# (Browsers offer `.local` names as host candidates, which aioice never relays to, so with
# them the allocation survives.)
# So a relay pair to a remote host candidate is dropped before it is checked when the
# peer's own candidates show that host is behind a NAT: the peer has public addresses, the
# server-reflexive candidates' addresses and its relay candidates' related (mapped)
# addresses, of the same family, and the host's address is not one of them. A peer without
# a NAT (host == server-reflexive address), or one that shows no public address at all, is
# paired exactly as aioice does; host-to-anything pairs are never touched.

#: aioice's own, which the patch wraps, and the states of a pair not yet checked (set by
#: `install`)
_original_pair_remote_candidate: Any = None
_UNCHECKED: tuple[Any, ...] = ()


def _ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address or "")
    except ValueError:
        return None


def _peer_public_addresses(
    connection: aioice.ice.Connection,
) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the peer's NAT (if any) maps it to, as its candidates tell."""
    public = set()
    for candidate in connection._remote_candidates:
        if candidate.type == "srflx":
            address = _ip(candidate._network_host)
        elif candidate.type == "relay":
            address = _ip(candidate.related_address)
        else:
            continue
        if address is not None and not address.is_unspecified:  # relay-only hides it
            public.add(address)
    return public


def _relay_cannot_reach(
    pair: aioice.ice.CandidatePair,
    public: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> bool:
    if pair.local_candidate.type != "relay" or pair.remote_candidate.type != "host":
        return False
    host = _ip(pair.remote_candidate._network_host)
    if host is None:
        return False
    same_family = {address for address in public if address.version == host.version}
    return bool(same_family) and host not in same_family


def _pair_remote_candidate(self: aioice.ice.Connection, remote_candidate: Any) -> None:
    _original_pair_remote_candidate(self, remote_candidate)
    # All of the peer's candidates are known by now (unwall signals them in the SDP); the
    # pairs are re-made in connect(), so a host candidate signalled before the candidate
    # revealing the NAT is dropped then, before any check starts.
    public = _peer_public_addresses(self)
    for pair in list(self._check_list):
        if pair.state in _UNCHECKED and pair.task is None and _relay_cannot_reach(pair, public):
            log.debug(
                "ICE: not relaying to %s:%s, the peer's private host candidate (it is "
                "behind a NAT, public as %s): the TURN server cannot reach it, and coturn "
                "drops the whole allocation when a send fails",
                pair.remote_candidate.host,
                pair.remote_candidate.port,
                ", ".join(sorted(map(str, public))),
            )
            self._check_list.remove(pair)


# -- applying the patch --------------------------------------------------------------------------


def check() -> None:
    """IncompatibleDependency unless aioice has every private this module replaces or uses."""
    need = Needs("aioice")
    if need.attribute(aioice.ice, "Connection"):
        connection = aioice.ice.Connection
        need.function(connection, "_pair_remote_candidate", params=("self", "remote_candidate"))
        need.instance_attributes(connection, "_check_list", "_remote_candidates")
    if need.attribute(aioice.ice, "CandidatePair"):
        pair = aioice.ice.CandidatePair
        if need.attribute(pair, "State"):
            need.attribute(pair.State, "FROZEN", "WAITING")
        need.instance_attributes(pair, "state", "task", "local_candidate", "remote_candidate")
    if need.attribute(aioice.candidate, "Candidate"):
        need.instance_attributes(
            aioice.candidate.Candidate, "type", "host", "port", "related_address", "_network_host"
        )
    need.verify()


_installed = False


def install() -> None:
    """Patch aioice's pairing as this module says (once; `check` first)."""
    global _installed, _original_pair_remote_candidate, _UNCHECKED
    if _installed:
        return
    check()
    _UNCHECKED = (aioice.ice.CandidatePair.State.FROZEN, aioice.ice.CandidatePair.State.WAITING)
    _original_pair_remote_candidate = aioice.ice.Connection._pair_remote_candidate
    aioice.ice.Connection._pair_remote_candidate = _pair_remote_candidate  # type: ignore[method-assign]
    _installed = True
