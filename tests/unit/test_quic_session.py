"""Two QuicSessions joined in memory: the shell, flow control, backpressure and the pin."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable

import pytest

from unwall.egress.identity import generate_identity
from unwall.egress.router import NewSession, SessionRouter
from unwall.transport import quic
from unwall.transport.quic import (
    FlowControlledConnection,
    PinMismatch,
    QuicSession,
    QuicStream,
    StreamReset,
)

IDENTITY = generate_identity()


def _pair(
    pin: str | None, on_stream: Callable[[QuicStream], None], size: int = 16384
) -> tuple[QuicSession, list[QuicSession]]:
    client = QuicSession(
        FlowControlledConnection(configuration=quic.client_configuration(size)),
        name="client",
        pin=pin,
    )
    loop = asyncio.get_running_loop()
    servers: list[QuicSession] = []

    def make(new: NewSession) -> QuicSession:
        server = QuicSession(
            FlowControlledConnection(
                configuration=quic.server_configuration(
                    IDENTITY.certificate, IDENTITY.private_key, new.datagram_size
                ),
                original_destination_connection_id=new.original_destination_cid,
            ),
            name="server",
            on_stream=on_stream,
            on_event=lambda event: router.on_event(server, event),
        )
        server.set_sender(lambda data: loop.call_soon(client.datagram_received, data))
        servers.append(server)
        return server

    router = SessionRouter(make)

    def to_server(data: bytes) -> None:
        session = router.route(data)
        if session is not None:
            session.datagram_received(data)

    # Deliver on the next loop turn, as a real path would.
    client.set_sender(lambda data: loop.call_soon(to_server, data))
    return client, servers


async def _echo(stream: QuicStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    stream.write_eof()


async def test_echo_and_pin_ok() -> None:
    tasks: list[asyncio.Task[None]] = []
    client, _server = _pair(IDENTITY.pin, lambda s: tasks.append(asyncio.create_task(_echo(s))))
    client.connect()
    await asyncio.wait_for(client.ready, 5)
    stream = client.open_stream()
    payload = os.urandom(3_000_000)

    async def send() -> None:
        for i in range(0, len(payload), 50_000):
            await stream.write(payload[i : i + 50_000])
        stream.write_eof()

    sender = asyncio.create_task(send())
    received = bytearray()
    while data := await asyncio.wait_for(stream.read(), 10):
        received += data
    await sender
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    client.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_chunk_session_sends_smaller_datagrams_after_its_handshake() -> None:
    """A 1,200-byte session pads its Initial to 1,200 and then keeps every datagram within
    STEADY_DATAGRAM_SIZE (one SCTP packet of a browser's stack), both ways."""
    tasks: list[asyncio.Task[None]] = []
    client, servers = _pair(
        IDENTITY.pin, lambda s: tasks.append(asyncio.create_task(_echo(s))), size=1200
    )
    sizes: dict[str, list[int]] = {"client": [], "server": []}

    def recording(session: QuicSession, name: str) -> None:
        send = session._sender
        assert send is not None

        def record(data: bytes) -> None:
            # Only what a session sends once its own handshake is done: the server's ends
            # when the client's Finished arrives, after the client is ready, and until then
            # it may retransmit its padded Initial (a PTO on a loaded machine).
            if session._conn._steady:
                sizes[name].append(len(data))
            send(data)

        session._sender = record

    initial: list[int] = []
    send = client._sender
    assert send is not None

    def first(data: bytes) -> None:
        initial.append(len(data))
        send(data)

    client._sender = first
    assert client._conn._ack_delay < quic.ACK_DELAY  # aioquic's own during the handshake
    client.connect()
    await asyncio.wait_for(client.ready, 5)
    assert max(initial) == 1200  # the Initial, padded
    client._sender = send
    recording(client, "client")
    recording(servers[0], "server")
    stream = client.open_stream()
    payload = os.urandom(300_000)
    await stream.write(payload)
    stream.write_eof()
    received = bytearray()
    while data := await asyncio.wait_for(stream.read(), 10):
        received += data
    assert received == payload
    for name, session in (("client", client), ("server", servers[0])):
        # and, after it, acknowledgements are delayed up to ACK_DELAY
        assert session._conn._ack_delay == quic.ACK_DELAY, name
        assert max(sizes[name]) <= quic.STEADY_DATAGRAM_SIZE, name
        assert max(sizes[name]) > quic.STEADY_DATAGRAM_SIZE - 100, name  # full, not tiny
    client.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_wrong_pin_fails_before_any_stream() -> None:
    opened: list[QuicStream] = []
    wrong = quic.spki_pin(generate_identity().certificate)
    client, server = _pair(wrong, opened.append)
    client.connect()
    with pytest.raises(PinMismatch, match="does not match the pin"):
        await asyncio.wait_for(client.ready, 5)
    with pytest.raises(quic.SessionClosed):
        client.open_stream()
    await asyncio.sleep(0.05)
    assert opened == []
    # The egress learns of the failure through CONNECTION_CLOSE (after its draining period).
    # During the handshake an application close travels as APPLICATION_ERROR (0xc),
    # its reason stripped (RFC 9000, section 10.2.3).
    reason = await asyncio.wait_for(server[0].closed, 5)
    assert reason in ("pin mismatch", "error code 0xc")


async def test_slow_reader_bounds_buffering() -> None:
    """A reader that never reads must stop the writer, not grow memory."""
    held: list[QuicStream] = []
    client, _server = _pair(None, held.append)
    client.connect()
    await asyncio.wait_for(client.ready, 5)
    stream = client.open_stream()
    chunk = b"x" * 65536
    written = 0

    async def write_forever() -> None:
        nonlocal written
        while True:
            await stream.write(chunk)
            written += len(chunk)

    writer = asyncio.create_task(write_forever())
    await asyncio.sleep(1.0)
    assert not writer.done()
    # Window at the receiver plus the sender's high-water mark, plus one chunk of slack.
    assert written <= quic.STREAM_WINDOW + quic.SEND_HIGH_WATER + 2 * len(chunk)
    assert held, "server saw the stream"
    # Reading unblocks the writer.
    before = written
    consumed = 0
    while consumed < 2 * quic.STREAM_WINDOW:
        consumed += len(await asyncio.wait_for(held[0].read(), 5))
    await asyncio.sleep(0.3)
    assert written > before
    writer.cancel()
    client.close()


async def test_reset_reaches_peer() -> None:
    got: list[QuicStream] = []
    client, _server = _pair(None, got.append)
    client.connect()
    await asyncio.wait_for(client.ready, 5)
    stream = client.open_stream()
    await stream.write(b"hello")
    await asyncio.sleep(0.1)
    stream.reset()
    peer = got[0]
    assert await peer.read() == b"hello"
    with pytest.raises(StreamReset):
        await asyncio.wait_for(peer.read(), 5)
    client.close()
