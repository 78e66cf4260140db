"""The broker's HTTP shell: aiohttp around the sans-IO :class:`Matchmaker`.

It reads and checks bodies, feeds the matchmaker with the event loop's clock, carries out
its events (resolving the futures the long-polls and offers wait on), and arms one timer for
the matchmaker's next deadline. The API is docs/protocol.md section 1.

With a shared pool (``--redis``), several brokers act as one: an offer none of this
broker's volunteers can take at once is published to the pool, where any broker with a
volunteer that can serve it claims it; answers reach the broker holding the client's request
through the pool, whichever broker the volunteer answered on (unwall.broker.pool). When the
pool cannot be reached the broker says so on /v1/health (503), takes its published offers
back and matches its own volunteers only, and shares again when the pool returns.

A request whose peer has gone away is cleaned up: the handler is cancelled when the server
runs with ``handler_cancellation=True`` (as :func:`run_broker` does), and under any runner a
sweep every :data:`DISCONNECT_CHECK_INTERVAL` seconds notices closed connections. An offer
given to a poll whose volunteer is gone before the offer was written goes back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Generic, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from unwall import logs, metrics, serving
from unwall.broker.guard import Rate, RateLimits, limit_key, network_groups, network_of
from unwall.broker.matchmaker import (
    Matchmaker,
    MatchmakerConfig,
    OfferAnswered,
    OfferAssigned,
    OfferExpired,
    PollReleased,
    VolunteerForgotten,
)
from unwall.broker.pool import MAX_PROVEN_NETWORKS, Pool, PoolUnavailable, SharedOffer
from unwall.broker.turn import TurnIssuer
from unwall.wire import report, sealed, ticket
from unwall.wire.broker import (
    BAD_REQUEST,
    BAD_SEAL,
    MAX_BODY,
    NO_COMPATIBLE_VOLUNTEER,
    NO_TURN,
    NO_VOLUNTEER,
    PROTOCOL_VERSION,
    RATE_LIMITED,
    TOO_LARGE,
    UNKNOWN_EGRESS,
    UNKNOWN_OFFER,
    AnswerAccepted,
    BrokerError,
    ClientAnswer,
    ClientOffer,
    Message,
    MessageError,
    PollIdle,
    PollOffer,
    TurnGrant,
    VolunteerAnswer,
    VolunteerPoll,
    decode_client_offer,
    decode_turn_request,
    decode_volunteer_answer,
    decode_volunteer_poll,
    encode,
)
from unwall.wire.nat import NAT_KINDS, NatKind
from unwall.wire.sealed import CLIENT_OFFER_PATH, CLIENT_TURN_PATH, SEALED_PATH

log = logging.getLogger("unwall.broker")

DISCONNECT_CHECK_INTERVAL: Final = 1.0
#: With a shared pool and a free volunteer, how often to look for offers other brokers hold.
CLAIM_INTERVAL: Final = 0.1
#: Shared offers are read this many at a time, up to CLAIM_SCAN in one look.
CLAIM_BATCH: Final = 64
CLAIM_SCAN: Final = 512
#: An answered offer can be reported carried for this long (seconds) ...
ANSWERED_MEMORY: Final = 300.0
#: ... and at most this many answered offers and earning volunteers are remembered.
MAX_REMEMBERED: Final = 200_000
#: Offer ids one report may carry.
MAX_REPORT: Final = 1000
#: how large a sealed request may be
#: marks a sealed request one of our egresses passed on (its signature verified)
RELAYED: Final = web.RequestKey("unwall_relayed", bool)
MAX_SEALED: Final = sealed.max_sealed_size(MAX_BODY)


@dataclass
class BrokerConfig:
    """Broker timeouts in seconds; ``volunteer_ttl`` None means 3 x ``poll_timeout``."""

    poll_timeout: float = 20.0
    answer_timeout: float = 10.0
    volunteer_ttl: float | None = None
    #: where browser volunteers open their WebSockets (told to them by /v1/volunteer/config)
    egress_url: str | None = None
    #: ICE servers browser volunteers use; never a default public one
    ice_servers: tuple[str, ...] = ()
    #: mints TURN credentials for volunteers, in poll answers only (rate-limited; never in
    #: /v1/volunteer/config, which any page may fetch)
    turn: TurnIssuer | None = None
    #: Redis URL of a pool shared with other brokers; None: this broker alone, in memory
    redis_url: str | None = None
    #: the harvest guard: client networks see a part of the pool, no volunteer network
    #: gets more than its share (unwall.broker.guard); off only to measure without it
    guard: bool = True
    #: offers per client address, and polls per volunteer address; None: no limit
    offer_rate: Rate | None = field(default_factory=lambda: Rate(2.0, 30))
    poll_rate: Rate | None = field(default_factory=lambda: Rate(10.0, 100))
    #: long-polls one volunteer address may hold open at once
    polls_per_address: int = 128
    #: fronts (CIDRs) whose X-Forwarded-For names the real client (the rightmost address
    #: not itself a front); empty: the connecting address is the client's
    trusted_proxies: tuple[str, ...] = ()
    #: the secret this operator's brokers and egresses share: the broker mints each
    #: offer's tickets under a key derived from it (unwall.wire.ticket), and egresses
    #: present it when they report the sessions volunteers carried (POST
    #: /v1/egress/carried); None: no tickets (egresses then serve none of its clients)
    report_secret: str | None = None
    #: volunteers earn their room from the egresses' reports (protocol.md §1); False:
    #: every volunteer's own report of its load is believed
    earn_room: bool = False
    #: the operator's egresses by pin: a client whose offer names one of these pins is
    #: relayed to that egress's URL; empty: every volunteer relays to its own egress
    egresses: dict[str, str] = field(default_factory=dict)

    def relay_url(self, pin: str | None) -> str | None:
        """The relay URL for a client's egress pin; raise MessageError for a pin that is
        not on the list (when there is a list)."""
        if not self.egresses or pin is None:
            return None
        try:
            return self.egresses[pin]
        except KeyError:
            raise MessageError(
                UNKNOWN_EGRESS,
                "this broker relays to no egress with that pin; check the bridge line",
            ) from None

    def matchmaker_config(self) -> MatchmakerConfig:
        ttl = self.volunteer_ttl if self.volunteer_ttl is not None else 3 * self.poll_timeout
        return MatchmakerConfig(self.poll_timeout, self.answer_timeout, ttl, guard=self.guard)

    def source(self, request: web.BaseRequest) -> str | None:
        """The address a request comes from: the connecting one, or, from a trusted front,
        the rightmost X-Forwarded-For address that is not itself a front."""
        remote = request.remote
        if not self.trusted_proxies or not _in_networks(remote, self.trusted_proxies):
            return remote
        forwarded = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed(forwarded):
            if hop and not _in_networks(hop, self.trusted_proxies):
                return hop
        return remote


class _Gone(enum.Enum):
    """A waiting request's peer closed its connection."""

    GONE = enum.auto()


_GONE: Final = _Gone.GONE
_SHUTTING_DOWN: Final = BrokerError(NO_VOLUNTEER, "the broker is shutting down; try again")
_T = TypeVar("_T")


@dataclass(slots=True)
class _Waiter(Generic[_T]):
    request: web.BaseRequest
    future: asyncio.Future[_T | _Gone]
    nat: NatKind = field(default="unknown")  # a client offer's NAT kind, for its error


def _peer_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _mark_gone(waiters: Iterable[_Waiter[_T]]) -> None:
    for waiter in waiters:
        if not waiter.future.done() and _peer_gone(waiter.request):
            waiter.future.set_result(_GONE)


def _in_networks(address: str | None, networks: tuple[str, ...]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def _groups(network: str) -> frozenset[int] | None:
    """The volunteer groups a client network may use now (None: no network known)."""
    return network_groups(network, time.time()) if network else None


def _wall(deadline: float, now: float) -> float:
    """A loop-clock deadline as Unix time (what brokers on other machines share)."""
    return time.time() + (deadline - now)


def _reply(msg: Message) -> web.Response:
    status = msg.status if isinstance(msg, BrokerError) else 200
    return web.Response(status=status, body=encode(msg), content_type="application/json")


class _Metrics:
    def __init__(self, matchmaker: Matchmaker) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prefix = "unwall_broker_"
        self.offers = Counter(prefix + "offers", "Client offers received.", registry=self.registry)
        self.answers = Counter(
            prefix + "answers", "Volunteer answers passed on to clients.", registry=self.registry
        )
        self.offers_relayed = Counter(
            prefix + "offers_relayed",
            "Client offers an egress passed on from inside a client's tunnel.",
            registry=self.registry,
        )
        self.client_turn = Counter(
            prefix + "client_turn",
            "TURN credentials handed to clients (sealed requests).",
            registry=self.registry,
        )
        self.no_volunteer = Counter(
            prefix + "no_volunteer",
            "Client offers answered 503 no_volunteer.",
            registry=self.registry,
        )
        self.offers_incompatible = Counter(
            prefix + "offers_incompatible",
            "Client offers answered 503 no_compatible_volunteer: volunteers were free, but "
            "none the client's NAT can connect to.",
            registry=self.registry,
        )
        self.offers_by_nat: dict[NatKind, int] = dict.fromkeys(NAT_KINDS, 0)
        self.volunteers_by_nat: dict[NatKind, int] = dict.fromkeys(NAT_KINDS, 0)
        self.rate_limited = Counter(
            prefix + "rate_limited",
            "Requests refused 429 rate_limited, by what was limited (offers, polls).",
            ["what"],
            registry=self.registry,
        )
        for what in ("offers", "polls"):
            self.rate_limited.labels(what)
        self.carried = Counter(
            prefix + "carried",
            "Sessions egresses reported carried by volunteers this broker knows.",
            registry=self.registry,
        )
        self.registry.register(_PeopleCounts(self, prefix))
        polls = Gauge(
            prefix + "open_polls", "Volunteer long-polls being held.", registry=self.registry
        )
        polls.set_function(lambda: matchmaker.open_poll_count)
        waiting = Gauge(
            prefix + "waiting_offers",
            "Client offers queued for a volunteer.",
            registry=self.registry,
        )
        waiting.set_function(lambda: matchmaker.waiting_offer_count)
        self.pool_up: Gauge | None = None  # with a shared pool only

    def add_pool_gauge(self) -> None:
        self.pool_up = Gauge(
            "unwall_broker_pool_up",
            "1 while the shared pool (Redis) is reachable, 0 while it is not.",
            registry=self.registry,
        )


class _PeopleCounts(Collector):
    """Counts of people, rounded up to a multiple of 8 when scraped (unwall.metrics)."""

    def __init__(self, owner: _Metrics, prefix: str) -> None:
        self._owner = owner
        self._prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        note = f" (rounded up to a multiple of {metrics.BIN})"
        offers = CounterMetricFamily(
            self._prefix + "offers_by_nat",
            "Client offers received, by the NAT kind the client reported" + note + ".",
            labels=["nat"],
        )
        volunteers = GaugeMetricFamily(
            self._prefix + "volunteers_by_nat",
            "Volunteers that polled within volunteer_ttl, by their NAT kind" + note + ".",
            labels=["nat"],
        )
        for kind in NAT_KINDS:
            offers.add_metric([kind], metrics.rounded(self._owner.offers_by_nat[kind]))
            volunteers.add_metric([kind], metrics.rounded(self._owner.volunteers_by_nat[kind]))
        yield offers
        yield volunteers
        yield GaugeMetricFamily(
            self._prefix + "volunteers",
            "Volunteers that polled within volunteer_ttl" + note + ".",
            value=metrics.rounded(sum(self._owner.volunteers_by_nat.values())),
        )


class Broker:
    """The state of one broker application: matchmaker, waiting requests, timer, metrics."""

    def __init__(self, config: BrokerConfig, pool: Pool | None = None) -> None:
        self.config = config
        #: the key of this operator's tickets (b"": none minted)
        self._tickets = ticket.derive_key(config.report_secret) if config.report_secret else b""
        self.matchmaker = Matchmaker(config.matchmaker_config())
        self.metrics = _Metrics(self.matchmaker)
        self.pool = pool
        if pool is not None:
            self.metrics.add_pool_gauge()
        #: offers claimed from the pool, which another broker holds: their owner
        self._remote_owner: dict[str, str] = {}
        #: this broker's offers now waiting in the pool, and the timers that expire them
        self._shared: dict[str, SharedOffer] = {}
        self._shared_timers: dict[str, asyncio.TimerHandle] = {}
        #: offers handed to a volunteer here: their record in the pool, being written
        self._recording: dict[str, asyncio.Task[bool]] = {}
        self._claim_wanted = asyncio.Event()
        self._offer_limits = RateLimits(config.offer_rate) if config.offer_rate else None
        self._poll_limits = RateLimits(config.poll_rate) if config.poll_rate else None
        self._open_polls: dict[str, int] = {}  # open long-polls, by volunteer address
        #: answered offers (volunteer, client network, when), until an egress reports them
        self._answered: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        #: the client networks each volunteer was seen to carry sessions for
        self._earned: OrderedDict[str, set[str]] = OrderedDict()
        self._tasks: set[asyncio.Task[object]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._polls: dict[int, _Waiter[PollOffer | PollIdle]] = {}
        self._offers: dict[str, _Waiter[ClientAnswer | BrokerError]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False
        #: the key clients seal their requests to (derived from the report secret), and
        #: what each sealed path serves
        self._sealing = (
            sealed.derive_private_key(config.report_secret) if config.report_secret else None
        )
        #: the key the egresses sign with (reports, and clients' requests they pass on)
        self._report_key = report.report_key(config.report_secret) if config.report_secret else b""
        self._replays = sealed.ReplayGuard()
        self._sealed_paths: dict[str, Callable[[web.Request, bytes], Awaitable[Message]]] = {
            CLIENT_OFFER_PATH: self._client_offer,
            CLIENT_TURN_PATH: self._client_turn,
        }

    # -- handlers -------------------------------------------------------------------------

    async def volunteer_poll(self, request: web.Request) -> web.StreamResponse:
        poll = decode_volunteer_poll(await _read_body(request))
        if self._closing:
            return _reply(PollIdle())
        loop = asyncio.get_running_loop()
        address = self.config.source(request)
        source = limit_key(address)
        self._limit(self._poll_limits, source, loop.time(), "polls")
        if self._open_polls.get(source, 0) >= self.config.polls_per_address:
            self.metrics.rate_limited.labels("polls").inc()
            raise _TooMany(
                f"{self.config.polls_per_address} volunteers already poll from this "
                "address; try again later",
                self.config.poll_timeout,
            )
        self._open_polls[source] = self._open_polls.get(source, 0) + 1
        try:
            return await self._volunteer_poll(request, poll, network_of(address))
        finally:
            self._open_polls[source] -= 1
            if self._open_polls[source] <= 0:
                del self._open_polls[source]

    def _limit_client(self, request: web.Request) -> bool:
        """Count a client's request against its address's offers (raise _TooMany past
        the limit); True, and nothing counted, for one an egress passed on (the egress
        limits each session itself, and the address is its own)."""
        if request.get(RELAYED, False):
            return True
        source = limit_key(self.config.source(request))
        self._limit(self._offer_limits, source, asyncio.get_running_loop().time(), "offers")
        return False

    def _limit(self, limits: RateLimits | None, source: str, now: float, what: str) -> None:
        if limits is None:
            return
        wait = limits.take(source, now)
        if wait > 0:
            self.metrics.rate_limited.labels(what).inc()
            raise _TooMany(f"too many {what} from this address; try again later", wait)

    async def _volunteer_poll(
        self, request: web.Request, poll: VolunteerPoll, network: str
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PollOffer | PollIdle | _Gone] = loop.create_future()
        proven = await self.proven(poll.volunteer_id)
        poll_id = self.matchmaker.receive_poll(poll, loop.time(), network, proven)
        # Counted in the pool from its second poll here: an id made up for one poll costs
        # the pool nothing (unwall.broker.pool, "volunteers").
        returning = self.matchmaker.polls_from(poll.volunteer_id) >= 2
        self._polls[poll_id] = _Waiter(request, future)
        self._process_events()
        if self.pool is not None and self.pool.problem is None:
            if returning:
                self._spawn(self.pool.note_volunteer(poll.volunteer_id, poll.nat, time.time()))
            self._claim_wanted.set()
        try:
            reply = await future
        except asyncio.CancelledError:
            self._give_back_poll(poll_id)
            raise
        if isinstance(reply, _Gone):
            log.debug("volunteer %s hung up while polling", poll.volunteer_id)
            self._give_back_poll(poll_id)
            return _reply(PollIdle())
        if isinstance(reply, PollOffer):
            recording = self._recording.pop(reply.offer_id, None)
            if recording is not None:
                # The answer may come on another broker: the pool must know who holds what.
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(recording), 2.0)
                except asyncio.CancelledError:
                    self._give_back_poll(poll_id)
                    raise
        if self.config.turn is not None:
            reply = replace(reply, turn=(self.config.turn.issue(time.time()),))
        response = _reply(reply)
        if isinstance(reply, PollIdle):
            return response
        # Write the offer here rather than after returning, so that a failed write can put
        # the offer back in the queue for another volunteer.
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            log.debug("volunteer %s hung up before its offer was sent", poll.volunteer_id)
            self._give_back_poll(poll_id)
        except asyncio.CancelledError:
            self._give_back_poll(poll_id)
            raise
        else:
            log.debug("offer %s sent to volunteer %s", reply.offer_id, poll.volunteer_id)
        return response

    async def volunteer_answer(self, request: web.Request) -> web.StreamResponse:
        answer = decode_volunteer_answer(await _read_body(request))
        now = asyncio.get_running_loop().time()
        # The client's network, while the matchmaker still has the offer (for the credit).
        network = self.matchmaker.offer_network(answer.offer_id)
        if self.pool is not None and answer.offer_id in self._remote_owner:
            # Handed out here, held by another broker: the pool checks it and passes it on.
            accepted = await self._forward_answer(answer) is not None
            if accepted:
                self._remote_owner.pop(answer.offer_id, None)
                self.matchmaker.receive_answer(answer, now)  # this broker's bookkeeping
                self._process_events()
        else:
            accepted = self.matchmaker.receive_answer(answer, now)
            self._process_events()
            if not accepted and self.pool is not None:
                # Handed out by another broker, perhaps: the pool knows, and forwards it.
                network = await self._forward_answer(answer)
                accepted = network is not None
        if not accepted:
            raise MessageError(
                UNKNOWN_OFFER,
                "that offer does not exist: the client gave up, it was answered already, "
                "or it was not given to this volunteer; poll again",
            )
        self.metrics.answers.inc()
        if self.config.earn_room:
            await self._record_answered(answer.offer_id, answer.volunteer_id, network or "")
        return _reply(AnswerAccepted())

    async def _forward_answer(self, answer: VolunteerAnswer) -> str | None:
        """The pool's verdict on an answer to an offer another broker holds: the offer's
        client network if it was handed to this volunteer, else None."""
        assert self.pool is not None
        try:
            return await self.pool.forward_answer(answer.offer_id, answer.volunteer_id, answer.sdp)
        except PoolUnavailable:
            return None

    # -- volunteers earn their room (the egress reports what they carried) ----------------

    async def proven(self, volunteer_id: str) -> int | None:
        """The client networks a volunteer was seen to carry sessions for (None: the broker
        believes every report)."""
        if not self.config.earn_room:
            return None
        if self.pool is not None and self.pool.problem is None:
            with contextlib.suppress(PoolUnavailable):
                return await self.pool.proven(volunteer_id)
        return len(self._earned.get(volunteer_id, ()))

    async def _record_answered(self, offer_id: str, volunteer_id: str, network: str) -> None:
        if self.pool is not None and self.pool.problem is None:
            with contextlib.suppress(PoolUnavailable):
                await self.pool.record_answered(offer_id, volunteer_id, network, ANSWERED_MEMORY)
                return
        self._answered[offer_id] = (volunteer_id, network, time.monotonic())
        while len(self._answered) > MAX_REMEMBERED:
            self._answered.popitem(last=False)

    async def egress_carried(self, request: web.Request) -> web.StreamResponse:
        """An egress reports offers whose relays carried a session that proved the offer."""
        secret = self.config.report_secret
        raw = await _read_body(request)
        given = request.headers.get("Authorization", "")
        if secret is None or not report.verify(self._report_key, given, raw, time.time()):
            return web.json_response(
                {"version": PROTOCOL_VERSION, "error": "unauthorized", "message": "no"},
                status=401,
            )
        try:
            body = json.loads(raw)
            offers = [str(o) for o in body["offers"]][:MAX_REPORT]
        except (ValueError, KeyError, TypeError):
            raise MessageError(BAD_REQUEST, 'expected {"offers": [offer ids]}') from None
        credited = 0
        for offer_id in offers:
            volunteer_id: str | None = None
            if self.pool is not None and self.pool.problem is None:
                with contextlib.suppress(PoolUnavailable):
                    credited += await self.pool.credit(offer_id)
                    continue
            remembered = self._answered.pop(offer_id, None)
            if remembered is not None and time.monotonic() - remembered[2] < ANSWERED_MEMORY:
                volunteer_id, network, _ = remembered
                # Counted in client networks: a censor running its own clients through its
                # own fake volunteer proves one network, however many sessions it makes.
                networks = self._earned.setdefault(volunteer_id, set())
                if len(networks) < MAX_PROVEN_NETWORKS:
                    networks.add(network)
                self._earned.move_to_end(volunteer_id)
                while len(self._earned) > MAX_REMEMBERED:
                    self._earned.popitem(last=False)
                credited += 1
        self.metrics.carried.inc(credited)
        return web.json_response({"version": PROTOCOL_VERSION, "credited": credited})

    async def client_offer(self, request: web.Request) -> web.StreamResponse:
        return _reply(await self._client_offer(request, await _read_body(request)))

    async def client_sealed(self, request: web.Request) -> web.StreamResponse:
        """A client's request sealed to this broker's key (protocol.md §1.6): opened, served
        as its path would be, and answered sealed, errors too. Only a body that does not
        open gets a plain error (it tells whoever sent it nothing they did not know)."""
        raw = await _read_body(request, MAX_SEALED)
        if self._sealing is None:
            raise MessageError(BAD_SEAL, "this broker takes no sealed requests")
        try:
            opened = sealed.open_request(self._sealing, raw)
        except sealed.SealError as exc:
            raise MessageError(BAD_SEAL, str(exc)) from None
        signature = request.headers.get("Authorization", "")
        if signature and self._report_key:
            # One of our egresses, passing on a request a client sent inside its tunnel
            # (protocol.md §5).
            request[RELAYED] = report.verify(self._report_key, signature, raw, time.time())
        reply: Message
        try:
            self._replays.check(opened, time.time())
            serve = self._sealed_paths.get(opened.path)
            if serve is None:
                raise MessageError(BAD_REQUEST, f"no sealed request goes to {opened.path!r}")
            reply = await serve(request, opened.body)
        except sealed.SealError as exc:
            reply = BrokerError(BAD_SEAL, str(exc))
        except MessageError as exc:
            log.info("sealed %s: %s: %s", opened.path, exc.code, exc.message)
            reply = exc.to_broker_error()
        status = reply.status if isinstance(reply, BrokerError) else 200
        return web.Response(
            body=sealed.seal_response(opened.pending, status, encode(reply)),
            content_type=sealed.CONTENT_TYPE,
        )

    async def _client_offer(self, request: web.Request, body: bytes) -> ClientAnswer | BrokerError:
        offer = decode_client_offer(body)
        relay_url = self.config.relay_url(offer.egress)
        if self._closing:
            return _SHUTTING_DOWN
        loop = asyncio.get_running_loop()
        relayed = self._limit_client(request)
        if relayed:
            self.metrics.offers_relayed.inc()
        # the egress's address is no client's
        network = "" if relayed else network_of(self.config.source(request))
        future: asyncio.Future[ClientAnswer | BrokerError | _Gone] = loop.create_future()
        offer_id = self.matchmaker.receive_offer(
            offer,
            loop.time(),
            relay_url=relay_url,
            network=network,
            groups=_groups(network),
        )
        self.metrics.offers.inc()
        self.metrics.offers_by_nat[offer.nat] += 1
        self._offers[offer_id] = _Waiter(request, future, offer.nat)
        self._process_events()
        try:
            reply = await future
        except asyncio.CancelledError:
            self._drop_offer(offer_id)
            raise
        if isinstance(reply, _Gone):
            log.debug("client hung up while waiting for offer %s", offer_id)
            self._drop_offer(offer_id)
            return BrokerError(BAD_REQUEST, "the client closed its connection")
        if isinstance(reply, ClientAnswer) and offer.commitment is not None and self._tickets:
            # The client shows this to the egress, with the secret behind its commitment.
            reply = ClientAnswer(
                reply.sdp, ticket.mint(self._tickets, offer_id, offer.commitment, time.time())
            )
        if isinstance(reply, BrokerError):
            if reply.code == NO_COMPATIBLE_VOLUNTEER:
                self.metrics.offers_incompatible.inc()
            else:
                self.metrics.no_volunteer.inc()
        return reply

    async def _client_turn(self, request: web.Request, body: bytes) -> TurnGrant | BrokerError:
        """TURN credentials for a client: only sealed (a stranger who has no bridge line
        gets none), counted against the address's offers."""
        decode_turn_request(body)
        if self.config.turn is None:
            return BrokerError(NO_TURN, "this broker has no TURN server for clients")
        self._limit_client(request)
        self.metrics.client_turn.inc()
        return TurnGrant((self.config.turn.issue(time.time()),))

    async def counts(self) -> dict[str, int]:
        """Exact counts: volunteers seen (across the pool, if shared) and offers waiting
        here. Never served as they are: /v1/health rounds them (metrics.rounded)."""
        return {
            "volunteers": sum((await self._volunteers_by_nat()).values()),
            "waiting_offers": self.matchmaker.waiting_offer_count + len(self._shared),
        }

    async def health(self, request: web.Request) -> web.StreamResponse:
        # Rounded up to a multiple of 8, as the metrics are: anyone may ask, and an exact
        # count would show one volunteer, or one client, come and go.
        counts = await self.counts()
        body: dict[str, object] = {
            "version": PROTOCOL_VERSION,
            "status": "ok",
            "volunteers": metrics.rounded(counts["volunteers"]),
            "waiting_offers": metrics.rounded(counts["waiting_offers"]),
        }
        if self.pool is None:
            return web.json_response(body)
        problem = self.pool.problem
        brokers = 0
        if problem is None:
            try:
                brokers = await self.pool.broker_count(time.time())
            except PoolUnavailable:
                problem = self.pool.problem
        body["pool"] = {"brokers": brokers, "problem": problem}
        if problem is not None:
            body["status"] = "degraded"
            body["reason"] = f"{problem}; matching this broker's own volunteers only"
            return web.json_response(body, status=503)
        return web.json_response(body)

    async def _volunteers_by_nat(self) -> dict[NatKind, int]:
        """Volunteers seen within volunteer_ttl: on any broker of the pool, if shared."""
        if self.pool is not None and self.pool.problem is None:
            ttl = self.config.matchmaker_config().volunteer_ttl
            try:
                return await self.pool.volunteer_counts(ttl, time.time())
            except PoolUnavailable:
                pass
        return self.matchmaker.volunteers_by_nat()

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        self.metrics.volunteers_by_nat.update(await self._volunteers_by_nat())
        if self.pool is not None and self.metrics.pool_up is not None:
            self.metrics.pool_up.set(0 if self.pool.problem else 1)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- carrying out matchmaker decisions ------------------------------------------------

    def _process_events(self) -> None:
        loop = asyncio.get_running_loop()
        while (event := self.matchmaker.next_event()) is not None:
            match event:
                case OfferAssigned():
                    self._deliver_offer(event, loop.time())
                case PollReleased():
                    self._settle_poll(event.poll_id, PollIdle())
                case OfferAnswered():
                    self._settle_offer(event.offer_id, ClientAnswer(event.sdp))
                    if self.pool is not None and self.pool.problem is None:
                        # Its record in the pool goes, so that no other answer is taken.
                        self._spawn(self.pool.withdraw(event.offer_id))
                case OfferExpired():
                    log.debug("offer %s expired (handed out: %s)", event.offer_id, event.handed)
                    if self._remote_owner.pop(event.offer_id, None) is not None:
                        pass  # its own broker tells its client
                    elif event.incompatible:
                        self._settle_offer(event.offer_id, self._no_compatible(event.offer_id))
                    else:
                        self._settle_offer(event.offer_id, self._no_volunteer())
                case VolunteerForgotten():
                    log.debug("volunteer %s forgotten", event.volunteer_id)
        if self.pool is not None and self.pool.problem is None and not self._closing:
            self._share_queued(loop)
        self._arm_timer(loop)
        self._arm_sweeper(loop)

    def _deliver_offer(self, event: OfferAssigned, now: float) -> None:
        waiter = self._polls.pop(event.poll_id, None)
        if waiter is None or waiter.future.done() or _peer_gone(waiter.request):
            if waiter is not None and not waiter.future.done():
                waiter.future.set_result(_GONE)
            # Back to the queue; the matchmaker may hand it on at once (more events).
            self.matchmaker.abandon_poll(event.poll_id, now)
            return
        if self.pool is not None and self.pool.problem is None:
            owner = self._remote_owner.get(event.offer_id, self.pool.broker_id)
            deadline = self.matchmaker.offer_deadline(event.offer_id) or now
            record = self.pool.record_handed(
                event.offer_id,
                owner,
                event.volunteer_id,
                _wall(deadline, now),
                self.matchmaker.offer_network(event.offer_id) or "",
            )
            self._recording[event.offer_id] = self._spawn(record)
        relay_ticket = None
        if self._tickets:
            # Opens the relay at the egress; it binds no client secret (the volunteer
            # sees it), so it proves nothing about the session carried through it.
            relay_ticket = ticket.mint(self._tickets, event.offer_id, ticket.RELAY, time.time())
        waiter.future.set_result(
            PollOffer(event.offer_id, event.sdp, relay_url=event.relay_url, ticket=relay_ticket)
        )

    def _settle_poll(self, poll_id: int, reply: PollOffer | PollIdle) -> None:
        waiter = self._polls.pop(poll_id, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(reply)

    def _settle_offer(self, offer_id: str, reply: ClientAnswer | BrokerError) -> None:
        waiter = self._offers.pop(offer_id, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(reply)

    def _no_volunteer(self) -> BrokerError:
        return BrokerError(
            NO_VOLUNTEER,
            f"no volunteer with free capacity answered within {self.config.answer_timeout:g} s;"
            " try again later",
        )

    def _no_compatible(self, offer_id: str) -> BrokerError:
        waiter = self._offers.get(offer_id)
        nat = waiter.nat if waiter is not None else "unknown"
        return BrokerError(
            NO_COMPATIBLE_VOLUNTEER,
            f"volunteers were free, but none that a client behind a {nat} NAT can "
            f"connect to, within {self.config.answer_timeout:g} s; a TURN server would let "
            "you connect, or try again later",
        )

    def _give_back_poll(self, poll_id: int) -> None:
        self._polls.pop(poll_id, None)
        self.matchmaker.abandon_poll(poll_id, asyncio.get_running_loop().time())
        self._process_events()

    def _drop_offer(self, offer_id: str) -> None:
        self._offers.pop(offer_id, None)
        self.matchmaker.abandon_offer(offer_id, asyncio.get_running_loop().time())
        if self._forget_shared(offer_id) and self.pool is not None and not self.pool.problem:
            self._spawn(self.pool.withdraw(offer_id))
        self._process_events()

    # -- sharing a pool with other brokers --------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, _T]) -> asyncio.Task[bool]:
        """Run a pool operation in the background; its task says whether it succeeded."""

        async def run() -> bool:
            try:
                await coro
            except PoolUnavailable:
                return False
            return True

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _share_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """Publish what this broker's volunteers could not take at once."""
        assert self.pool is not None
        now = loop.time()
        for record in self.matchmaker.take_queued():
            owner = self._remote_owner.pop(record.offer_id, self.pool.broker_id)
            mine = owner == self.pool.broker_id
            if mine and record.offer_id not in self._offers:
                continue  # its client is gone
            shared = SharedOffer(
                record.offer_id,
                record.sdp,
                record.nat,
                record.relay,
                owner,
                _wall(record.deadline, now),
                record.passed_over,
                record.relay_url,
                record.network,
            )
            if mine:
                self._shared[record.offer_id] = shared
                self._shared_timers[record.offer_id] = loop.call_at(
                    record.deadline, self._expire_shared, record.offer_id
                )
            self._spawn(self._publish(shared))

    async def _publish(self, offer: SharedOffer) -> None:
        assert self.pool is not None
        try:
            await self.pool.publish(offer)
        except PoolUnavailable:
            self._take_back(offer)

    def _take_back(self, offer: SharedOffer) -> None:
        """Match a shared offer here again (the pool is unreachable)."""
        assert self.pool is not None
        mine = offer.owner == self.pool.broker_id
        if mine and not self._forget_shared(offer.offer_id):
            return  # answered, expired or abandoned meanwhile
        if offer.deadline <= time.time():
            if mine:
                self._settle_offer(offer.offer_id, self._no_volunteer())
            return
        if not mine:
            self._remote_owner[offer.offer_id] = offer.owner
        self._match_here(offer, _groups(offer.network))

    def _match_here(self, offer: SharedOffer, groups: frozenset[int] | None) -> None:
        """Give a shared offer to this broker's matchmaker, with its id and deadline."""
        now = asyncio.get_running_loop().time()
        self.matchmaker.receive_offer(
            ClientOffer(offer.sdp, offer.nat, offer.relay),
            now,
            offer_id=offer.offer_id,
            deadline=now + (offer.deadline - time.time()),
            relay_url=offer.relay_url,
            network=offer.network,
            groups=groups,
        )
        self._process_events()

    def _forget_shared(self, offer_id: str) -> bool:
        timer = self._shared_timers.pop(offer_id, None)
        if timer is not None:
            timer.cancel()
        return self._shared.pop(offer_id, None) is not None

    def _expire_shared(self, offer_id: str) -> None:
        offer = self._shared.get(offer_id)
        if offer is None:
            return
        self._forget_shared(offer_id)

        async def expire() -> None:
            assert self.pool is not None
            gone: SharedOffer | None = None
            with contextlib.suppress(PoolUnavailable):
                gone = await self.pool.withdraw(offer_id)
            passed_over = gone.passed_over if gone is not None else offer.passed_over
            if passed_over:
                self._settle_offer(offer_id, self._no_compatible(offer_id))
            else:
                self._settle_offer(offer_id, self._no_volunteer())

        self._spawn(expire())

    async def _claim(self) -> None:
        """Hand other brokers' waiting offers to this broker's free volunteers."""
        pool = self.pool
        assert pool is not None
        loop = asyncio.get_running_loop()
        # Page through the queue, so that offers nobody here can serve do not hide the
        # ones behind them (up to CLAIM_SCAN a look).
        offers: list[SharedOffer] = []
        for start in range(0, CLAIM_SCAN, CLAIM_BATCH):
            page = await pool.head(CLAIM_BATCH, start)
            offers += page
            if len(page) < CLAIM_BATCH:
                break
        for offer in offers:
            if not self.matchmaker.has_free_polls:
                return
            if offer.deadline <= time.time():
                continue  # its broker withdraws it
            groups = _groups(offer.network)
            now = loop.time()
            if not self.matchmaker.can_place(offer.nat, offer.relay, offer.network, groups, now):
                if not offer.passed_over and not self.matchmaker.can_place(
                    offer.nat, offer.relay, now=now
                ):
                    await pool.mark_passed_over(offer.offer_id)  # its NAT, not its groups
                continue
            if not await pool.claim(offer.offer_id):
                continue  # another broker was first
            if offer.owner == pool.broker_id:
                if not self._forget_shared(offer.offer_id):
                    continue  # expired or abandoned meanwhile
            else:
                self._remote_owner[offer.offer_id] = offer.owner
            self._match_here(offer, groups)

    async def _claimer(self) -> None:
        assert self.pool is not None
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_wanted.wait(), CLAIM_INTERVAL)
            self._claim_wanted.clear()
            if self.pool.problem is None and self.matchmaker.has_free_polls:
                with contextlib.suppress(PoolUnavailable):
                    await self._claim()

    async def _receive_answers(self) -> None:
        assert self.pool is not None
        async for delivery in self.pool.deliveries():
            self._forget_shared(delivery.offer_id)
            self._settle_offer(delivery.offer_id, ClientAnswer(delivery.sdp))

    async def _follow_pool(self) -> None:
        """Take published offers back while the pool is unreachable; share again after."""
        assert self.pool is not None
        while not self._closing:
            usable = await self.pool.wait_change()
            if usable:
                self._process_events()  # publishes what waits here
            else:
                for offer in list(self._shared.values()):
                    self._take_back(offer)

    async def start(self) -> None:
        """Join the shared pool, if there is one (an unreachable one is retried)."""
        if self.pool is None:
            return
        await self.pool.start()
        self._background = [
            asyncio.create_task(self._claimer()),
            asyncio.create_task(self._receive_answers()),
            asyncio.create_task(self._follow_pool()),
        ]

    # -- timers ---------------------------------------------------------------------------

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        when = None if self._closing else self.matchmaker.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        loop = asyncio.get_running_loop()
        # The loop may run a timer a hair early; it is due all the same.
        now = max(loop.time(), self._timer_at or 0.0)
        self._timer = None
        self._timer_at = None
        self.matchmaker.handle_timer(now)
        self._process_events()

    def _arm_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None and not self._closing and (self._polls or self._offers):
            self._sweeper = loop.call_later(DISCONNECT_CHECK_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        """Settle the waits of requests whose peers closed their connections."""
        self._sweeper = None
        _mark_gone(self._polls.values())
        _mark_gone(self._offers.values())
        self._arm_sweeper(asyncio.get_running_loop())

    async def close(self) -> None:
        """Release every waiting request (polls idle, offers 503) and stop the timers."""
        self._closing = True
        for handle in (self._timer, self._sweeper):
            if handle is not None:
                handle.cancel()
        self._timer = self._sweeper = None
        self._timer_at = None
        for poll_id in list(self._polls):
            self._settle_poll(poll_id, PollIdle())
        for offer_id in list(self._offers):
            self._settle_offer(offer_id, _SHUTTING_DOWN)
        for task in self._background:
            task.cancel()  # and they stop at self._closing, should a cancel be lost
        for offer_id in list(self._shared):
            self._forget_shared(offer_id)
            if self.pool is not None:
                self._spawn(self.pool.withdraw(offer_id))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        if self.pool is not None:
            await self.pool.close()


async def _read_body(request: web.BaseRequest, limit: int = MAX_BODY) -> bytes:
    """The request body, refused with too_large as soon as it passes `limit`."""
    length = request.content_length
    if length is not None and length > limit:
        raise MessageError(TOO_LARGE, f"the body is {length} bytes; the limit is {limit}")
    body = bytearray()
    try:
        async with asyncio.timeout(serving.BODY_TIMEOUT):
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limit:
                    raise MessageError(TOO_LARGE, f"the body exceeds the limit of {limit} bytes")
    except TimeoutError:
        raise MessageError(
            BAD_REQUEST, f"the request body did not arrive within {serving.BODY_TIMEOUT:.0f} s"
        ) from None
    except (ConnectionError, HttpProcessingError) as exc:
        raise MessageError(BAD_REQUEST, f"the request body could not be read ({exc})") from None
    return bytes(body)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn a client's mistake into its JSON error response: one log line, no traceback
    (for refusals of a rate limit, at most one line every few seconds)."""
    try:
        return await handler(request)
    except _TooMany as exc:
        allowed, left_out = _RATE_LIMITED_LOG.allow()
        if allowed:
            more = f" ({left_out} more since the last line)" if left_out else ""
            log.warning("%s %s: rate limited%s", request.method, request.path, more)
        response = _reply(exc.to_broker_error())
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    except MessageError as exc:
        log.info("%s %s: %s: %s", request.method, request.path, exc.code, exc.message)
        return _reply(exc.to_broker_error())


class _TooMany(MessageError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(RATE_LIMITED, message)
        self.retry_after = retry_after


_RATE_LIMITED_LOG: Final = logs.Throttle(10.0)


BROKER_KEY: Final = web.AppKey("unwall_broker", Broker)

STATIC_DIR: Final = Path(__file__).with_name("static")
#: The media carrier's scripts, one copy for the Chromium engine and the widget (protocol.md
#: section 2.1): served under /widget/carrier/.
CARRIER_DIR: Final = Path(__file__).parents[1] / "transport" / "chromium"
CARRIER_SCRIPTS: Final = ("media.js", "carrier-worker.js")

#: The volunteer API is called by the widget from whatever site embeds it.
CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}


def _carrier_script(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Content-Type": "text/javascript"})

    return serve


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """Add the CORS headers as any response's headers are about to be sent.

    A response hook rather than a middleware: a long-poll that carries an offer is written
    (prepared) inside its handler, before any middleware sees it, and the router's own 404
    and 405 never pass through a handler at all.
    """
    if request.path.startswith("/v1/volunteer/"):
        response.headers.update(CORS_HEADERS)
    elif request.path.startswith("/widget/"):
        # Module scripts from another origin load only with CORS (the embedding site's).
        response.headers["Access-Control-Allow-Origin"] = "*"


#: The widget's frame (unwall-widget.js puts it in the embedding page): the one response
#: of the broker that any site may frame. What runs in it may load only the broker's own
#: scripts and styles, and reach only the broker and the egresses' WebSockets.
FRAME_PATH: Final = "/widget/frame.html"
FRAME_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
        "worker-src 'self'; base-uri 'none'; form-action 'none'"
    ),
    "Permissions-Policy": "camera=(), microphone=(), display-capture=(), geolocation=()",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def _framing(request: web.Request, response: web.StreamResponse) -> None:
    """Who may frame a response: anyone the widget's frame, nobody anything else (the demo
    page's switch is not to be clicked through another site's page). A response hook, as
    _cors."""
    if request.path == FRAME_PATH:  # 304s too: a cache takes a revalidation's headers
        response.headers.update(FRAME_HEADERS)
        return
    response.headers["X-Frame-Options"] = "DENY"
    policy = response.headers.get("Content-Security-Policy")
    response.headers["Content-Security-Policy"] = (
        f"{policy}; frame-ancestors 'none'" if policy else "frame-ancestors 'none'"
    )


async def _no_store(request: web.Request, response: web.StreamResponse) -> None:
    """No API response is kept by a cache, shared or the browser's: poll answers carry TURN
    credentials, and answers and offers carry addresses. A response hook, as _cors."""
    if request.path.startswith("/v1/"):
        response.headers["Cache-Control"] = "no-store"


async def _frame(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "frame.html")


def _volunteer_config(config: BrokerConfig) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if config.egress_url is None:
            return web.json_response(
                {
                    "version": PROTOCOL_VERSION,
                    "error": "no_egress",
                    "message": "this broker has no egress for browser volunteers "
                    "(start it with --egress-url)",
                },
                status=503,
            )
        # No TURN credentials here: anyone may GET this, as often as they like, from any
        # page (CORS *). Volunteers get them in their poll answers.
        body: dict[str, object] = {
            "version": PROTOCOL_VERSION,
            "egress_url": config.egress_url,
            "ice_servers": list(config.ice_servers),
        }
        if config.egresses:
            # The only other relays a browser volunteer opens for this broker's offers
            # (protocol.md §1): a poll answer's relay_url from elsewhere is refused.
            body["relay_urls"] = sorted(set(config.egresses.values()))
        return web.json_response(body)

    return handler


async def _no_content(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)  # a preflight: _cors adds the headers


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def create_app(config: BrokerConfig) -> web.Application:
    """The broker as an aiohttp application; ``app[BROKER_KEY]`` is its :class:`Broker`."""
    pool: Pool | None = None
    if config.redis_url is not None:
        from unwall.broker.redis_pool import RedisPool

        pool = RedisPool(config.redis_url, volunteer_ttl=config.matchmaker_config().volunteer_ttl)
    broker = Broker(config, pool)
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app.on_response_prepare.append(_cors)
    app.on_response_prepare.append(_framing)
    app.on_response_prepare.append(_no_store)
    app[BROKER_KEY] = broker
    app.router.add_post("/v1/volunteer/poll", broker.volunteer_poll)
    app.router.add_post("/v1/volunteer/answer", broker.volunteer_answer)
    app.router.add_post(CLIENT_OFFER_PATH, broker.client_offer)
    app.router.add_post(SEALED_PATH, broker.client_sealed)
    app.router.add_post("/v1/egress/carried", broker.egress_carried)
    app.router.add_get("/v1/health", broker.health)
    app.router.add_get("/metrics", broker.metrics_text)
    app.router.add_get("/v1/volunteer/config", _volunteer_config(config))
    app.router.add_route("OPTIONS", "/v1/volunteer/{tail:.*}", _no_content)
    if STATIC_DIR.is_dir():
        app.router.add_get("/", _index)
        app.router.add_get(FRAME_PATH, _frame)  # before /widget/: its own headers
        for name in CARRIER_SCRIPTS:
            app.router.add_get(f"/widget/carrier/{name}", _carrier_script(CARRIER_DIR / name))
        app.router.add_static("/widget/", STATIC_DIR, append_version=False)

    async def on_startup(app: web.Application) -> None:
        await broker.start()

    async def on_shutdown(app: web.Application) -> None:
        await broker.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


#: Browsers hide their host addresses behind random .local (mDNS) names, which a client
#: across the internet cannot resolve; only a STUN server gives them a reachable candidate.
NO_STUN_WARNING: Final = (
    "no STUN server configured: browser volunteers will offer only mDNS (.local) host "
    "candidates and can help only clients with public addresses; "
    "start the broker with --ice-server stun:HOST:PORT"
)


async def run_broker(config: BrokerConfig, host: str, port: int) -> None:
    """Serve the broker on host:port until cancelled."""
    runner = web.AppRunner(
        create_app(config),
        handler_cancellation=True,
        access_log=None,  # client addresses are nobody's business
        shutdown_timeout=5.0,
        **serving.runner_options(),
    )
    await runner.setup()
    try:
        site = serving.GuardedSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1] if runner.addresses else port
        shown_host = f"[{host}]" if ":" in host else host
        log.info("broker listening on http://%s:%s", shown_host, bound_port)
        if config.egress_url is not None and not config.ice_servers:
            log.warning(NO_STUN_WARNING)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


__all__ = ["BROKER_KEY", "Broker", "BrokerConfig", "create_app", "run_broker"]
