"""The client's tunnel: one QUIC session to the egress, carried through a volunteer.

The tunnel asks the broker for a volunteer, opens a WebRTC DataChannel to it, and runs the
QUIC session over that channel, one QUIC datagram per message. When the channel dies the
session stays: the tunnel finds another volunteer and points the session at it (the egress
finds the session by connection ID, whichever volunteer carries it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCDataChannel, RTCPeerConnection

from unwall.transport import quic, rtc
from unwall.transport.broker_client import BrokerClient, BrokerUnavailable, NoVolunteer
from unwall.transport.quic import FlowControlledConnection, PinMismatch, QuicSession, QuicStream

log = logging.getLogger("unwall.client")

PATH_SETUP_TIMEOUT = 20.0
#: An idle session pings this often, well inside the QUIC idle timeout.
KEEPALIVE_INTERVAL = 15.0
HANDSHAKE_TIMEOUT = 10.0
#: Bound on what waits in a DataChannel's send buffer; above it datagrams are dropped.
CHANNEL_BUFFER_BYTES = 1 << 20


class TunnelUnavailable(Exception):
    """No session to the egress could be had in time; the message says why."""


@dataclass
class TunnelConfig:
    broker_url: str
    pin: str
    ice_servers: list[str] = field(default_factory=list)
    #: how long a new proxied connection waits for the tunnel before it is refused
    stream_wait: float = 30.0


class VolunteerPath:
    """One DataChannel to one volunteer."""

    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel) -> None:
        self.pc = pc
        self.channel = channel
        self.dead = asyncio.Event()
        self.dropped = 0
        self.session: QuicSession | None = None

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, bytes) and self.session is not None:
                self.session.datagram_received(message)

        @channel.on("close")
        def on_close() -> None:
            self.dead.set()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.dead.set()

    @property
    def max_message_size(self) -> int:
        return rtc.remote_max_message_size(self.pc) or quic.MAX_DATAGRAM_SIZE

    def send(self, data: bytes) -> None:
        if self.dead.is_set() or self.channel.readyState != "open":
            return
        if self.channel.bufferedAmount > CHANNEL_BUFFER_BYTES:
            self.dropped += 1
            return
        self.channel.send(data)

    async def close(self) -> None:
        self.dead.set()
        await self.pc.close()


class Tunnel:
    def __init__(self, config: TunnelConfig) -> None:
        self.config = config
        self.pin = quic.normalize_pin(config.pin)
        self.session: QuicSession | None = None
        self.path: VolunteerPath | None = None
        self._ready = asyncio.Event()
        self.last_error = "the tunnel is starting"
        self.first_ready_at: float | None = None

    # what the proxies call
    async def open_stream(self) -> QuicStream:
        """A new stream to the egress; waits up to `stream_wait` for the tunnel."""
        try:
            await asyncio.wait_for(self._ready.wait(), self.config.stream_wait)
        except TimeoutError:
            raise TunnelUnavailable(self.last_error) from None
        assert self.session is not None
        return self.session.open_stream()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # the loop that keeps a session and a path
    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            broker = BrokerClient(http, self.config.broker_url)
            backoff = 1.0
            try:
                while True:
                    try:
                        await self._connect_once(broker)
                        backoff = 1.0
                    except (NoVolunteer, BrokerUnavailable, TunnelUnavailable, PinMismatch) as exc:
                        self.last_error = str(exc)
                        log.warning("%s; retrying in %.0f s", exc, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
            finally:
                self._ready.clear()
                if self.session is not None:
                    self.session.close(quic.ERROR_SHUTDOWN, "client shutting down")
                if self.path is not None:
                    await self.path.close()

    async def _connect_once(self, broker: BrokerClient) -> None:
        path = await self._open_path(broker)
        self.path = path
        try:
            session = self.session
            if session is None or session.is_closed:
                session = self._new_session(path.max_message_size)
                path.session = session
                session.set_sender(path.send)
                session.connect()
                try:
                    await asyncio.wait_for(asyncio.shield(session.ready), HANDSHAKE_TIMEOUT)
                except TimeoutError:
                    session.close(quic.ERROR_PATH_LOST, "handshake timed out")
                    raise TunnelUnavailable(
                        "the QUIC handshake with the egress timed out "
                        "(is the volunteer's egress reachable?)"
                    ) from None
                except quic.SessionClosed as exc:
                    raise TunnelUnavailable(f"the egress closed the session: {exc}") from None
                self.session = session
                log.info("tunnel ready: session with the egress established, pin verified")
            else:
                path.session = session
                session.set_sender(path.send)
                log.info("tunnel moved to a new volunteer")
            if self.first_ready_at is None:
                self.first_ready_at = asyncio.get_running_loop().time()
            self._ready.set()
            dead: asyncio.Future[Any] = asyncio.ensure_future(path.dead.wait())
            keepalive = asyncio.ensure_future(_keepalive(session))
            await asyncio.wait({dead, session.closed}, return_when=asyncio.FIRST_COMPLETED)
            dead.cancel()
            keepalive.cancel()
            if session.is_closed:
                log.warning("session with the egress ended: %s", session.closed.result())
                self.session = None
            else:
                log.warning("volunteer path lost; looking for another volunteer")
                session.set_sender(None)
        finally:
            self._ready.clear()
            self.path = None
            await path.close()

    def _new_session(self, datagram_size: int) -> QuicSession:
        configuration = quic.client_configuration(min(datagram_size, quic.MAX_DATAGRAM_SIZE))
        return QuicSession(
            FlowControlledConnection(configuration=configuration), name="tunnel", pin=self.pin
        )

    async def _open_path(self, broker: BrokerClient) -> VolunteerPath:
        pc = rtc.new_peer_connection(self.config.ice_servers)
        channel = pc.createDataChannel(rtc.DATA_CHANNEL_LABEL, ordered=True)
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        @channel.on("open")
        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        path = VolunteerPath(pc, channel)
        connected = False
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await broker.offer(pc.localDescription.sdp)
            try:
                await pc.setRemoteDescription(rtc.answer_description(answer))
            except Exception as exc:  # aiortc raises many kinds on hostile SDP
                raise ValueError(f"{type(exc).__name__}: {exc}") from exc
            dead: asyncio.Future[Any] = asyncio.ensure_future(path.dead.wait())
            try:
                done, _ = await asyncio.wait(
                    {opened, dead}, timeout=PATH_SETUP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                dead.cancel()
            if opened not in done:
                raise TunnelUnavailable("could not connect to the volunteer (WebRTC failed)")
            connected = True
        except ValueError as exc:  # aiortc's verdict on a malformed answer
            raise TunnelUnavailable(f"the volunteer's answer was malformed: {exc}") from exc
        finally:
            if not connected:
                with contextlib.suppress(Exception):
                    await pc.close()
        log.info("connected to a volunteer")
        return path


async def _keepalive(session: QuicSession) -> None:
    while not session.is_closed:
        await asyncio.sleep(KEEPALIVE_INTERVAL)
        session.ping()
