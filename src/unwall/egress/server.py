"""The egress: volunteers' WebSockets in, clients' QUIC sessions terminated, TCP out.

Each WebSocket is a *path* that carries datagrams of any number of sessions; the
`SessionRouter` assigns datagrams to sessions by connection ID. Each client stream names
its destination in a small header; the egress checks its policy after resolving the name,
dials, answers with a status, and then copies bytes both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import json
import logging
import os
import resource
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web
from aioquic.quic import events
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from unwall import logs, metrics, serving
from unwall.egress.identity import EgressIdentity
from unwall.egress.policy import EgressPolicy, NameNotResolved, PolicyDenied
from unwall.egress.router import NewSession, Retry, SessionRouter
from unwall.transport import quic, reordering
from unwall.transport.droptail import DropTailQueue
from unwall.transport.pipe import pipe
from unwall.transport.quic import (
    FlowControlledConnection,
    QuicSession,
    QuicStream,
    read_header,
    read_to_end,
)
from unwall.transport.ratelimit import TokenBucket
from unwall.wire import report, sealed, ticket
from unwall.wire.broker import MAX_BODY, MAX_RESPONSE_BODY
from unwall.wire.streamheader import (
    BrokerRequest,
    HeaderError,
    StreamReply,
    StreamStatus,
    StreamTarget,
    StreamTargetDecoder,
)
from unwall.wire.ticket import TicketError, Voucher

log = logging.getLogger("unwall.egress")

#: Seconds between reports of carried sessions to the brokers.
REPORT_INTERVAL: Final = 2.0
#: A session must show a voucher this soon after its handshake, or it is closed; a stream
#: waits this long for one before it is refused.
VOUCH_TIMEOUT: Final = 10.0
#: what a session that never vouched is closed with (QUIC application error)
ERROR_NO_VOUCHER: Final = 0x103
#: the WebSocket close code for a relay that sends datagrams without a valid ticket
CLOSE_NO_TICKET: Final = 1008
#: A relay without a ticket (a volunteer checking itself) is closed after this long
UNTICKETED_RELAY_SECONDS: Final = 10.0

#: A relay's queue toward its volunteer; above this, datagrams are dropped (QUIC recovers).
PATH_QUEUE_BYTES = 1 << 20
HEADER_TIMEOUT = 10.0
#: A client's sealed broker request through its session: how large, how long the broker
#: may take (it holds an offer up to its answer timeout), and how often (per session: one
#: every BROKER_REQUEST_INTERVAL seconds, in bursts of BROKER_REQUEST_BURST)
MAX_BROKER_REQUEST: Final = sealed.max_sealed_size(MAX_BODY)
MAX_BROKER_ANSWER: Final = sealed.max_sealed_size(MAX_RESPONSE_BODY)
BROKER_RELAY_TIMEOUT: Final = 40.0
BROKER_REQUEST_INTERVAL: Final = 2.0
BROKER_REQUEST_BURST: Final = 10.0


@dataclass
class EgressConfig:
    host: str = "127.0.0.1"
    port: int = 7000
    key_dir: Path = Path("egress-keys")
    policy: EgressPolicy = field(default_factory=EgressPolicy)
    connect_timeout: float = 10.0
    max_sessions: int = 1000
    #: outbound connections at once, all sessions together; None: half the process's
    #: open-file limit (the other half stays for the listener, relays and logs)
    max_connections: int | None = None
    #: per session: outbound connections at once, and new streams per second (bursts of
    #: twice that)
    session_connections: int = 256
    session_stream_rate: float = 50.0
    #: per session: bytes per second over all its streams, both directions; None: no cap
    session_rate: int | None = 12_500_000
    #: sessions at once whose relays come from one address, and from one /24 (IPv6: /48)
    sessions_per_address: int = 64
    sessions_per_network: int = 256
    #: a session with no volunteer path for this long is closed and its streams reset
    grace: float = 60.0
    #: answer each new Initial with a QUIC Retry bound to its relay connection first
    retry: bool = True
    #: brokers to tell which offers' relays carried a vouched session (their volunteers
    #: earn room); none: no reports
    report_to: tuple[str, ...] = ()
    #: the secret this operator's brokers and egresses share: tickets (unwall.wire.ticket)
    #: are checked under a key derived from it, and reports carry it. None: no ticket
    #: verifies, so no relay carries anything (the command line refuses to start so)
    report_secret: str | None = None


class RelayPath:
    """One volunteer's WebSocket, as a place to send datagrams without blocking."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        name: str,
        address: str | None = None,
        offer: str | None = None,
    ) -> None:
        self.name = name
        #: the broker's offer this relay serves, from its ticket; None: the relay showed no
        #: valid ticket and may carry nothing (a volunteer checking itself opens one so)
        self.offer = offer
        self.ws = ws
        self.address = address
        #: names this relay connection in Retry tokens
        self.key = os.urandom(16)
        #: closes a relay without a ticket after a while (None: it has one)
        self.expire: asyncio.TimerHandle | None = None
        self._queue = DropTailQueue(ws.send_bytes, PATH_QUEUE_BYTES)

    def send(self, data: bytes) -> None:
        self._queue.put(data)

    async def close(self) -> None:
        await self._queue.close()


class EgressMetrics:
    """The egress's Prometheus metrics (docs/metrics.md)."""

    def __init__(self, egress: Egress) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prefix = "unwall_egress_"
        registry = self.registry
        metrics.people_gauge(
            registry, prefix + "sessions", "QUIC sessions open", lambda: len(egress.router.sessions)
        )
        metrics.people_gauge(
            registry,
            prefix + "pending_sessions",
            "Sessions whose handshake has not completed",
            lambda: egress.router.pending_count,
        )
        metrics.people_gauge(
            registry,
            prefix + "relays",
            "Volunteer relay WebSockets open",
            lambda: len(egress._paths),
        )
        connections = Gauge(
            prefix + "connections", "Outbound connections open now.", registry=registry
        )
        connections.set_function(lambda: egress.connections)
        self.sessions_opened = 0  # exported rounded, by _RouterCounts
        self.streams = Counter(
            prefix + "streams",
            "Streams by outcome: the reply status sent (ok, busy, not_allowed, ...).",
            ["status"],
            registry=registry,
        )
        for status in StreamStatus:
            self.streams.labels(status.name.lower())
        self.vouchers = Counter(
            prefix + "vouchers",
            "Clients' vouchers (a broker's ticket and the client's secret) by outcome.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "refused"):
            self.vouchers.labels(outcome)
        self.broker_requests = Counter(
            prefix + "broker_requests",
            "Clients' sealed broker requests passed to a broker through their session, by "
            "outcome (ok: a broker answered; failed: none did).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "failed"):
            self.broker_requests.labels(outcome)
        self.relays_refused = Counter(
            prefix + "relays_refused",
            "Relays closed for sending datagrams without a valid ticket from a broker.",
            registry=registry,
        )
        self.sessions_unvouched = Counter(
            prefix + "sessions_unvouched",
            "Sessions closed for showing no voucher within 10 s of their handshake.",
            registry=registry,
        )
        self.bytes = Counter(
            prefix + "bytes",
            "Bytes carried for clients: up (client to destination) and down.",
            ["direction"],
            registry=registry,
        )
        self.up = self.bytes.labels("up")
        self.down = self.bytes.labels("down")
        self.path_switches = Counter(
            prefix + "path_switches",
            "Sessions that moved to another volunteer's relay.",
            registry=registry,
        )
        registry.register(_RouterCounts(egress.router, prefix, self))


class _RouterCounts(Collector):
    """The session router's own counters, read when scraped."""

    def __init__(self, router: SessionRouter, prefix: str, owner: EgressMetrics) -> None:
        self._router = router
        self._prefix = prefix
        self._owner = owner

    def collect(self) -> Iterator[CounterMetricFamily]:
        router = self._router
        for name, text, value in (
            ("retries_sent", "QUIC Retries sent to new Initials.", router.retries_sent),
            ("bad_tokens", "Initials with a forged, late or misplaced token.", router.bad_tokens),
            ("datagrams_dropped", "Datagrams that named no session.", router.dropped),
            (
                "pending_refused",
                "New sessions refused: their relay or address held its share of handshakes.",
                router.refused_pending,
            ),
            (
                "sessions_refused",
                "New sessions refused: their relay's address or network held its share.",
                router.refused_sessions,
            ),
        ):
            yield CounterMetricFamily(self._prefix + name, text, value=value)
        yield CounterMetricFamily(
            self._prefix + "sessions_opened",
            f"Sessions created (rounded up to a multiple of {metrics.BIN}).",
            value=metrics.rounded(self._owner.sessions_opened),
        )


class Egress:
    def __init__(self, config: EgressConfig, identity: EgressIdentity) -> None:
        self.config = config
        self.identity = identity
        self.router = SessionRouter(
            self._new_session,
            max_sessions=config.max_sessions,
            retry=config.retry,
            sessions_per_address=config.sessions_per_address,
            sessions_per_network=config.sessions_per_network,
        )
        self._ticket_key = ticket.derive_key(config.report_secret) if config.report_secret else b""
        #: sessions that have shown a valid voucher: the offers they proved (each is
        #: credited once datagrams of the session arrive through that offer's relay)
        self._vouched: dict[QuicSession, set[str]] = {}
        self._vouch_events: dict[QuicSession, asyncio.Event] = {}
        #: sessions whose handshake completed without a voucher yet, and since when
        self._unvouched: dict[QuicSession, float] = {}
        #: relay tickets used, by offer, until they expire (a ticket opens one relay)
        self._tickets_used: dict[str, float] = {}
        #: the live session that proved each offer (an offer's voucher serves one session)
        self._offer_session: dict[str, QuicSession] = {}
        #: the relay each session was last heard on
        self._session_path: dict[QuicSession, RelayPath] = {}
        self._stream_tasks: set[asyncio.Task[None]] = set()
        self._paths: set[RelayPath] = set()
        self._path_count = 0
        self._session_count = 0
        #: sessions without a path, and since when
        self._pathless: dict[QuicSession, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        #: offers whose relays carried a session that proved them, not yet reported
        self._carried: set[str] = set()
        self.max_connections = config.max_connections or connection_budget()
        self.connections = 0  # outbound, now
        self._memory = MemoryReturn()
        self._session_connections: Tally[QuicSession] = Tally()
        self._opens: dict[QuicSession, tuple[float, float]] = {}  # tokens, when
        self._broker_asks: dict[QuicSession, tuple[float, float]] = {}  # tokens, when
        self._broker_http: aiohttp.ClientSession | None = None
        #: what reports and passed-on requests are signed with (from the shared secret)
        self._report_key = report.report_key(config.report_secret or "")
        self._buckets: dict[QuicSession, TokenBucket] = {}  # --session-rate
        self.busy_refusals = 0
        self._busy_log = logs.Throttle(10.0)
        self.metrics = EgressMetrics(self)
        self.app = web.Application()
        self.app.router.add_get("/v1/relay", self._relay)
        self.app.router.add_get("/v1/health", self._health)
        self.app.router.add_get("/metrics", metrics.handler(self.metrics.registry))
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)

    # sessions
    def _new_session(self, new: NewSession) -> QuicSession:
        self._session_count += 1
        name = f"session-{self._session_count}"
        configuration = quic.server_configuration(
            self.identity.certificate, self.identity.private_key, new.datagram_size
        )
        connection = FlowControlledConnection(
            configuration=configuration,
            original_destination_connection_id=new.original_destination_cid,
            retry_source_connection_id=new.retry_source_cid,
            receive_window=reordering.EGRESS_RECEIVE_WINDOW,
        )
        session = QuicSession(
            connection,
            name=name,
            on_stream=lambda stream: self._spawn(self._serve_stream(session, stream)),
            on_event=lambda event: self._on_event(session, event),
        )
        session.closed.add_done_callback(lambda fut: log.info("%s closed: %s", name, fut.result()))
        session.closed.add_done_callback(lambda _: self._forget_session(session))
        log.info("%s opened (datagrams up to %d bytes)", name, configuration.max_datagram_size)
        self.metrics.sessions_opened += 1
        return session

    def _on_event(self, session: QuicSession, event: events.QuicEvent) -> None:
        self.router.on_event(session, event)
        if isinstance(event, events.HandshakeCompleted) and session not in self._vouched:
            self._unvouched[session] = asyncio.get_running_loop().time()

    def _vouch(self, session: QuicSession, voucher: Voucher) -> str | None:
        """Check a client's voucher; None if it holds, else why not."""
        if session.is_closed:  # its state is gone already: keep none for it
            return "the session is closed"
        try:
            proved = voucher.check(self._ticket_key, time.time())
        except TicketError as exc:
            self.metrics.vouchers.labels("refused").inc()
            return str(exc)
        path = self._session_path.get(session)
        holder = self._offer_session.get(proved.offer_id)
        if path is None or path.offer != proved.offer_id:
            # Shown through the relay of its own offer, or not at all: a voucher does not
            # let a session that came in through another relay (a stranger's) be served.
            why = "the voucher is not for the relay this session came through"
        elif holder is not None and holder is not session and not holder.is_closed:
            why = "another session holds this offer's voucher"
        else:
            why = None
        if why is not None:
            self.metrics.vouchers.labels("refused").inc()
            return why
        self._offer_session[proved.offer_id] = session
        self.metrics.vouchers.labels("ok").inc()
        self._vouched.setdefault(session, set()).add(proved.offer_id)
        self._unvouched.pop(session, None)
        self._vouch_event(session).set()
        return None

    def _vouch_event(self, session: QuicSession) -> asyncio.Event:
        """Set when `session` shows a voucher or closes (forgotten with the session)."""
        if session not in self._vouch_events:
            self._vouch_events[session] = asyncio.Event()
        return self._vouch_events[session]

    def _credit(self, session: QuicSession, path: RelayPath) -> None:
        """Datagrams of `session` came through `path`: if the client proved that path's
        offer, its volunteer carried a vouched session (reported once)."""
        proved = self._vouched.get(session)
        if proved is not None and path.offer in proved:
            proved.discard(path.offer)
            if self.config.report_to:
                self._carried.add(path.offer)

    async def _report(self) -> None:
        """Tell the brokers, every few seconds, which offers' relays carried a session."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while True:
                await asyncio.sleep(REPORT_INTERVAL)
                if not self._carried:
                    continue
                offers, self._carried = sorted(self._carried), set()
                body = json.dumps({"version": 1, "offers": offers}).encode()
                headers = {
                    # Signed, not the secret itself: a front that reads it learns nothing.
                    "Authorization": report.sign(self._report_key, body, time.time()),
                    "Content-Type": "application/json",
                }
                for url in self.config.report_to:
                    try:
                        async with http.post(
                            url.rstrip("/") + "/v1/egress/carried", data=body, headers=headers
                        ) as resp:
                            if resp.status != 200:
                                log.warning("the broker refused our report (HTTP %d)", resp.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        log.warning("could not report to a broker: %s", exc)

    def _meter(self, to_client: int, to_destination: int) -> None:
        """Bytes as they go (here the TCP side of a pipe is the destination)."""
        if to_client:
            self.metrics.down.inc(to_client)
        if to_destination:
            self.metrics.up.inc(to_destination)

    def _forget_session(self, session: QuicSession) -> None:
        self._opens.pop(session, None)
        self._broker_asks.pop(session, None)
        self._buckets.pop(session, None)
        for offer in [o for o, s in self._offer_session.items() if s is session]:
            del self._offer_session[offer]
        self._session_path.pop(session, None)
        self._vouched.pop(session, None)
        self._unvouched.pop(session, None)
        waiting = self._vouch_events.pop(session, None)
        if waiting is not None:
            waiting.set()  # streams waiting for a voucher see the session closed

    def _bucket(self, session: QuicSession) -> TokenBucket | None:
        rate = self.config.session_rate
        if rate is None or session.is_closed:
            return None
        if session not in self._buckets:
            self._buckets[session] = TokenBucket(rate)
        return self._buckets[session]

    def _spawn(self, coro: asyncio.Future[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._stream_tasks.add(task)
        task.add_done_callback(self._stream_tasks.discard)

    def datagram_received(self, data: bytes, path: RelayPath) -> None:
        now = asyncio.get_running_loop().time()
        session = self.router.route(data, path, path.address, now, path.key)
        if session is None:
            return
        if isinstance(session, Retry):
            path.send(session.packet)
            return
        # Answer on the path we last heard this session on.
        if session._sender != path.send:
            self._pathless.pop(session, None)
            if session.datagrams_in:
                log.info("%s moved to %s", session.name, path.name)
                self.metrics.path_switches.inc()
                session.switch_path(path.send)
            else:
                session.set_sender(path.send)
        self._session_path[session] = path
        if path.offer is not None and session in self._vouched:
            # Credit once the datagram proves to be the client's own, new packet (a
            # replayed or forged one carries the session's connection ID too).
            before = session.authenticated()
            session.datagram_received(data)
            if session.authenticated() > before:
                self._credit(session, path)
            return
        session.datagram_received(data)

    # streams
    async def _serve_stream(self, session: QuicSession, stream: QuicStream) -> None:
        try:
            target = await asyncio.wait_for(self._read_target(stream), HEADER_TIMEOUT)
        except (HeaderError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("%s stream %d: bad header: %s", session.name, stream.stream_id, exc)
            await self._refuse(stream, StreamStatus.BAD_HEADER, str(exc) or "no header")
            session.stream_finished(stream)
            return
        except (quic.StreamReset, quic.SessionClosed):
            session.stream_finished(stream)
            return
        if isinstance(target, Voucher):
            refused = self._vouch(session, target)
            if refused is None:
                await self._answer(stream, StreamReply(StreamStatus.OK))
            else:
                log.info("%s: a voucher refused: %s", session.name, refused)
                await self._answer(stream, StreamReply(StreamStatus.NOT_ALLOWED, refused))
            session.stream_finished(stream)
            return
        if session not in self._vouched and not session.is_closed:
            # Its voucher may be on a stream that has not arrived yet.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._vouch_event(session).wait(), VOUCH_TIMEOUT)
            if session not in self._vouched:
                await self._refuse(
                    stream, StreamStatus.NOT_ALLOWED, "this session showed no broker's voucher"
                )
                session.stream_finished(stream)
                return
        if isinstance(target, BrokerRequest):
            await self._relay_to_broker(session, stream)
            session.stream_finished(stream)
            return
        busy = self._admit(session)
        if busy is not None:
            self._note_busy(session, busy)
            await self._refuse(stream, StreamStatus.BUSY, busy)
            session.stream_finished(stream)
            return
        self.connections += 1
        self._session_connections[session] += 1
        try:
            await self._connect_and_pipe(session, stream, target)
        finally:
            self.connections -= 1
            self._session_connections[session] -= 1
            if self._session_connections[session] <= 0:
                del self._session_connections[session]

    async def _relay_to_broker(self, session: QuicSession, stream: QuicStream) -> None:
        """Pass a vouched client's sealed request to our brokers and its sealed answer
        back (protocol.md §5): once its tunnel is up, a client sends nothing to a broker
        itself. We cannot read either (sealed to the broker's key and the client's); the
        broker knows us by a signature made with the secret we share."""
        if not self.config.report_to:
            await self._refuse(
                stream, StreamStatus.NOT_ALLOWED, "this egress passes nothing to a broker"
            )
            return
        now = asyncio.get_running_loop().time()
        tokens, since = self._broker_asks.get(session, (BROKER_REQUEST_BURST, now))
        tokens = min(BROKER_REQUEST_BURST, tokens + (now - since) / BROKER_REQUEST_INTERVAL)
        if tokens < 1:
            self._broker_asks[session] = (tokens, now)
            await self._refuse(stream, StreamStatus.BUSY, "this session asks the broker too often")
            return
        self._broker_asks[session] = (tokens - 1, now)
        try:
            body = await asyncio.wait_for(read_to_end(stream, MAX_BROKER_REQUEST), HEADER_TIMEOUT)
        except (ValueError, TimeoutError) as exc:
            await self._refuse(stream, StreamStatus.BAD_HEADER, str(exc) or "no request in time")
            return
        except (quic.StreamReset, quic.SessionClosed):
            return
        headers = {
            "Content-Type": sealed.CONTENT_TYPE,
            "Authorization": report.sign(self._report_key, body, time.time()),
        }
        if self._broker_http is None:
            self._broker_http = aiohttp.ClientSession()
        failed = []
        for url in self.config.report_to:
            try:
                async with self._broker_http.post(
                    url.rstrip("/") + sealed.SEALED_PATH,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=BROKER_RELAY_TIMEOUT, sock_connect=10),
                ) as response:
                    answer = await response.content.read(MAX_BROKER_ANSWER)
                    status, kind = response.status, response.content_type
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed.append(str(exc) or type(exc).__name__)
                continue
            if kind != sealed.CONTENT_TYPE:
                # the broker's own refusal (not sealed: it could not open the request, or
                # does not know our signature), or something not a broker's
                failed.append(f"HTTP {status} ({kind or 'no type'})")
                continue
            self.metrics.broker_requests.labels("ok").inc()
            with contextlib.suppress(quic.StreamReset, quic.SessionClosed):
                await stream.write(StreamReply(StreamStatus.OK).encode() + answer)
                stream.write_eof()
            return
        self.metrics.broker_requests.labels("failed").inc()
        log.warning("%s: no broker took its request: %s", session.name, "; ".join(failed))
        await self._refuse(
            stream, StreamStatus.HOST_UNREACHABLE, "no broker answered: " + "; ".join(failed)
        )

    def _admit(self, session: QuicSession) -> str | None:
        """Why a new outbound connection for this session must wait (None: it may go)."""
        if self.connections >= self.max_connections:
            return f"the egress is at its limit of {self.max_connections} connections"
        if self._session_connections[session] >= self.config.session_connections:
            return (
                f"this session is at its limit of {self.config.session_connections} "
                "connections at once"
            )
        rate = self.config.session_stream_rate
        now = asyncio.get_running_loop().time()
        tokens, since = self._opens.get(session, (2 * rate, now))
        tokens = min(2 * rate, tokens + (now - since) * rate)
        if tokens < 1:
            self._opens[session] = (tokens, now)
            return f"this session opens streams faster than {rate:g} a second"
        self._opens[session] = (tokens - 1, now)
        return None

    def _note_busy(self, session: QuicSession, why: str) -> None:
        self.busy_refusals += 1
        allowed, left_out = self._busy_log.allow()
        if allowed:
            more = f" ({left_out} more since the last line)" if left_out else ""
            log.warning("%s: a stream refused as busy: %s%s", session.name, why, more)

    async def _connect_and_pipe(
        self, session: QuicSession, stream: QuicStream, target: StreamTarget
    ) -> None:
        status, reason, connection = await self._dial(target)
        if connection is None:
            log.info(
                "%s stream %d: %s refused: %s",
                session.name,
                stream.stream_id,
                logs.destination(target.host, target.port),
                # The reason names the host (and what it resolved to): only when asked.
                reason if logs.showing() else status.name.lower().replace("_", " "),
            )
            await self._refuse(stream, status, reason)
            session.stream_finished(stream)
            return
        reader, writer = connection
        self.metrics.streams.labels("ok").inc()
        try:
            await stream.write(StreamReply(StreamStatus.OK).encode())
        except (quic.StreamReset, quic.SessionClosed):
            writer.transport.abort()
            session.stream_finished(stream)
            return
        result = await pipe(reader, writer, stream, self._bucket(session), self._meter)
        log.debug(
            "%s stream %d to %s done: %d B up, %d B down%s",
            session.name,
            stream.stream_id,
            logs.destination(target.host, target.port),
            result.bytes_up,
            result.bytes_down,
            f" ({result.error})" if result.error else "",
        )

    async def _answer(self, stream: QuicStream, reply: StreamReply) -> None:
        with contextlib.suppress(quic.StreamReset, quic.SessionClosed):
            await stream.write(reply.encode())
            stream.write_eof()

    async def _read_target(self, stream: QuicStream) -> StreamTarget | Voucher | BrokerRequest:
        try:
            return await read_header(stream, StreamTargetDecoder(), "its header")
        except EOFError as exc:
            raise HeaderError(str(exc)) from None

    async def _refuse(self, stream: QuicStream, status: StreamStatus, reason: str) -> None:
        self.metrics.streams.labels(status.name.lower()).inc()
        with contextlib.suppress(quic.StreamReset, quic.SessionClosed):
            await stream.write(StreamReply(status, reason).encode())
            stream.write_eof()

    async def _dial(
        self, target: StreamTarget
    ) -> tuple[StreamStatus, str, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        try:
            addresses = await self.config.policy.resolve(target.host, target.port)
        except PolicyDenied as exc:
            return StreamStatus.NOT_ALLOWED, exc.reason, None
        except NameNotResolved as exc:
            return StreamStatus.HOST_UNREACHABLE, str(exc), None
        status, reason = StreamStatus.GENERAL_FAILURE, "no address to connect to"
        for address in addresses:
            try:
                connection = await asyncio.wait_for(
                    asyncio.open_connection(address, target.port, limit=256 * 1024),
                    self.config.connect_timeout,
                )
                return StreamStatus.OK, "", connection
            except TimeoutError:
                status = StreamStatus.TIMED_OUT
                reason = f"connecting to {address}:{target.port} timed out"
            except OSError as exc:
                status, reason = _status_for_os_error(exc, address, target.port)
        return status, reason, None

    # the relay endpoint
    async def _relay(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("v", "1") != "1":
            raise web.HTTPBadRequest(text="unsupported relay version; this egress speaks v=1\n")
        ws = web.WebSocketResponse(
            max_msg_size=quic.MAX_DATAGRAM_SIZE + 1024, compress=False, heartbeat=30.0
        )
        await ws.prepare(request)
        self._path_count += 1
        where = f" ({request.remote})" if logs.showing() else ""
        offer, why = self._relay_ticket(request.query.get("ticket"))
        path = RelayPath(ws, f"path-{self._path_count}{where}", request.remote, offer)
        if offer is None:
            # A volunteer checking itself opens and closes it at once; nobody needs longer.
            path.expire = asyncio.get_running_loop().call_later(
                UNTICKETED_RELAY_SECONDS, lambda: asyncio.ensure_future(ws.close())
            )
        self._paths.add(path)
        log.info("%s: volunteer relay connected%s", path.name, "" if why is None else f" ({why})")
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    if path.offer is None:
                        # A relay a broker did not hand out carries nothing (a volunteer
                        # checking itself opens one and closes it unused).
                        self.metrics.relays_refused.inc()
                        await ws.close(
                            code=CLOSE_NO_TICKET, message=b"no valid ticket from a broker"
                        )
                        break
                    self.datagram_received(message.data, path)
                elif message.type == WSMsgType.TEXT:
                    await ws.close(code=1003, message=b"binary messages only")
                    break
        finally:
            if path.expire is not None:
                path.expire.cancel()
            self._paths.discard(path)
            await path.close()
            now = asyncio.get_running_loop().time()
            for session in self.router.sessions:
                if session._sender == path.send:
                    session.set_sender(None)
                    self._pathless[session] = now
            log.info("%s: volunteer relay closed", path.name)
        return ws

    def _relay_ticket(self, text: str | None) -> tuple[str | None, str | None]:
        """The offer a relay's ticket is for, or None and why not."""
        if text is None:
            return None, "no ticket: it may carry nothing"
        try:
            relay = ticket.verify(self._ticket_key, text, time.time(), ticket.RELAY_WINDOW)
        except TicketError as exc:
            return None, f"{exc}: it may carry nothing"
        if relay.commitment != ticket.RELAY:
            return None, "not a relay's ticket: it may carry nothing"
        now = time.time()
        for offer, until in list(self._tickets_used.items()):
            if until < now:
                del self._tickets_used[offer]
        if relay.offer_id in self._tickets_used:
            return None, "its ticket opened a relay already: it may carry nothing"
        self._tickets_used[relay.offer_id] = relay.issued + ticket.RELAY_WINDOW + ticket.CLOCK_SKEW
        return relay.offer_id, None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": 1,
                "status": "ok",
                "sessions": len(self.router.sessions),
                "pending": self.router.pending_count,
                "connections": self.connections,
                "paths": len(self._paths),
            }
        )

    async def _on_startup(self, app: web.Application) -> None:
        self._sweeper = asyncio.create_task(self._sweep())
        if self.config.report_to:
            self._reporter = asyncio.create_task(self._report())

    async def _sweep(self) -> None:
        """Close sessions that have had no path for longer than the grace period."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.config.grace / 4))
            now = loop.time()
            self._memory.observe(self.connections + len(self.router.sessions))
            for session in self.router.expire_pending(now):
                log.info("%s never completed its handshake; dropped", session.name)
                session.close(quic.ERROR_PATH_LOST, "handshake not completed in time")
                self._pathless.pop(session, None)
            for session, since in list(self._unvouched.items()):
                if session.is_closed:
                    del self._unvouched[session]
                elif now - since > VOUCH_TIMEOUT:
                    del self._unvouched[session]
                    log.info("%s showed no voucher; closing it", session.name)
                    self.metrics.sessions_unvouched.inc()
                    session.close(ERROR_NO_VOUCHER, "no voucher from a broker")
                    self.router.forget(session)
            for session, since in list(self._pathless.items()):
                if session.is_closed:
                    del self._pathless[session]
                elif now - since > self.config.grace:
                    del self._pathless[session]
                    log.info(
                        "%s had no volunteer for %.0f s; closing it", session.name, now - since
                    )
                    session.close(quic.ERROR_PATH_LOST, "no volunteer within the grace period")
                    self.router.forget(session)

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._reporter is not None:
            self._reporter.cancel()
        for session in self.router.sessions:
            session.close(quic.ERROR_SHUTDOWN, "egress shutting down")
        await asyncio.gather(
            *(path.ws.close(code=1001, message=b"egress shutting down") for path in self._paths),
            return_exceptions=True,
        )
        for task in list(self._stream_tasks):
            task.cancel()
        await asyncio.gather(*self._stream_tasks, return_exceptions=True)
        if self._broker_http is not None:
            await self._broker_http.close()


class MemoryReturn:
    """Give memory back to the system once a load has passed.

    CPython frees the objects of thousands of finished connections, but the C allocator
    keeps the pages for reuse: after a flood of streams the egress stayed at four times its
    idle size (benchmarks/egress_memory.py). When what the egress holds (connections and
    sessions) falls to a quarter of its recent peak, and that peak was large, a full
    collection and glibc's ``malloc_trim`` return what is free. Elsewhere than glibc it
    does nothing."""

    #: a peak below this never calls for a trim
    PEAK: Final = 256

    def __init__(self) -> None:
        self._peak = 0
        self.trims = 0
        try:
            self._trim: Callable[[int], int] | None = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None

    def observe(self, held: int) -> None:
        self._peak = max(self._peak, held)
        if self._peak >= self.PEAK and held <= self._peak // 4:
            self._peak = held
            gc.collect()
            if self._trim is not None:
                self._trim(0)
            self.trims += 1


def connection_budget() -> int:
    """Half the process's open-file limit, for outbound connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, soft // 2)


def _status_for_os_error(exc: OSError, address: str, port: int) -> tuple[StreamStatus, str]:
    where = f"{address}:{port}"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return StreamStatus.CONNECTION_REFUSED, f"{where} refused the connection"
    if exc.errno == errno.ENETUNREACH:
        return StreamStatus.NETWORK_UNREACHABLE, f"network of {where} is unreachable"
    if exc.errno in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
        return StreamStatus.HOST_UNREACHABLE, f"{where} is unreachable"
    if exc.errno == errno.ETIMEDOUT:
        return StreamStatus.TIMED_OUT, f"connecting to {where} timed out"
    return StreamStatus.GENERAL_FAILURE, f"connecting to {where} failed: {exc.strerror or exc}"


async def run_egress(config: EgressConfig, identity: EgressIdentity) -> None:
    """Serve until cancelled."""
    egress = Egress(config, identity)
    runner = web.AppRunner(
        egress.app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        **serving.runner_options(),
    )
    await runner.setup()
    site = serving.GuardedSite(runner, config.host, config.port)
    await site.start()
    log.info(
        "egress listening on ws://%s:%d/v1/relay (pin %s)", config.host, config.port, identity.pin
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
