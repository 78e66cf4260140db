"""A model-based congestion controller for aioquic that random loss does not fool.

aioquic ships NewReno and Cubic. Both read every lost packet as a sign of congestion and
cut their window, so on a path that loses 2-15 % of its packets for reasons that have
nothing to do with congestion (a lossy radio link, a box that drops at random) they send
a small fraction of what the path carries. This controller follows BBR (Cardwell et al.,
"BBR: Congestion-Based Congestion Control", ACM Queue 2016; draft-cardwell-iccrg-bbr):
it measures the path instead of reacting to loss.

- **Bottleneck bandwidth**: every acknowledged packet gives a delivery-rate sample, the
  bytes delivered between its sending and its acknowledgement over the longer of the send
  and the ack interval; the estimate is the largest sample of the last `BW_WINDOW_ROUNDS`
  round trips.
- **Round-trip propagation time**: the smallest RTT sample of the last `MIN_RTT_WINDOW`
  seconds.
- **Pacing** at `gain x bandwidth`, and a window of `CWND_GAIN x bandwidth x min RTT`
  (two bandwidth-delay products) plus the ack aggregation seen lately, that bounds what
  is in flight. Acks come in bursts (a receiver that acks every few packets, a relay or
  a browser that hands on data in batches): the aggregation term is the largest excess,
  over the last `BW_WINDOW_ROUNDS` rounds, of bytes acked in a burst over what the
  bandwidth estimate would have delivered in that time (the draft's `extra_acked`).
  Without it a path with a tiny min RTT gets a window of a few packets, the window
  limits the delivery rate, and the rate limits the window (measured: 1.2 MB/s through
  a Chromium volunteer on a clean path, min RTT 1.3 ms, window 7 KB). In `startup` the gain is
  2/ln 2 until the bandwidth stops growing by a quarter for three rounds; `drain` then
  empties the queue that built; `probe_bw` cycles the gain through 1.25 (probe for more),
  0.75 (drain what the probe queued) and six rounds at 1.
- **Application-limited samples**: when the sender runs out of data with room in its
  window, the samples of what is then in flight measure the application, not the path:
  they raise the bandwidth estimate but never lower it, and they do not count as rounds
  without growth in startup (a session that starts with a small page would otherwise
  leave startup at a few KB/s and climb by a quarter per eight rounds: measured, 35 s to
  reach 4 MB/s on a 180 ms path).

Loss is not a signal here: lost packets leave the flight and QUIC retransmits their data,
and the model stays as it was. Two exceptions keep the controller honest: persistent
congestion (RFC 9002: nothing got through for several probe timeouts) and `reset()`
(the path changed) both forget the model and start again.

The class is sans-IO: aioquic calls it with packets and times, and it returns nothing but
its window and its pacing rate. `BbrPacer` is the piece of aioquic's recovery that asks for
the pacing rate; `install` puts both into a connection.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from aioquic.quic.congestion.base import (
    K_INITIAL_WINDOW,
    QuicCongestionControl,
    register_congestion_control,
)
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer

NAME = "unwall-bbr"
log = logging.getLogger("unwall.bbr")
#: at DEBUG, the model is logged at most this often (seconds)
LOG_INTERVAL = 1.0

STARTUP_GAIN = 2 / math.log(2)  # 2.885: doubles the sending rate every round trip
DRAIN_GAIN = 1 / STARTUP_GAIN
CWND_GAIN = 2.0
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: the bandwidth estimate is the largest sample of this many round trips
BW_WINDOW_ROUNDS = 10
#: the propagation-time estimate is the smallest RTT sample of this many seconds
MIN_RTT_WINDOW = 10.0
#: startup ends after this many rounds without a FULL_BW_GROWTH increase
FULL_BW_ROUNDS = 3
FULL_BW_GROWTH = 1.25
#: the window never goes below this many datagrams
MIN_WINDOW_PACKETS = 4

STARTUP, DRAIN, PROBE_BW = "startup", "drain", "probe_bw"

#: per-packet delivery state, kept on the packet object aioquic hands back on ack
_STAMP = "_unwall_bbr"


class _MaxFilter:
    """The largest value seen in the last `window` rounds (a sliding window of maxima)."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._samples: deque[tuple[int, float]] = deque()  # (round, value), values falling

    def update(self, round_count: int, value: float) -> None:
        while self._samples and self._samples[-1][1] <= value:
            self._samples.pop()
        self._samples.append((round_count, value))
        while self._samples[0][0] <= round_count - self._window:
            self._samples.popleft()

    @property
    def value(self) -> float:
        return self._samples[0][1] if self._samples else 0.0

    def clear(self) -> None:
        self._samples.clear()


class BbrCongestionControl(QuicCongestionControl):
    """BBR for aioquic (see the module's docstring); registered as `unwall-bbr`."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._mds = max_datagram_size
        self._bw = _MaxFilter(BW_WINDOW_ROUNDS)
        self._extra_acked = _MaxFilter(BW_WINDOW_ROUNDS)
        self._min_rtt = math.inf
        self._min_rtt_stamp = 0.0
        self._logged_at = -math.inf
        self._reset_model()

    # -- the model -------------------------------------------------------------------------

    def _reset_model(self) -> None:
        self.mode = STARTUP
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self._bw.clear()
        self._extra_acked.clear()
        self._extra_acked_start: float | None = None
        self._extra_acked_delivered = 0
        self._min_rtt = math.inf
        self._delivered = 0
        self._delivered_time: float | None = None
        self._first_sent_time: float | None = None
        self._round_count = 0
        self._next_round_delivered = 0
        self._app_limited_until = 0
        self._sample_app_limited = False
        self._round_start = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self.congestion_window = max(self.congestion_window, K_INITIAL_WINDOW * self._mds)

    def set_datagram_size(self, size: int) -> None:
        self._mds = size

    def reset(self) -> None:
        """The path changed: what was learned about the old one no longer holds."""
        self._reset_model()
        self.congestion_window = K_INITIAL_WINDOW * self._mds

    @property
    def bandwidth(self) -> float:
        """Estimated bottleneck bandwidth, bytes per second (0 before the first sample)."""
        return self._bw.value

    @property
    def min_rtt(self) -> float:
        """Estimated round-trip propagation time, seconds (inf before the first sample)."""
        return self._min_rtt

    def bdp(self, gain: float = 1.0) -> int:
        if not self._bw.value or math.isinf(self._min_rtt):
            return K_INITIAL_WINDOW * self._mds
        return int(gain * self._bw.value * self._min_rtt)

    def pacing_rate(self, smoothed_rtt: float) -> float:
        """Bytes per second to pace at."""
        # the window over the RTT we know, times the gain: the rate before any sample
        window_rate = self.pacing_gain * self.congestion_window / max(smoothed_rtt, 0.001)
        if not self._bw.value:
            return window_rate
        if self.mode == STARTUP:
            # Until startup has found the bottleneck the rate only grows from the window's
            # (as Linux's BBR does): a session whose first transfers were small pages has
            # a tiny estimate, and pacing at it spaced a page's packets ~20 ms apart
            # (measured: 35-48 ms to the first byte of a new stream on loopback, 4 ms
            # with NewReno).
            return max(self.pacing_gain * self._bw.value, window_rate)
        return self.pacing_gain * self._bw.value

    # -- aioquic's interface -------------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        now = packet.sent_time or 0.0
        if self.bytes_in_flight == 0 or self._first_sent_time is None:
            self._first_sent_time = now
            self._delivered_time = now
        self.bytes_in_flight += packet.sent_bytes
        app_limited = self._app_limited_until > 0
        setattr(
            packet, _STAMP,
            (self._delivered, self._delivered_time, self._first_sent_time, app_limited),
        )  # fmt: skip

    def on_app_limited(self) -> None:
        """The sender has nothing more to send although window and pacing would let it:
        delivery-rate samples until what is in flight now is acked measure the
        application, not the path (draft-cheng-iccrg-delivery-rate-estimation)."""
        self._app_limited_until = max(self._delivered + self.bytes_in_flight, 1)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self._delivered += packet.sent_bytes
        self._delivered_time = now
        stamp = getattr(packet, _STAMP, None)
        if stamp is None:
            return
        delivered, delivered_time, first_sent_time, app_limited = stamp
        if self._app_limited_until and self._delivered > self._app_limited_until:
            self._app_limited_until = 0
        sent_time = packet.sent_time or now
        self._first_sent_time = sent_time
        # a new round trip starts when a packet sent after the last round began is acked
        self._round_start = delivered >= self._next_round_delivered
        if self._round_start:
            self._round_count += 1
            self._next_round_delivered = self._delivered
        self._sample_app_limited = app_limited
        interval = max(sent_time - first_sent_time, now - (delivered_time or sent_time))
        if interval > 0:
            rate = (self._delivered - delivered) / interval
            # a sample the application held back says little about the path, unless it
            # shows more than the estimate
            if not app_limited or rate >= self._bw.value:
                self._bw.update(self._round_count, rate)
        self._update_ack_aggregation(now, packet.sent_bytes)
        self._update_mode(now)
        self._update_window(packet.sent_bytes)
        if now - self._logged_at >= LOG_INTERVAL and log.isEnabledFor(logging.DEBUG):
            self._logged_at = now
            log.debug(
                "bbr %s: bw %.3f MB/s, min rtt %.1f ms, window %d B (aggregation %d B), "
                "in flight %d B, pacing gain %.2f", self.mode, self._bw.value / 1e6,
                self._min_rtt * 1000, self.congestion_window, self._extra_acked.value,
                self.bytes_in_flight, self.pacing_gain,
            )  # fmt: skip

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_persistent_congestion(self) -> None:
        self.reset()
        self.congestion_window = MIN_WINDOW_PACKETS * self._mds

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if rtt <= self._min_rtt or now - self._min_rtt_stamp > MIN_RTT_WINDOW:
            self._min_rtt = rtt
            self._min_rtt_stamp = now

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(
            mode=self.mode, bw=round(self._bw.value), min_rtt=self._min_rtt,
            extra_acked=round(self._extra_acked.value),
        )  # fmt: skip
        return data

    # -- the state machine ---------------------------------------------------------------

    def _update_mode(self, now: float) -> None:
        # rounds the application held back do not show that the bandwidth stopped growing
        if self.mode == STARTUP and self._round_start and not self._sample_app_limited:
            if self._bw.value >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = self._bw.value
                self._full_bw_count = 0
            else:
                self._full_bw_count += 1
                if self._full_bw_count >= FULL_BW_ROUNDS:
                    self.mode = DRAIN
                    self.pacing_gain = DRAIN_GAIN
                    self.cwnd_gain = STARTUP_GAIN
        if self.mode == DRAIN and self.bytes_in_flight <= self.bdp():
            self._enter_probe_bw(now)
        if self.mode == PROBE_BW:
            elapsed = now - self._cycle_stamp > self._min_rtt
            # a drain phase ends early once the queue the probe built is gone
            if PROBE_BW_GAINS[self._cycle_index] < 1 and self.bytes_in_flight <= self.bdp():
                elapsed = True
            if not elapsed:
                return
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
            self._cycle_stamp = now
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]

    def _enter_probe_bw(self, now: float) -> None:
        self.mode = PROBE_BW
        self.cwnd_gain = CWND_GAIN
        self._cycle_index = 2  # start at gain 1, as BBR does after its drain
        self._cycle_stamp = now
        self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]

    def _update_ack_aggregation(self, now: float, acked: int) -> None:
        """The draft's BBRUpdateACKAggregation, fed one acknowledged packet at a time
        (the packets of one ACK frame share `now`, so they add up as one ack)."""
        start = self._extra_acked_start
        expected = self._bw.value * (now - start) if start is not None else 0.0
        if start is None or self._extra_acked_delivered <= expected:
            # the acks came no faster than the estimate: a new epoch starts here
            self._extra_acked_start = now
            self._extra_acked_delivered = 0
            expected = 0.0
        self._extra_acked_delivered += acked
        extra = min(self._extra_acked_delivered - expected, self.congestion_window)
        self._extra_acked.update(self._round_count, extra)

    def _update_window(self, acked: int) -> None:
        target = self.bdp(self.cwnd_gain) + int(self._extra_acked.value) + 3 * self._mds
        if self.mode == STARTUP or not self._bw.value:
            self.congestion_window += acked  # grow as fast as the acks come, up to ...
            if self._bw.value and self.congestion_window > target:
                self.congestion_window = max(target, self.congestion_window - acked)
        else:
            self.congestion_window = min(self.congestion_window + acked, target)
        self.congestion_window = max(self.congestion_window, MIN_WINDOW_PACKETS * self._mds)


class BbrPacer(QuicPacketPacer):
    """Pacing at the controller's rate, with a real token bucket.

    aioquic's own pacer lets a packet go whenever its bucket holds any time at all, so
    every acknowledgement releases a packet and the sender runs at the ack rate plus its
    timers, whatever the pacing rate says (measured: 4.8 MB/s out at a pacing rate of
    0.87 MB/s). Here a packet waits until the bucket holds a whole packet's time. The
    bucket holds BURST_PACKETS packets' worth, or BURST_TIME of sending at high rates:
    asyncio's timers fire a millisecond or more late, and a bucket of a few small
    packets would cap the rate at a few packets per timer (measured: 2.4 MB/s on a
    clean path with 1,200-byte datagrams and a 4-packet bucket)."""

    BURST_PACKETS = 4
    BURST_TIME = 0.004

    def __init__(self, cc: BbrCongestionControl, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._cc = cc

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]  # aioquic returns None too
        if self.packet_time is None:
            return None
        self.update_bucket(now=now)
        wait = self.packet_time - self.bucket_time
        if wait <= 1e-6:  # a microsecond short is on time (and float error cannot stall)
            return None
        return now + wait

    def update_after_send(self, now: float) -> None:
        if self.packet_time is not None:
            self.update_bucket(now=now)
            self.bucket_time = max(0.0, self.bucket_time - self.packet_time)

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate = max(self._cc.pacing_rate(smoothed_rtt), 1.0)
        first = self.packet_time is None
        self.packet_time = min(self._max_datagram_size / rate, 1.0)
        self.bucket_max = max(self.BURST_PACKETS * self.packet_time, self.BURST_TIME)
        if first:
            self.bucket_time = self.bucket_max
        self.bucket_time = min(self.bucket_time, self.bucket_max)


def install(connection: Any) -> BbrCongestionControl | None:
    """Put BBR's pacer into a connection created with `congestion_control_algorithm=NAME`
    (aioquic's recovery made the controller; the pacer is ours to swap). Returns the
    controller, or None if the connection runs another algorithm."""
    loss = connection._loss
    cc = loss._cc
    if not isinstance(cc, BbrCongestionControl):
        return None
    loss._pacer = BbrPacer(cc, max_datagram_size=cc._mds)
    return cc


register_congestion_control(NAME, BbrCongestionControl)
