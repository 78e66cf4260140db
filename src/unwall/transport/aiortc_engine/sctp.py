"""SCTP for the aiortc engine: acknowledgements that cost little (the receiver), and SCTP as
a datagram pipe under QUIC (the sender: a fixed window, SACKs handled in time proportional to
what changed).

Nothing changes in aiortc until `install()` (called by `engine.install_patches`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiortc.rtcsctptransport as aiortc_sctp
import aiortc.utils
from aiortc import RTCPeerConnection
from aiortc.rtcsctptransport import RTCSctpTransport

from unwall.transport.internals import Needs
from unwall.transport.webrtc import RELIABLE


def remote_max_message_size(pc: RTCPeerConnection) -> int | None:
    """The peer's SDP max-message-size once SCTP is negotiated (None if unknown)."""
    sctp = pc.sctp
    if sctp is None:
        return None
    size = getattr(sctp, "_remote_max_message_size", None)
    return int(size) if size else None


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
        sequence_number = aiortc.utils.uint16_add(stream_seq, 1)
        if aiortc.utils.uint16_gt(sequence_number, inbound_stream.sequence_number):
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


# -- applying the patches ------------------------------------------------------------------------


def check() -> None:
    """IncompatibleDependency unless aiortc has every private this module replaces or calls."""
    need = Needs("aiortc")
    sctp = aiortc_sctp
    if need.attribute(sctp, "RTCSctpTransport"):
        transport = sctp.RTCSctpTransport
        # replaced
        need.function(transport, "_mark_received", params=("self", "tsn"))
        need.function(transport, "_receive_forward_tsn_chunk", params=("self", "chunk"))
        need.function(transport, "_send_sack", params=("self",))
        need.function(transport, "_receive_sack_chunk", params=("self", "chunk"))
        # called
        for method in (
            "_get_inbound_stream",
            "_receive",
            "_reset_deferred_streams",
            "_send_chunk",
            "_flight_size_decrease",
            "_update_rto",
            "_t3_cancel",
            "_t3_restart",
            "_update_advanced_peer_ack_point",
            "_data_channel_flush",
            "_transmit",
            "_maybe_abandon",
        ):
            need.function(transport, method)
        need.instance_attributes(
            transport,
            "_last_received_tsn",
            "_sack_misordered",
            "_sack_duplicates",
            "_sack_needed",
            "_advertised_rwnd",
            "_inbound_streams",
            "_association_state",
            "_sent_queue",
            "_last_sacked_tsn",
            "_advanced_peer_ack_tsn",
            "_remote_max_message_size",
            # fixed by properties (see "SCTP as a datagram pipe")
            "_cwnd",
            "_ssthresh",
            "_fast_recovery_exit",
        )
        if need.attribute(transport, "State"):
            need.attribute(transport.State, "ESTABLISHED")
    need.attribute(
        sctp,
        "USERDATA_MAX_LENGTH",
        "SCTP_DATA_UNORDERED",
        "SCTP_DATA_FIRST_FRAG",
        "SCTP_DATA_LAST_FRAG",
    )
    if need.attribute(sctp, "SackChunk", "ForwardTsnChunk", "DataChunk", "InboundStream"):
        need.instance_attributes(
            sctp.SackChunk, "cumulative_tsn", "advertised_rwnd", "duplicates", "gaps"
        )
        need.instance_attributes(sctp.ForwardTsnChunk, "cumulative_tsn", "streams")
        need.instance_attributes(
            sctp.DataChunk,
            "tsn",
            "flags",
            "_sent_count",
            "_sent_time",
            "_acked",
            "_abandoned",
            "_retransmit",
            "_misses",
            "_max_retransmits",
        )
        need.function(sctp.InboundStream, "pop_messages", params=("self",))
        need.function(sctp.InboundStream, "prune_chunks", params=("self", "tsn"))
        need.instance_attributes(sctp.InboundStream, "sequence_number")
    need.function(aiortc.utils, "uint16_add")
    need.function(aiortc.utils, "uint16_gt")
    need.verify()


_installed = False


def install() -> None:
    """Patch aiortc's SCTP as this module says (once; `check` first). The receiver's SACKs
    every second packet, unless UNWALL_SCTP_SACK_EVERY_PACKET=1; the sender's fixed window
    and SACK handling unless UNWALL_RTC_RELIABLE=1."""
    global _installed
    if _installed:
        return
    check()
    RTCSctpTransport._mark_received = _mark_received  # type: ignore[method-assign]
    RTCSctpTransport._receive_forward_tsn_chunk = _receive_forward_tsn_chunk  # type: ignore[method-assign]
    if os.environ.get("UNWALL_SCTP_SACK_EVERY_PACKET") == "1":
        RTCSctpTransport._send_sack = _send_sack  # type: ignore[method-assign]
    else:
        RTCSctpTransport._send_sack = _delayed_send_sack  # type: ignore[method-assign]

    if not RELIABLE:
        aiortc_sctp.USERDATA_MAX_LENGTH = SCTP_USERDATA_LENGTH  # read at send time, module-wide
        # aiortc assigns these on every SACK and timer; the properties keep them fixed.
        fixed = {
            "_cwnd": SCTP_SEND_WINDOW,
            "_ssthresh": SCTP_SEND_WINDOW,
            "_fast_recovery_exit": None,
        }
        for name, value in fixed.items():
            setattr(RTCSctpTransport, name, _fixed(value))
        RTCSctpTransport._receive_sack_chunk = _receive_sack_chunk  # type: ignore[method-assign]
    _installed = True
