"""The pool several brokers share: offers waiting for a volunteer, and answers on their way.

Each broker keeps the volunteers' long-polls it holds, and matches them with the sans-IO
:class:`~unwall.broker.matchmaker.Matchmaker` as a lone broker does. What brokers share is
what must cross between them:

- an offer no volunteer of its own broker could take at once is *published*; any broker
  with a free volunteer that can serve it *claims* it (atomically: one claim wins) and
  hands it to that volunteer through its own matchmaker;
- every offer handed to a volunteer is *recorded* with its owner (the broker holding the
  client's request) and the volunteer, so that the volunteer's answer, on whichever broker
  it arrives, is checked against the record and *forwarded* to the owner's inbox;
- volunteers are counted across brokers.

This module and :mod:`unwall.broker.redis_pool` are the seam for the engine that holds it:
:class:`Pool` is the interface the broker uses, :class:`~unwall.broker.redis_pool.RedisPool`
its one implementation (redis-py's asyncio client), in a module of its own so that a broker
without ``--redis`` never loads redis; no other module imports redis. Without a pool (no
``--redis``) the broker is a lone process, with all its state in memory.

Redis keys, under a prefix (``unwall:`` by default):

``queue``              sorted set: published offer ids, by publication time (FIFO)
``offer:ID``           hash: sdp, nat, relay, relay_url, network, owner, deadline (Unix
                       time), passed_over, volunteer (once handed); expires with it
``inbox:BROKER``       list: JSON answers for offers BROKER holds
``volunteers``         sorted set: volunteer id -> last poll (Unix time), from its second
                       poll on a broker (an id made up for one poll is never written);
                       forgotten volunteer_ttl after its last poll, at most MAX_VOLUNTEERS
                       (the longest silent go first)
``volunteers:NAT``     the same, per NAT kind
``brokers``            sorted set: broker id -> last heartbeat (Unix time)
``answered:ID``        hash: volunteer, network: who answered offer ID and its client's
                       network, until an egress reports it carried
``proven:VOLUNTEER``   set: the client networks the egress saw the volunteer carry
                       sessions for (at most MAX_PROVEN_NETWORKS); expires PROVEN_MEMORY
                       after the last
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from unwall.wire.nat import NatKind

#: How often the pool checks that its engine answers, and brokers say they are alive.
HEARTBEAT: Final = 1.0
#: Redis is unreachable once this many heartbeats in a row have failed.
HEARTBEATS_MISSED: Final = 2
#: A broker not heard from for this long no longer counts.
BROKER_TTL: Final = 5.0
#: Seconds an offer's record outlives its deadline (for a late answer's clear refusal).
OFFER_GRACE: Final = 5.0
#: What a volunteer has proven is counted in client networks, up to this many, and
#: forgotten after this long without a new report (seconds).
MAX_PROVEN_NETWORKS: Final = 256
PROVEN_MEMORY: Final = 30 * 86400.0
#: Volunteers the pool counts at most (about 300 bytes each in Redis, in its two sets, for a
#: 35-character id: some 30 MB in all): past it, the longest silent are forgotten first.
MAX_VOLUNTEERS: Final = 100_000


class PoolUnavailable(Exception):
    """The shared pool's engine cannot be reached; the message says why."""


@dataclass(frozen=True)
class SharedOffer:
    """An offer waiting in the pool for a volunteer."""

    offer_id: str
    sdp: str
    nat: NatKind
    relay: bool
    owner: str  # the broker that holds the client's request
    deadline: float  # Unix time
    passed_over: bool = False
    relay_url: str | None = None  # the egress its client's bridge line names
    network: str = ""  # its client's /24 or /48 (which volunteer groups it may use)


@dataclass(frozen=True)
class Delivery:
    """An answer for an offer this broker holds."""

    offer_id: str
    sdp: str


class Pool(ABC):
    """What a broker needs from the state it shares with other brokers."""

    broker_id: str

    @property
    @abstractmethod
    def problem(self) -> str | None:
        """Why the pool cannot be used now, or None when it can."""

    @abstractmethod
    async def start(self) -> None:
        """Connect, and keep checking; an engine that cannot be reached yet is retried (and
        :attr:`problem` says so)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def wait_change(self) -> bool:
        """Wait until the pool's health changes; return whether it is usable now."""

    @abstractmethod
    async def publish(self, offer: SharedOffer) -> None: ...

    @abstractmethod
    async def head(self, limit: int, start: int = 0) -> list[SharedOffer]:
        """Published offers still waiting, oldest first: `limit` of them from the
        `start`-th oldest."""

    @abstractmethod
    async def claim(self, offer_id: str) -> bool:
        """Take a published offer out of the queue; True for exactly one claimer."""

    @abstractmethod
    async def mark_passed_over(self, offer_id: str) -> None:
        """Free volunteers looked at this offer and none could serve it."""

    @abstractmethod
    async def withdraw(self, offer_id: str) -> SharedOffer | None:
        """Remove an offer whatever its state (its client gave up or timed out); return it
        as it was, or None if the pool no longer had it."""

    @abstractmethod
    async def exists(self, offer_id: str) -> bool: ...

    @abstractmethod
    async def record_handed(
        self, offer_id: str, owner: str, volunteer_id: str, deadline: float, network: str
    ) -> None:
        """An offer (of a client in `network`) was handed to a volunteer here."""

    @abstractmethod
    async def forward_answer(self, offer_id: str, volunteer_id: str, sdp: str) -> str | None:
        """Send a volunteer's answer to the broker holding the offer, and return the
        offer's client network; None if the offer was not handed to that volunteer (or is
        gone)."""

    @abstractmethod
    def deliveries(self) -> AsyncIterator[Delivery]:
        """Answers for this broker's offers, as they come (across engine outages)."""

    @abstractmethod
    async def record_answered(
        self, offer_id: str, volunteer_id: str, network: str, ttl: float
    ) -> None:
        """Remember who answered an offer, and its client's network, for an egress's
        report that it was carried."""

    @abstractmethod
    async def credit(self, offer_id: str) -> int:
        """Credit the volunteer that answered `offer_id` with a session carried for the
        offer's client network; 1 if the report was for a known offer, 0 if the offer was
        unknown, too old, or credited already."""

    @abstractmethod
    async def proven(self, volunteer_id: str) -> int:
        """The client networks the volunteer has been seen to carry sessions for, across
        the pool (at most MAX_PROVEN_NETWORKS)."""

    @abstractmethod
    async def note_volunteer(self, volunteer_id: str, nat: NatKind, now: float) -> None: ...

    @abstractmethod
    async def volunteer_counts(self, ttl: float, now: float) -> dict[NatKind, int]:
        """Volunteers that polled any broker within ``ttl``, by NAT kind."""

    @abstractmethod
    async def broker_count(self, now: float) -> int:
        """Brokers sharing this pool that are alive."""


def check_redis_url(url: str) -> None:
    """Raise ValueError for a URL that is not redis://, rediss:// or unix://."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        # Not the URL itself: it may hold a password.
        scheme = url.split(":", 1)[0] if ":" in url else "no scheme"
        raise ValueError(
            "--redis wants redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... or "
            f"unix:///PATH (a password in the config file, not on the command line), not a "
            f"URL of {scheme!r}"
        )


__all__ = ["Delivery", "Pool", "PoolUnavailable", "SharedOffer", "check_redis_url"]
