"""Several fronts to one broker (unwall.transport.broker_client): a real broker on 127.0.0.1
and, before it, three stand-ins for CDNs: one that nothing listens on (a front the box
blocks), one that answers with an error page, one that forwards by Host header as a CDN
does. The client passes over the first two, reaches the broker through the third, says
how the others failed, and tries the one that worked first next time. (Plain HTTP here:
TLS to a front is the lab's test_rendezvous_through_a_front.)"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from tests.integration.test_broker_http import ANSWER_SDP, CONFIG, serving

from unwall.transport.broker_client import BrokerClient, BrokerUnavailable, OfferGone
from unwall.transport.brokerhttp import ENGINES, BrokerHttp, open_http

LOCAL = "127.0.0.1"


@dataclass
class Fronts:
    broker: str
    dead: str
    error_page: str
    forwarding: str
    hits: dict[str, int]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return int(probe.getsockname()[1])


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, LOCAL, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{LOCAL}:{port}/"


@pytest.fixture
async def fronts() -> AsyncIterator[Fronts]:
    hits = {"error_page": 0, "forwarding": 0}
    async with serving(CONFIG, handler_cancellation=False) as broker:
        origin = broker.url.rstrip("/")

        async def error_page(request: web.Request) -> web.Response:
            hits["error_page"] += 1
            return web.Response(status=502, text="<h1>Bad gateway</h1>", content_type="text/html")

        async def forward(request: web.Request) -> web.Response:
            hits["forwarding"] += 1
            # a CDN forwards by the Host header: the broker's name, not the front's
            assert request.host == origin.split("//", 1)[1], request.host
            headers = {"Content-Type": request.headers.get("Content-Type", "")}
            async with broker.http.post(
                origin + request.path, data=await request.read(), headers=headers
            ) as answer:
                return web.Response(
                    status=answer.status, body=await answer.read(), content_type=answer.content_type
                )

        error_app, forward_app = web.Application(), web.Application()
        error_app.router.add_route("*", "/{tail:.*}", error_page)
        forward_app.router.add_route("*", "/{tail:.*}", forward)
        runners = [await _site(error_app), await _site(forward_app)]
        try:
            yield Fronts(
                broker=broker.url,
                dead=f"http://{LOCAL}:{_closed_port()}/",
                error_page=runners[0][1],
                forwarding=runners[1][1],
                hits=hits,
            )
        finally:
            for runner, _ in runners:
                await runner.cleanup()


@pytest.fixture(params=ENGINES)
async def http(request: pytest.FixtureRequest) -> AsyncIterator[BrokerHttp]:
    """Each of the broker channel's HTTP engines: curl_cffi's Chrome and Python's aiohttp."""
    engine = open_http(request.param)
    try:
        yield engine
    finally:
        await engine.aclose()


async def _reach(client: BrokerClient) -> None:
    """One request that only the broker itself answers (with its own JSON: no such offer)."""
    with pytest.raises(OfferGone):
        await client.answer("volunteer-one", "no-such-offer-1234", ANSWER_SDP)


async def test_the_client_passes_over_fronts_that_fail(
    http: BrokerHttp, fronts: Fronts, caplog: pytest.LogCaptureFixture
) -> None:
    client = BrokerClient(
        http, fronts.broker, fronts=[fronts.dead, fronts.error_page, fronts.forwarding]
    )
    order = [fronts.dead, fronts.error_page, fronts.forwarding]
    client.routes.sort(key=lambda route: order.index(route.name.removeprefix("front ")))
    with caplog.at_level(logging.INFO, "unwall.broker_client"):
        await _reach(client)
    assert fronts.hits == {"error_page": 1, "forwarding": 1}
    (line,) = [r.getMessage() for r in caplog.records if "reached the broker" in r.message]
    assert f"through front {fronts.forwarding}" in line
    assert f"front {fronts.dead}: " in line  # how each failed, in one line
    assert f"front {fronts.error_page}: answered HTTP 502 (text/html), not the broker" in line
    # the front that worked is tried first from now on
    await _reach(client)
    assert fronts.hits == {"error_page": 1, "forwarding": 2}
    assert client.routes[0].name == f"front {fronts.forwarding}"


async def test_when_no_front_reaches_the_broker_one_line_says_why(
    http: BrokerHttp, fronts: Fronts
) -> None:
    client = BrokerClient(http, fronts.broker, fronts=[fronts.dead, fronts.error_page])
    with pytest.raises(BrokerUnavailable) as failed:
        await _reach(client)
    message = str(failed.value)
    assert message.startswith("cannot reach the broker by any of 2 routes: ")
    assert f"front {fronts.dead}: " in message and f"front {fronts.error_page}: " in message
    assert "\n" not in message


async def test_without_fronts_the_broker_itself(http: BrokerHttp, fronts: Fronts) -> None:
    await _reach(BrokerClient(http, fronts.broker))
    with pytest.raises(BrokerUnavailable, match=r"^cannot reach the broker at http://"):
        await _reach(BrokerClient(http, fronts.dead))
    assert fronts.hits == {"error_page": 0, "forwarding": 0}
