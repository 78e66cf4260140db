"""Issue 22, row 12: volunteer ids made up by the thousand cost a shared pool (Redis) little
and are forgotten soon: a volunteer is written to the pool from its second poll on a broker,
forgotten volunteer_ttl after its last poll (not after an hour), and the pool keeps at most
MAX_VOLUNTEERS of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, redis_server
from test_broker_http import serving

from unwall.broker import redis_pool
from unwall.broker.redis_pool import RedisPool
from unwall.broker.server import BrokerConfig
from unwall.wire.nat import NAT_KINDS

KEYS = ["unwall:volunteers", *(f"unwall:volunteers:{kind}" for kind in NAT_KINDS)]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.from_url(redis.url, decode_responses=True)
    try:
        yield connection
    finally:
        await connection.aclose()


async def _members(client: aioredis.Redis) -> int:
    return sum([await client.zcard(key) for key in KEYS])


async def test_a_made_up_volunteer_costs_the_pool_nothing_and_a_real_one_is_forgotten_soon(
    redis: RedisServer, client: aioredis.Redis
) -> None:
    config = BrokerConfig(
        poll_timeout=0.2, answer_timeout=0.5, volunteer_ttl=1.0, redis_url=redis.url
    )
    async with serving(config, handler_cancellation=True) as broker:
        # A harvester's fakes: a fresh id for every poll.
        await asyncio.gather(*(broker.poll(f"fake-{n:03d}") for n in range(60)))
        await asyncio.sleep(0.3)  # what the broker writes, it writes in the background
        assert await _members(client) == 0
        # A volunteer that polls again is counted, across the pool.
        await broker.poll("real")
        await broker.poll("real")
        for _ in range(50):
            if await client.zscore("unwall:volunteers", "volunteer-real") is not None:
                break
            await asyncio.sleep(0.05)
        assert await client.zcard("unwall:volunteers") == 1
        assert (await broker.counts())["volunteers"] == 1
        # Silent for volunteer_ttl, it is forgotten by the brokers' heartbeat, whether or
        # not anyone asks for the counts.
        started = time.monotonic()
        while await _members(client) and time.monotonic() - started < 10:
            await asyncio.sleep(0.1)
        assert await _members(client) == 0
        forgotten = time.monotonic() - started
    assert forgotten < 1.0 + 2 * redis_pool.HEARTBEAT + 1.0, forgotten


async def test_the_pool_keeps_a_bounded_number_of_volunteers(
    redis: RedisServer, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_pool, "MAX_VOLUNTEERS", 5, raising=False)
    pool = RedisPool(redis.url)
    await pool.start()
    try:
        now = time.time()
        for n in range(12):
            await pool.note_volunteer(f"v{n:02d}", "symmetric", now + n / 1000)
        newest = [f"v{n:02d}" for n in range(7, 12)]
        assert await client.zrange("unwall:volunteers", 0, -1) == newest
        assert await client.zrange("unwall:volunteers:symmetric", 0, -1) == newest
    finally:
        await pool.close()
