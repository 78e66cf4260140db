"""Find a client's session by QUIC connection ID, whichever volunteer carried the datagram.

This is what lets a session move between volunteers: the WebSocket a datagram arrived on
says nothing about which session it belongs to; the destination connection ID does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from unwall.transport.quic import MIN_DATAGRAM_SIZE, QuicSession

log = logging.getLogger("unwall.egress")

#: aioquic's default; every connection ID the egress issues has this length.
HOST_CID_LENGTH = 8


@dataclass(frozen=True)
class NewSession:
    """What the router needs to know to create a session for a first datagram."""

    original_destination_cid: bytes
    datagram_size: int


SessionFactory = Callable[[NewSession], QuicSession]


class SessionRouter:
    """Map connection IDs to sessions; create a session for each new client Initial."""

    def __init__(self, factory: SessionFactory, *, max_sessions: int = 1000) -> None:
        self._factory = factory
        self._max_sessions = max_sessions
        self._by_cid: dict[bytes, QuicSession] = {}
        self._cids: dict[QuicSession, set[bytes]] = {}
        self.dropped = 0

    @property
    def sessions(self) -> list[QuicSession]:
        return list(self._cids)

    def route(self, data: bytes) -> QuicSession | None:
        """The session a datagram belongs to, a new one for a new Initial, or None (drop)."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=HOST_CID_LENGTH)
        except ValueError:
            self.dropped += 1
            return None
        session = self._by_cid.get(header.destination_cid)
        if session is not None:
            return session
        if header.packet_type != QuicPacketType.INITIAL or len(data) < MIN_DATAGRAM_SIZE:
            # Stray packet of a session we no longer know (or garbage): QUIC will time out.
            self.dropped += 1
            return None
        if len(self._cids) >= self._max_sessions:
            log.warning("refusing a new session: %d sessions is the limit", self._max_sessions)
            self.dropped += 1
            return None
        # The client pads its first Initial to its maximum datagram size (protocol.md §2).
        session = self._factory(NewSession(header.destination_cid, len(data)))
        self._cids[session] = set()
        self._add(session, header.destination_cid)
        self._add(session, session._conn.host_cid)
        return session

    def on_event(self, session: QuicSession, event: events.QuicEvent) -> None:
        """Keep the map current; sessions pass every QUIC event here."""
        if isinstance(event, events.ConnectionIdIssued):
            self._add(session, event.connection_id)
        elif isinstance(event, events.ConnectionIdRetired):
            self._by_cid.pop(event.connection_id, None)
            self._cids.get(session, set()).discard(event.connection_id)
        elif isinstance(event, events.ConnectionTerminated):
            self.forget(session)

    def forget(self, session: QuicSession) -> None:
        for cid in self._cids.pop(session, set()):
            if self._by_cid.get(cid) is session:
                del self._by_cid[cid]

    def _add(self, session: QuicSession, cid: bytes) -> None:
        self._by_cid[cid] = session
        self._cids.setdefault(session, set()).add(cid)
