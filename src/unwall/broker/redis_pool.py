"""The shared pool in Redis: :class:`RedisPool`, the one implementation of
:class:`unwall.broker.pool.Pool` (redis-py's asyncio client). The keys it keeps are listed in
:mod:`unwall.broker.pool`; the only other module of the seam. No other module imports redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from unwall.broker.pool import (
    BROKER_TTL,
    HEARTBEAT,
    HEARTBEATS_MISSED,
    MAX_PROVEN_NETWORKS,
    MAX_VOLUNTEERS,
    OFFER_GRACE,
    PROVEN_MEMORY,
    Delivery,
    Pool,
    PoolUnavailable,
    SharedOffer,
    check_redis_url,
)
from unwall.wire.nat import NAT_KINDS, NatKind

log = logging.getLogger("unwall.broker")

#: Closing waits at most this long (seconds) for each step: a broker shutting down while
#: Redis is gone must not hang.
CLOSE_TIMEOUT: Final = 2.0


# Forward an answer only if the offer was handed to this volunteer; first answer wins.
_FORWARD: Final = """
local offer = KEYS[1]
if redis.call('HGET', offer, 'volunteer') ~= ARGV[1] then return 0 end
local owner = redis.call('HGET', offer, 'owner')
local network = redis.call('HGET', offer, 'network') or ''
redis.call('DEL', offer)
local inbox = ARGV[3] .. 'inbox:' .. owner
redis.call('RPUSH', inbox, ARGV[2])
redis.call('EXPIRE', inbox, 120)
return {1, network}
"""


# Queue an offer unless a volunteer was handed it: KEYS offer hash, queue; ARGV offer id,
# ttl, now, then field/value pairs.
_PUBLISH: Final = """
if redis.call('HEXISTS', KEYS[1], 'volunteer') == 1 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1])
return 1
"""

# Mark an offer passed over, only while it exists (never recreating it without a ttl).
_PASSED_OVER: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'passed_over', 1) end
return 0
"""

# Credit the volunteer that answered an offer, once: KEYS answered key, proven hash.
_CREDIT: Final = """
local volunteer = redis.call('HGET', KEYS[1], 'volunteer')
if not volunteer then return 0 end
local network = redis.call('HGET', KEYS[1], 'network') or ''
redis.call('DEL', KEYS[1])
local proven = ARGV[1] .. 'proven:' .. volunteer
if redis.call('SCARD', proven) < tonumber(ARGV[2]) then redis.call('SADD', proven, network) end
redis.call('EXPIRE', proven, ARGV[3])
return 1
"""


class RedisPool(Pool):
    """The pool in a Redis server (Redis 6.2 or newer, or a compatible server)."""

    def __init__(
        self,
        url: str,
        prefix: str = "unwall:",
        broker_id: str | None = None,
        volunteer_ttl: float = 60.0,
    ) -> None:
        check_redis_url(url)
        self.url = url
        self.prefix = prefix
        #: a volunteer not heard from for this long is forgotten (the brokers' volunteer_ttl)
        self.volunteer_ttl = volunteer_ttl
        self.broker_id = broker_id or secrets.token_hex(6)
        self._redis: aioredis.Redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=0,
        )
        self._problem: str | None = None
        self._changed = asyncio.Event()
        self._heart: asyncio.Task[None] | None = None
        self._closed = False
        self._forward = self._redis.register_script(_FORWARD)
        self._publish = self._redis.register_script(_PUBLISH)
        self._passed_over = self._redis.register_script(_PASSED_OVER)
        self._credit = self._redis.register_script(_CREDIT)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def problem(self) -> str | None:
        return self._problem

    def _failed(self, exc: BaseException) -> PoolUnavailable:
        """An operation failed: it raises, but only the heartbeat decides that Redis is
        unreachable (one slow reply must not make the broker take its offers back)."""
        return PoolUnavailable(f"redis unreachable ({_short(exc)}); is redis-server running?")

    def _set_problem(self, problem: str | None) -> None:
        was_usable = self._problem is None
        self._problem = problem
        if was_usable != (problem is None):
            if problem is None:
                log.info("shared pool: redis is reachable again")
            else:
                log.warning("shared pool: %s; matching this broker's volunteers only", problem)
            self._changed.set()

    async def start(self) -> None:
        try:
            await self._beat()
        except RedisError as exc:
            self._set_problem(str(self._failed(exc)))
        self._heart = asyncio.create_task(self._heartbeat())

    async def close(self) -> None:
        # The loops stop at this flag, not only on cancellation: a cancel that lands inside
        # a redis-py command can come out as a RedisError (or, on Python 3.11, be lost in
        # a timeout), and a loop that caught it would run on, and be waited for, forever.
        self._closed = True
        if self._heart is not None:
            self._heart.cancel()
            await asyncio.wait({self._heart}, timeout=CLOSE_TIMEOUT)
        with contextlib.suppress(RedisError, TimeoutError):
            await asyncio.wait_for(
                self._redis.zrem(self._key("brokers"), self.broker_id), CLOSE_TIMEOUT
            )
        with contextlib.suppress(RedisError, TimeoutError):
            await asyncio.wait_for(self._redis.aclose(), CLOSE_TIMEOUT)

    async def _beat(self) -> None:
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._key("brokers"), {self.broker_id: now})
            pipe.zremrangebyscore(self._key("brokers"), "-inf", now - BROKER_TTL)
            await pipe.execute()
        self._set_problem(None)

    async def _heartbeat(self) -> None:
        failures = 0
        while not self._closed:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._beat()
                failures = 0
                await self._trim()
            except RedisError as exc:
                failures += 1
                if failures >= HEARTBEATS_MISSED:
                    self._set_problem(str(self._failed(exc)))

    async def _trim(self) -> None:
        """Forget volunteers not seen for volunteer_ttl, every heartbeat."""
        cutoff = time.time() - self.volunteer_ttl
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in ("volunteers", *(f"volunteers:{kind}" for kind in NAT_KINDS)):
                pipe.zremrangebyscore(self._key(key), "-inf", cutoff)
            await pipe.execute()

    async def wait_change(self) -> bool:
        await self._changed.wait()
        self._changed.clear()
        return self._problem is None

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as exc:
            raise self._failed(exc) from None

    async def publish(self, offer: SharedOffer) -> None:
        """Queue an offer; one that a volunteer was handed meanwhile (by another broker,
        while this one could not tell) stays handed, and is not queued again."""
        ttl = max(1, int(offer.deadline - time.time() + OFFER_GRACE))
        fields: dict[str, str | int] = {
            "sdp": offer.sdp,
            "nat": offer.nat,
            "relay": int(offer.relay),
            "owner": offer.owner,
            "deadline": repr(offer.deadline),
            "passed_over": int(offer.passed_over),
            "relay_url": offer.relay_url or "",
            "network": offer.network,
        }
        args: list[str | int | float] = [offer.offer_id, ttl, time.time()]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._key("offer", offer.offer_id), self._key("queue")]
        await self._run(self._publish(keys=keys, args=args))

    async def head(self, limit: int, start: int = 0) -> list[SharedOffer]:
        async def run() -> list[SharedOffer]:
            queue = self._key("queue")
            ids = [str(i) for i in await self._redis.zrange(queue, start, start + limit - 1)]
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for offer_id in ids:
                    pipe.hgetall(self._key("offer", offer_id))
                records = await pipe.execute()
            offers, stale = [], []
            for offer_id, fields in zip(ids, records, strict=True):
                offer = _offer(offer_id, fields)
                if offer is None:
                    stale.append(offer_id)
                else:
                    offers.append(offer)
            if stale:
                await self._redis.zrem(self._key("queue"), *stale)
            return offers

        return cast(list[SharedOffer], await self._run(run()))

    async def claim(self, offer_id: str) -> bool:
        return bool(await self._run(self._redis.zrem(self._key("queue"), offer_id)))

    async def mark_passed_over(self, offer_id: str) -> None:
        await self._run(self._passed_over(keys=[self._key("offer", offer_id)]))

    async def withdraw(self, offer_id: str) -> SharedOffer | None:
        key = self._key("offer", offer_id)

        async def run() -> SharedOffer | None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._key("queue"), offer_id)
                pipe.hgetall(key)
                pipe.delete(key)
                _, fields, _ = await pipe.execute()
            return _offer(offer_id, fields)

        return cast(SharedOffer | None, await self._run(run()))

    async def exists(self, offer_id: str) -> bool:
        return bool(await self._run(self._redis.exists(self._key("offer", offer_id))))

    async def record_handed(
        self, offer_id: str, owner: str, volunteer_id: str, deadline: float, network: str
    ) -> None:
        key = self._key("offer", offer_id)
        ttl = max(1, int(deadline - time.time() + OFFER_GRACE))

        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key, mapping={"owner": owner, "volunteer": volunteer_id, "network": network}
                )
                pipe.expire(key, ttl)
                await pipe.execute()

        await self._run(run())

    async def forward_answer(self, offer_id: str, volunteer_id: str, sdp: str) -> str | None:
        payload = json.dumps({"offer_id": offer_id, "sdp": sdp})
        result = await self._run(
            self._forward(
                keys=[self._key("offer", offer_id)], args=[volunteer_id, payload, self.prefix]
            )
        )
        if not isinstance(result, list) or len(result) != 2:
            return None
        network = result[1]
        return network.decode() if isinstance(network, bytes) else str(network)

    async def deliveries(self) -> AsyncIterator[Delivery]:
        inbox = self._key("inbox", self.broker_id)
        while not self._closed:
            try:
                item = await self._redis.blpop([inbox], timeout=1)
            except RedisError:
                await asyncio.sleep(HEARTBEAT)  # the heartbeat says whether Redis is gone
                continue
            if item is None:
                continue
            try:
                message = json.loads(item[1])
                yield Delivery(str(message["offer_id"]), str(message["sdp"]))
            except (ValueError, KeyError, TypeError):
                log.warning("shared pool: a malformed answer in this broker's inbox; dropped")

    async def record_answered(
        self, offer_id: str, volunteer_id: str, network: str, ttl: float
    ) -> None:
        key = self._key("answered", offer_id)

        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"volunteer": volunteer_id, "network": network})
                pipe.expire(key, max(1, int(ttl)))
                await pipe.execute()

        await self._run(run())

    async def credit(self, offer_id: str) -> int:
        keys = [self._key("answered", offer_id)]
        args: list[str | int] = [self.prefix, MAX_PROVEN_NETWORKS, int(PROVEN_MEMORY)]
        return int(await self._run(self._credit(keys=keys, args=args)))

    async def proven(self, volunteer_id: str) -> int:
        return int(await self._run(self._redis.scard(self._key("proven", volunteer_id))))

    async def note_volunteer(self, volunteer_id: str, nat: NatKind, now: float) -> None:
        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(self._key("volunteers"), {volunteer_id: now})
                pipe.zremrangebyrank(self._key("volunteers"), 0, -MAX_VOLUNTEERS - 1)
                for kind in NAT_KINDS:
                    if kind == nat:
                        key = self._key("volunteers", kind)
                        pipe.zadd(key, {volunteer_id: now})
                        pipe.zremrangebyrank(key, 0, -MAX_VOLUNTEERS - 1)
                    else:
                        pipe.zrem(self._key("volunteers", kind), volunteer_id)
                await pipe.execute()

        await self._run(run())

    async def volunteer_counts(self, ttl: float, now: float) -> dict[NatKind, int]:
        async def run() -> dict[NatKind, int]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind in NAT_KINDS:
                    key = self._key("volunteers", kind)
                    pipe.zremrangebyscore(key, "-inf", now - ttl)
                    pipe.zcard(key)
                pipe.zremrangebyscore(self._key("volunteers"), "-inf", now - ttl)
                results = await pipe.execute()
            return {kind: int(results[2 * i + 1]) for i, kind in enumerate(NAT_KINDS)}

        return cast(dict[NatKind, int], await self._run(run()))

    async def broker_count(self, now: float) -> int:
        key = self._key("brokers")
        return int(await self._run(self._redis.zcount(key, now - BROKER_TTL, "+inf")))


def _offer(offer_id: str, fields: dict[str, str]) -> SharedOffer | None:
    if not fields or "sdp" not in fields:
        return None
    nat: Any = fields.get("nat", "unknown")
    try:
        return SharedOffer(
            offer_id=offer_id,
            sdp=fields["sdp"],
            nat=nat if nat in NAT_KINDS else "unknown",
            relay=fields.get("relay") == "1",
            owner=fields.get("owner", ""),
            deadline=float(fields.get("deadline", "0")),
            passed_over=fields.get("passed_over") == "1",
            relay_url=fields.get("relay_url") or None,
            network=fields.get("network", ""),
        )
    except ValueError:
        return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."


__all__ = ["RedisPool"]
