"""The one place that configures aiortc/aioice for unwall.

Two rules hold everywhere:
- ICE servers are always explicit. aiortc falls back to a public STUN server when given
  none (`iceServers=None`); unwall passes a list, empty by default, so nothing outside the
  operator's configuration is ever contacted.
- The host addresses ICE offers can be pinned (`set_host_addresses`). aioice skips
  loopback when it gathers host candidates, and would otherwise offer this machine's
  external interface; the demo and the tests keep all traffic on 127.0.0.1 this way, and
  the lab uses it to name a namespace's address. Pinned addresses also carry the mDNS
  queries that resolve a browser's `<uuid>.local` candidates.

A peer whose candidates are all mDNS names we cannot resolve (every browser at its default
settings, seen from across the internet) is still reached: we wait for its connectivity
checks and answer from the peer-reflexive candidates they reveal (see the end of this file).
Our relay never sends to a peer's private host address either: coturn deletes the whole
allocation when a relayed send fails (see "TURN: never relay ...").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

import aioice.ice
import aioice.mdns
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcsctptransport import RTCSctpTransport

from unwall.wire.broker import TurnServer

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


def pinned_host_addresses() -> list[str] | None:
    """The addresses given to `set_host_addresses`, or None if aioice chooses."""
    return list(_pinned_addresses) if _pinned_addresses is not None else None


IceServer = str | TurnServer


def is_turn_url(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


def ice_servers_with_credentials(
    urls: Sequence[str], username: str | None = None, password: str | None = None
) -> list[IceServer]:
    """The ICE servers of `--ice-server` URLs, the `turn:` ones given `--turn-user` and
    `--turn-password` (one pair of credentials for all of them, as a browser's RTCIceServer
    has). ValueError when credentials come without a TURN URL or one without the other."""
    if (username is None) != (password is None):
        raise ValueError("--turn-user and --turn-password go together")
    turn = [url for url in urls if is_turn_url(url)]
    if username is None or password is None:
        return list(urls)
    if not turn:
        raise ValueError("--turn-user needs a TURN server: --ice-server turn:HOST:PORT")
    servers: list[IceServer] = [url for url in urls if not is_turn_url(url)]
    servers.append(TurnServer(tuple(turn), username, password))
    return servers


def has_turn(ice_servers: Sequence[IceServer]) -> bool:
    """Whether any of these is a TURN server (a relay the ICE agent will gather)."""
    return any(isinstance(s, TurnServer) or is_turn_url(s) for s in ice_servers)


def has_tcp_turn(ice_servers: Sequence[IceServer]) -> bool:
    """Whether a TURN server is reached over TCP or TLS (the way out where UDP is blocked)."""
    urls = describe_ice_servers(ice_servers)
    return any(
        url.startswith("turns:") or (is_turn_url(url) and "transport=tcp" in url) for url in urls
    )


def describe_ice_servers(ice_servers: Sequence[IceServer]) -> list[str]:
    """The URLs, for a log line: credentials are never shown."""
    return [url for s in ice_servers for url in ((s,) if isinstance(s, str) else s.urls)]


def rtc_configuration(
    ice_servers: Sequence[IceServer] = (), relay_only: bool = False
) -> RTCConfiguration:
    """A configuration with exactly these ICE servers: URLs (`stun:host:port`, `turn:...`)
    and TURN servers with credentials. aiortc uses only the first STUN and the first TURN
    server it is given, so the order matters. ``relay_only`` offers relay candidates only."""
    servers = [
        RTCIceServer(urls=s)
        if isinstance(s, str)
        else RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in ice_servers
    ]
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def new_peer_connection(
    ice_servers: Sequence[IceServer] = (), relay_only: bool = False
) -> RTCPeerConnection:
    return RTCPeerConnection(configuration=rtc_configuration(ice_servers, relay_only))


def remote_max_message_size(pc: RTCPeerConnection) -> int | None:
    """The peer's SDP max-message-size once SCTP is negotiated (None if unknown)."""
    sctp = pc.sctp
    if sctp is None:
        return None
    size = getattr(sctp, "_remote_max_message_size", None)
    return int(size) if size else None


_SETUP_FOR_ROLE = {"auto": "actpass", "client": "active", "server": "passive"}


def with_dtls_role(offer_sdp: str, role: str) -> str:
    """The offer with its DTLS setup attribute set for `role` (RFC 8842): "client" offers
    `active`, "server" offers `passive`; aiortc follows whatever the answer then says."""
    if role not in _SETUP_FOR_ROLE:
        raise ValueError(f"DTLS role must be one of {', '.join(_SETUP_FOR_ROLE)}, not {role!r}")
    return offer_sdp.replace("a=setup:actpass", f"a=setup:{_SETUP_FOR_ROLE[role]}")


def answer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="answer")


def offer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="offer")


# -- SCTP: delayed acknowledgements ----------------------------------------------------------
#
# aiortc acknowledges every SCTP packet it receives with a SACK of its own. RFC 4960
# (section 6.2) asks for a SACK for at least every second packet, or within 200 ms. With
# 1.2 KB packets carrying 16 KB QUIC datagrams, per-packet SACKs are about a fifth of the
# receiver's CPU and most of the sender's receive work. We acknowledge every second packet
# (at once whenever there is a gap or a duplicate, so loss recovery is not delayed) and
# flush a lone pending SACK after SACK_DELAY.

SACK_DELAY = 0.01
SACK_EVERY = 2

_original_send_sack = RTCSctpTransport._send_sack


async def _delayed_send_sack(self: Any) -> None:
    pending = getattr(self, "_unwall_sack_pending", 0) + 1
    if pending < SACK_EVERY and not self._sack_misordered and not self._sack_duplicates:
        self._unwall_sack_pending = pending
        if getattr(self, "_unwall_sack_timer", None) is None:
            loop = asyncio.get_running_loop()
            self._unwall_sack_timer = loop.call_later(SACK_DELAY, _flush_sack, self)
        return
    await _flush_sack_now(self)


async def _flush_sack_now(self: Any) -> None:
    self._unwall_sack_pending = 0
    timer = getattr(self, "_unwall_sack_timer", None)
    if timer is not None:
        timer.cancel()
        self._unwall_sack_timer = None
    await _original_send_sack(self)


def _flush_sack(self: Any) -> None:
    self._unwall_sack_timer = None
    if self._sack_needed and self._association_state == RTCSctpTransport.State.ESTABLISHED:
        task = asyncio.ensure_future(_flush_sack_now(self))
        _sack_tasks.add(task)
        task.add_done_callback(_sack_tasks.discard)


_sack_tasks: set[asyncio.Future[None]] = set()

if os.environ.get("UNWALL_SCTP_SACK_EVERY_PACKET") != "1":
    RTCSctpTransport._send_sack = _delayed_send_sack  # type: ignore[method-assign]


# -- mDNS queries leave through the pinned address -------------------------------------------
#
# aioice resolves a peer's `.local` candidates with one multicast socket per process, which
# joins the mDNS group and sends its queries on the default interface. With pinned host
# addresses that is the wrong network (and, in tests, this machine's uplink): the queries
# go out, and the group is joined, through the first pinned IPv4 address instead. With
# only IPv6 pinned, nothing is queried (aioice's mDNS is IPv4 only); the names then count
# as unresolved, as they would across the internet.

_original_create_mdns_protocol = aioice.mdns.create_mdns_protocol


async def _create_mdns_protocol() -> aioice.mdns.MDnsProtocol:
    protocol = await _original_create_mdns_protocol()
    if _pinned_addresses is None:
        return protocol
    ipv4 = [address for address in _pinned_addresses if ":" not in address]
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


aioice.mdns.create_mdns_protocol = _create_mdns_protocol


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

_original_prune_components = aioice.ice.Connection._prune_components
_original_connect = aioice.ice.Connection.connect


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


aioice.ice.Connection._prune_components = _prune_components  # type: ignore[method-assign]
aioice.ice.Connection.connect = _connect  # type: ignore[method-assign]


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

_original_pair_remote_candidate = aioice.ice.Connection._pair_remote_candidate
_UNCHECKED = (aioice.ice.CandidatePair.State.FROZEN, aioice.ice.CandidatePair.State.WAITING)


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


aioice.ice.Connection._pair_remote_candidate = _pair_remote_candidate  # type: ignore[method-assign]
