"""The headless volunteer: answers clients' WebRTC offers and relays to the egress.

The volunteer is a dumb pipe on purpose: each DataChannel message goes unchanged into one
WebSocket message to the egress and back. It never parses what it carries (QUIC, encrypted
end to end between client and egress), so it learns nothing and can be replaced mid-session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from yarl import URL

from unwall import metrics
from unwall.transport import brokerhttp, webrtc
from unwall.transport.broker_client import BrokerClient, BrokerUnavailable, OfferGone
from unwall.transport.droptail import DropTailQueue
from unwall.transport.natcheck import learn_nat_kind
from unwall.transport.quic import MAX_DATAGRAM_SIZE
from unwall.transport.ratelimit import TokenBucket
from unwall.units import human_duration
from unwall.volunteer.relays import RelayHost, RelayPolicy, RelayRefused, show
from unwall.volunteer.selfcheck import SelfCheck, Verdict, self_check
from unwall.wire import broker as messages
from unwall.wire.nat import NatKind

log = logging.getLogger("unwall.volunteer")

#: Bound of each direction's queue; above it messages are dropped and QUIC recovers.
QUEUE_BYTES = 1 << 20
CHANNEL_OPEN_TIMEOUT = 20.0
MAX_BACKOFF = 30.0
#: at most one line this often about relay URLs refused (a hostile broker could send many)
REFUSAL_LOG_INTERVAL = 10.0


@dataclass
class VolunteerConfig:
    broker_url: str
    egress_url: str
    capacity: int = 8
    ice_servers: list[str] = field(default_factory=list)
    volunteer_id: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    #: bytes per second over both directions together; None: no cap
    max_rate: int | None = None
    stats_interval: float = 60.0
    #: credentials for the `turn:` URLs among ice_servers
    turn_user: str | None = None
    turn_password: str | None = None
    #: our NAT kind as told by --nat; None: measure it with the first stun: server
    nat: NatKind | None = None
    #: the WebRTC engine (unwall.transport.webrtc.ENGINES)
    webrtc: str = "aiortc"
    #: the carrier this end prefers (unwall.transport.webrtc.CARRIERS; None: the engine's)
    carrier: str | None = None
    #: serve Prometheus metrics on this (host, port); None: no metrics server
    metrics: tuple[str, int] | None = None
    #: where else the broker may send a client (--relay-host; unwall.volunteer.relays):
    #: besides them, only to the origin of egress_url
    relay_hosts: list[RelayHost] = field(default_factory=list)


@dataclass
class VolunteerStats:
    clients_now: int = 0
    clients_total: int = 0
    bytes_to_egress: int = 0
    bytes_to_clients: int = 0
    dropped: int = 0
    #: when the volunteer started (monotonic clock); None before
    started: float | None = None

    @property
    def seconds_on(self) -> int:
        return 0 if self.started is None else int(time.monotonic() - self.started)

    def as_dict(self) -> dict[str, int]:
        counts = asdict(self)
        del counts["started"]
        counts["seconds_on"] = self.seconds_on
        return counts

    def summary(self) -> str:
        return (
            f"clients now {self.clients_now}, helped {self.clients_total}; "
            f"relayed {self.bytes_to_egress / 1e6:.1f} MB to the egress, "
            f"{self.bytes_to_clients / 1e6:.1f} MB to clients; {self.dropped} messages "
            f"dropped; on for {human_duration(self.seconds_on)}"
        )


class Volunteer:
    def __init__(self, config: VolunteerConfig) -> None:
        if config.webrtc not in webrtc.ENGINES:
            raise ValueError(
                f"the WebRTC engine must be one of {', '.join(webrtc.ENGINES)}, "
                f"not {config.webrtc!r}"
            )
        self.carrier = webrtc.check_carrier(config.webrtc, config.carrier)
        self.config = config
        self.stats = VolunteerStats()
        self._relays: set[asyncio.Task[None]] = set()
        self._bucket = TokenBucket(config.max_rate) if config.max_rate else None
        self._capacity_freed = asyncio.Event()
        self.ice_servers = webrtc.ice_servers_with_credentials(
            config.ice_servers, config.turn_user, config.turn_password
        )
        self.nat: NatKind = config.nat or "unknown"
        #: TURN credentials the broker handed us with its last answer (used after our own)
        self.broker_turn: tuple[messages.TurnServer, ...] = ()
        #: the self-check at start (None until it has run)
        self.check: SelfCheck | None = None
        #: which relay URLs the broker names we open (our egress, and --relay-host)
        self.relays = RelayPolicy(config.egress_url, config.relay_hosts)
        self._refusals = 0
        self._refusal_logged = -REFUSAL_LOG_INTERVAL

    @property
    def relay(self) -> bool:
        """Whether we gather a relay candidate for every client (our TURN or the broker's)."""
        return webrtc.has_turn(self.ice_servers) or bool(self.broker_turn)

    def stats_json(self) -> str:
        """The statistics as JSON, for whatever embeds the volunteer, with the self-check's
        verdict under "check"."""
        stats: dict[str, object] = {**self.stats.as_dict()}
        stats["check"] = self.check.as_dict() if self.check is not None else None
        return json.dumps(stats)

    async def learn_nat(self) -> None:
        self.nat = await learn_nat_kind(
            self.config.ice_servers, webrtc.pinned_host_addresses(), self.config.nat
        )

    async def self_check(self, http: aiohttp.ClientSession) -> SelfCheck:
        """Reach the broker and the egress (with the NAT measured), log the verdict in one
        line, and keep it in `check`."""
        self.check = await self_check(
            http, self.config.broker_url, self.config.egress_url, self.nat, self.relay
        )
        log.log(
            logging.INFO if self.check.ready else logging.WARNING,
            "self-check: %s",
            self.check.line(),
        )
        return self.check

    async def run(self) -> None:
        """Measure the NAT, then poll the broker for clients (while checking itself) until
        cancelled; then stop every relay. A failed check is logged and polling goes on
        (the broker or the egress may come back)."""
        self.stats.started = time.monotonic()
        await self.learn_nat()
        reporter = asyncio.create_task(self._report_stats())
        runner = await self._serve_metrics() if self.config.metrics else None
        checking: asyncio.Task[SelfCheck] | None = None
        try:
            async with aiohttp.ClientSession() as http, self.relays.session() as relay_http:
                # Beside the first polls, not before them: a slow egress delays no client.
                checking = asyncio.create_task(self.self_check(http))
                await self._poll_loop(http, relay_http)
        finally:
            reporter.cancel()
            if checking is not None:
                checking.cancel()
            if runner is not None:
                await runner.cleanup()
            await self.stop()
            log.info("volunteer stopped: %s", self.stats.summary())

    def metrics_registry(self) -> CollectorRegistry:
        """The volunteer's Prometheus metrics (docs/metrics.md)."""
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_VolunteerCounts(self))
        metrics.people_gauge(
            registry,
            "unwall_volunteer_clients",
            "Clients this volunteer carries now",
            lambda: self.stats.clients_now,
        )
        return registry

    async def _serve_metrics(self) -> web.AppRunner:
        assert self.config.metrics is not None
        host, port = self.config.metrics
        app = web.Application()
        app.router.add_get("/metrics", metrics.handler(self.metrics_registry()))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("metrics on http://%s:%d/metrics", host, port)
        return runner

    async def _poll_loop(
        self, http: aiohttp.ClientSession, relay_http: aiohttp.ClientSession
    ) -> None:
        broker = BrokerClient(brokerhttp.from_session(http), self.config.broker_url)
        backoff = 1.0
        while True:
            if self.stats.clients_now >= self.config.capacity:
                self._capacity_freed.clear()
                await self._capacity_freed.wait()
                continue
            try:
                reply = await broker.poll(
                    self.config.volunteer_id,
                    self.config.capacity,
                    self.stats.clients_now,
                    "headless",
                    self.nat,
                    self.relay,
                )
            except BrokerUnavailable as exc:
                log.warning("%s; retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 1.0
            if bool(reply.turn) != bool(self.broker_turn):
                log.info(
                    "the broker %s TURN credentials",
                    f"gives us ({', '.join(reply.turn[0].urls)})"
                    if reply.turn
                    else "stopped giving",
                )
            self.broker_turn = reply.turn
            if isinstance(reply, messages.PollOffer):
                # Count the client now, before the next poll reports our load.
                self.stats.clients_now += 1
                self._spawn(self._serve(relay_http, broker, reply))

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            log.info("stats: %s", self.stats.summary())

    async def stop(self) -> None:
        """Close every client at once (each relay closes its own peer connection)."""
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)

    def _refused(self, refusal: RelayRefused) -> None:
        """Say that a relay URL was refused: one line, without the URL's query (the offer's
        id and ticket), at most one every REFUSAL_LOG_INTERVAL seconds."""
        self._refusals += 1
        now = time.monotonic()
        if now - self._refusal_logged < REFUSAL_LOG_INTERVAL:
            return
        more = self._refusals - 1
        log.warning(
            "not answering a client: the broker named the relay %s, which this volunteer "
            "refuses (%s)%s",
            refusal.where,
            refusal.reason,
            f"; {more} more refused since the last such line" if more else "",
        )
        self._refusals = 0
        self._refusal_logged = now

    async def _serve(
        self, relay_http: aiohttp.ClientSession, broker: BrokerClient, offer: messages.PollOffer
    ) -> None:
        # Where this client goes, decided before we answer: a relay we refuse gets no answer
        # (the broker's offer times out), and no connection is ever opened to it.
        egress: URL | None = None
        try:
            egress = await self.relays.vet(offer.relay_url)
        except RelayRefused as refusal:
            self._refused(refusal)
        finally:
            if egress is None:
                self.stats.clients_now -= 1
                self._capacity_freed.set()
        if egress is None:
            return
        # Our own servers first: aiortc uses only the first TURN server it is given.
        peer = webrtc.engine(self.config.webrtc).new_peer(
            [*self.ice_servers, *offer.turn], max_buffered=QUEUE_BYTES, carrier=self.carrier
        )
        # Listen at once: the client sends as soon as the channel is open, before the
        # WebSocket to the egress exists; those messages wait in the relay's queue.
        # The offer's id tells the egress whose relay carried the session (its reports
        # let the broker trust us with more clients).
        query = {"offer": offer.offer_id}
        if offer.ticket is not None:
            query["ticket"] = offer.ticket  # the broker's word that opens the relay
        relay = ClientRelay(self, peer, str(egress.update_query(query)))
        try:
            answer = await peer.answer(offer.sdp)
            await broker.answer(self.config.volunteer_id, offer.offer_id, answer)
            await asyncio.wait_for(peer.opened.wait(), CHANNEL_OPEN_TIMEOUT)
            self.stats.clients_total += 1
            log.info("client connected (%d now, over %s)", self.stats.clients_now, peer.carrier)
            await relay.run(relay_http)
        except OfferGone:
            log.info("a client gave up before our answer reached it")
        except TimeoutError:
            log.info("a client never opened its data channel; dropped it")
        except BrokerUnavailable as exc:
            log.warning("could not answer a client: %s", exc)
        except ValueError as exc:
            log.warning("rejected a malformed offer: %s", exc)
        except webrtc.EngineUnavailable as exc:
            log.error("could not serve a client: the WebRTC engine failed: %s", exc)
        except OSError as exc:
            log.warning("a client's relay failed: %s", exc)
        finally:
            self.stats.clients_now -= 1
            self._capacity_freed.set()
            await relay.to_egress.close()
            await peer.close()


class _VolunteerCounts(Collector):
    def __init__(self, volunteer: Volunteer) -> None:
        self._volunteer = volunteer

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._volunteer.stats
        yield CounterMetricFamily(
            "unwall_volunteer_clients_served",
            f"Clients whose data channel opened (rounded up to a multiple of {metrics.BIN}).",
            value=metrics.rounded(stats.clients_total),
        )
        moved = CounterMetricFamily(
            "unwall_volunteer_bytes", "Bytes relayed, by direction.", labels=["direction"]
        )
        moved.add_metric(["to_egress"], stats.bytes_to_egress)
        moved.add_metric(["to_clients"], stats.bytes_to_clients)
        yield moved
        yield CounterMetricFamily(
            "unwall_volunteer_dropped",
            "Messages dropped because a relay queue was full (QUIC resends them).",
            value=stats.dropped,
        )
        nat = GaugeMetricFamily(
            "unwall_volunteer_nat", "This volunteer's NAT kind (1 for the kind).", labels=["nat"]
        )
        nat.add_metric([self._volunteer.nat], 1)
        yield nat
        check = self._volunteer.check
        if check is not None:
            verdict = GaugeMetricFamily(
                "unwall_volunteer_check",
                "The self-check's verdict at start (1 for the verdict).",
                labels=["verdict"],
            )
            for kind in Verdict:
                verdict.add_metric([kind.value], 1 if check.verdict is kind else 0)
            yield verdict


class ClientRelay:
    """One client's DataChannel, copied to and from one WebSocket to the egress."""

    def __init__(self, volunteer: Volunteer, peer: webrtc.Peer, egress_url: str):
        self.volunteer = volunteer
        self.peer = peer
        #: where this client's datagrams go: the egress the broker named for it, or ours
        self.egress_url = egress_url
        self.closed = peer.dead
        self._ws: asyncio.Future[aiohttp.ClientWebSocketResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self.to_egress = DropTailQueue(self._send_to_egress, QUEUE_BYTES)
        self.moved = [0, 0]  # this client's bytes: to the egress, to the client
        stats = volunteer.stats

        def on_message(message: bytes) -> None:
            if self.to_egress.put(message):
                stats.bytes_to_egress += len(message)
                self.moved[0] += len(message)
            else:
                stats.dropped += 1

        peer.on_message = on_message

    async def _send_to_egress(self, data: bytes) -> None:
        ws = await self._ws
        bucket = self.volunteer._bucket
        if bucket is not None:
            await bucket.take(len(data))
        await ws.send_bytes(data)

    async def run(self, http: aiohttp.ClientSession) -> None:
        url = self.egress_url
        try:
            ws = await http.ws_connect(
                url, max_msg_size=MAX_DATAGRAM_SIZE + 1024, compress=0, heartbeat=30.0
            )
        except (aiohttp.ClientError, OSError) as exc:
            # Scheme, host and port only: the query holds the offer's id and ticket.
            log.warning("cannot reach the egress at %s: %s", show(URL(url)), exc)
            await self.to_egress.close()
            return
        self._ws.set_result(ws)
        downstream = asyncio.create_task(self._egress_to_client(ws))
        closed_wait = asyncio.create_task(self.closed.wait())
        try:
            await asyncio.wait(
                {downstream, closed_wait, self.to_egress.done},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            log.info(
                "client left (%.1f MB to the egress, %.1f MB to the client)",
                self.moved[0] / 1e6,
                self.moved[1] / 1e6,
            )
            downstream.cancel()
            closed_wait.cancel()
            await self.to_egress.close()
            await ws.close()
            with contextlib.suppress(asyncio.CancelledError):
                await downstream

    async def _egress_to_client(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        peer, stats, bucket = self.peer, self.volunteer.stats, self.volunteer._bucket
        async for message in ws:
            if message.type != aiohttp.WSMsgType.BINARY or not peer.is_open:
                break
            if peer.buffered_amount > QUEUE_BYTES:
                stats.dropped += 1
                continue
            if bucket is not None:
                await bucket.take(len(message.data))
            if not peer.send(message.data):
                stats.dropped += 1
                continue
            stats.bytes_to_clients += len(message.data)
            self.moved[1] += len(message.data)
