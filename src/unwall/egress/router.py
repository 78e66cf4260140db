"""Find a client's session by QUIC connection ID, whichever volunteer carried the datagram.

This is what lets a session move between volunteers: the WebSocket a datagram arrived on
says nothing about which session it belongs to; the destination connection ID does.

A stranger gets no work done for free: a datagram that is not a QUIC Initial of a version
we speak, padded as the protocol asks, costs nothing; a new session that has not finished
its handshake is *pending*, and each source (a volunteer's WebSocket, and the address it
comes from) may hold only a few pending sessions at once; a pending session is dropped
after `HANDSHAKE_TIMEOUT`. So a flood of junk Initials through one relay fills at most
that relay's few slots, for seconds, and never the session table.

With `retry` on (the egress's default) no session exists before the sender has shown that
it reads what comes back on its relay: the first Initial is answered with a QUIC Retry
(RFC 9000 §8.1.2) whose token is bound to that relay connection and expires in 30 s, and
only an Initial carrying a valid token takes a pending slot. A Retry is stateless, smaller
than the Initial it answers, and costs the honest client one round trip at connect.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler

from unwall.transport.quic import MIN_DATAGRAM_SIZE, QuicSession

log = logging.getLogger("unwall.egress")

#: aioquic's default; every connection ID the egress issues has this length.
HOST_CID_LENGTH = 8
#: QUIC versions a client may start with (aioquic's).
VERSIONS = frozenset(int(v) for v in QuicConfiguration(is_client=False).supported_versions)
#: Unfinished handshakes one volunteer's WebSocket may carry at once ...
PENDING_PER_PATH = 4
#: ... and all WebSockets from one address together (volunteers can share an address).
PENDING_PER_ADDRESS = 64
#: Sessions at once (pending or not) whose first relay came from one address, and from one
#: network (IPv4 /24, IPv6 /48): one host, or one network's hosts, cannot take them all.
SESSIONS_PER_ADDRESS = 64
SESSIONS_PER_NETWORK = 256
#: ... and through one relay WebSocket (it carries one peer connection: one client)
SESSIONS_PER_PATH = 2
#: A session whose handshake has not completed by then is dropped (the client's own
#: handshake timeout is the same).
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class NewSession:
    """What the router needs to know to create a session for a first datagram."""

    original_destination_cid: bytes
    datagram_size: int
    #: the connection ID our Retry chose (the client echoes it in its transport
    #: parameters' check); None when the session was created without a Retry
    retry_source_cid: bytes | None = None


@dataclass(frozen=True)
class Retry:
    """Send `packet` back on the relay the Initial came from; nothing was allocated."""

    packet: bytes


SessionFactory = Callable[[NewSession], QuicSession]


class SessionRouter:
    """Map connection IDs to sessions; create a session for each new client Initial."""

    def __init__(
        self,
        factory: SessionFactory,
        *,
        max_sessions: int = 1000,
        pending_per_path: int = PENDING_PER_PATH,
        pending_per_address: int = PENDING_PER_ADDRESS,
        sessions_per_address: int = SESSIONS_PER_ADDRESS,
        sessions_per_network: int = SESSIONS_PER_NETWORK,
        sessions_per_path: int = SESSIONS_PER_PATH,
        retry: bool = False,
    ) -> None:
        self._factory = factory
        #: aioquic's stateless tokens (AES-GCM under a key that lives as long as we do)
        self._retry = QuicRetryTokenHandler() if retry else None
        self._max_sessions = max_sessions
        self._pending_caps = (pending_per_path, pending_per_address)
        self._by_cid: dict[bytes, QuicSession] = {}
        self._cids: dict[QuicSession, set[bytes]] = {}
        #: sessions whose handshake has not completed: their sources, and since when
        self._pending: dict[QuicSession, tuple[Hashable, Hashable, float]] = {}
        self._pending_from: Counter[tuple[int, Hashable]] = Counter()
        self._session_caps = (sessions_per_address, sessions_per_network, sessions_per_path)
        #: where each session's first relay came from (its address, network and relay) ...
        self._origin: dict[QuicSession, tuple[Hashable, ...]] = {}
        #: ... and how many sessions each holds
        self._sessions_from: Counter[Hashable] = Counter()
        self.refused_sessions = 0
        self.dropped = 0
        self.refused_pending = 0
        self.retries_sent = 0
        self.bad_tokens = 0

    @property
    def sessions(self) -> list[QuicSession]:
        return list(self._cids)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def route(
        self,
        data: bytes,
        path: Hashable = None,
        address: Hashable = None,
        now: float = 0.0,
        binding: bytes = b"",
    ) -> QuicSession | Retry | None:
        """The session a datagram belongs to, a new one for a new Initial, a Retry to send
        back, or None (drop).

        `path` and `address` say where it came from (the relay WebSocket, and the address
        it connects from); `binding` names that relay connection in Retry tokens (unique
        per connection); `now` starts a new session's handshake clock and
        dates tokens."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=HOST_CID_LENGTH)
        except ValueError:
            self.dropped += 1
            return None
        session = self._by_cid.get(header.destination_cid)
        if session is not None:
            return session
        if (
            header.packet_type != QuicPacketType.INITIAL
            or len(data) < MIN_DATAGRAM_SIZE
            or header.version not in VERSIONS
        ):
            # Stray packet of a session we no longer know (or garbage): QUIC will time out.
            self.dropped += 1
            return None
        retry_source_cid: bytes | None = None
        original_cid = header.destination_cid
        if self._retry is not None:
            key = hashlib.blake2b(binding, digest_size=16).digest()
            token_address = (str(ipaddress.IPv6Address(key)), 0)
            if not header.token:
                source_cid = os.urandom(HOST_CID_LENGTH)
                token = self._retry.create_token(
                    address=token_address,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid,
                    now=now,
                )
                self.retries_sent += 1
                return Retry(
                    encode_quic_retry(
                        version=header.version,
                        source_cid=source_cid,
                        destination_cid=header.source_cid,
                        original_destination_cid=header.destination_cid,
                        retry_token=token,
                    )
                )
            try:
                original_cid = self._retry.validate_token(
                    address=token_address,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                # Forged, expired, or from another relay connection: nothing is sent back.
                self.bad_tokens += 1
                self.dropped += 1
                return None
            retry_source_cid = header.destination_cid
        sources = ((0, path), (1, address))
        if any(
            self._pending_from[source] >= cap
            for source, cap in zip(sources, self._pending_caps, strict=True)
        ):
            # This source already has its share of unfinished handshakes.
            self.refused_pending += 1
            self.dropped += 1
            return None
        origin = (("address", address), ("network", _network(address)), ("path", path))
        if address is not None and any(
            self._sessions_from[source] >= cap
            for source, cap in zip(origin, self._session_caps, strict=True)
        ):
            self.refused_sessions += 1
            self.dropped += 1
            return None
        if len(self._cids) >= self._max_sessions:
            log.warning("refusing a new session: %d sessions is the limit", self._max_sessions)
            self.dropped += 1
            return None
        # The client pads its first Initial to its maximum datagram size (protocol.md §2).
        session = self._factory(NewSession(original_cid, len(data), retry_source_cid))
        self._pending[session] = (path, address, now)
        self._pending_from.update(sources)
        if address is not None:
            self._origin[session] = origin
            self._sessions_from.update(origin)
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
        elif isinstance(event, events.HandshakeCompleted):
            self._settle(session)
        elif isinstance(event, events.ConnectionTerminated):
            self.forget(session)

    def expire_pending(self, now: float, timeout: float = HANDSHAKE_TIMEOUT) -> list[QuicSession]:
        """Forget the sessions whose handshake has not completed within `timeout`; the
        caller closes them."""
        expired = [s for s, (_, _, since) in self._pending.items() if now - since > timeout]
        for session in expired:
            self.forget(session)
        return expired

    def _settle(self, session: QuicSession) -> None:
        pending = self._pending.pop(session, None)
        if pending is not None:
            path, address, _ = pending
            self._pending_from.subtract(((0, path), (1, address)))
            for source in ((0, path), (1, address)):
                if self._pending_from[source] <= 0:
                    del self._pending_from[source]

    def forget(self, session: QuicSession) -> None:
        self._settle(session)
        origin = self._origin.pop(session, None)
        if origin is not None:
            self._sessions_from.subtract(origin)
            for source in origin:
                if self._sessions_from[source] <= 0:
                    del self._sessions_from[source]
        for cid in self._cids.pop(session, set()):
            if self._by_cid.get(cid) is session:
                del self._by_cid[cid]

    def _add(self, session: QuicSession, cid: bytes) -> None:
        self._by_cid[cid] = session
        self._cids.setdefault(session, set()).add(cid)


def _network(address: Hashable) -> Hashable:
    """The /24 (IPv4) or /48 (IPv6) of an address; anything else stands for itself."""
    if not isinstance(address, str):
        return address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False)
