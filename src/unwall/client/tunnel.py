"""The client's tunnel: one QUIC session to the egress, carried through volunteers.

Volunteers are browser tabs: they vanish without warning. The tunnel keeps a small pool of
volunteer paths (WebRTC DataChannels found through the broker): one carries the session,
the others stand by, warm. When the carrying path dies (its channel closes, ICE fails, or
the egress stops answering while something is owed), the session moves to a warm path at
once and everything in flight is resent through it; the egress finds the session by its
connection ID whichever volunteer carries it. The pool refills in the background.

With no path at all, the session waits out a grace period (its streams wait with it), and
new connections are refused with a clear reason rather than left hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from unwall.transport import brokerhttp, quic, reordering, webrtc
from unwall.transport.broker_client import (
    MAX_ANSWER,
    BrokerClient,
    BrokerUnavailable,
    NoCompatibleVolunteer,
    NoTurn,
    NoVolunteer,
    RouteFailed,
)
from unwall.transport.natcheck import NatCheckConfig, learn_nat, stun_server_of
from unwall.transport.quic import (
    FlowControlledConnection,
    PinMismatch,
    QuicSession,
    QuicStream,
    read_header,
    read_to_end,
)
from unwall.wire import ticket
from unwall.wire.broker import TurnServer
from unwall.wire.nat import NatKind
from unwall.wire.pin import normalize_pin
from unwall.wire.streamheader import (
    HeaderError,
    StreamReplyDecoder,
    StreamStatus,
    encode_broker_request,
    encode_voucher,
)
from unwall.wire.ticket import Voucher

log = logging.getLogger("unwall.client")

PATH_SETUP_TIMEOUT = 20.0
HANDSHAKE_TIMEOUT = 10.0
#: An idle session pings this often, well inside the QUIC idle timeout.
KEEPALIVE_INTERVAL = 15.0
#: Bound on what waits in a DataChannel's send buffer; above it datagrams are dropped.
CHANNEL_BUFFER_BYTES = 1 << 20
#: A path is declared dead after this much silence while the egress owes us something
#: (scaled up with the round-trip time, see `_silence_limit`).
MIN_SILENCE = 0.5
MAX_SILENCE = 3.0
#: ... that is, this many smoothed round trips or QUIC probe timeouts (whichever is
#: longer: the probe timeout also covers a jittery path and an RTT not measured yet),
#: within those bounds
SILENCE_RTTS = 6
SILENCE_PTOS = 3
WATCH_INTERVAL = 0.05
MAX_BACKOFF = 30.0
#: seconds before the broker's TURN credentials expire that the client asks for new ones
TURN_REFRESH_MARGIN = 120.0
#: seconds a broker request through the tunnel may take beyond the broker's own timeout
#: (the egress's HTTP request to the broker, and the tunnel's round trips)
INNER_SLACK = 10.0
#: how often a broker request through the tunnel checks that the tunnel is still up
INNER_CHECK = 0.25
TURN_HINT = "--ice-server turn:HOST:PORT with --turn-user and UNWALL_TURN_PASSWORD"


class TunnelUnavailable(Exception):
    """No session to the egress could be had in time; the message says why."""


class Problem(enum.Enum):
    """Why the tunnel is not up (what the status page and line tell the user)."""

    BROKER_UNREACHABLE = "broker_unreachable"
    NO_VOLUNTEER = "no_volunteer"
    NO_COMPATIBLE = "no_compatible"  # volunteers, but none that can reach this NAT
    VOLUNTEER_UNREACHABLE = "volunteer_unreachable"  # WebRTC to the volunteer failed
    EGRESS_UNREACHABLE = "egress_unreachable"  # volunteers, but the QUIC handshake failed
    PIN_MISMATCH = "pin_mismatch"


@dataclass
class TunnelConfig:
    broker_url: str
    pin: str
    ice_servers: list[str] = field(default_factory=list)
    #: how long a new proxied connection waits for the tunnel before it is refused
    stream_wait: float = 10.0
    #: volunteer paths kept open: one carries traffic, the rest stand by
    paths: int = 2
    #: how long a session with no volunteer at all waits before its streams fail
    grace: float = 60.0
    #: our DTLS role: "auto" lets the volunteer choose (its answer decides); "client" or
    #: "server" insist, so that both directions can be tested against real browsers
    dtls_role: str = "auto"
    #: domain fronting: reach the broker through these https:// fronts (see BrokerClient)
    fronts: tuple[str, ...] = ()
    #: the broker's key (the bridge line's brokerkey=): offers go sealed to it; None: in
    #: the clear to the broker (and to any front)
    broker_key: str | None = None
    #: CA certificates (PEM file) to trust for the broker or front's TLS instead of the
    #: system's
    ca_file: str | None = None
    #: what speaks HTTPS to the broker (unwall.transport.brokerhttp.ENGINES): "chrome" has
    #: a current Chrome's TLS and HTTP/2, "python" Python's own (which a box can single out)
    broker_http: str = brokerhttp.ENGINES[0]
    #: credentials for the `turn:` URLs among ice_servers
    turn_user: str | None = None
    turn_password: str | None = None
    #: our NAT kind as told by --nat; None: measure it with the first stun: server
    nat: NatKind | None = None
    #: how: "browser" (plain bindings to the server's two addresses, as a browser with
    #: two STUN servers sends; the filtering taken as the strictest) or "rfc5780" (its
    #: CHANGE-REQUEST tests too, which no browser sends: a box can single them out)
    nat_check: str = "browser"
    #: the WebRTC engine (unwall.transport.webrtc.ENGINES)
    webrtc: str = "aiortc"
    #: the carrier this end prefers (unwall.transport.webrtc.CARRIERS; None: the engine's)
    carrier: str | None = None


class VolunteerPath:
    """One DataChannel to one volunteer."""

    def __init__(self, peer: webrtc.Peer, name: str, voucher: Voucher | None = None) -> None:
        self.peer = peer
        self.name = name
        self.dead = peer.dead
        #: what the egress is shown for this path (the broker's ticket and our secret);
        #: None: the broker minted no ticket
        self.voucher = voucher

    @property
    def why_dead(self) -> str:
        return self.peer.why_dead

    @property
    def dropped(self) -> int:
        return self.peer.dropped

    @property
    def on_datagram(self) -> Any:
        return self.peer.on_message

    @on_datagram.setter
    def on_datagram(self, callback: Any) -> None:
        self.peer.on_message = callback

    def kill(self, why: str) -> None:
        self.peer.kill(why)

    def send(self, data: bytes) -> None:
        self.peer.send(data)

    async def close(self) -> None:
        self.kill("closed")
        await self.peer.close()


class Tunnel:
    def __init__(self, config: TunnelConfig) -> None:
        self.config = config
        self.pin = normalize_pin(config.pin)
        self.ice_servers = webrtc.ice_servers_with_credentials(
            config.ice_servers, config.turn_user, config.turn_password
        )
        #: when the broker's TURN credentials expire (Unix time; None: none from it)
        self._turn_expires: float | None = None
        #: `turn:` URLs without credentials: the broker gives them, sealed (run())
        self._turn_urls = tuple(
            url for url in self.ice_servers if isinstance(url, str) and webrtc.is_turn_url(url)
        )
        self.ice_servers = [s for s in self.ice_servers if s not in self._turn_urls]
        self.relay = webrtc.has_turn(self.ice_servers)
        if config.webrtc not in webrtc.ENGINES:
            raise ValueError(
                f"the WebRTC engine must be one of {', '.join(webrtc.ENGINES)}, "
                f"not {config.webrtc!r}"
            )
        self.wanted_carrier = webrtc.check_carrier(config.webrtc, config.carrier)
        self.nat: NatKind = config.nat or "unknown"
        self.udp_silent = False
        #: set once the NAT check has its verdict (an offer carries it); at once when
        #: there is nothing to measure (--nat given, or no stun: server)
        self._nat_known = asyncio.Event()
        if config.nat is not None or stun_server_of(config.ice_servers) is None:
            self._nat_known.set()
        self.session: QuicSession | None = None
        self.active: VolunteerPath | None = None
        self._pool: list[VolunteerPath] = []
        self._pool_changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._path_count = 0
        self._closing: set[asyncio.Task[None]] = set()
        self.last_error = "the tunnel is starting"
        #: why the tunnel is down, when it is and the reason is known (with last_error)
        self.problem: Problem | None = None
        self.first_ready_at: float | None = None
        #: when the tunnel last became ready (loop time), None while it is down
        self.ready_since: float | None = None
        self.switches = 0
        #: bytes of QUIC datagrams sent and received through volunteers
        self.bytes_up = 0
        self.bytes_down = 0

    async def _through_tunnel(self, request: bytes, timeout: float) -> bytes:
        """A sealed broker request through our own session to the egress, which passes it
        on (protocol.md §5): once the tunnel is up, the box sees no broker traffic from
        us at all. RouteFailed while the tunnel is down."""
        session = self.session
        if session is None or session.is_closed or not self._ready.is_set():
            raise RouteFailed("the tunnel is not up")

        async def exchange() -> bytes:
            stream = session.open_stream()
            await stream.write(encode_broker_request() + request)
            stream.write_eof()
            reply = await read_header(stream, StreamReplyDecoder(), "the egress's reply")
            if reply.status != StreamStatus.OK:
                raise RouteFailed(f"the egress did not pass it on: {reply.reason}")
            return await read_to_end(stream, MAX_ANSWER)

        task = asyncio.ensure_future(exchange())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout + INNER_SLACK
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=INNER_CHECK)
                if task.done():
                    break
                # A tunnel that lost its last volunteer carries nothing until another
                # comes, which may need this very request: ask directly instead.
                if session.is_closed or not self._ready.is_set():
                    raise RouteFailed("the tunnel went down while it carried the request")
                if loop.time() > deadline:
                    raise RouteFailed("no answer through the tunnel in time")
            return task.result()
        except (quic.StreamReset, quic.SessionClosed, EOFError, HeaderError, ValueError) as exc:
            raise RouteFailed(f"the tunnel did not carry it ({exc})") from None
        finally:
            task.cancel()

    async def _fetch_turn(self, broker: BrokerClient) -> None:
        """Credentials for our `turn:` URLs, from the broker inside the sealed channel (a
        bridge line carries the URLs, never credentials). Without them we go on without
        TURN, and say why."""
        try:
            grant = await broker.turn()
        except (BrokerUnavailable, NoTurn) as exc:
            log.warning("no TURN relay: %s", exc)
            return
        # The line's URLs (they are what this network can reach) with the broker's
        # credentials, which its TURN servers take for any of their URLs.
        server = grant[0]
        self.ice_servers = [s for s in self.ice_servers if not isinstance(s, TurnServer)]
        self.ice_servers.append(TurnServer(self._turn_urls, server.username, server.credential))
        self.relay = True
        # coturn's REST credentials are "<expiry>:<id>": ask again before they expire
        expiry, _, _ = server.username.partition(":")
        self._turn_expires = float(expiry) if expiry.isdigit() else time.time() + 300.0

    # -- what the proxies call --------------------------------------------------------------

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

    @property
    def carrier(self) -> str | None:
        """How the carrying path moves datagrams (webrtc.CARRIERS), None with no path."""
        active = self.active
        return active.peer.carrier if active is not None and active.peer.is_open else None

    @property
    def volunteers(self) -> int:
        """Volunteer paths open now (one carries, the others stand by)."""
        return sum(1 for path in self._pool if not path.dead.is_set())

    def _fail(self, problem: Problem, message: str) -> None:
        self.problem, self.last_error = problem, message

    def _sender(self, path: VolunteerPath) -> Any:
        def send(data: bytes) -> None:
            self.bytes_up += len(data)
            path.send(data)

        return send

    # -- the main loop --------------------------------------------------------------------

    async def _learn_nat(self) -> None:
        """Measure our NAT (beside the first offer's ICE gathering: the offer waits for
        the verdict only once its candidates are gathered)."""
        try:
            verdict = await learn_nat(
                self.config.ice_servers,
                webrtc.pinned_host_addresses(),
                self.config.nat,
                NatCheckConfig(change_request=self.config.nat_check == "rfc5780"),
            )
            self.nat = verdict.kind
            # A STUN server that never answered: UDP is probably blocked on this network.
            self.udp_silent = (
                self.config.nat is None
                and stun_server_of(self.config.ice_servers) is not None
                and verdict.mapped is None
            )
        finally:
            self._nat_known.set()

    async def run(self) -> None:
        self._spawn(self._learn_nat())
        http = brokerhttp.open_http(self.config.broker_http, self.config.ca_file)
        async with contextlib.aclosing(http):
            broker = BrokerClient(
                http,
                self.config.broker_url,
                fronts=self.config.fronts,
                broker_key=self.config.broker_key,
            )
            broker.inner = self._through_tunnel
            if self._turn_urls:
                await self._fetch_turn(broker)
            if self.relay:
                log.info("TURN relay configured: volunteers behind any NAT can be reached")
            filler = asyncio.create_task(self._fill_pool(broker))
            try:
                await self._drive()
            finally:
                filler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await filler
                self._ready.clear()
                if self.session is not None:
                    self.session.close(quic.ERROR_SHUTDOWN, "client shutting down")
                await asyncio.gather(
                    *(path.close() for path in self._pool), *self._closing, return_exceptions=True
                )

    async def _drive(self) -> None:
        backoff = 1.0
        while True:
            path = await self._next_path()
            session = self.session
            if session is None or session.is_closed:
                try:
                    session = await self._handshake(path)
                except (TunnelUnavailable, PinMismatch) as exc:
                    wrong_pin = isinstance(exc, PinMismatch)
                    problem = Problem.PIN_MISMATCH if wrong_pin else Problem.EGRESS_UNREACHABLE
                    self._fail(problem, str(exc))
                    log.warning("%s; retrying in %.0f s", exc, backoff)
                    self._discard(path)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                backoff = 1.0
                self.session = session
                self._start_keepalive(session)
                self._show_voucher(session, path)
                log.info("tunnel ready: session with the egress established, pin verified")
            else:
                session.switch_path(self._sender(path))
                session.ping()
                self._show_voucher(session, path)
                self.switches += 1
                log.info("tunnel moved to a new volunteer (%s)", path.name)
            self.active = path
            now = asyncio.get_running_loop().time()
            if self.first_ready_at is None:
                self.first_ready_at = now
            if self.ready_since is None:
                self.ready_since = now
            self.problem = None
            self._ready.set()
            why = await self._watch(session, path)
            self._ready.clear()
            self.active = None
            if session.is_closed:
                self.ready_since = None
                self.problem = None  # connecting again
                self.last_error = f"the session with the egress ended: {session.closed.result()}"
                log.warning("%s", self.last_error)
                self.session = None
                self._discard(path)
                continue
            log.warning("volunteer %s lost (%s); switching", path.name, why)
            self._discard(path)
            if not self._live_paths():
                await self._wait_out_grace(session)

    async def _next_path(self) -> VolunteerPath:
        while True:
            live = self._live_paths()
            if live:
                return live[0]
            self._pool_changed.clear()
            await self._pool_changed.wait()

    def _live_paths(self) -> list[VolunteerPath]:
        for path in [p for p in self._pool if p.dead.is_set()]:
            self._discard(path)
        return list(self._pool)

    def _discard(self, path: VolunteerPath) -> None:
        if path in self._pool:
            self._pool.remove(path)
            self._pool_changed.set()
        path.kill("discarded")
        self._spawn(path.close())

    async def _handshake(self, path: VolunteerPath) -> QuicSession:
        configuration = quic.client_configuration(
            webrtc.quic_datagram_size(path.peer.remote_max_message_size)
        )
        session = QuicSession(
            FlowControlledConnection(
                configuration=configuration, receive_window=reordering.CLIENT_RECEIVE_WINDOW
            ),
            name="tunnel",
            pin=self.pin,
        )
        self.session = session
        session.set_sender(self._sender(path))
        session.connect()
        try:
            await asyncio.wait_for(asyncio.shield(session.ready), HANDSHAKE_TIMEOUT)
        except TimeoutError:
            session.close(quic.ERROR_PATH_LOST, "handshake timed out")
            self.session = None
            raise TunnelUnavailable(
                "the QUIC handshake with the egress timed out "
                "(is the volunteer's egress reachable?)"
            ) from None
        except quic.SessionClosed as exc:
            self.session = None
            raise TunnelUnavailable(f"the egress closed the session: {exc}") from None
        except PinMismatch:
            self.session = None
            raise
        return session

    def _show_voucher(self, session: QuicSession, path: VolunteerPath) -> None:
        """Show the egress this path's voucher: the first serves the session at all, each
        one credits the volunteer carrying it. Streams opened meanwhile wait for it at
        the egress, so nothing waits for the reply here."""
        voucher = path.voucher  # kept: a new session through this path shows it again
        if voucher is None:
            return

        async def show() -> None:
            try:
                stream = session.open_stream()
                await stream.write(encode_voucher(voucher))
                stream.write_eof()
                reply = await read_header(stream, StreamReplyDecoder(), "the voucher's reply")
            except (quic.StreamReset, quic.SessionClosed, EOFError, HeaderError, ValueError):
                return
            if reply.status != StreamStatus.OK:
                self.last_error = f"the egress refused this tunnel's voucher: {reply.reason}"
                log.warning("%s", self.last_error)

        self._spawn(show())

    async def _watch(self, session: QuicSession, path: VolunteerPath) -> str:
        """Return when the path dies (with the reason) or the session closes."""
        loop = asyncio.get_running_loop()
        probed_at = 0.0
        watching_since = loop.time()
        while True:
            if session.is_closed:
                return "session closed"
            if path.dead.is_set():
                return path.why_dead
            now = loop.time()
            silence = now - max(session.last_heard, watching_since)
            limit = _silence_limit(session)
            if session.expects_traffic() and silence > limit / 2:
                if silence > limit:
                    rtt = session.smoothed_rtt * 1000
                    return f"no answer through it for {silence:.1f} s, round trip {rtt:.0f} ms"
                # An ack-eliciting probe every round trip: a live path answers at once, and
                # on a lossy one several probes must all be lost before it counts as dead
                # (one probe per half limit was lost with its answer 28 % of the time at
                # 15 % loss, and the client left a working volunteer).
                if now - probed_at > max(session.smoothed_rtt, WATCH_INTERVAL):
                    session.ping()
                    probed_at = now
            await asyncio.sleep(WATCH_INTERVAL)

    async def _wait_out_grace(self, session: QuicSession) -> None:
        """No volunteer left: keep the session for the grace period, then give up."""
        session.set_sender(None)
        self.ready_since = None
        self._fail(Problem.NO_VOLUNTEER, "no volunteer is reachable right now")
        log.warning("no volunteer left; streams wait up to %.0f s for a new one", self.config.grace)
        try:
            await asyncio.wait_for(self._next_path(), self.config.grace)
        except TimeoutError:
            self._fail(
                Problem.NO_VOLUNTEER,
                f"no volunteer was reachable for {self.config.grace:.0f} s; "
                "the session was closed and its connections failed",
            )
            log.error("%s", self.last_error)
            session.close(quic.ERROR_PATH_LOST, "no volunteer within the grace period")
            self.session = None

    def _start_keepalive(self, session: QuicSession) -> None:
        async def keepalive() -> None:
            while not session.is_closed:
                await asyncio.sleep(KEEPALIVE_INTERVAL)
                session.ping()

        task = asyncio.ensure_future(keepalive())
        session.closed.add_done_callback(lambda _: task.cancel())

    # -- the pool of volunteer paths ------------------------------------------------------

    async def _fill_pool(self, broker: BrokerClient) -> None:
        backoff = 1.0
        while True:
            if len(self._live_paths()) >= self.config.paths:
                self._pool_changed.clear()
                await self._pool_changed.wait()
                continue
            try:
                path = await self._open_path(broker)
            except (NoVolunteer, BrokerUnavailable, TunnelUnavailable) as exc:
                reason = self._no_compatible() if isinstance(exc, NoCompatibleVolunteer) else exc
                if not self._ready.is_set():
                    self._fail(_problem_of(exc), str(reason))
                log.warning("%s; retrying in %.0f s", reason, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except Exception as exc:  # a bug, or an engine failing in a way not foreseen
                # The pool must keep filling whatever one attempt met: without it the
                # tunnel would wait for a path forever.
                log.error(
                    "opening a volunteer path failed (%s: %s); retrying in %.0f s",
                    type(exc).__name__, exc, backoff,
                )  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 1.0
            if not self._ready.is_set() and self.problem is not Problem.PIN_MISMATCH:
                self.problem = None  # a volunteer at last: connecting
            path.on_datagram = self._datagram_in
            self._pool.append(path)
            self._pool_changed.set()
            self._spawn(self._notice_death(path))

    def _no_compatible(self) -> str:
        return (
            f"your network's NAT is {self.nat} and no volunteer that can accept it is free "
            f"right now; a TURN server ({TURN_HINT}) would let you connect"
        )

    def _webrtc_failed(self, how: str) -> str:
        if self.relay:
            servers = ", ".join(
                u for u in webrtc.describe_ice_servers(self.ice_servers) if "turn" in u
            )
            turn = f"the TURN relay ({servers}) did not get through either"
        else:
            turn = f"no TURN server is configured ({TURN_HINT} relays around NATs that block it)"
        if self.udp_silent and not webrtc.has_tcp_turn(self.ice_servers):
            turn += (
                "; the STUN server never answered over UDP, so this network probably blocks "
                "UDP: only TURN over TCP or TLS gets through (--ice-server "
                "'turns:HOST:443?transport=tcp' with --turn-user and UNWALL_TURN_PASSWORD)"
            )
        return f"could not connect to the volunteer (WebRTC {how}; your NAT: {self.nat}; {turn})"

    def _datagram_in(self, data: bytes) -> None:
        # Any path may deliver: the egress answers on the one it last heard from.
        self.bytes_down += len(data)
        if self.session is not None:
            self.session.datagram_received(data)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _notice_death(self, path: VolunteerPath) -> None:
        await path.dead.wait()
        if path in self._pool and path is not self.active:
            log.info("standby volunteer %s lost (%s)", path.name, path.why_dead)
            self._discard(path)

    async def _open_path(self, broker: BrokerClient) -> VolunteerPath:
        expires = self._turn_expires
        if expires is not None and time.time() > expires - TURN_REFRESH_MARGIN:
            await self._fetch_turn(broker)  # through the tunnel, when it is up
        peer = webrtc.engine(self.config.webrtc).new_peer(
            self.ice_servers, max_buffered=CHANNEL_BUFFER_BYTES, carrier=self.wanted_carrier
        )
        self._path_count += 1
        path = VolunteerPath(peer, f"path-{self._path_count}")
        connected = False
        # Only we know it; the egress sees it, inside the session, as our proof (§3.1).
        secret = os.urandom(ticket.SECRET_SIZE)
        try:
            offer = await peer.offer()
            await self._nat_known.wait()
            answer = await broker.offer(
                webrtc.with_dtls_role(offer, self.config.dtls_role),
                nat=self.nat,
                relay=self.relay,
                egress=self.pin,
                commitment=ticket.commit(secret),
            )
            if answer.ticket is not None:
                path.voucher = Voucher(answer.ticket, secret)
            await peer.accept_answer(answer.sdp)
            opened: asyncio.Future[Any] = asyncio.ensure_future(peer.opened.wait())
            dead: asyncio.Future[Any] = asyncio.ensure_future(path.dead.wait())
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await asyncio.wait(
                    {opened, dead}, timeout=PATH_SETUP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                dead.cancel()
                opened.cancel()
            if not peer.is_open:
                elapsed = loop.time() - started
                how = (
                    f"failed after {elapsed:.1f} s: {path.why_dead}"
                    if path.dead.is_set()
                    else f"timed out after {PATH_SETUP_TIMEOUT:.0f} s"
                )
                raise TunnelUnavailable(self._webrtc_failed(how))
            connected = True
        except webrtc.EngineUnavailable as exc:
            raise TunnelUnavailable(f"the WebRTC engine failed: {exc}") from exc
        except ValueError as exc:  # the engine's verdict on a malformed answer
            raise TunnelUnavailable(f"the volunteer's answer was malformed: {exc}") from exc
        finally:
            if not connected:
                await peer.close()
        log.info("connected to a volunteer (%s, over %s)", path.name, peer.carrier)
        return path


def _problem_of(exc: Exception) -> Problem:
    if isinstance(exc, NoCompatibleVolunteer):
        return Problem.NO_COMPATIBLE
    if isinstance(exc, NoVolunteer):
        return Problem.NO_VOLUNTEER
    if isinstance(exc, BrokerUnavailable):
        return Problem.BROKER_UNREACHABLE
    return Problem.VOLUNTEER_UNREACHABLE


def _silence_limit(session: QuicSession) -> float:
    wanted = max(SILENCE_RTTS * session.smoothed_rtt, SILENCE_PTOS * session.probe_timeout)
    return min(MAX_SILENCE, max(MIN_SILENCE, wanted))
