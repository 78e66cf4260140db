"""Several brokers sharing one pool in a real Redis (redis-server, started by the test).

The brokers run in this process, each a real aiohttp server with its own Redis client, and
are driven over real HTTP. The full bridge through three broker processes is in
test_broker_pool_bridge.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis_server import RedisServer, redis_server
from test_broker_http import ANSWER_SDP, Broker, carry, serving
from test_broker_http import no_earning_window as no_earning_window  # a fixture

from unwall.broker.server import BROKER_KEY, BrokerConfig
from unwall.wire.broker import (
    ClientAnswer,
    PollIdle,
    PollOffer,
    decode_client_answer,
    decode_error,
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


def _config(redis: RedisServer, answer_timeout: float = 3.0) -> BrokerConfig:
    return BrokerConfig(poll_timeout=3.0, answer_timeout=answer_timeout, redis_url=redis.url)


@pytest.fixture
async def brokers(redis: RedisServer) -> AsyncIterator[list[Broker]]:
    """Three brokers on one Redis."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(serving(_config(redis), handler_cancellation=True))
            for _ in range(3)
        ]


async def _health(broker: Broker) -> tuple[int, dict[str, Any]]:
    async with broker.http.get(broker.url + "/v1/health") as resp:
        return resp.status, await resp.json()


async def _until_health(broker: Broker, status: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await _health(broker)
        if code == status or time.monotonic() > deadline:
            assert code == status, body
            return body
        await asyncio.sleep(0.1)


async def test_an_offer_on_one_broker_reaches_a_volunteer_polling_another(
    brokers: list[Broker],
) -> None:
    a, b, c = brokers
    for broker in brokers:
        body = await _until_health(broker, 200)
        assert body["pool"] == {"brokers": 3, "problem": None}
    polling = asyncio.create_task(b.poll("on-b"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    client = asyncio.create_task(a.offer())
    offer = await asyncio.wait_for(polling, 5)
    assert isinstance(offer, PollOffer)
    handed_after = time.monotonic() - started
    # The volunteer answers on a third broker (a load balancer may send it anywhere).
    status, _ = await c.answer("on-b", offer.offer_id)
    assert status == 200
    status, body = await client
    assert status == 200, body
    assert decode_client_answer(body) == ClientAnswer(ANSWER_SDP)
    assert handed_after < 1.0, handed_after
    # Answered once: a second answer, on any broker, is refused.
    for broker in brokers:
        status, body = await broker.answer("on-b", offer.offer_id)
        assert status == 404 and decode_error(body).code == "unknown_offer"


async def test_only_the_volunteer_it_was_handed_to_may_answer(brokers: list[Broker]) -> None:
    a, b, c = brokers
    polling = asyncio.create_task(b.poll("honest"))
    await asyncio.sleep(0.3)
    client = asyncio.create_task(a.offer())
    offer = await asyncio.wait_for(polling, 5)
    assert isinstance(offer, PollOffer)
    status, body = await c.answer("someone-else", offer.offer_id)
    assert status == 404 and decode_error(body).code == "unknown_offer"
    assert (await b.answer("honest", offer.offer_id))[0] == 200
    assert (await client)[0] == 200


async def test_each_offer_goes_to_exactly_one_volunteer(brokers: list[Broker]) -> None:
    """Twelve volunteers spread over three brokers, twelve offers on one: no offer is
    handed twice, none is lost, and every client gets its answer."""
    a = brokers[0]
    polls = [asyncio.create_task(brokers[i % 3].poll(f"v{i}", capacity=1)) for i in range(12)]
    await asyncio.sleep(0.5)
    clients = [asyncio.create_task(a.offer()) for _ in range(12)]
    offers = await asyncio.wait_for(asyncio.gather(*polls), 10)
    handed = [o for o in offers if isinstance(o, PollOffer)]
    assert len({o.offer_id for o in handed}) == len(handed) == 12
    for i, offer in enumerate(offers):
        assert isinstance(offer, PollOffer)
        assert (await brokers[(i + 1) % 3].answer(f"v{i}", offer.offer_id))[0] == 200
    results = await asyncio.gather(*clients)
    assert [status for status, _ in results] == [200] * 12


@pytest.mark.usefixtures("no_earning_window")
async def test_what_volunteers_proved_is_shared_and_counted_in_client_networks(
    redis: RedisServer,
) -> None:
    """Offers posted on A, taken by a volunteer polling B, answered on C, reported to any:
    the credit (the offer's client network, kept with the offer in Redis) is seen by every
    broker, and more sessions from the same /24 prove nothing more."""
    config = replace(
        _config(redis), report_secret="s3cret", earn_room=True, trusted_proxies=("127.0.0.0/8",)
    )
    async with AsyncExitStack() as stack:
        a, b, c = [
            await stack.enter_async_context(serving(config, handler_cancellation=True))
            for _ in range(3)
        ]
        states = [broker.app[BROKER_KEY] for broker in (a, b, c)]
        first = await carry("w", "198.51.100.7", b, a, c)
        assert await a.report_carried("s3cret", first) == 1
        assert await b.report_carried("s3cret", first) == 0  # once, across the pool
        assert [await s.proven("volunteer-w") for s in states] == [1, 1, 1]
        assert await c.report_carried("s3cret", await carry("w", "198.51.100.99", b, a, c))
        assert [await s.proven("volunteer-w") for s in states] == [1, 1, 1]
        # Answered on the broker that handed it out (the offer's network from its own
        # matchmaker), and from another /24.
        assert await b.report_carried("s3cret", await carry("w", "203.0.113.9", b, a, b))
        assert [await s.proven("volunteer-w") for s in states] == [2, 2, 2]


async def test_volunteers_are_counted_across_brokers(brokers: list[Broker]) -> None:
    # The pool counts a volunteer from its second poll (an id made up for one costs nothing;
    # test_pool_volunteers.py): each polls, then polls again (which ends its first poll).
    first = [asyncio.create_task(broker.poll(f"count-{i}")) for i, broker in enumerate(brokers)]
    await asyncio.sleep(0.2)
    polls = [asyncio.create_task(broker.poll(f"count-{i}")) for i, broker in enumerate(brokers)]
    assert all(isinstance(p, PollIdle) for p in await asyncio.gather(*first))
    for broker in brokers:
        for _ in range(50):
            if (await broker.counts())["volunteers"] == 3:
                break
            await asyncio.sleep(0.05)
        assert (await broker.counts())["volunteers"] == 3
        assert (await _health(broker))[1]["volunteers"] == 8  # rounded, as served
    assert all(isinstance(p, PollIdle) for p in await asyncio.gather(*polls))


async def test_no_volunteer_anywhere_is_a_clear_503(brokers: list[Broker]) -> None:
    started = time.monotonic()
    status, body = await brokers[0].offer()
    assert status == 503 and decode_error(body).code == "no_volunteer"
    assert 2.5 < time.monotonic() - started < 5.0
    assert (await brokers[0].counts())["waiting_offers"] == 0


async def test_a_broker_that_loses_redis_says_so_serves_its_own_and_recovers(
    redis: RedisServer,
) -> None:
    async with (
        serving(_config(redis), handler_cancellation=True) as a,
        serving(_config(redis), handler_cancellation=True) as b,
    ):
        await _until_health(a, 200)
        # An offer waiting in the pool when Redis goes away is taken back, not lost: a
        # volunteer of its own broker that polls later still gets it.
        client = asyncio.create_task(a.offer())
        await asyncio.sleep(0.3)
        redis.stop()
        body = await _until_health(a, 503, timeout=5)
        assert body["status"] == "degraded" and "redis unreachable" in body["reason"]
        offer = await asyncio.wait_for(a.poll("local"), 5)
        assert isinstance(offer, PollOffer)
        assert (await a.answer("local", offer.offer_id))[0] == 200
        assert (await client)[0] == 200
        # Redis returns (empty, as a restarted cache is): both brokers share again.
        redis.start()
        for broker in (a, b):
            await _until_health(broker, 200, timeout=10)
        await asyncio.sleep(1.5)  # a heartbeat from each
        for broker in (a, b):
            assert (await _health(broker))[1]["pool"]["brokers"] == 2
        polling = asyncio.create_task(b.poll("on-b"))
        await asyncio.sleep(0.3)
        client = asyncio.create_task(a.offer())
        offer = await asyncio.wait_for(polling, 5)
        assert isinstance(offer, PollOffer)
        assert (await b.answer("on-b", offer.offer_id))[0] == 200
        assert (await client)[0] == 200


async def test_a_broker_starts_without_redis_and_joins_when_it_comes(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    config = BrokerConfig(poll_timeout=1.0, answer_timeout=1.0, redis_url=server.url)
    async with serving(config, handler_cancellation=True) as broker:
        body = await _until_health(broker, 503)
        assert "is redis-server running?" in body["reason"]
        server.start()
        try:
            await _until_health(broker, 200, timeout=10)
        finally:
            server.stop()


async def test_a_bad_redis_url_is_a_usage_error(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(Path(__file__).parents[2] / ".venv/bin/unwall"),
        "broker", "--redis", "localhost:6379",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"--redis wants redis://" in stderr


async def test_the_health_check_is_quick_while_redis_is_gone(redis: RedisServer) -> None:
    async with serving(_config(redis), handler_cancellation=True) as broker:
        await _until_health(broker, 200)
        redis.stop()
        await _until_health(broker, 503, timeout=5)
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.get(broker.url + "/v1/health") as resp:
                assert resp.status == 503
            assert time.monotonic() - started < 0.5


async def test_the_egress_a_client_names_travels_with_its_offer(redis: RedisServer) -> None:
    from test_broker_http import OFFER_SDP

    from unwall.egress.identity import generate_identity
    from unwall.wire.broker import ClientOffer, encode

    pin = generate_identity().pin
    config = BrokerConfig(
        poll_timeout=3.0,
        answer_timeout=3.0,
        redis_url=redis.url,
        egresses={pin: "wss://second.example/v1/relay"},
    )
    async with (
        serving(config, handler_cancellation=True) as a,
        serving(config, handler_cancellation=True) as b,
    ):
        polling = asyncio.create_task(b.poll("on-b"))
        await asyncio.sleep(0.3)
        client = asyncio.create_task(
            a.post("/v1/client/offer", encode(ClientOffer(OFFER_SDP, egress=pin)))
        )
        offer = await asyncio.wait_for(polling, 5)
        assert isinstance(offer, PollOffer)
        assert offer.relay_url == "wss://second.example/v1/relay"
        assert (await b.answer("on-b", offer.offer_id))[0] == 200
        assert (await client)[0] == 200
