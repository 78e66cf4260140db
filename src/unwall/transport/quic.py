"""QUIC sessions carried over message paths instead of UDP sockets.

unwall runs one QUIC connection (aioquic, sans-IO) end to end between client and egress.
Its datagrams travel as DataChannel messages (client side) and WebSocket messages (egress
side); neither end owns a socket, so this module is the small asyncio shell that aioquic's
own `QuicConnectionProtocol` would be, with three differences that matter to us:

- the *path* a datagram is sent on can change at any time (`QuicSession.set_sender`), which
  is how a session moves from one volunteer to another;
- streams have real backpressure both ways: a writer waits while too much of its data is
  unacknowledged, and the receive window only opens as the application consumes data
  (aioquic alone opens it as data arrives, so a slow reader would buffer without bound);
- the client checks the egress key pin before it opens any stream.

Every aioquic configuration in the project is built here (one place).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import aioquic.quic.congestion.base
import aioquic.quic.connection
import aioquic.quic.packet_builder
import aioquic.quic.recovery
import aioquic.quic.stream
import aioquic.tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.stream import QuicStream as AioquicStream
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from unwall.transport import bbr, reordering
from unwall.transport.internals import Needs

log = logging.getLogger("unwall.quic")
HeaderT = TypeVar("HeaderT", covariant=True)

ALPN = "unwall/1"
#: Upper bound of a QUIC datagram (one DataChannel/WebSocket message). Large datagrams are
#: what makes aiortc's pure-Python SCTP fast enough (see DESIGN.md's measurements).
MAX_DATAGRAM_SIZE = 16384
#: QUIC's own minimum (RFC 9000, section 14).
MIN_DATAGRAM_SIZE = 1200
#: After its handshake a session that started at MIN_DATAGRAM_SIZE sends datagrams of at
#: most this size (UNWALL_QUIC_STEADY_DATAGRAM overrides it, for measurements), so that
#: each one fits a single SCTP packet of a browser's WebRTC stack as well as ours.
#: Chromium's SCTP packets are at most 1,191 bytes: less its 12-byte common header, a
#: 16-byte DATA chunk header and a SACK it may bundle (16 bytes and more), a 1,200-byte
#: datagram travels as two chunks, and one lost chunk loses it. QUIC needs 1,200 only
#: for the datagrams that carry Initial packets (RFC 9000, section 14.1).
STEADY_DATAGRAM_SIZE = int(os.environ.get("UNWALL_QUIC_STEADY_DATAGRAM", 1140))
#: Once the handshake is complete, an ack-eliciting packet is acknowledged within this
#: many seconds (aioquic: 1 ms; UNWALL_QUIC_ACK_DELAY overrides it). Every ack is a
#: DataChannel message, an SCTP packet and its SACK, and a WebSocket frame at the
#: volunteer: with 1 ms the client acknowledged almost every other packet, and on this
#: 2-core lab the extra messages cost about a fifth of the goodput of a 180 ms, 1 %-loss
#: path (measured: 2.8 MB/s at 1 ms, 3.3 at 5 ms, 3.6 at 10 ms, 3.5 at 20 ms). It stays
#: below the 25 ms max_ack_delay both ends announce, and BBR's ack-aggregation allowance
#: keeps the window open across it.
ACK_DELAY = float(os.environ.get("UNWALL_QUIC_ACK_DELAY", 0.01))
#: The congestion controller of every session (both ends): BBR, which random loss does
#: not fool (see bbr.py). UNWALL_QUIC_CC=reno or cubic selects aioquic's own, for
#: before/after measurements.
CONGESTION_CONTROL = os.environ.get("UNWALL_QUIC_CC", bbr.NAME)
#: Receive credit per stream beyond what the application has consumed. A lost packet
#: holds consumption at its hole until the retransmission arrives (one to two round
#: trips), so the window must cover a few bandwidth-delay products: 4 MiB is 2.5 of them
#: at 6 MB/s and 270 ms (measured: with 1 MiB a 50 Mbit/s, 180 ms, 1 %-loss path moved
#: about 0.5 MB/s).
STREAM_WINDOW = 4 << 20
#: Receive credit per connection beyond what the application has consumed (it bounds
#: what a session buffers for applications that read slowly, over all its streams).
CONNECTION_WINDOW = 16 << 20
#: A writer waits while more than this many of its bytes are not yet sent ...
SEND_HIGH_WATER = 1 << 20
#: ... and resumes once that backlog is below this. Bytes sent and not yet acknowledged
#: do not count: the peer's credit bounds them, and counting them made every loss on a
#: long path stop the writer until the pipe had drained.
SEND_LOW_WATER = 256 << 10
#: Most concurrent streams a peer may open (each is one proxied TCP connection).
MAX_STREAMS = 256
#: Longer than the grace periods (60 s by default) that both ends allow a session without
#: any volunteer; an idle session is kept alive by the client's PINGs.
IDLE_TIMEOUT = 120.0

#: Application error codes (QUIC CONNECTION_CLOSE / RESET_STREAM).
ERROR_NONE = 0x0
ERROR_STREAM_ABORTED = 0x1
ERROR_PIN_MISMATCH = 0x101
ERROR_SHUTDOWN = 0x102
ERROR_PATH_LOST = 0x103

#: aioquic tracks the peer by "network address"; our datagrams have none, and the session
#: must not notice when its path changes, so every datagram claims this one address.
PATH_ADDRESS = ("unwall-path", 0)


class PinMismatch(Exception):
    """The egress presented a key other than the pinned one."""


class SessionClosed(ConnectionError):
    """The QUIC session ended; the stream cannot continue."""


class StreamReset(ConnectionError):
    """The peer reset the stream."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"stream reset by peer (code {error_code:#x})")
        self.error_code = error_code


# -- keys and configurations ---------------------------------------------------------------


def spki_pin(certificate: x509.Certificate) -> str:
    """The pin of a certificate's key: `sha256:` + unpadded base64url of the SPKI digest."""
    return key_pin(certificate.public_key())


def key_pin(public_key: CertificatePublicKeyTypes) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(spki).digest()
    return "sha256:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def clamp_datagram_size(size: int) -> int:
    return max(MIN_DATAGRAM_SIZE, min(MAX_DATAGRAM_SIZE, size))


def client_configuration(max_datagram_size: int) -> QuicConfiguration:
    # Certificate validation is replaced by the key pin (checked in QuicSession), so the
    # chain is not verified here; without a pin the client never sends stream data.
    return QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        verify_mode=ssl.CERT_NONE,
        server_name="unwall-egress",
        max_datagram_size=clamp_datagram_size(max_datagram_size),
        max_data=CONNECTION_WINDOW,
        max_stream_data=STREAM_WINDOW,
        idle_timeout=IDLE_TIMEOUT,
        congestion_control_algorithm=CONGESTION_CONTROL,
    )


def server_configuration(
    certificate: x509.Certificate,
    private_key: CertificateIssuerPrivateKeyTypes,
    max_datagram_size: int,
) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        max_datagram_size=clamp_datagram_size(max_datagram_size),
        max_data=CONNECTION_WINDOW,
        max_stream_data=STREAM_WINDOW,
        idle_timeout=IDLE_TIMEOUT,
        congestion_control_algorithm=CONGESTION_CONTROL,
    )
    configuration.certificate = certificate
    configuration.private_key = private_key
    return configuration


# -- what of aioquic's internals this relies on ---------------------------------------------

_aioquic_checked = False


def check_aioquic() -> None:
    """IncompatibleDependency unless aioquic has every private that FlowControlledConnection,
    `bbr` and `reordering` override, replace, call or read (checked once per process, by the
    first connection, or at a role's start)."""
    global _aioquic_checked
    if _aioquic_checked:
        return
    need = Needs("aioquic")
    connection, recovery = aioquic.quic.connection, aioquic.quic.recovery
    stream, base = aioquic.quic.stream, aioquic.quic.congestion.base
    if need.attribute(connection, "QuicConnection", "Limit"):
        quic = connection.QuicConnection
        # overridden here and in reordering.install
        need.function(quic, "datagrams_to_send", params=("self", "now"))
        need.function(quic, "_write_connection_limits", params=("self", "builder", "space"))
        need.function(quic, "_write_stream_limits", params=("self", "builder", "space", "stream"))
        need.function(quic, "_initialize", params=("self", "peer_cid"))
        need.instance_attributes(
            quic,
            "_handshake_complete",
            "_ack_delay",
            "_max_datagram_size",
            "_loss",
            "_streams",
            "_spaces",
            "_local_max_data",
            "_local_max_streams_bidi",
            "_state",
            "tls",
        )
        need.instance_attributes(connection.Limit, "value", "sent", "used")
    if need.attribute(aioquic.tls, "Context"):
        need.instance_attributes(aioquic.tls.Context, "_peer_certificate")
    if need.attribute(recovery, "QuicPacketRecovery", "QuicPacketPacer", "QuicPacketSpace"):
        loss = recovery.QuicPacketRecovery
        # replaced on each connection by reordering.install
        need.function(
            loss, "on_ack_received", params=("self", "ack_rangeset", "ack_delay", "now", "space")
        )
        need.function(
            loss,
            "_on_packets_lost",
            takes=("congestion_event", "now", "packets", "persistent_congestion", "space"),
        )
        need.function(loss, "_detect_loss", params=("self", "now", "space"))
        need.function(loss, "_in_persistent_congestion", takes=("packets",))
        need.function(loss, "get_probe_timeout")
        need.instance_attributes(
            loss,
            "_cc",
            "_pacer",
            "_pto_count",
            "_send_probe",
            "_rtt_initial",
            "_rtt_initialized",
            "_rtt_latest",
            "_rtt_smoothed",
            "spaces",
            "bytes_in_flight",
        )
        pacer = recovery.QuicPacketPacer  # bbr.BbrPacer's base
        need.function(pacer, "__init__", params=("self", "max_datagram_size"))
        need.function(pacer, "next_send_time", params=("self", "now"))
        need.function(pacer, "update_after_send", params=("self", "now"))
        need.function(pacer, "update_bucket", params=("self", "now"))
        need.function(pacer, "update_rate", params=("self", "congestion_window", "smoothed_rtt"))
        need.instance_attributes(
            pacer, "_max_datagram_size", "bucket_max", "bucket_time", "packet_time"
        )
        need.instance_attributes(
            recovery.QuicPacketSpace,
            "received_packets",
            "is_application_data",
            "sent_packets",
            "largest_acked_packet",
            "largest_received_packet",
            "loss_time",
        )
    if need.attribute(recovery, "QuicPacketNumberWindow"):
        need.instance_attributes(recovery.QuicPacketNumberWindow, "_size")
    if need.attribute(aioquic.quic.packet_builder, "QuicSentPacket"):
        need.instance_attributes(
            aioquic.quic.packet_builder.QuicSentPacket, "packet_number", "sent_bytes", "sent_time"
        )
    if need.attribute(stream, "QuicStream", "QuicStreamSender", "QuicStreamReceiver"):
        need.instance_attributes(
            stream.QuicStream, "sender", "receiver", "stream_id", "max_stream_data_local"
        )
        need.instance_attributes(
            stream.QuicStreamSender, "buffer_is_empty", "highest_offset", "_buffer_stop"
        )
        need.instance_attributes(stream.QuicStreamReceiver, "highest_offset")
    if need.attribute(base, "QuicCongestionControl"):
        cc = base.QuicCongestionControl  # what bbr.BbrCongestionControl implements
        need.function(cc, "__init__", params=("self", "max_datagram_size"))
        need.function(cc, "on_packet_acked", params=("self", "now", "packet"))
        need.function(cc, "on_packet_sent", params=("self", "packet"))
        need.function(cc, "on_packets_expired", params=("self", "packets"))
        need.function(cc, "on_packets_lost", params=("self", "now", "packets"))
        need.function(cc, "on_persistent_congestion", params=("self",))
        need.function(cc, "on_rtt_measurement", params=("self", "now", "rtt"))
        need.function(cc, "get_log_data", params=("self",))
        need.instance_attributes(cc, "congestion_window", "bytes_in_flight")
    need.verify()
    _aioquic_checked = True


# -- flow control that follows consumption -------------------------------------------------


class FlowControlledConnection(QuicConnection):
    """A QuicConnection whose receive windows open as the application consumes data.

    aioquic doubles a window whenever the peer has used half of it, whatever the
    application did with the data; a destination slower than the tunnel would then make
    us buffer without bound. Here credit is `consumed + window`. The two overrides reuse
    aioquic's frame writing and only hide the "used" counters it would double on.
    """

    def __init__(
        self, *, receive_window: int = reordering.DEFAULT_RECEIVE_WINDOW, **kwargs: Any
    ) -> None:
        check_aioquic()
        super().__init__(**kwargs)
        self._bbr = bbr.install(self)
        #: how late a packet may arrive and be taken (reordering.py)
        self.reordering = reordering.install(self, receive_window)
        self._consumed: dict[int, int] = {}
        #: bytes delivered to the application and not yet read by it
        self._app_buffered = 0
        self._local_max_streams_bidi.value = MAX_STREAMS
        self._local_max_streams_bidi.sent = MAX_STREAMS
        #: the handshake's completion has been acted on (datagram size, ack delay)
        self._steady = False

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        if not self._steady and self._handshake_complete:
            self._steady = True
            self._ack_delay = ACK_DELAY
            if self._max_datagram_size <= MIN_DATAGRAM_SIZE:
                self._set_datagram_size(STEADY_DATAGRAM_SIZE)
        datagrams = super().datagrams_to_send(now)
        cc = self._bbr
        if (
            cc is not None
            and cc.bytes_in_flight + self._max_datagram_size <= cc.congestion_window
            and self._loss._pacer.next_send_time(now) is None
            and all(stream.sender.buffer_is_empty for stream in self._streams.values())
        ):
            # Window and pacing had room and no stream holds unsent data: the application
            # had nothing more. (Data held back by the peer's flow control does not count:
            # on a lossy path that is the path's doing, a hole the receiver waits on.)
            cc.on_app_limited()
        return datagrams

    def _set_datagram_size(self, size: int) -> None:
        """Send datagrams of at most `size` bytes from now on (the controller and the
        pacer count in datagrams too)."""
        self._max_datagram_size = size
        loss = self._loss
        loss._pacer._max_datagram_size = size
        if self._bbr is not None:
            self._bbr.set_datagram_size(size)

    def data_delivered(self, nbytes: int) -> None:
        self._app_buffered += nbytes

    def stream_consumed(self, stream_id: int, nbytes: int) -> bool:
        """Record consumed bytes; True when enough credit is due to be worth a packet."""
        consumed = self._consumed.get(stream_id, 0) + nbytes
        self._consumed[stream_id] = consumed
        self._app_buffered -= nbytes
        stream = self._streams.get(stream_id)
        if (
            stream is not None
            and stream.max_stream_data_local
            and consumed + STREAM_WINDOW - stream.max_stream_data_local >= STREAM_WINDOW // 4
        ):
            return True
        return self._connection_credit() - self._local_max_data.value >= CONNECTION_WINDOW // 4

    def stream_dropped(self, stream_id: int, unread: int) -> None:
        """The application gave up a stream with `unread` bytes never read."""
        self._consumed.pop(stream_id, None)
        self._app_buffered -= unread

    def path_changed(self, now: float) -> None:
        """What is in flight left through a path that is gone: send it again now.

        Waiting for loss detection would cost a probe timeout, doubled for every probe
        the dead path swallowed; instead every unacknowledged packet is declared lost
        (not as a congestion event: the network did not get worse, it changed) and a
        probe is sent at once.
        """
        loss = self._loss
        loss._pto_count = 0
        if self._bbr is not None:
            self._bbr.reset()
        for space in loss.spaces:
            if space.sent_packets:
                loss._on_packets_lost(
                    congestion_event=False,
                    now=now,
                    packets=tuple(space.sent_packets.values()),
                    space=space,
                )
        loss._send_probe()

    @property
    def bytes_in_flight(self) -> int:
        return self._loss.bytes_in_flight

    @property
    def smoothed_rtt(self) -> float:
        return self._loss._rtt_smoothed

    @property
    def probe_timeout(self) -> float:
        """QUIC's probe timeout now (RFC 9002, 6.2.1): smoothed RTT, four variances and
        the peer's max_ack_delay; twice the initial RTT before any sample."""
        return float(self._loss.get_probe_timeout())

    def _connection_credit(self) -> int:
        return self._local_max_data.used - self._app_buffered + CONNECTION_WINDOW

    def send_backlog(self, stream_id: int) -> int:
        """Bytes written to a stream and never sent yet."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return max(0, sender._buffer_stop - sender.highest_offset)

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: Any) -> None:
        max_data = self._local_max_data
        target = self._connection_credit()
        if target - max_data.value >= CONNECTION_WINDOW // 4:
            max_data.value = target
        used, max_data.used = max_data.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            max_data.used = used

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: Any, stream: AioquicStream
    ) -> None:
        if stream.max_stream_data_local:
            target = self._consumed.get(stream.stream_id, 0) + STREAM_WINDOW  # type: ignore[arg-type]
            if target - stream.max_stream_data_local >= STREAM_WINDOW // 4:
                stream.max_stream_data_local = target
        receiver = stream.receiver
        highest, receiver.highest_offset = receiver.highest_offset, 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest


# -- the asyncio shell ---------------------------------------------------------------------


Sender = Callable[[bytes], None]


class QuicStream:
    """One bidirectional QUIC stream as the application sees it."""

    def __init__(self, session: QuicSession, stream_id: int) -> None:
        self.stream_id = stream_id
        self._session = session
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._write_closed = False

    # receiving
    def _feed(self, data: bytes, end_stream: bool) -> None:
        if data:
            self._chunks.append(data)
            self._session._conn.data_delivered(len(data))
        if end_stream:
            self._eof = True
        self._readable.set()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self._writable.set()

    async def read(self) -> bytes:
        """The next chunk of data; b"" at end of stream. Raises StreamReset/SessionClosed."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._session._consumed(self.stream_id, len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        """Read exactly n bytes (for headers); leftovers stay readable."""
        parts: list[bytes] = []
        have = 0
        while have < n:
            chunk = await self.read()
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if have > n:
            self.unread(data[n:])
        return data[:n]

    def unread(self, data: bytes) -> None:
        """Put bytes back at the front; they count as unread again."""
        if data:
            self._session._conn.stream_consumed(self.stream_id, -len(data))
            self._chunks.appendleft(data)
            self._readable.set()

    # sending
    async def write(self, data: bytes) -> None:
        """Queue data; waits while the unacknowledged backlog is above the high-water mark."""
        if self._error is not None:
            raise self._error
        if self._write_closed:
            raise SessionClosed("stream already closed for writing")
        self._session._send(self.stream_id, data, end_stream=False)
        if self._session._backlog(self.stream_id) > SEND_HIGH_WATER:
            self._writable.clear()
            self._session._blocked_writers.add(self)
            await self._writable.wait()
            if self._error is not None:
                raise self._error

    def write_eof(self) -> None:
        if self._write_closed or self._error is not None:
            return
        self._write_closed = True
        self._session._send(self.stream_id, b"", end_stream=True)

    def reset(self, error_code: int = ERROR_STREAM_ABORTED) -> None:
        """Abort both directions."""
        if self._error is None:
            self._session._reset(self.stream_id, error_code)
            self._fail(StreamReset(error_code))

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks


class HeaderDecoder(Protocol[HeaderT]):
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> HeaderT | None: ...
    @property
    def trailing_data(self) -> bytes: ...


async def read_header(stream: QuicStream, decoder: HeaderDecoder[HeaderT], what: str) -> HeaderT:
    """Read until `decoder` yields its message; bytes after it stay readable on the stream.
    Raises the decoder's error on malformed input, or EOFError naming `what`."""
    while True:
        data = await stream.read()
        if not data:
            raise EOFError(f"the stream ended before {what}")
        decoder.receive_data(data)
        message = decoder.next_event()
        if message is not None:
            stream.unread(decoder.trailing_data)
            return message


async def read_to_end(stream: QuicStream, limit: int) -> bytes:
    """Everything the peer writes on `stream` up to its end; ValueError past `limit`."""
    data = bytearray()
    while chunk := await stream.read():
        data += chunk
        if len(data) > limit:
            raise ValueError(f"more than {limit} bytes on one stream")
    return bytes(data)


class QuicSession:
    """Drive one aioquic connection: feed datagrams in, send datagrams out, run timers."""

    def __init__(
        self,
        connection: FlowControlledConnection,
        *,
        name: str,
        pin: str | None = None,
        on_stream: Callable[[QuicStream], None] | None = None,
        on_event: Callable[[events.QuicEvent], None] | None = None,
    ) -> None:
        self.name = name
        self._conn = connection
        self._pin = pin
        self._on_stream = on_stream
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._sender: Sender | None = None
        self._streams: dict[int, QuicStream] = {}
        self._blocked_writers: set[QuicStream] = set()
        #: streams the application finished while aioquic still tracks them
        self._retired: set[int] = set()
        self._transmit_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.last_heard = self._loop.time()
        self.last_stream_data = 0.0

    # paths
    def set_sender(self, sender: Sender | None) -> None:
        """Send from now on through `sender` (None: no path; datagrams are dropped)."""
        self._sender = sender
        if sender is not None:
            self._schedule_transmit()

    def switch_path(self, sender: Sender) -> None:
        """Move to another path: resend what is in flight through it, now."""
        self._sender = sender
        if not self.closed.done():
            self._conn.path_changed(self._loop.time())
            self._schedule_transmit()

    @property
    def has_path(self) -> bool:
        return self._sender is not None

    def expects_traffic(self, recent: float = 2.0) -> bool:
        """Is something owed to us? Data of ours is unacknowledged, or a stream was
        receiving data a moment ago (a download that stops is a symptom)."""
        if self._conn.bytes_in_flight > 0:
            return True
        return bool(self._streams) and self._loop.time() - self.last_stream_data < recent

    @property
    def smoothed_rtt(self) -> float:
        return self._conn.smoothed_rtt

    @property
    def probe_timeout(self) -> float:
        return self._conn.probe_timeout

    # lifecycle
    def connect(self) -> None:
        self._conn.connect(PATH_ADDRESS, now=self._loop.time())
        self._schedule_transmit()

    def close(self, error_code: int = ERROR_NONE, reason: str = "") -> None:
        if self.closed.done():
            return
        if self._conn._state not in (
            QuicConnectionState.CLOSING,
            QuicConnectionState.DRAINING,
            QuicConnectionState.TERMINATED,
        ):
            self._conn.close(error_code=error_code, reason_phrase=reason)
            self._transmit()
        self._terminate(reason or "closed locally")

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    def ping(self) -> None:
        """Send a PING (keeps the session and the path alive while idle)."""
        if not self.closed.done():
            self._conn.send_ping(0)
            self._schedule_transmit()

    def open_stream(self) -> QuicStream:
        if self.closed.done():
            raise SessionClosed(f"session closed: {self.closed.result()}")
        stream_id = self._conn.get_next_available_stream_id()
        stream = QuicStream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    # input
    def authenticated(self) -> int:
        """The largest 1-RTT packet number received and decrypted so far (-1: none): it
        grows only with a new packet of the peer's, never with a replayed or forged one."""
        space = self._conn._spaces.get(aioquic.tls.Epoch.ONE_RTT)
        return -1 if space is None else int(space.largest_received_packet)

    def datagram_received(self, data: bytes) -> None:
        if self.closed.done():
            return
        self.datagrams_in += 1
        self.last_heard = self._loop.time()
        self._conn.receive_datagram(data, PATH_ADDRESS, now=self.last_heard)
        self._process_events()
        if self._blocked_writers:
            self._wake_writers()
        self._schedule_transmit()

    # internals used by QuicStream
    def _send(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._conn.send_stream_data(stream_id, data, end_stream=end_stream)
        self._schedule_transmit()

    def _backlog(self, stream_id: int) -> int:
        return self._conn.send_backlog(stream_id)

    def _consumed(self, stream_id: int, nbytes: int) -> None:
        if self._conn.stream_consumed(stream_id, nbytes):
            self._schedule_transmit()

    def _reset(self, stream_id: int, error_code: int) -> None:
        with contextlib.suppress(Exception):  # the stream may be finished on one side
            self._conn.reset_stream(stream_id, error_code)
        with contextlib.suppress(Exception):
            self._conn.stop_stream(stream_id, error_code)
        self._schedule_transmit()

    def _wake_writers(self) -> None:
        for stream in list(self._blocked_writers):
            if self._backlog(stream.stream_id) <= SEND_LOW_WATER:
                self._blocked_writers.discard(stream)
                stream._writable.set()

    def _schedule_transmit(self) -> None:
        # Coalesce: many writes and datagrams in one loop turn produce one flush, so acks
        # and data share packets (each packet costs a DataChannel message downstream).
        if self._transmit_handle is None and not self.closed.done():
            self._transmit_handle = self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_handle = None
        now = self._loop.time()
        sender = self._sender
        for data, _addr in self._conn.datagrams_to_send(now=now):
            self.datagrams_out += 1
            if sender is not None:
                sender(data)
        if self._blocked_writers:
            self._wake_writers()
        timer_at = self._conn.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = timer_at
            if timer_at is not None:
                self._timer = self._loop.call_at(timer_at, self._on_timer)
        if self._conn._state == QuicConnectionState.TERMINATED:
            self._process_events()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._conn.handle_timer(now=self._loop.time())
        self._process_events()
        self._transmit()

    def _process_events(self) -> None:
        while (event := self._conn.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is None:
                    if event.stream_id in self._retired:
                        continue  # late data for a stream the application already closed
                    stream = QuicStream(self, event.stream_id)
                    self._streams[event.stream_id] = stream
                    if self._on_stream is not None:
                        self._on_stream(stream)
                    else:
                        stream.reset()
                        continue
                stream._feed(event.data, event.end_stream)
                self.last_stream_data = self.last_heard
            elif isinstance(event, events.StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._fail(StreamReset(event.error_code))
            elif isinstance(event, events.StopSendingReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.reset(event.error_code)
            elif isinstance(event, events.HandshakeCompleted):
                self._handshake_completed()
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error code {event.error_code:#x}"
                if event.error_code == ERROR_PIN_MISMATCH and not self.ready.done():
                    self.ready.set_exception(PinMismatch(reason))
                self._terminate(reason)
            if self._on_event is not None:
                self._on_event(event)

    def _handshake_completed(self) -> None:
        if self._pin is not None:
            certificate = self._conn.tls._peer_certificate
            got = spki_pin(certificate) if certificate is not None else "none"
            if got != self._pin:
                message = (
                    f"the egress key does not match the pin: expected {self._pin}, got {got}; "
                    "check the bridge line, or someone is in the middle"
                )
                self._conn.close(error_code=ERROR_PIN_MISMATCH, reason_phrase="pin mismatch")
                self._transmit()
                if not self.ready.done():
                    self.ready.set_exception(PinMismatch(message))
                self._terminate(message)
                return
        if not self.ready.done():
            self.ready.set_result(None)

    def _terminate(self, reason: str) -> None:
        if self.closed.done():
            return
        self.closed.set_result(reason)
        if not self.ready.done():
            self.ready.set_exception(SessionClosed(reason))
            self.ready.exception()  # mark retrieved: nobody may be waiting
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        error = SessionClosed(f"session closed: {reason}")
        for stream in self._streams.values():
            stream._fail(error)
        self._streams.clear()
        self._blocked_writers.clear()

    def stream_finished(self, stream: QuicStream) -> None:
        """The application is done with a stream: drop our bookkeeping."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        self._blocked_writers.discard(stream)
        unread = sum(len(chunk) for chunk in stream._chunks)
        stream._chunks.clear()
        self._conn.stream_dropped(stream.stream_id, unread)
        live = self._conn._streams
        if stream.stream_id in live:
            self._retired.add(stream.stream_id)
        if len(self._retired) > 64:
            self._retired = {sid for sid in self._retired if sid in live}
