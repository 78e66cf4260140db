"""TURN against a real coturn on loopback: the broker's derived credentials (coturn's REST
API scheme) allocate a relay, wrong or expired ones do not, and an aiortc pair whose one
side may use only relay candidates connects through it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCDataChannel
from coturn import Coturn, coturn

from unwall.broker.turn import TurnIssuer, turn_password
from unwall.transport import webrtc
from unwall.transport.aiortc_engine import engine
from unwall.wire.broker import TurnServer

SECRET = "a-secret-the-broker-shares-with-coturn"


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[Coturn]:
    with coturn(tmp_path, ("127.0.0.1",), stun_only=False, auth_secret=SECRET) as server:
        yield server


@pytest.fixture
async def loopback_host() -> AsyncIterator[None]:
    """ICE host candidates on 127.0.0.1 only (aioice skips loopback by itself)."""
    before = webrtc.pinned_host_addresses()
    webrtc.set_host_addresses(["127.0.0.1"])
    yield
    webrtc.set_host_addresses(before)


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(b"echo:" + data, addr)


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_derived_credentials_allocate_and_relay(turn_server: Coturn, transport: str) -> None:
    credentials = TurnIssuer(SECRET, (turn_server.turn_url(transport),), ttl=300).issue(time.time())
    loop = asyncio.get_running_loop()
    echo_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    echo_address = echo_transport.get_extra_info("sockname")
    relay, inbox = await create_turn_endpoint(
        Inbox,
        ("127.0.0.1", turn_server.port),
        credentials.username,
        credentials.credential,
        transport=transport,
    )
    try:
        relayed = relay.get_extra_info("sockname")
        assert relayed[0] == "127.0.0.1" and relayed[1] != turn_server.port
        relay.sendto(b"through the relay", echo_address)
        assert await asyncio.wait_for(inbox.received.get(), 5) == b"echo:through the relay"
    finally:
        relay.close()
        echo_transport.close()


@pytest.mark.parametrize(
    ("username", "secret"),
    [
        (f"{int(time.time()) + 300}:someone", "not-the-secret"),  # wrong secret
        (f"{int(time.time()) - 10}:someone", SECRET),  # expired
    ],
    ids=["wrong-secret", "expired"],
)
async def test_bad_credentials_are_refused(turn_server: Coturn, username: str, secret: str) -> None:
    with pytest.raises(stun.TransactionFailed) as info:
        await create_turn_endpoint(
            asyncio.DatagramProtocol,
            ("127.0.0.1", turn_server.port),
            username,
            turn_password(secret, username),
        )
    assert info.value.response.error_code == 401


async def test_aiortc_pair_connects_only_through_the_relay(
    turn_server: Coturn, loopback_host: None
) -> None:
    credentials: TurnServer = TurnIssuer(SECRET, (turn_server.turn_url(),)).issue(time.time())
    client = engine.new_peer_connection([credentials], relay_only=True)
    volunteer = engine.new_peer_connection([])
    try:
        channel = client.createDataChannel(webrtc.DATA_CHANNEL_LABEL)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        echoed: asyncio.Queue[bytes] = asyncio.Queue()
        channel.on("message", echoed.put_nowait)

        @volunteer.on("datachannel")
        def on_datachannel(remote: RTCDataChannel) -> None:
            remote.on("message", lambda message: remote.send(b"echo:" + message))

        await client.setLocalDescription(await client.createOffer())
        offer = client.localDescription.sdp
        candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay" in line for line in candidates), candidates
        await volunteer.setRemoteDescription(engine.offer_description(offer))
        await volunteer.setLocalDescription(await volunteer.createAnswer())
        await client.setRemoteDescription(engine.answer_description(volunteer.localDescription.sdp))
        await asyncio.wait_for(opened.wait(), 20)
        channel.send(b"hello")
        assert await asyncio.wait_for(echoed.get(), 10) == b"echo:hello"
    finally:
        await client.close()
        await volunteer.close()
