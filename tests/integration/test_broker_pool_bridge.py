"""The whole bridge through three broker processes sharing one real Redis (issue 12, 1).

The client talks to broker A only; the volunteers poll brokers B and C only: every tunnel
is matched across brokers. Redis is then restarted (empty) mid-test, and a second client
still gets its tunnel and its bytes.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis_server import RedisServer, redis_server
from test_bridge import curl, sha256

from unwall.local import DemoSite, LocalBridge, free_port

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

SIZE = 2_000_000


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


async def _health(url: str) -> int:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/health") as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def _until(url: str, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (code := await _health(url)) != status:
        assert time.monotonic() < deadline, f"{url} health stayed {code}, not {status}"
        await asyncio.sleep(0.2)


async def _download(port: int, site: DemoSite) -> None:
    _, digest = site.blob(SIZE)
    code, body, err = await curl(
        "--socks5-hostname", f"127.0.0.1:{port}", f"{site.url}/blob/{SIZE}"
    )
    assert code == 0, err
    assert sha256(body) == digest


async def test_three_brokers_one_redis_and_a_redis_restart(
    bridge: LocalBridge, site: DemoSite, redis: RedisServer
) -> None:
    shared = ("--redis", redis.url, "--answer-timeout", "10")
    await bridge.start_broker(extra=shared)  # A: the clients' broker
    b_port, c_port = free_port(), free_port()
    await bridge.start_broker(extra=shared, port=b_port)
    await bridge.start_broker(extra=shared, port=c_port)
    b_url, c_url = f"http://127.0.0.1:{b_port}", f"http://127.0.0.1:{c_port}"
    await bridge.start_egress()
    await bridge.start_volunteer(broker=b_url)
    await bridge.start_volunteer(broker=c_url)
    await bridge.start_client()  # waits for "tunnel ready": matched across brokers
    await _download(bridge.socks_port, site)

    redis.stop()
    for url in (bridge.broker_url, b_url, c_url):
        await _until(url, 503, timeout=10)
    redis.start()
    for url in (bridge.broker_url, b_url, c_url):
        await _until(url, 200, timeout=15)
    second_socks, second_http = free_port(), free_port()
    await bridge.start_client(socks_port=second_socks, http_port=second_http)
    await _download(second_socks, site)
    await _download(bridge.socks_port, site)  # the first client never lost its tunnel

    brokers = [role for role in bridge.roles if role.name == "broker"]
    for role in brokers:
        log = role.log_path.read_text()
        assert "Traceback" not in log, log
        assert "redis is reachable again" in log
