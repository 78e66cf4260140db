"""A QUIC session straight to an egress's relay endpoint, as a stranger (or a fake volunteer
that took an offer) would make one: tickets minted with the harness's secret, vouchers
shown or not, a stream to a site. Shared by the tests of issue 22's rows 3, 4 and 9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp

from unwall.local import LocalBridge
from unwall.transport import quic
from unwall.transport.quic import FlowControlledConnection, QuicSession, read_header
from unwall.wire import ticket
from unwall.wire.streamheader import StreamReply, StreamReplyDecoder, StreamTarget


def relay_url(bridge: LocalBridge, offer_id: str | None = None, forged: bool = False) -> str:
    """The egress's relay URL with a relay ticket for `offer_id` (None: no ticket)."""
    url = f"ws://{bridge.host}:{bridge.egress_port}/v1/relay"
    if offer_id is None:
        return url
    key = ticket.derive_key("not the operator's secret" if forged else bridge.secret)
    return f"{url}?offer={offer_id}&ticket={ticket.mint(key, offer_id, ticket.RELAY, time.time())}"


def voucher(bridge: LocalBridge, offer_id: str) -> ticket.Voucher:
    """What a real client of `offer_id` would show: the broker's ticket and its secret."""
    secret = os.urandom(ticket.SECRET_SIZE)
    key = ticket.derive_key(bridge.secret)
    return ticket.Voucher(ticket.mint(key, offer_id, ticket.commit(secret), time.time()), secret)


def offer_id() -> str:
    return secrets.token_urlsafe(16)


class DirectSession:
    """One QUIC session over one relay WebSocket, driven from the test."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        pin: str,
        first: DirectSession | None = None,
    ) -> None:
        self.ws = ws
        self.pin = pin
        self.session = QuicSession(
            FlowControlledConnection(configuration=quic.client_configuration(1200)),
            name="direct",
            pin=pin,
        )
        #: every session on this WebSocket (each takes only its own packets)
        self._siblings: list[QuicSession] = [] if first is None else first._siblings
        self._siblings.append(self.session)
        self._sends: asyncio.Queue[bytes] = asyncio.Queue()
        self.session.set_sender(self._sends.put_nowait)
        self._tasks = [asyncio.ensure_future(self._out())]
        if first is None:
            self._tasks.append(asyncio.ensure_future(self._pump_in()))

    def another(self) -> DirectSession:
        """A second session through the same relay WebSocket."""
        sibling = DirectSession(self.ws, self.pin, first=self)
        self._tasks += sibling._tasks
        return sibling

    async def _out(self) -> None:
        while True:
            data = await self._sends.get()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(data)

    async def _pump_in(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                for session in self._siblings:
                    session.datagram_received(message.data)

    async def handshake(self, timeout: float = 10.0) -> None:
        self.session.connect()
        await asyncio.wait_for(asyncio.shield(self.session.ready), timeout)

    async def show(self, shown: ticket.Voucher) -> StreamReply:
        from unwall.wire.streamheader import encode_voucher

        stream = self.session.open_stream()
        await stream.write(encode_voucher(shown))
        stream.write_eof()
        return await asyncio.wait_for(
            read_header(stream, StreamReplyDecoder(), "the voucher's reply"), 10
        )

    async def fetch(self, port: int, timeout: float = 15.0) -> tuple[StreamReply, bytes]:
        """GET / from 127.0.0.1:`port` through the egress: its reply, and the page."""
        stream = self.session.open_stream()
        await stream.write(
            StreamTarget("127.0.0.1", port).encode() + b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
        )
        reply = await asyncio.wait_for(
            read_header(stream, StreamReplyDecoder(), "the stream reply"), timeout
        )
        body = b""
        while reply.status == 0:
            data = await asyncio.wait_for(stream.read(), timeout)
            if not data:
                break
            body += data
        return reply, body

    async def close(self) -> None:
        self.session.close(0, "done")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()


@contextlib.asynccontextmanager
async def direct(http: aiohttp.ClientSession, url: str, pin: str) -> AsyncIterator[DirectSession]:
    ws = await http.ws_connect(url)
    session = DirectSession(ws, pin)
    try:
        yield session
    finally:
        await session.close()
