"""The aiortc engine behind `unwall.transport.webrtc`: the one place that configures
aiortc/aioice for unwall (`AiortcEngine` and `AiortcPeer` at the end of this file).

Two rules hold everywhere:
- ICE servers are always explicit. aiortc falls back to a public STUN server when given
  none (`iceServers=None`); unwall passes a list, empty by default, so nothing outside the
  operator's configuration is ever contacted.
- The host addresses ICE offers can be pinned (`set_host_addresses`). aioice skips
  loopback when it gathers host candidates, and would otherwise offer this machine's
  external interface; the demo and the tests keep all traffic on 127.0.0.1 this way, and
  the lab uses it to name a namespace's address. Pinned addresses also carry the mDNS
  queries that resolve a browser's `<uuid>.local` candidates.
- Without pins, private host addresses (RFC 1918, CGNAT, link-local, ULA) are left out of
  the SDP unless asked for (`unwall.transport.hostcandidates`), as browsers and Snowflake
  do: they would tell the broker and every peer which network the user is on.

A peer whose candidates are all mDNS names we cannot resolve (every browser at its default
settings, seen from across the internet) is still reached: we wait for its connectivity
checks and answer from the peer-reflexive candidates they reveal (see the end of this file).
Our relay never sends to a peer's private host address either: coturn deletes the whole
allocation when a relayed send fails (see "TURN: never relay ...").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import aioice.candidate
import aioice.ice
import aioice.mdns
import aioice.stun
import aiortc.rtcdtlstransport as aiortc_dtls
import aiortc.rtcpeerconnection as aiortc_pc
import aiortc.rtcsctptransport as aiortc_sctp
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceCandidate
from aiortc.rtcsctptransport import RTCSctpTransport
from aiortc.sdp import MediaDescription
from aiortc.utils import uint16_add, uint16_gt

from unwall.transport import hostcandidates
from unwall.transport.webrtc import (
    DATA_CHANNEL_LABEL,
    DEFAULT_MAX_BUFFERED,
    RELIABLE,
    Engine,
    IceServer,
    Peer,
    check_carrier,
    pinned_host_addresses,
)

log = logging.getLogger("unwall.rtc")


_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    pinned = pinned_host_addresses()
    if pinned is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [
        address
        for address in pinned
        if (":" in address and use_ipv6) or (":" not in address and use_ipv4)
    ]


# aioice has no per-connection setting for its host addresses: `webrtc.set_host_addresses`
# chooses them process-wide, and this reads that choice.
aioice.ice.get_host_addresses = _get_host_addresses


# -- what the SDP shows: no private host address unless asked for ---------------------------
#
# aiortc writes every local candidate into the SDP, and the first one's address into its
# `c=` line. The candidates shown are filtered by `hostcandidates` (pinned addresses as
# they are; otherwise no private host address, and a reflexive candidate's private related
# address hidden); ICE itself keeps them all (a reflexive candidate is found through the
# private address's socket, and checks still leave from it).

_original_add_transport_description = aiortc_pc.add_transport_description


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


aiortc_pc.add_transport_description = _add_transport_description


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


def answer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="answer")


def offer_description(sdp: str) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=sdp, type="offer")


# -- SCTP: acknowledgements that cost little --------------------------------------------------
#
# aiortc acknowledges every SCTP packet it receives with a SACK of its own, and while any
# TSN is missing it sorts and filters every TSN received beyond the hole, on every packet
# and again for every SACK. On a lossy path with unreliable chunks a hole lasts until the
# sender's FORWARD TSN arrives (a round trip), so that is hundreds of TSNs per packet: on a
# 5 %-loss, 200 ms path this was most of the client's CPU and capped it near 0.3 MB/s.
# Here the receiver keeps the TSNs received beyond its cumulative TSN as sorted ranges as
# well as aiortc's set: a packet that arrives in order extends a range or the cumulative
# TSN in constant time, and a SACK's gap blocks are the ranges (at most SACK_MAX_GAPS of
# them, the lowest first, so a SACK stays one packet).
#
# When SACKs go out: RFC 4960 (section 6.2) asks for one for at least every second
# packet, or within 200 ms. We acknowledge every second packet and flush a lone pending
# SACK after SACK_DELAY; at once when a packet opens a new hole or is a duplicate, so the
# sender learns of a loss without delay. (RFC 4960 asks for a SACK on every packet while a
# hole exists; that doubles the SACKs a lossy path carries, and our sender needs no more
# than every second one: it abandons, never retransmits, a chunk reported missing.)

SACK_DELAY = 0.01
SACK_EVERY = 2
SACK_MAX_GAPS = 128
_TSN_MODULO = 1 << 32


def _tsn_next(tsn: int) -> int:
    return (tsn + 1) % _TSN_MODULO


def _tsn_after(a: int, b: int) -> bool:
    """Whether TSN a comes after TSN b (serial number arithmetic, RFC 1982)."""
    return a != b and (a - b) % _TSN_MODULO < (1 << 31)


def _ranges(self: Any) -> list[list[int]]:
    ranges: list[list[int]] | None = getattr(self, "_unwall_ranges", None)
    if ranges is None:
        ranges = self._unwall_ranges = []
    return ranges


def _rebuild_ranges(self: Any) -> None:
    """The ranges again from aiortc's set (after anything but an in-order arrival)."""
    last = self._last_received_tsn
    ranges: list[list[int]] = []
    for tsn in sorted(self._sack_misordered, key=lambda t: (t - last) % _TSN_MODULO):
        if ranges and tsn == _tsn_next(ranges[-1][1]):
            ranges[-1][1] = tsn
        else:
            ranges.append([tsn, tsn])
    self._unwall_ranges = ranges


def _forget(self: Any, first: int, last: int) -> None:
    """Drop TSNs first..last (inclusive) from aiortc's set of misordered TSNs."""
    tsn = first
    while True:
        self._sack_misordered.discard(tsn)
        if tsn == last:
            return
        tsn = _tsn_next(tsn)


def _absorb(self: Any) -> None:
    """Move the cumulative TSN over every range that now touches it."""
    ranges = _ranges(self)
    while ranges and ranges[0][0] == _tsn_next(self._last_received_tsn):
        first, last = ranges.pop(0)
        _forget(self, first, last)
        self._last_received_tsn = last


def _mark_received(self: Any, tsn: int) -> bool:
    last = self._last_received_tsn
    if not _tsn_after(tsn, last) or tsn in self._sack_misordered:
        self._sack_duplicates.append(tsn)
        return True
    ranges = _ranges(self)
    if tsn == _tsn_next(last):
        self._last_received_tsn = tsn
        _absorb(self)
    else:
        self._sack_misordered.add(tsn)
        if ranges and tsn == _tsn_next(ranges[-1][1]):
            ranges[-1][1] = tsn
        elif not ranges or _tsn_after(tsn, ranges[-1][1]):
            ranges.append([tsn, tsn])
            self._unwall_new_gap = True
        else:  # it fills or splits an older hole: rare, without retransmissions
            _rebuild_ranges(self)
    if self._sack_duplicates:
        self._sack_duplicates = [
            t for t in self._sack_duplicates if _tsn_after(t, self._last_received_tsn)
        ]
    return False


async def _receive_forward_tsn_chunk(self: Any, chunk: Any) -> None:
    # aiortc's own, with the cumulative TSN moved over the ranges instead of a sort and
    # two filters of the whole set: a sender abandoning lost chunks sends one of these
    # with nearly every packet. The reassembly part is aiortc's, unchanged.
    self._sack_needed = True
    cumulative = chunk.cumulative_tsn
    if not _tsn_after(cumulative, self._last_received_tsn):
        return  # a duplicate
    ranges = _ranges(self)
    while ranges and not _tsn_after(ranges[0][0], cumulative):
        first, end = ranges[0]
        stop = cumulative if _tsn_after(end, cumulative) else end
        _forget(self, first, stop)
        if stop == end:
            ranges.pop(0)
        else:
            ranges[0][0] = _tsn_next(stop)
            break
    self._last_received_tsn = cumulative
    _absorb(self)
    if self._sack_duplicates:
        self._sack_duplicates = [
            t for t in self._sack_duplicates if _tsn_after(t, self._last_received_tsn)
        ]

    for stream_id, stream_seq in chunk.streams:
        inbound_stream = self._get_inbound_stream(stream_id)
        sequence_number = uint16_add(stream_seq, 1)
        if uint16_gt(sequence_number, inbound_stream.sequence_number):
            inbound_stream.sequence_number = sequence_number
        for message in inbound_stream.pop_messages():
            self._advertised_rwnd += len(message[2])
            await self._receive(*message)
    for inbound_stream in self._inbound_streams.values():
        self._advertised_rwnd += inbound_stream.prune_chunks(self._last_received_tsn)
    await self._reset_deferred_streams()


async def _send_sack(self: Any) -> None:
    # aiortc's own, with the gap blocks taken from the ranges instead of a sort.
    last = self._last_received_tsn
    sack = aiortc_sctp.SackChunk()
    sack.cumulative_tsn = last
    sack.advertised_rwnd = max(0, self._advertised_rwnd)
    sack.duplicates = self._sack_duplicates[:]
    sack.gaps = [
        ((first - last) % _TSN_MODULO, (end - last) % _TSN_MODULO)
        for first, end in _ranges(self)[:SACK_MAX_GAPS]
    ]
    await self._send_chunk(sack)
    self._sack_duplicates.clear()
    self._sack_needed = False


async def _delayed_send_sack(self: Any) -> None:
    pending = getattr(self, "_unwall_sack_pending", 0) + 1
    new_gap = getattr(self, "_unwall_new_gap", False)
    if pending < SACK_EVERY and not new_gap and not self._sack_duplicates:
        self._unwall_sack_pending = pending
        if getattr(self, "_unwall_sack_timer", None) is None:
            loop = asyncio.get_running_loop()
            self._unwall_sack_timer = loop.call_later(SACK_DELAY, _flush_sack, self)
        return
    await _flush_sack_now(self)


async def _flush_sack_now(self: Any) -> None:
    self._unwall_sack_pending = 0
    self._unwall_new_gap = False
    timer = getattr(self, "_unwall_sack_timer", None)
    if timer is not None:
        timer.cancel()
        self._unwall_sack_timer = None
    await _send_sack(self)


def _flush_sack(self: Any) -> None:
    self._unwall_sack_timer = None
    if self._sack_needed and self._association_state == RTCSctpTransport.State.ESTABLISHED:
        task = asyncio.ensure_future(_flush_sack_now(self))
        _sack_tasks.add(task)
        task.add_done_callback(_sack_tasks.discard)


_sack_tasks: set[asyncio.Future[None]] = set()

RTCSctpTransport._mark_received = _mark_received  # type: ignore[method-assign]
RTCSctpTransport._receive_forward_tsn_chunk = _receive_forward_tsn_chunk  # type: ignore[method-assign]
if os.environ.get("UNWALL_SCTP_SACK_EVERY_PACKET") == "1":
    RTCSctpTransport._send_sack = _send_sack  # type: ignore[method-assign]
else:
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

_original_stun_request = aioice.ice.StunProtocol.request


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


aioice.ice.StunProtocol.request = _stun_request  # type: ignore[method-assign]


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


# -- SCTP as a datagram pipe -----------------------------------------------------------------
#
# QUIC runs end to end over the data channel and does loss recovery and congestion control
# itself. Under it, a reliable, ordered channel adds a second retransmission layer (every
# SCTP loss stalls everything behind it) and SCTP's own Reno-like congestion control, which
# halves its window on every loss and so caps a 2 %-loss, 100 ms path near 100 KB/s before
# QUIC has a say. So unwall's channel is unordered with no retransmissions (RFC 8831
# partial reliability): a lost SCTP packet is a lost QUIC packet, recovered once, by QUIC.
#
# On our own sending side SCTP then has nothing to recover, and its congestion window
# would only fight QUIC's controller: `SCTP_SEND_WINDOW` replaces it (a fixed bound on what
# is in flight, well above any path's bandwidth-delay product here), and a loss or timer
# expiry no longer shrinks it. A peer's SCTP (a browser volunteer's) keeps its own control
# of what it sends; that is not ours to change.
#
# A QUIC datagram of QUIC_DATAGRAM_SIZE bytes fits one SCTP DATA chunk (aiortc sends one
# chunk per packet), so one lost packet loses one QUIC packet and not a 16 KiB train of 14.
# aiortc's chunks hold 1,160 bytes (its packets fit IPv6's 1,280-byte minimum MTU); ours
# hold 1,200, the smallest datagram QUIC allows, in 1,228-byte SCTP packets (about 1,300
# bytes of IPv4 with DTLS and UDP, within any Ethernet or PPPoE path).
#
# UNWALL_RTC_RELIABLE=1 restores the reliable, ordered channel with aiortc's congestion
# control, for before/after measurements.

SCTP_SEND_WINDOW = 4 << 20
SCTP_USERDATA_LENGTH = 1200


def create_data_channel(pc: RTCPeerConnection) -> RTCDataChannel:
    """The client's data channel: unordered and without retransmissions (see above)."""
    if RELIABLE:
        return pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=True)
    return pc.createDataChannel(DATA_CHANNEL_LABEL, ordered=False, maxRetransmits=0)


def _fixed(value: Any) -> property:
    return property(lambda self: value, lambda self, _value: None)


# The sender's SACK handling, in time proportional to what changed. aiortc walks its whole
# queue of sent chunks, twice, for every SACK, and builds a set of every TSN the gap blocks
# cover; the queue holds a round trip and more of chunks while a hole waits for its FORWARD
# TSN, so on a lossy path that was most of a volunteer's CPU. The queue holds consecutive
# TSNs (chunks leave it only from the front), so a TSN's place in it is arithmetic; a gap
# block seen in the last SACK is not walked again, only its new end; and only the chunks in
# the holes below the highest newly acknowledged TSN are struck (RFC 4960 section 7.2.4).
# Congestion window updates are left out: on our sending side the window is fixed.


async def _receive_sack_chunk(self: Any, chunk: Any) -> None:
    cumulative = chunk.cumulative_tsn
    if _tsn_after(self._last_sacked_tsn, cumulative):
        return
    received_time = time.time()
    self._last_sacked_tsn = cumulative
    queue = self._sent_queue
    done = 0
    while queue and not _tsn_after(queue[0].tsn, cumulative):
        sent = queue.popleft()
        done += 1
        self._flight_size_decrease(sent)
        if done == 1 and sent._sent_count == 1 and not sent._acked:
            self._update_rto(received_time - sent._sent_time)  # not a gap-acked one's age

    previous: dict[int, int] = getattr(self, "_unwall_gap_ends", {})
    gap_ends: dict[int, int] = {}
    if chunk.gaps and queue:
        base = queue[0].tsn
        size = len(queue)
        highest = -1  # index of the highest newly acknowledged chunk
        covered: list[tuple[int, int]] = []
        for start, end in chunk.gaps:
            first_tsn = (cumulative + start) % _TSN_MODULO
            last_tsn = (cumulative + end) % _TSN_MODULO
            gap_ends[first_tsn] = last_tsn
            first = (first_tsn - base) % _TSN_MODULO
            last = min((last_tsn - base) % _TSN_MODULO, size - 1)
            if first >= size:
                continue
            covered.append((first, last))
            seen_end = previous.get(first_tsn)
            walk_from = first
            if seen_end is not None:
                walk_from = max(first, (seen_end - base) % _TSN_MODULO + 1)
            for index in range(walk_from, last + 1):
                sent = queue[index]
                if not sent._acked:
                    sent._acked = True
                    highest = index
                self._flight_size_decrease(sent)
        # strike the chunks in the holes below the highest newly acknowledged one
        hole_start = 0
        for first, last in covered:
            if hole_start > highest:
                break
            for index in range(hole_start, min(first, highest + 1)):
                _strike(self, queue[index])
            hole_start = last + 1
    self._unwall_gap_ends = gap_ends
    _skip_received(self)

    if not queue:
        self._t3_cancel()
    elif done:
        self._t3_restart()
    self._update_advanced_peer_ack_point()
    await self._data_channel_flush()
    await self._transmit()


def _skip_received(self: Any) -> None:
    """Let a FORWARD TSN pass unordered chunks the peer already acknowledged in a gap block.

    RFC 3758 moves the Advanced.Peer.Ack.Point over abandoned chunks only, so a FORWARD TSN
    gets past one hole, stops at the received chunks behind it until the peer's cumulative
    TSN moves over them, and the next hole waits another round trip: at 5 % loss the queue
    of unacknowledged chunks grew without bound. An unordered message the peer holds in a
    gap block is delivered already; passing it loses nothing (aiortc never reneges on a
    gap block). aiortc's own update then goes on over abandoned chunks as before."""
    queue = self._sent_queue
    unordered = aiortc_sctp.SCTP_DATA_UNORDERED
    while queue and queue[0].flags & unordered and (queue[0]._abandoned or queue[0]._acked):
        head = queue.popleft()
        self._flight_size_decrease(head)
        self._advanced_peer_ack_tsn = head.tsn


def _strike(self: Any, sent: Any) -> None:
    if sent._abandoned:
        return
    sent._misses += 1
    if sent._misses < 3:
        return
    sent._misses = 0
    whole = aiortc_sctp.SCTP_DATA_FIRST_FRAG | aiortc_sctp.SCTP_DATA_LAST_FRAG
    if sent.flags & whole == whole and sent._max_retransmits is not None:
        # a one-chunk message: abandoned alone (aiortc would search the queue for it)
        if sent._sent_count > sent._max_retransmits:
            sent._abandoned = True
            sent._retransmit = False
        else:
            sent._retransmit = True
    elif not self._maybe_abandon(sent):
        sent._retransmit = True
    sent._acked = False
    self._flight_size_decrease(sent)


if not RELIABLE:
    aiortc_sctp.USERDATA_MAX_LENGTH = SCTP_USERDATA_LENGTH  # read at send time, module-wide
    # aiortc assigns these on every SACK and timer; the properties keep them fixed.
    for _name, _value in (
        ("_cwnd", SCTP_SEND_WINDOW), ("_ssthresh", SCTP_SEND_WINDOW), ("_fast_recovery_exit", None)
    ):  # fmt: skip
        setattr(RTCSctpTransport, _name, _fixed(_value))
    RTCSctpTransport._receive_sack_chunk = _receive_sack_chunk  # type: ignore[method-assign]


# -- On the wire, as a browser is ----------------------------------------------------------
#
# The box fingerprints every WebRTC flow (see unwall.lab.analyzers: dtls, stun). Two of the
# things it sees are ours to shape with aiortc and aioice, and are shaped here as Debian's
# Chromium 156 sends them (captured in tests/unit/lab/fixtures/chromium-*.json):
# - the DTLS certificate: P-256, subject and issuer CN=WebRTC, a 64-bit serial with its top
#   bit set (what BoringSSL's BN_pseudo_rand(64) gives WebRTC), valid from a day ago for 31
#   days, no extensions. aiortc's own has a random hex CN and a 20-byte serial;
# - the SRTP profiles offered (use_srtp), in Chromium's order: AES128_CM_SHA1_80 first,
#   then AEAD_AES_256_GCM and AEAD_AES_128_GCM (aiortc puts the GCM ones first);
# - ICE connectivity checks: USERNAME, GOOG-NETWORK-INFO, the ICE role, USE-CANDIDATE when
#   nominating, PRIORITY (then MESSAGE-INTEGRITY and FINGERPRINT, as aioice adds them).
#   aioice sends PRIORITY second and no GOOG-NETWORK-INFO. The PRIORITY's local preference
#   is Chromium's (30 for IPv4) where aioice's is 65535. (Candidates' priorities in the SDP
#   travel to the broker inside TLS and are left as aioice makes them.)
# The DTLS handshake itself is OpenSSL's and cannot be made Chromium's: Chromium offers
# DTLS 1.3 (supported_versions, key_share with X25519MLKEM768, TLS 1.3 suites), and the
# OpenSSL that aiortc runs on (cryptography's) has no DTLS 1.3; extension order and the
# ServerHello's layout are fixed inside OpenSSL. See docs/fingerprints.md.

GOOG_NETWORK_INFO = 0xC057
#: GOOG-NETWORK-INFO's value: network id (16 bits) and network cost (16 bits). Chromium in a
#: lab namespace (a veth: adapter type unknown) sends id 0 and cost 999; we send the same.
NETWORK_INFO = (0 << 16) | 999


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
        if nominate:
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


_register_stun_attribute(GOOG_NETWORK_INFO, "GOOG-NETWORK-INFO")
aiortc_dtls.SRTP_PROFILES.sort(key=_srtp_rank)  # in place: aiortc's transports share the list
aiortc_dtls.generate_certificate = _browser_like_certificate
aioice.ice.Connection.build_request = _browser_like_request  # type: ignore[method-assign]


# -- the engine ---------------------------------------------------------------------------------


class AiortcPeer(Peer):
    """`webrtc.Peer` on aiortc, in this process."""

    def __init__(
        self,
        ice_servers: Sequence[IceServer],
        relay_only: bool = False,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        super().__init__(max_buffered)
        self.pc = new_peer_connection(ice_servers, relay_only)
        self.channel: RTCDataChannel | None = None
        pc = self.pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.kill(f"WebRTC connection {pc.connectionState}")

        @pc.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            # ICE may give up before the connection as a whole says so: no need to wait.
            if pc.iceConnectionState == "failed":
                self.kill("ICE failed: no candidate pair got through")

    def _attach(self, channel: RTCDataChannel) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, bytes):
                self._deliver(message)

        @channel.on("close")
        def on_close() -> None:
            self.kill("its data channel closed")

        if channel.readyState == "open":
            self.opened.set()
        else:
            channel.on("open", self.opened.set)

    async def offer(self) -> str:
        self._attach(create_data_channel(self.pc))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        try:
            await self.pc.setRemoteDescription(answer_description(sdp))
        except Exception as exc:  # aiortc raises many kinds on hostile SDP
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc

    async def answer(self, offer_sdp: str) -> str:
        pc = self.pc

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if self.channel is None:  # one channel per client; anything more is ignored
                self._attach(channel)

        try:
            await pc.setRemoteDescription(offer_description(offer_sdp))
            if pc.sctp is None:
                raise ValueError("the offer has no data channel")
            # A client that would rather carry media (protocol.md §2): this engine has only
            # the data channel, and says so by neither sending nor taking video.
            for transceiver in pc.getTransceivers():
                transceiver.direction = "inactive"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises many kinds on hostile SDP
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc
        return str(pc.localDescription.sdp)

    def send(self, data: bytes) -> bool:
        channel = self.channel
        if self.dead.is_set() or channel is None or channel.readyState != "open":
            self.dropped += 1
            return False
        if channel.bufferedAmount > self.max_buffered:
            self.dropped += 1
            return False
        channel.send(data)
        return True

    @property
    def buffered_amount(self) -> int:
        return int(self.channel.bufferedAmount) if self.channel is not None else 0

    @property
    def local_sdp(self) -> str | None:
        description = self.pc.localDescription
        return str(description.sdp) if description is not None else None

    @property
    def remote_sdp(self) -> str | None:
        description = self.pc.remoteDescription
        return str(description.sdp) if description is not None else None

    @property
    def remote_max_message_size(self) -> int | None:
        return remote_max_message_size(self.pc)

    async def close(self) -> None:
        self.kill("closed")
        with contextlib.suppress(Exception):
            await self.pc.close()


class AiortcEngine(Engine):
    name = "aiortc"

    def new_peer(
        self,
        ice_servers: Sequence[IceServer] = (),
        *,
        relay_only: bool = False,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        carrier: str | None = None,
    ) -> Peer:
        check_carrier(self.name, carrier)  # the data channel only
        return AiortcPeer(ice_servers, relay_only, max_buffered)
