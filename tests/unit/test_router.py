"""The egress session router: datagrams to sessions by connection ID, never by path."""

from __future__ import annotations

import asyncio

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from unwall.egress.identity import generate_identity
from unwall.egress.router import NewSession, SessionRouter
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
