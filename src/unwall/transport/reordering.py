"""Loss detection that learns how late a path delivers (RFC 9002 section 6.1, "MAY adapt").

aioquic declares a packet lost once three later packets are acknowledged, or once it is
9/8 of a round trip older than the newest acknowledged one. On the media carrier that is
wrong: a video frame that lost one RTP packet waits for its NACK and retransmission, about a
round trip, and then delivers all of its few dozen datagrams at once, long after the frames
behind it. aioquic would have declared every one of them lost and sent it again: on the
lab's `censored-lossy` path a third of what the egress sent was such spurious
retransmissions.

Late packets must first be let in: aioquic takes a packet more than 128 numbers behind the
largest received for a duplicate and drops it, and a frame repaired a round trip late on a
path of a thousand datagrams a second is several hundred behind. `install` widens that window
to `receive_window` numbers (the client, which downloads, takes the widest; the egress,
with thousands of sessions, a narrower one: a number costs about 50 bytes while it is in it).

Then each connection learns, as TCP's RACK does (RFC 8985 section 6.2): when a packet it
declared lost is acknowledged after all, the path reorders, and the thresholds grow to what
that packet needed (its distance in packet numbers, its age in round trips), up to a cap.
A path that never reorders (the data channel: unordered but not late) keeps aioquic's
defaults, so the egress needs to know nothing of the carrier. Only the application data
space learns (the handshake's spaces number their packets from 0 too).

What a window remembers is bounded in count (REMEMBERED) and in age: a packet declared lost
more than MAX_TIME_THRESHOLD round trips ago, or more than MAX_PACKET_THRESHOLD numbers
behind, could teach nothing the caps allow, and is forgotten. An ACK's ranges are matched
by bisection, so a peer's ACK with many wide ranges costs what its ranges hold, not what the
window remembers.

`ReorderingWindow` is the rule, with no clock and no QUIC in it; `install` puts it into an
aioquic connection's recovery.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

#: aioquic's (RFC 9002's) thresholds, where every connection starts
PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
#: the most a path may teach: a frame repaired a round trip late, at a few thousand
#: datagrams a second
MAX_PACKET_THRESHOLD = 4096
MAX_TIME_THRESHOLD = 3.0
#: margin over the lateness a spurious loss showed
MARGIN = 1.25
#: packets declared lost that are remembered, to notice an acknowledgement of one
REMEMBERED = 2048
#: aioquic's duplicate window: 2 x MAX_ACK_RANGES packet numbers
DEFAULT_RECEIVE_WINDOW = 128
#: the client's (it downloads: 8,192 numbers is about 3 s at 3 MB/s)
CLIENT_RECEIVE_WINDOW = 8192
#: the egress's, per session (uploads; at most ~0.4 MB of late packets taken)
EGRESS_RECEIVE_WINDOW = 1024


class ReorderingWindow:
    """How late a packet may be acknowledged before it is lost, learnt per connection."""

    def __init__(self) -> None:
        self.packet_threshold = PACKET_THRESHOLD
        self.time_threshold = TIME_THRESHOLD
        self.spurious = 0
        #: packet numbers declared lost, sorted, and when each was sent
        self._numbers: list[int] = []
        self._sent: dict[int, float] = {}

    def declared_lost(self, packet_number: int, sent_time: float) -> None:
        if packet_number in self._sent:
            return
        bisect.insort(self._numbers, packet_number)
        self._sent[packet_number] = sent_time
        if len(self._numbers) > REMEMBERED:
            del self._sent[self._numbers.pop(0)]

    def acknowledged(
        self, ranges: Iterable[range], largest_acked: int, now: float, rtt: float
    ) -> None:
        """An ACK's ranges: every remembered lost packet among them was not lost at all."""
        self._forget(largest_acked, now, rtt)
        numbers = self._numbers
        if not numbers:
            return
        for span in ranges:
            start = bisect.bisect_left(numbers, span.start)
            stop = bisect.bisect_left(numbers, span.stop)
            if start == stop:
                continue
            late = numbers[start:stop]
            del numbers[start:stop]
            for packet_number in late:
                self._learn(packet_number, self._sent.pop(packet_number), largest_acked, now, rtt)

    def _forget(self, largest_acked: int, now: float, rtt: float) -> None:
        """Drop what could teach nothing within the caps (too far behind, or too old)."""
        numbers = self._numbers
        cut = bisect.bisect_left(numbers, largest_acked - MAX_PACKET_THRESHOLD)
        oldest = now - 2 * MAX_TIME_THRESHOLD * rtt if rtt > 0 else None
        while cut < len(numbers) and oldest is not None and self._sent[numbers[cut]] < oldest:
            cut += 1
        if cut:
            for packet_number in numbers[:cut]:
                del self._sent[packet_number]
            del numbers[:cut]

    @property
    def remembered(self) -> int:
        return len(self._numbers)

    def _learn(
        self, packet_number: int, sent_time: float, largest_acked: int, now: float, rtt: float
    ) -> None:
        self.spurious += 1
        distance = largest_acked - packet_number + 1
        self.packet_threshold = min(
            MAX_PACKET_THRESHOLD, max(self.packet_threshold, int(distance * MARGIN))
        )
        if rtt > 0:
            lateness = (now - sent_time) / rtt
            self.time_threshold = min(
                MAX_TIME_THRESHOLD, max(self.time_threshold, lateness * MARGIN)
            )


def install(connection: Any, receive_window: int = DEFAULT_RECEIVE_WINDOW) -> ReorderingWindow:
    """Give an aioquic connection's recovery a learning reordering window (aioquic reads
    its thresholds from module constants; here they are the connection's own), and let in
    packets up to `receive_window` numbers behind the largest received."""
    loss = connection._loss
    window = ReorderingWindow()
    original_initialize = connection._initialize

    def initialize(peer_cid: bytes) -> None:
        original_initialize(peer_cid)
        for space in connection._spaces.values():
            space.received_packets._size = max(space.received_packets._size, receive_window)

    connection._initialize = initialize
    original_ack = loss.on_ack_received
    original_lost = loss._on_packets_lost

    def on_ack_received(*, ack_rangeset: Any, ack_delay: float, now: float, space: Any) -> None:
        if space.is_application_data:
            largest = ack_rangeset.bounds().stop - 1
            rtt = max(loss._rtt_latest, loss._rtt_smoothed) if loss._rtt_initialized else 0.0
            window.acknowledged(ack_rangeset, largest, now, rtt)
        original_ack(ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space)

    def on_packets_lost(*, packets: Iterable[Any], space: Any, **kwargs: Any) -> None:
        packets = list(packets)
        # not a probe timeout's guess, and only the application data's numbers
        if kwargs.get("congestion_event", True) and space.is_application_data:
            for packet in packets:
                window.declared_lost(packet.packet_number, packet.sent_time)
        original_lost(packets=packets, space=space, **kwargs)

    def detect_loss(*, now: float, space: Any) -> None:
        # aioquic's _detect_loss, with the window's thresholds for its constants
        loss_delay = window.time_threshold * (
            max(loss._rtt_latest, loss._rtt_smoothed)
            if loss._rtt_initialized
            else loss._rtt_initial
        )
        packet_threshold = space.largest_acked_packet - window.packet_threshold
        time_threshold = now - loss_delay
        lost = []
        space.loss_time = None
        for packet_number, packet in space.sent_packets.items():
            if packet_number > space.largest_acked_packet:
                break
            if packet_number <= packet_threshold or packet.sent_time <= time_threshold:
                lost.append(packet)
            else:
                packet_loss_time = packet.sent_time + loss_delay
                if space.loss_time is None or space.loss_time > packet_loss_time:
                    space.loss_time = packet_loss_time
        loss._on_packets_lost(
            now=now,
            packets=lost,
            persistent_congestion=loss._in_persistent_congestion(packets=lost),
            space=space,
        )

    loss.on_ack_received = on_ack_received
    loss._on_packets_lost = on_packets_lost
    loss._detect_loss = detect_loss
    return window
