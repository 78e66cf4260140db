"""ICE for the aiortc engine, as aioice does it with unwall's patches: the host addresses
it offers, where its mDNS queries go, peers known only by mDNS names, consent freshness
that survives a queue, and connectivity checks shaped as a browser's.

Nothing changes in aioice until `install()` (called by `engine.install_patches`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, cast

import aioice.candidate
import aioice.ice
import aioice.mdns
import aioice.stun

from unwall.transport.internals import Needs
from unwall.transport.webrtc import pinned_host_addresses

log = logging.getLogger("unwall.rtc")

#: aioice's own functions that the patches below wrap (set by `install`)
_original_get_host_addresses: Any = None
_original_create_mdns_protocol: Any = None
_original_prune_components: Any = None
_original_connect: Any = None
_original_stun_request: Any = None


# -- the host addresses ICE offers -------------------------------------------------------------


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    pinned = pinned_host_addresses()
    if pinned is None:
        return cast(list[str], _original_get_host_addresses(use_ipv4, use_ipv6))
    return [
        address
        for address in pinned
        if (":" in address and use_ipv6) or (":" not in address and use_ipv4)
    ]


# -- mDNS queries leave through the pinned address -------------------------------------------
#
# aioice resolves a peer's `.local` candidates with one multicast socket per process, which
# joins the mDNS group and sends its queries on the default interface. With pinned host
# addresses that is the wrong network (and, in tests, this machine's uplink): the queries
# go out, and the group is joined, through the first pinned IPv4 address instead. With
# only IPv6 pinned, nothing is queried (aioice's mDNS is IPv4 only); the names then count
# as unresolved, as they would across the internet.


async def _create_mdns_protocol() -> aioice.mdns.MDnsProtocol:
    protocol: aioice.mdns.MDnsProtocol = await _original_create_mdns_protocol()
    pinned = pinned_host_addresses()
    if pinned is None:
        return protocol
    ipv4 = [address for address in pinned if ":" not in address]
    if not ipv4:
        protocol.transport.close()  # resolve() then answers None at once
        return protocol
    sock = protocol.transport.get_extra_info("socket")
    interface = socket.inet_aton(ipv4[0])
    group = socket.inet_aton(aioice.mdns.MDNS_ADDRESS)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + interface)
    except OSError as exc:
        log.info("mDNS stays off: cannot use %s for multicast (%s)", ipv4[0], exc)
        protocol.transport.close()
        return protocol
    # aioice joins the group lazily, on the default interface, unless already joined.
    protocol._MDnsProtocol__joined = True  # type: ignore[attr-defined]
    return protocol


# -- peers known only by mDNS names: wait for their checks -----------------------------------
#
# A browser at its default settings offers only `<uuid>.local` host candidates. Across the
# internet (or in a test namespace that drops mDNS) nobody resolves them, yet the browser
# has our candidates and sends us connectivity checks, from which ICE learns its address
# as a peer-reflexive candidate (RFC 8445 section 7.3.1.3). aioice 0.13 gives up before
# that can work, in two places:
# - after end-of-candidates it removes every component the peer gave no usable candidate
#   for (`_prune_components`). With all names unresolved that is every component, and a
#   pair nominated later can never complete the check list: "Components {1} have no
#   candidate pairs", a peer-reflexive check that succeeds, then "ICE failed" (Firefox,
#   whose SDP ends with a=end-of-candidates; Chromium's does not, so it never pruned);
# - `connect()` fails at once when its check list is empty, as it is for an answerer (the
#   headless volunteer) whose peer has not yet received the answer and so not yet checked.
# aioice has no option for either. So a component keeps its place when the peer gave no
# usable candidate at all, and `connect()` first waits up to PEER_CHECK_WAIT seconds for
# the peer's first check (aioice holds checks that arrive before `connect()` and answers
# them at once, then pairs with their source when `connect()` runs). A peer that gave a
# usable candidate is handled by aioice exactly as before. unwall signals every candidate
# in the SDP, so end-of-candidates always comes before `connect()`.

PEER_CHECK_WAIT = 10.0
_PEER_CHECK_POLL = 0.02  # aioice paces its own checks at 20 ms (RFC 8445 Ta)


def _no_usable_remote_candidate(connection: aioice.ice.Connection) -> bool:
    return not connection._remote_candidates


def _prune_components(self: aioice.ice.Connection) -> None:
    if _no_usable_remote_candidate(self):
        log.info(
            "ICE: the peer's candidates are all unusable (unresolved mDNS names?); "
            "waiting for its checks to learn its address (peer-reflexive)"
        )
        return
    _original_prune_components(self)


def _awaiting_first_check(connection: aioice.ice.Connection) -> bool:
    """Nothing to check and nothing checked yet: only the peer's checks can help now."""
    return (
        connection._remote_candidates_end
        and not connection._remote_candidates_resolving
        and _no_usable_remote_candidate(connection)
        and not connection._early_checks
        and not connection._closing
    )


async def _connect(self: aioice.ice.Connection) -> None:
    # Polled like aioice's own check pacing; a check wakes nothing we could wait on.
    for _ in range(round(PEER_CHECK_WAIT / _PEER_CHECK_POLL)):
        if not _awaiting_first_check(self):
            break
        await asyncio.sleep(_PEER_CHECK_POLL)
    if self._early_checks and _no_usable_remote_candidate(self):
        host, port = self._early_checks[0][1]
        log.info("ICE: the peer checked in from %s:%s (peer-reflexive)", host, port)
    await _original_connect(self)


# -- consent freshness that survives a queue --------------------------------------------------
#
# aioice checks consent (RFC 7675) every 5 s with a single STUN request that waits 0.5 s
# and is never retransmitted; six failures in a row close the connection. A path with a
# 200 ms round trip and a full bottleneck queue answers later than that, and a lossy one
# loses some checks, so a busy, healthy connection was closed after 30 s. RFC 7675 lets
# consent last 30 s without an answer; here each check is retransmitted (0.5, 1, 2 s
# waits) before it counts as failed. The check is the only caller of aioice's requests
# that asks for no retransmission.

CONSENT_RETRANSMISSIONS = 2


async def _stun_request(
    self: aioice.ice.StunProtocol,
    request: Any,
    addr: tuple[str, int],
    integrity_key: bytes | None = None,
    retransmissions: int | None = None,
) -> Any:
    if retransmissions == 0:
        retransmissions = CONSENT_RETRANSMISSIONS
    return await _original_stun_request(self, request, addr, integrity_key, retransmissions)


# -- connectivity checks, on the wire as a browser's -------------------------------------------
#
# The box fingerprints every WebRTC flow (see unwall.lab.analyzers: dtls, stun). Of what it
# sees, ICE connectivity checks are ours to shape with aioice, and are shaped here as
# Debian's Chromium 156 sends them (captured in tests/unit/lab/fixtures/chromium-*.json;
# the DTLS certificate and the SRTP profiles are shaped in `dtls`):
# - ICE connectivity checks: USERNAME, GOOG-NETWORK-INFO, the ICE role, USE-CANDIDATE when
#   nominating, PRIORITY (then MESSAGE-INTEGRITY and FINGERPRINT, as aioice adds them).
#   aioice sends PRIORITY second and no GOOG-NETWORK-INFO. The PRIORITY's local preference
#   is Chromium's (30 for IPv4) where aioice's is 65535. (Candidates' priorities in the SDP
#   travel to the broker inside TLS and are left as aioice makes them.)
# - USE-CANDIDATE stays on every check of the pair a controlling agent nominated (its
#   consent checks), as Chromium keeps it on the pings of its selected pair; aioice drops
#   it there. It matters when the nominating check reached the peer from another address
#   than the checks after it: a NAT gave that first packet another port, as Linux's does
#   when the peer's packet opens the same mapping at the same moment (seen in the lab's
#   full-cone NATs under load). The peer then had nothing nominated but a pair it could
#   not confirm, and waited until the client gave up; now it nominates the right pair at
#   the next consent check (within about 5 s).

GOOG_NETWORK_INFO = 0xC057
#: GOOG-NETWORK-INFO's value: network id (16 bits) and network cost (16 bits). Chromium in a
#: lab namespace (a veth: adapter type unknown) sends id 0 and cost 999; we send the same.
NETWORK_INFO = (0 << 16) | 999


def _local_preference(address: str) -> int:
    """Chromium's local preference for a candidate on a network of preference 0: the
    address's precedence (RFC 6724-like): 30 for IPv4, 40 for global IPv6, 60 loopback."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # an mDNS name: Chromium's own are IPv4 behind them, mostly
        return 30
    if ip.version == 4:
        return 30
    return 60 if ip.is_loopback else 40


def _browser_like_request(self: aioice.ice.Connection, pair: Any, nominate: bool) -> Any:
    request = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    request.attributes["USERNAME"] = f"{self.remote_username}:{self.local_username}"
    request.attributes["GOOG-NETWORK-INFO"] = NETWORK_INFO
    if self.ice_controlling:
        request.attributes["ICE-CONTROLLING"] = self._tie_breaker
        if nominate or pair.nominated:
            request.attributes["USE-CANDIDATE"] = None
    else:
        request.attributes["ICE-CONTROLLED"] = self._tie_breaker
    request.attributes["PRIORITY"] = aioice.candidate.candidate_priority(
        pair.component, "prflx", local_pref=_local_preference(pair.local_candidate.host)
    )
    return request


def _register_stun_attribute(attr_type: int, name: str) -> None:
    entry = (attr_type, name, aioice.stun.pack_unsigned, aioice.stun.unpack_unsigned)
    aioice.stun.ATTRIBUTES_BY_TYPE[attr_type] = entry
    aioice.stun.ATTRIBUTES_BY_NAME[name] = entry


# -- applying the patches ------------------------------------------------------------------------


def check() -> None:
    """IncompatibleDependency unless aioice has every private this module replaces or calls."""
    need = Needs("aioice")
    ice, mdns, stun = aioice.ice, aioice.mdns, aioice.stun
    # host addresses
    need.function(ice, "get_host_addresses", params=("use_ipv4", "use_ipv6"))
    # mDNS
    need.function(mdns, "create_mdns_protocol", params=())
    need.attribute(mdns, "MDNS_ADDRESS")
    if need.attribute(mdns, "MDnsProtocol"):
        need.instance_attributes(mdns.MDnsProtocol, "_MDnsProtocol__joined", "transport")
    # peer-reflexive waits, consent, connectivity checks
    if need.attribute(ice, "Connection", "StunProtocol"):
        connection = ice.Connection
        need.function(connection, "_prune_components", params=("self",))
        need.function(connection, "connect", params=("self",))
        need.function(connection, "build_request", params=("self", "pair", "nominate"))
        need.instance_attributes(
            connection,
            "_remote_candidates",
            "_remote_candidates_end",
            "_remote_candidates_resolving",
            "_early_checks",
            "_closing",
            "_tie_breaker",
            "remote_username",
            "local_username",
            "ice_controlling",
        )
        need.function(
            ice.StunProtocol,
            "request",
            params=("self", "request", "addr", "integrity_key", "retransmissions"),
        )
    if need.attribute(ice, "CandidatePair"):
        need.instance_attributes(ice.CandidatePair, "component", "local_candidate", "nominated")
    need.function(aioice.candidate, "candidate_priority", takes=("local_pref",))
    need.function(stun, "Message", takes=("message_method", "message_class"))
    if need.attribute(stun, "Method", "Class"):
        need.attribute(stun.Method, "BINDING")
        need.attribute(stun.Class, "REQUEST")
    need.attribute(stun, "ATTRIBUTES_BY_TYPE", "ATTRIBUTES_BY_NAME")
    need.function(stun, "pack_unsigned")
    need.function(stun, "unpack_unsigned")
    need.verify()


_installed = False


def install() -> None:
    """Patch aioice as this module says (once; `check` first)."""
    global _installed, _original_get_host_addresses, _original_create_mdns_protocol
    global _original_prune_components, _original_connect, _original_stun_request
    if _installed:
        return
    check()
    # aioice has no per-connection setting for its host addresses: `webrtc.set_host_addresses`
    # chooses them process-wide, and this reads that choice.
    _original_get_host_addresses = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = _get_host_addresses

    _original_create_mdns_protocol = aioice.mdns.create_mdns_protocol
    aioice.mdns.create_mdns_protocol = _create_mdns_protocol

    _original_prune_components = aioice.ice.Connection._prune_components
    _original_connect = aioice.ice.Connection.connect
    aioice.ice.Connection._prune_components = _prune_components  # type: ignore[method-assign]
    aioice.ice.Connection.connect = _connect  # type: ignore[method-assign]

    _original_stun_request = aioice.ice.StunProtocol.request
    aioice.ice.StunProtocol.request = _stun_request  # type: ignore[method-assign]

    _register_stun_attribute(GOOG_NETWORK_INFO, "GOOG-NETWORK-INFO")
    aioice.ice.Connection.build_request = _browser_like_request  # type: ignore[method-assign]
    _installed = True
