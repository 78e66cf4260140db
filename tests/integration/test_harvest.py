"""Issue 12, part 3: neither volunteers nor clients can be harvested, over real HTTP.

The enumeration is benchmarks/enumeration.py's, run shorter here (the benchmark runs the
issue's 60 s): 100 volunteers, each polling from its own /24 on loopback, and an enumerator
with 50 addresses of one /24."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
from test_broker_http import OFFER_SDP, serving

from unwall.broker.guard import Rate
from unwall.broker.server import BrokerConfig
from unwall.local import LocalBridge
from unwall.wire.broker import ClientOffer, decode_error, encode

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import enumeration


async def test_one_network_learns_a_small_part_of_the_pool() -> None:
    before = await enumeration.run(seconds=3.0, guard=False)
    after = await enumeration.run(seconds=3.0, guard=True)
    print(f"an enumerator from one /24 learned {before['learned']} -> {after['learned']} of 100")
    assert before["learned"] >= 80, before
    # Two groups of sixteen: 12.5 volunteers expected (binomial spread), never the pool.
    assert 1 <= after["learned"] <= 25, after


async def test_offers_past_the_rate_are_429_with_retry_after() -> None:
    config = BrokerConfig(poll_timeout=1.0, answer_timeout=0.2, offer_rate=Rate(1.0, 3))
    async with serving(config, handler_cancellation=True) as broker:
        statuses = [(await broker.offer())[0] for _ in range(3)]
        assert statuses == [503, 503, 503]  # no volunteer, but served
        async with broker.http.post(
            broker.url + "/v1/client/offer", data=encode(ClientOffer(OFFER_SDP))
        ) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            error = decode_error(await resp.read())
        assert error.code == "rate_limited" and "try again" in error.message


async def test_behind_a_named_front_the_forwarded_address_counts() -> None:
    """Behind a front the operator names, each forwarded client has its own limit; a
    forwarded header from anyone else is ignored (it would let a client pick its address)."""
    config = BrokerConfig(
        poll_timeout=1.0,
        answer_timeout=0.1,
        offer_rate=Rate(0.01, 1),
        trusted_proxies=("127.0.0.0/8",),
    )
    async with serving(config, handler_cancellation=True) as broker:
        body = encode(ClientOffer(OFFER_SDP))
        for client in ("198.51.100.7", "198.51.100.8", "203.0.113.9"):
            headers = {"X-Forwarded-For": f"{client}, 127.0.0.5"}
            async with broker.http.post(
                broker.url + "/v1/client/offer", data=body, headers=headers
            ) as resp:
                assert resp.status == 503  # its first offer: served
        headers = {"X-Forwarded-For": "198.51.100.7"}
        async with broker.http.post(
            broker.url + "/v1/client/offer", data=body, headers=headers
        ) as resp:
            assert resp.status == 429  # that client's second
    untrusted = BrokerConfig(poll_timeout=1.0, answer_timeout=0.1, offer_rate=Rate(0.01, 1))
    async with serving(untrusted, handler_cancellation=True) as broker:
        statuses = []
        for n in range(2):
            headers = {"X-Forwarded-For": f"198.51.100.{n}"}
            async with broker.http.post(
                broker.url + "/v1/client/offer",
                data=encode(ClientOffer(OFFER_SDP)),
                headers=headers,
            ) as resp:
                statuses.append(resp.status)
        assert statuses == [503, 429]  # one address (127.0.0.1), whatever the header says


async def test_one_address_holds_a_bounded_number_of_polls() -> None:
    config = BrokerConfig(poll_timeout=2.0, answer_timeout=1.0, polls_per_address=3)
    async with serving(config, handler_cancellation=True) as broker:
        polls = [asyncio.create_task(broker.post("/v1/volunteer/poll", _poll(i))) for i in range(3)]
        await asyncio.sleep(0.3)
        status, body = await broker.post("/v1/volunteer/poll", _poll(9))
        assert status == 429 and decode_error(body).code == "rate_limited"
        assert [s for s, _ in await asyncio.gather(*polls)] == [200, 200, 200]


def _poll(n: int) -> bytes:
    from unwall.wire.broker import VolunteerPoll

    return encode(VolunteerPoll(f"volunteer-{n:04d}", 8, 0, "headless"))


async def test_the_egress_reports_who_carried_and_the_broker_credits_them(
    bridge: LocalBridge,
) -> None:
    """With the secret they share on both sides (in their environment), a volunteer that
    carried a client's vouched session is credited on the broker (and a report with the
    wrong secret is refused)."""
    await bridge.start_broker(extra=("--earn-room",))
    await bridge.start_egress(extra=("--report-to", bridge.broker_url))
    await bridge.start_volunteer()
    await bridge.start_client()
    deadline = asyncio.get_running_loop().time() + 15
    carried = 0.0
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            async with http.get(f"{bridge.broker_url}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith("unwall_broker_carried_total "):
                        carried = float(line.split()[1])
            if carried >= 1:
                break
            await asyncio.sleep(0.3)
        assert carried >= 1
        async with http.post(
            f"{bridge.broker_url}/v1/egress/carried",
            json={"version": 1, "offers": ["x"]},
            headers={"Authorization": "Bearer wrong"},
        ) as resp:
            assert resp.status == 401
