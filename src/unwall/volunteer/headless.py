"""The headless volunteer: answers clients' WebRTC offers and relays to the egress.

The volunteer is a dumb pipe on purpose: each DataChannel message goes unchanged into one
WebSocket message to the egress and back. It never parses what it carries (QUIC, encrypted
end to end between client and egress), so it learns nothing and can be replaced mid-session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCDataChannel, RTCPeerConnection

from unwall.transport import rtc
from unwall.transport.broker_client import BrokerClient, BrokerUnavailable, OfferGone
from unwall.transport.droptail import DropTailQueue
from unwall.transport.quic import MAX_DATAGRAM_SIZE
from unwall.wire import broker as messages

log = logging.getLogger("unwall.volunteer")

#: Bound of each direction's queue; above it messages are dropped and QUIC recovers.
QUEUE_BYTES = 1 << 20
CHANNEL_OPEN_TIMEOUT = 20.0


@dataclass
class VolunteerConfig:
    broker_url: str
    egress_url: str
    capacity: int = 8
    ice_servers: list[str] = field(default_factory=list)
    volunteer_id: str = field(default_factory=lambda: secrets.token_urlsafe(16))


@dataclass
class VolunteerStats:
    clients_now: int = 0
    clients_total: int = 0
    bytes_to_egress: int = 0
    bytes_to_clients: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Volunteer:
    def __init__(self, config: VolunteerConfig) -> None:
        self.config = config
        self.stats = VolunteerStats()
        self._relays: set[asyncio.Task[None]] = set()
        self._peer_connections: set[RTCPeerConnection] = set()

    async def run(self) -> None:
        """Poll the broker for clients until cancelled."""
        async with aiohttp.ClientSession() as http:
            broker = BrokerClient(http, self.config.broker_url)
            backoff = 1.0
            try:
                while True:
                    if self.stats.clients_now >= self.config.capacity:
                        await asyncio.sleep(0.5)
                        continue
                    try:
                        reply = await broker.poll(
                            self.config.volunteer_id,
                            self.config.capacity,
                            self.stats.clients_now,
                            "headless",
                        )
                    except BrokerUnavailable as exc:
                        log.warning("%s; retrying in %.0f s", exc, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                    backoff = 1.0
                    if isinstance(reply, messages.PollOffer):
                        self._spawn(self._serve(http, broker, reply))
            finally:
                await self.stop()

    async def stop(self) -> None:
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        for pc in list(self._peer_connections):
            await pc.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)

    async def _serve(
        self, http: aiohttp.ClientSession, broker: BrokerClient, offer: messages.PollOffer
    ) -> None:
        pc = rtc.new_peer_connection(self.config.ice_servers)
        self._peer_connections.add(pc)
        channel_ready: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if not channel_ready.done():
                channel_ready.set_result(channel)

        self.stats.clients_now += 1
        try:
            try:
                await pc.setRemoteDescription(rtc.offer_description(offer.sdp))
                if pc.sctp is None:
                    raise ValueError("the offer has no data channel")
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:  # aiortc raises many kinds on hostile SDP
                raise ValueError(f"{type(exc).__name__}: {exc}") from exc
            await broker.answer(self.config.volunteer_id, offer.offer_id, pc.localDescription.sdp)
            channel = await asyncio.wait_for(channel_ready, CHANNEL_OPEN_TIMEOUT)
            self.stats.clients_total += 1
            log.info("client connected (%d now)", self.stats.clients_now)
            await self._relay(http, pc, channel)
        except OfferGone:
            log.info("a client gave up before our answer reached it")
        except TimeoutError:
            log.info("a client never opened its data channel; dropped it")
        except BrokerUnavailable as exc:
            log.warning("could not answer a client: %s", exc)
        except ValueError as exc:
            log.warning("rejected a malformed offer: %s", exc)
        finally:
            self.stats.clients_now -= 1
            self._peer_connections.discard(pc)
            await pc.close()

    async def _relay(
        self, http: aiohttp.ClientSession, pc: RTCPeerConnection, channel: RTCDataChannel
    ) -> None:
        try:
            ws = await http.ws_connect(
                self.config.egress_url,
                max_msg_size=MAX_DATAGRAM_SIZE + 1024,
                compress=0,
                heartbeat=30.0,
            )
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("cannot reach the egress at %s: %s", self.config.egress_url, exc)
            return
        closed = asyncio.Event()
        to_egress = DropTailQueue(ws.send_bytes, QUEUE_BYTES)
        stats = self.stats

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, bytes):
                stats.bytes_to_egress += len(message)
                if not to_egress.put(message):
                    stats.dropped += 1

        @channel.on("close")
        def on_close() -> None:
            closed.set()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                closed.set()

        async def egress_to_client() -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    break
                if channel.readyState != "open":
                    break
                if channel.bufferedAmount > QUEUE_BYTES:
                    stats.dropped += 1
                    continue
                channel.send(message.data)
                stats.bytes_to_clients += len(message.data)

        downstream = asyncio.create_task(egress_to_client())
        closed_wait = asyncio.create_task(closed.wait())
        try:
            await asyncio.wait(
                {downstream, closed_wait, to_egress.done}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            log.info(
                "client left (%d B to egress, %d B to client)",
                stats.bytes_to_egress,
                stats.bytes_to_clients,
            )
            downstream.cancel()
            closed_wait.cancel()
            await to_egress.close()
            await ws.close()
            with contextlib.suppress(asyncio.CancelledError):
                await downstream
