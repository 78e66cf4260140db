"""A hostile broker names relay URLs; the headless volunteer opens none of them (issue 22,
row 5), and still relays to its own egress, with the broker's ticket.

The broker here is the test's own, speaking the broker protocol; the volunteer runs in this
process, with its own egress (a WebSocket server of the test's) on loopback. Each client is
a real aiortc peer: if the volunteer answered a hostile offer, the client would open its
data channel and the volunteer would connect where the broker said. The listeners on
127.0.0.1 and [::1] see every such connection. Offers whose relay is not on loopback are
never completed by the client, so that even a volunteer that answered them would open no
connection off this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from unwall.transport import webrtc
from unwall.volunteer import headless
from unwall.volunteer.headless import Volunteer, VolunteerConfig
from unwall.wire.broker import PollIdle, decode_volunteer_answer, decode_volunteer_poll, encode

TICKET = "tkt_0123456789-abcdefABCDEF"


def relay_hosts(*patterns: str) -> list[object]:
    """The operator's --relay-host patterns. (None before issue 22: run against that code,
    this test shows what its volunteer did.)"""
    try:
        from unwall.volunteer.relays import RelayHost
    except ImportError:
        return []
    return [RelayHost.parse(pattern) for pattern in patterns]


@pytest.fixture(autouse=True)
def loopback_host() -> object:
    """ICE host candidates on 127.0.0.1 only."""
    before = webrtc.pinned_host_addresses()
    webrtc.set_host_addresses(["127.0.0.1"])
    yield
    webrtc.set_host_addresses(before)


@dataclass
class Listener:
    """A TCP port that records whoever connects and what they send first."""

    host: str
    seen: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                self.seen.append(await reader.read(200))
        writer.close()


@contextlib.asynccontextmanager
async def listening(host: str) -> AsyncIterator[Listener]:
    listener = Listener(host)
    server = await asyncio.start_server(listener.handle, host, 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class HostileBroker:
    """Answers polls with the offers the test queues, records the volunteer's answers."""

    offers: asyncio.Queue[dict[str, object]] = field(default_factory=asyncio.Queue)
    answers: dict[str, asyncio.Future[str]] = field(default_factory=dict)

    def answer_of(self, offer_id: str) -> asyncio.Future[str]:
        return self.answers.setdefault(offer_id, asyncio.get_running_loop().create_future())

    async def poll(self, request: web.Request) -> web.Response:
        decode_volunteer_poll(await request.read())
        try:
            offer = await asyncio.wait_for(self.offers.get(), 0.5)
        except TimeoutError:
            return web.Response(body=encode(PollIdle()), content_type="application/json")
        return web.json_response(offer)

    async def answer(self, request: web.Request) -> web.Response:
        answer = decode_volunteer_answer(await request.read())
        future = self.answer_of(answer.offer_id)
        if not future.done():
            future.set_result(answer.sdp)
        return web.json_response({"version": 1, "status": "ok"})

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"version": 1, "status": "ok"})


@dataclass
class Egress:
    """The volunteer's own egress: takes relay WebSockets and records their queries."""

    queries: list[dict[str, str]] = field(default_factory=list)

    async def relay(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if "offer" in request.query:  # not the volunteer's self-check
            self.queries.append(dict(request.query))
        async for _ in ws:
            pass
        return ws


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_hostile_broker_steers_the_volunteer_nowhere(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a line for each refusal
    monkeypatch.setattr(headless, "REFUSAL_LOG_INTERVAL", 0.0, raising=False)
    broker, egress = HostileBroker(), Egress()
    broker_app = web.Application()
    broker_app.router.add_post("/v1/volunteer/poll", broker.poll)
    broker_app.router.add_post("/v1/volunteer/answer", broker.answer)
    broker_app.router.add_get("/v1/health", broker.health)
    egress_app = web.Application()
    egress_app.router.add_get("/v1/relay", egress.relay)
    async with (
        serving(broker_app) as broker_at,
        serving(egress_app) as egress_at,
        listening("127.0.0.1") as v4,
        listening("::1") as v6,
    ):
        own = f"ws://{egress_at}/v1/relay"
        # The operator allows more relays, each under its own rule: a name whose addresses
        # are checked (and plain ws:// for it), and a name over wss:// only.
        config = VolunteerConfig(broker_url=f"http://{broker_at}", egress_url=own)
        config.relay_hosts = relay_hosts("ws://localhost", "egress.example")  # type: ignore[assignment]
        hostile = {  # offer id: (relay URL, on loopback)
            # another path on the volunteer's own host, with secrets in its query
            "hostile0": (f"ws://127.0.0.1:{v4.port}/internal/admin?token=SECRET", True),
            "hostile1": ("ws://10.0.0.1/v1/relay", False),
            "hostile2": (f"ws://[::1]:{v6.port}/v1/relay", True),
            "hostile3": ("ws://169.254.169.254/v1/relay", False),
            # allowed by name, but the name resolves to 127.0.0.1
            "hostile4": (f"ws://localhost:{v4.port}/v1/relay?token=SECRET", True),
            # allowed by name, but over plain ws://
            "hostile5": ("ws://egress.example/v1/relay", False),
        }
        good = {"good-named": f"{own}?v=1", "good-own": None}
        peers: dict[str, webrtc.Peer] = {}
        aiortc = webrtc.engine("aiortc")
        volunteer = Volunteer(config)
        with caplog.at_level(logging.INFO, logger="unwall.volunteer"):
            running = asyncio.create_task(volunteer.run())
            try:
                for offer_id, relay_url in [
                    *((k, url) for k, (url, _) in hostile.items()),
                    *good.items(),
                ]:
                    peers[offer_id] = peer = aiortc.new_peer([])
                    sdp = await peer.offer()
                    offer = {"version": 1, "status": "offer", "offer_id": offer_id, "sdp": sdp}
                    if relay_url is not None:
                        offer["relay_url"] = relay_url
                    await broker.offers.put({**offer, "ticket": TICKET})

                async def complete(offer_id: str) -> None:
                    sdp = await broker.answer_of(offer_id)
                    await peers[offer_id].accept_answer(sdp)
                    await asyncio.wait_for(peers[offer_id].opened.wait(), 20)

                # Our own egress still works, for a relay on its origin and for none at all.
                await asyncio.wait_for(asyncio.gather(*(complete(k) for k in good)), 30)
                async with asyncio.timeout(10):
                    while len(egress.queries) < len(good):
                        await asyncio.sleep(0.05)
                # The client side of every hostile offer on loopback would connect by now.
                for offer_id, (_, on_loopback) in hostile.items():
                    if on_loopback and broker.answer_of(offer_id).done():
                        with contextlib.suppress(Exception):
                            await complete(offer_id)
                await asyncio.sleep(1.0)
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
                for peer in peers.values():
                    await peer.close()

        assert v4.seen == [], f"the volunteer connected to 127.0.0.1: {v4.seen}"
        assert v6.seen == [], f"the volunteer connected to [::1]: {v6.seen}"
        answered = {k for k, future in broker.answers.items() if future.done()}
        assert answered == set(good), f"answered hostile offers: {answered - set(good)}"
        assert sorted(egress.queries, key=lambda q: q["offer"]) == [
            {"offer": "good-named", "ticket": TICKET, "v": "1"},
            {"offer": "good-own", "ticket": TICKET},
        ]

    refusals = [r.getMessage() for r in caplog.records if "not answering a client" in r.message]
    assert len(refusals) == len(hostile), refusals
    text = "\n".join(refusals)
    for secret in ("SECRET", TICKET, "admin", "hostile"):
        assert secret not in text, f"{secret!r} in the log: {text}"
    for reason in (
        f"ws://127.0.0.1:{v4.port}, which this volunteer refuses (its path is not /v1/relay)",
        "ws://10.0.0.1, which this volunteer refuses (it is neither",
        f"ws://[::1]:{v6.port}, which this volunteer refuses (it is neither",
        "ws://169.254.169.254, which this volunteer refuses (it is neither",
        f"ws://localhost:{v4.port}, which this volunteer refuses (localhost resolves to a "
        "loopback address)",
        "ws://egress.example, which this volunteer refuses (plain ws:// is refused for it",
    ):
        assert reason in text, f"{reason!r} not in {text}"


async def test_at_connect_relays_follow_no_redirect_and_reach_no_refused_address() -> None:
    """Checked before the answer, and again at connect: a relay the operator allowed that
    answers with a redirect into loopback is not followed, and a name that resolves to a
    refused address by then (DNS rebinding) is not connected to."""
    from unwall.volunteer.relays import RelayHost, RelayPolicy

    async with listening("127.0.0.1") as inside:
        hits: list[str] = []

        async def redirect(request: web.Request) -> web.Response:
            hits.append(request.host)
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{inside.port}/internal/admin")

        app = web.Application()
        app.router.add_get("/v1/relay", redirect)
        async with serving(app) as relay_at:
            port = int(relay_at.rsplit(":", 1)[1])
            # 127.0.0.1 written by the operator (trusted); localhost is only a name here.
            relays = RelayPolicy(
                "ws://192.0.2.1/v1/relay",
                [RelayHost.parse(f"ws://127.0.0.1:{port}"), RelayHost.parse("ws://localhost")],
            )
            async with relays.session() as http:
                with pytest.raises(aiohttp.ClientError, match="not followed"):
                    await http.ws_connect(f"ws://127.0.0.1:{port}/v1/relay")
                with pytest.raises(aiohttp.ClientConnectorError):
                    await http.ws_connect(f"ws://localhost:{port}/v1/relay")
        assert hits == [f"127.0.0.1:{port}"]  # the redirect's, and no connection by name
        assert inside.seen == []
