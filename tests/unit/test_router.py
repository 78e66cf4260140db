"""The egress session router: datagrams to sessions by connection ID, never by path."""

from __future__ import annotations

import asyncio

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from unwall.egress.identity import generate_identity
from unwall.egress.router import NewSession, Retry, SessionRouter
from unwall.transport import quic
from unwall.transport.quic import FlowControlledConnection, QuicSession

IDENTITY = generate_identity()


def _initial(size: int = 1200) -> bytes:
    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[quic.ALPN], max_datagram_size=size
        )
    )
    client.connect(quic.PATH_ADDRESS, now=0.0)
    return client.datagrams_to_send(now=0.0)[0][0]


def _router(created: list[NewSession], max_sessions: int = 10) -> SessionRouter:
    def make(new: NewSession) -> QuicSession:
        created.append(new)
        return QuicSession(
            FlowControlledConnection(
                configuration=quic.server_configuration(
                    IDENTITY.certificate, IDENTITY.private_key, new.datagram_size
                ),
                original_destination_connection_id=new.original_destination_cid,
                retry_source_connection_id=new.retry_source_cid,
            ),
            name=f"s{len(created)}",
        )

    return SessionRouter(make, max_sessions=max_sessions)


async def test_initial_creates_session_sized_by_the_datagram() -> None:
    created: list[NewSession] = []
    router = _router(created)
    data = _initial(9000)
    session = router.route(data)
    assert session is not None
    assert created[0].datagram_size == 9000
    # The same datagram (a retransmission, or via another volunteer) finds the same session.
    assert router.route(data) is session
    assert len(created) == 1
    await asyncio.sleep(0)


async def test_garbage_and_unknown_short_headers_are_dropped() -> None:
    created: list[NewSession] = []
    router = _router(created)
    assert router.route(b"") is None
    assert router.route(b"\x00" * 40) is None  # short header, unknown connection ID
    assert router.route(b"\xff\x00") is None
    assert created == []
    assert router.dropped == 3


async def test_small_initial_is_refused() -> None:
    created: list[NewSession] = []
    router = _router(created)
    assert router.route(_initial()[:1000]) is None  # QUIC requires >= 1200 bytes
    assert created == []


async def test_session_limit() -> None:
    created: list[NewSession] = []
    router = _router(created, max_sessions=2)
    assert router.route(_initial()) is not None
    assert router.route(_initial()) is not None
    assert router.route(_initial()) is None
    assert len(router.sessions) == 2
    router.forget(router.sessions[0])
    assert router.route(_initial()) is not None


# -- a stranger gets no work done for free (issue 11, row 1) ---------------------------------


def _junk_initial(version: int = 1) -> bytes:
    """A long-header Initial of `version`, padded, that no key decrypts (the flood)."""
    import os

    dcid = os.urandom(8)
    header = bytes([0xC0]) + version.to_bytes(4, "big") + bytes([8]) + dcid + bytes([8])
    header += os.urandom(8) + b"\x00" + (1200 - len(header) - 3 + 1).to_bytes(2, "big")
    return (header + os.urandom(1200))[:1200]


async def test_unknown_versions_cost_nothing() -> None:
    created: list[NewSession] = []
    router = _router(created)
    assert router.route(_junk_initial(version=0x1A2A3A4A), "ws", "addr") is None
    assert created == []
    assert router.route(_junk_initial(version=1), "ws", "addr") is not None


async def test_each_source_holds_only_a_few_unfinished_handshakes() -> None:
    created: list[NewSession] = []
    router = SessionRouter(
        _router(created)._factory,
        max_sessions=1000,
        pending_per_path=4,
        pending_per_address=6,
        sessions_per_path=1000,  # the pending caps alone, here
    )
    flood = [router.route(_junk_initial(), "ws-1", "10.0.0.1") for _ in range(100)]
    assert sum(s is not None for s in flood) == 4  # one WebSocket: its four slots
    more = [router.route(_junk_initial(), "ws-2", "10.0.0.1") for _ in range(100)]
    assert sum(s is not None for s in more) == 2  # same address: its six in all
    assert router.route(_junk_initial(), "ws-3", "10.0.0.2") is not None  # others: served
    assert router.pending_count == 7
    assert router.refused_pending == 194
    # They never finish: after the handshake timeout they are gone, and slots are free.
    assert router.expire_pending(now=5.0, timeout=10.0) == []
    expired = router.expire_pending(now=11.0, timeout=10.0)
    assert len(expired) == 7 and router.pending_count == 0
    assert router.route(_junk_initial(), "ws-1", "10.0.0.1") is not None
    await asyncio.sleep(0)


async def test_a_relay_starts_two_sessions_and_an_address_its_share() -> None:
    """Issue 22, row 3: a relay carries one peer connection (two sessions: one after the
    other's end); one address, and one /24, hold a bounded share of all sessions."""
    created: list[NewSession] = []
    router = SessionRouter(
        _router(created)._factory, sessions_per_address=3, sessions_per_network=5
    )
    through_one = [router.route(_junk_initial(), "ws-1", "10.0.0.1") for _ in range(5)]
    assert sum(s is not None for s in through_one) == 2
    assert router.route(_junk_initial(), "ws-2", "10.0.0.1") is not None
    assert router.route(_junk_initial(), "ws-3", "10.0.0.1") is None  # the address's 3
    assert router.route(_junk_initial(), "ws-4", "10.0.0.2") is not None
    assert router.route(_junk_initial(), "ws-5", "10.0.0.3") is not None
    assert router.route(_junk_initial(), "ws-6", "10.0.0.4") is None  # the /24's 5
    assert router.route(_junk_initial(), "ws-7", "10.0.1.1") is not None  # another /24
    assert router.refused_sessions == 5
    session = next(s for s in through_one if s is not None)
    router.forget(session)  # an ended session frees its place everywhere
    assert router.route(_junk_initial(), "ws-1", "10.0.0.1") is not None
    await asyncio.sleep(0)


async def test_a_completed_handshake_frees_its_slot() -> None:
    """A real client's session leaves `pending` when its handshake completes."""
    created: list[NewSession] = []
    router = SessionRouter(_router(created)._factory, pending_per_path=1)
    client, _ = await _connect(router)
    assert router.route(_junk_initial(), "ws", "addr") is not None  # the slot is free again
    client.close(0, "done")
    await asyncio.sleep(0)


# -- address validation: a QUIC Retry bound to the relay connection (issue 11, row 1) --------


def _retry_router(created: list[NewSession]) -> SessionRouter:
    return SessionRouter(_router(created)._factory, retry=True)


def _token_initial(router: SessionRouter, binding: bytes, now: float = 0.0) -> bytes:
    """A real client's second Initial: the one that carries the Retry's token."""
    client = QuicConnection(configuration=quic.client_configuration(1200))
    client.connect(quic.PATH_ADDRESS, now=now)
    first = client.datagrams_to_send(now=now)[0][0]
    retry = router.route(first, "ws", "addr", now, binding)
    assert isinstance(retry, Retry)
    client.receive_datagram(retry.packet, quic.PATH_ADDRESS, now=now)
    return client.datagrams_to_send(now=now)[0][0]


async def test_a_first_initial_gets_a_retry_and_costs_nothing() -> None:
    created: list[NewSession] = []
    router = _retry_router(created)
    answers = [router.route(_junk_initial(), "ws", "addr", 0.0, b"relay-1") for _ in range(1000)]
    assert all(isinstance(a, Retry) for a in answers)
    # No session, no pending slot, and every answer is smaller than what it answers.
    assert created == [] and router.pending_count == 0 and router.sessions == []
    assert max(len(a.packet) for a in answers if isinstance(a, Retry)) < 200
    assert router.retries_sent == 1000


async def test_a_token_works_only_on_its_relay_and_only_for_a_while() -> None:
    created: list[NewSession] = []
    router = _retry_router(created)
    # Another relay connection (a token harvested on one and replayed on many): dropped.
    assert router.route(_token_initial(router, b"A"), "ws", "addr", 0.0, b"B") is None
    # Too late (aioquic's tokens live 30 s): dropped.
    assert router.route(_token_initial(router, b"A"), "ws", "addr", 31.0, b"A") is None
    # A forged token: dropped, nothing sent back.
    forged = bytearray(_token_initial(router, b"A"))
    forged[30] ^= 0xFF  # inside the token
    assert router.route(bytes(forged), "ws", "addr", 0.0, b"A") is None
    assert router.bad_tokens == 3 and created == []
    # The genuine article, on time and on its own relay: a session.
    session = router.route(_token_initial(router, b"A"), "ws", "addr", 1.0, b"A")
    assert isinstance(session, QuicSession)
    assert created[0].retry_source_cid is not None
    assert router.pending_count == 1
    await asyncio.sleep(0)


async def test_a_real_client_connects_through_a_retry() -> None:
    created: list[NewSession] = []
    router = _retry_router(created)
    client, server = await _connect(router, b"relay")
    assert router.retries_sent == 1 and len(created) == 1
    # Both ends completed (the client checked the Retry's connection IDs in the egress's
    # transport parameters), and the session left `pending`.
    await asyncio.wait_for(server.ready, 5)
    await _until_settled(router)
    client.close(0, "done")
    await asyncio.sleep(0)


async def _connect(router: SessionRouter, binding: bytes = b"") -> tuple[QuicSession, QuicSession]:
    """A real client's handshake through `router`, Retry included when it sends one;
    returns (client, the egress's session), once the pending slot is settled."""
    client = QuicSession(
        FlowControlledConnection(configuration=quic.client_configuration(1200)), name="c"
    )
    server: list[QuicSession] = []
    loop = asyncio.get_running_loop()

    def to_egress(data: bytes) -> None:
        routed = router.route(data, "ws", "addr", loop.time(), binding)
        if isinstance(routed, Retry):
            loop.call_soon(client.datagram_received, routed.packet)
        elif routed is not None:
            if not server:
                server.append(routed)
                routed._on_event = lambda event: router.on_event(routed, event)
                routed.set_sender(client.datagram_received)
            routed.datagram_received(data)

    client.set_sender(to_egress)
    client.connect()
    await asyncio.wait_for(client.ready, 5)
    await _until_settled(router)
    return client, server[0]


async def _until_settled(router: SessionRouter) -> None:
    for _ in range(50):
        if router.pending_count == 0:
            break
        await asyncio.sleep(0.01)
    assert router.pending_count == 0
