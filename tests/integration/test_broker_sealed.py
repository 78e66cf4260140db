"""Sealed offers (protocol.md §1.6) through a recording front: a real broker on 127.0.0.1,
and before it a stand-in CDN that forwards by Host header and keeps every body it
forwards, as a CDN that reads its customers' traffic would. The client seals its offer to
the broker's key; the front sees no SDP, no address, no offer in clear, and bodies of one
size both ways. A broker holding another key, a front that answers garbage, a replayed
request and a broker that takes no sealed requests each end in a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
from aiohttp import web
from tests.integration.test_broker_fronts import _site
from tests.integration.test_broker_http import ANSWER_SDP, CONFIG, OFFER_SDP, Broker, serving

from unwall.broker.server import SEALED_PATH
from unwall.transport.broker_client import BrokerClient, BrokerUnavailable, NoVolunteer
from unwall.transport.brokerhttp import from_session, open_http
from unwall.wire import sealed
from unwall.wire.broker import PollOffer, decode_error

SECRET = "the secret of this operator's brokers and egresses"
KEY = sealed.public_key_text(SECRET)
SEALING = replace(CONFIG, report_secret=SECRET)


@dataclass
class Recording:
    """What the front forwarded: every request and response body, with its type."""

    url: str
    bodies: list[tuple[str, str, bytes]] = field(default_factory=list)  # way, type, body


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with serving(SEALING, handler_cancellation=False) as broker:
        yield broker


@pytest.fixture
async def front(broker: Broker) -> AsyncIterator[Recording]:
    recording = Recording("")

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        recording.bodies.append(("request", request.content_type, body))
        headers = {"Content-Type": request.headers.get("Content-Type", "")}
        async with broker.http.post(broker.url + request.path, data=body, headers=headers) as got:
            answer = await got.read()
            recording.bodies.append(("response", got.content_type, answer))
            return web.Response(status=got.status, body=answer, content_type=got.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner, recording.url = await _site(app)
    try:
        yield recording
    finally:
        await runner.cleanup()


async def _volunteer_answers(broker: Broker) -> PollOffer:
    offer = await broker.poll("alpha")
    assert isinstance(offer, PollOffer)
    assert (await broker.answer("alpha", offer.offer_id))[0] == 200
    return offer


async def test_a_front_sees_no_offer_no_answer_no_address(broker: Broker, front: Recording) -> None:
    async with contextlib.aclosing(open_http("chrome")) as http:  # as the client does
        client = BrokerClient(http, broker.url, fronts=[front.url], broker_key=KEY)
        volunteer = asyncio.create_task(_volunteer_answers(broker))
        answer = await client.offer(OFFER_SDP, nat="port-restricted", timeout=5.0)
        handed = await volunteer
    assert answer.sdp == ANSWER_SDP and handed.sdp == OFFER_SDP  # the broker read it
    assert [(way, kind) for way, kind, _ in front.bodies] == [
        ("request", sealed.CONTENT_TYPE),
        ("response", sealed.CONTENT_TYPE),
    ]
    sizes = {len(body) for _, _, body in front.bodies}
    assert sizes == {sealed.BUCKET}  # one size, each way
    for _, _, body in front.bodies:
        for clear in (b"v=0", b"127.0.0.1", b"IN IP4", b"sdp", b"port-restricted", b"answer"):
            assert clear not in body


async def test_an_unsealed_client_still_gets_an_answer(broker: Broker, front: Recording) -> None:
    """Old clients (a bridge line without brokerkey=) use the plain form, which the front
    can read; the broker takes both."""
    async with aiohttp.ClientSession() as http:
        client = BrokerClient(from_session(http), broker.url, fronts=[front.url])
        volunteer = asyncio.create_task(_volunteer_answers(broker))
        assert (await client.offer(OFFER_SDP, timeout=5.0)).sdp == ANSWER_SDP
        await volunteer
    assert b"v=0" in front.bodies[0][2]  # which is why the line should carry the key


async def test_errors_come_sealed_too(broker: Broker) -> None:
    async with aiohttp.ClientSession() as http:
        client = BrokerClient(from_session(http), broker.url, broker_key=KEY)
        with pytest.raises(NoVolunteer):  # nobody polls: 503 no_volunteer, inside the seal
            await client.offer(OFFER_SDP, timeout=5.0)


async def test_a_broker_with_another_key_is_a_clear_error(front: Recording) -> None:
    async with aiohttp.ClientSession() as http:
        other = sealed.public_key_text("not this operator's secret")
        client = BrokerClient(from_session(http), front.url, broker_key=other)
        with pytest.raises(BrokerUnavailable) as failed:
            await client.offer(OFFER_SDP, timeout=5.0)
    assert "the broker refused our sealed request: the request is not sealed to this " in str(
        failed.value
    )
    assert "check the bridge line's brokerkey" in str(failed.value)


async def test_a_front_that_answers_garbage_is_passed_over(
    broker: Broker, front: Recording
) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=bytes(sealed.BUCKET), content_type=sealed.CONTENT_TYPE)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", garbage)
    runner, liar = await _site(app)
    try:
        async with aiohttp.ClientSession() as http:
            client = BrokerClient(from_session(http), broker.url, fronts=[liar], broker_key=KEY)
            with pytest.raises(BrokerUnavailable, match="not the broker of the bridge line"):
                await client.offer(OFFER_SDP, timeout=5.0)
            client = BrokerClient(
                from_session(http), broker.url, fronts=[liar, front.url], broker_key=KEY
            )
            client.routes.sort(key=lambda route: route.target != liar.rstrip("/"))
            volunteer = asyncio.create_task(_volunteer_answers(broker))
            assert (await client.offer(OFFER_SDP, timeout=5.0)).sdp == ANSWER_SDP
            await volunteer
            assert client.routes[0].target == front.url.rstrip("/")
    finally:
        await runner.cleanup()


async def test_a_replayed_request_is_refused(broker: Broker) -> None:
    """A box that recorded a sealed offer and sends it again gets a sealed refusal, which
    it cannot read, and no volunteer is asked."""
    request, pending = sealed.seal_request(
        sealed.parse_public_key(KEY), "/v1/client/offer", b"{}", time.time()
    )
    headers = {"Content-Type": sealed.CONTENT_TYPE}
    first = await broker.post(SEALED_PATH, request, headers)
    again = await broker.post(SEALED_PATH, request, headers)
    assert sealed.open_response(pending, first[1])[0] == 400  # {} is no offer
    status, body = sealed.open_response(pending, again[1])
    assert (status, decode_error(body).code) == (400, "bad_seal")
    assert "sent before" in decode_error(body).message


async def test_a_broker_without_a_secret_says_so_in_the_clear() -> None:
    async with serving(CONFIG, handler_cancellation=False) as plain:
        request, _ = sealed.seal_request(
            sealed.parse_public_key(KEY), "/v1/client/offer", b"{}", time.time()
        )
        status, body = await plain.post(SEALED_PATH, request, {"Content-Type": "x"})
    assert (status, decode_error(body).code) == (400, "bad_seal")
    assert decode_error(body).message == "this broker takes no sealed requests"


async def test_turn_credentials_come_sealed_to_a_client_with_the_line(broker: Broker) -> None:
    """A bridge line carries TURN URLs, never credentials: the client asks the broker,
    sealed, and gets credentials its TURN server takes (coturn's REST scheme)."""
    from unwall.broker.turn import TurnIssuer, turn_password
    from unwall.transport.broker_client import NoTurn

    async with aiohttp.ClientSession() as http:
        # this broker has no TURN server: the client is told so, in words
        with pytest.raises(NoTurn, match="no TURN server for clients"):
            await BrokerClient(from_session(http), broker.url, broker_key=KEY).turn()
        # without the broker's key nothing is asked (credentials never go in the clear)
        with pytest.raises(NoTurn, match="only sealed"):
            await BrokerClient(from_session(http), broker.url).turn()
    issuer = TurnIssuer("coturn's secret", ("turn:turn.example:3478",), 600.0)
    async with serving(replace(SEALING, turn=issuer), handler_cancellation=False) as with_turn:
        client = BrokerClient(from_session(with_turn.http), with_turn.url, broker_key=KEY)
        (server,) = await client.turn()
        assert server.urls == ("turn:turn.example:3478",)
        assert server.credential == turn_password("coturn's secret", server.username)
        assert time.time() < int(server.username.split(":")[0]) <= time.time() + 601
        # there is no unsealed way to them
        status, _ = await with_turn.post("/v1/client/turn", b'{"version":1}')
        assert status in (404, 405)
        assert "unwall_broker_client_turn_total 1.0" in await with_turn.metrics()


async def test_the_tunnel_takes_turn_credentials_from_the_broker_and_renews_them() -> None:
    """A client given turn: URLs alone gathers no relay until the broker's credentials
    come; asked again (before they expire, unwall.client.tunnel), they replace the old."""
    from unwall.broker.turn import TurnIssuer
    from unwall.client.tunnel import Tunnel, TunnelConfig
    from unwall.wire.broker import TurnServer

    turn_url = "turns:turn.example:443?transport=tcp"
    tunnel = Tunnel(
        TunnelConfig(
            broker_url="http://127.0.0.1:9/",
            pin="sha256:" + "A" * 43,
            ice_servers=["stun:stun.example:3478", turn_url],
            broker_key=KEY,
        )
    )
    assert not tunnel.relay and tunnel.ice_servers == ["stun:stun.example:3478"]
    issuer = TurnIssuer("coturn's secret", ("turn:turn.example:3478",), 600.0)
    async with serving(replace(SEALING, turn=issuer), handler_cancellation=False) as broker:
        client = BrokerClient(from_session(broker.http), broker.url, broker_key=KEY)
        await tunnel._fetch_turn(client)
        (first,) = [s for s in tunnel.ice_servers if isinstance(s, TurnServer)]
        assert tunnel.relay and first.urls == (turn_url,)  # the line's URL, the broker's key
        assert tunnel._turn_expires == pytest.approx(time.time() + 600, abs=5)
        await tunnel._fetch_turn(client)
        (second,) = [s for s in tunnel.ice_servers if isinstance(s, TurnServer)]
        assert second.username != first.username
