"""Is this volunteer working? Its self-check at start: the broker, the egress, its NAT, and
which clients could reach it, summed up in one verdict (sans-IO, with the checks' shell).

The verdict is logged in one line, served in the volunteer's stats and metrics, and is
what `unwall volunteer --check` prints before it exits (0 when ready).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from unwall.wire.nat import DESCRIPTIONS, NAT_KINDS, NatKind, can_connect

CHECK_TIMEOUT: Final = 10.0
#: Clients' NAT kinds a volunteer is judged against (a client never reports "unknown" to
#: itself as a kind that matters here).
CLIENT_KINDS: Final[tuple[NatKind, ...]] = tuple(k for k in NAT_KINDS if k != "unknown")


class Verdict(enum.Enum):
    READY = "ready"
    #: ready, but behind a NAT that few clients can cross (and no TURN server to help)
    HARD_TO_REACH = "hard_to_reach"
    BROKER_UNREACHABLE = "broker_unreachable"
    EGRESS_UNREACHABLE = "egress_unreachable"


@dataclass(frozen=True)
class SelfCheck:
    broker_error: str | None  # None: the broker answered
    egress_error: str | None  # None: the egress accepted a relay WebSocket
    nat: NatKind
    relay: bool  # a TURN server lets any client reach us

    @property
    def reachable_kinds(self) -> tuple[NatKind, ...]:
        """The clients' NAT kinds that can reach this volunteer."""
        if self.relay:
            return CLIENT_KINDS
        return tuple(kind for kind in CLIENT_KINDS if can_connect(kind, self.nat))

    @property
    def verdict(self) -> Verdict:
        if self.broker_error is not None:
            return Verdict.BROKER_UNREACHABLE
        if self.egress_error is not None:
            return Verdict.EGRESS_UNREACHABLE
        # Behind a symmetric NAT only clients with open or address-restricted NATs get in:
        # not the port-restricted home routers nor the symmetric mobile carriers that most
        # censored users sit behind.
        if self.nat == "symmetric" and not self.relay:
            return Verdict.HARD_TO_REACH
        return Verdict.READY

    @property
    def ready(self) -> bool:
        """Clients can be served (perhaps few: HARD_TO_REACH still relays for them)."""
        return self.verdict in (Verdict.READY, Verdict.HARD_TO_REACH)

    def line(self) -> str:
        """The verdict in one line, for a person."""
        verdict = self.verdict
        if verdict is Verdict.BROKER_UNREACHABLE:
            return f"NOT READY: cannot reach the broker ({self.broker_error})"
        if verdict is Verdict.EGRESS_UNREACHABLE:
            return f"NOT READY: cannot reach the egress ({self.egress_error})"
        reach = self._reach()
        if verdict is Verdict.HARD_TO_REACH:
            return (
                f"ready, but hard to reach: {reach}; a TURN server (--ice-server turn:...) "
                "or an open NAT would let everyone in"
            )
        return f"ready: broker and egress reachable; {reach}"

    def _reach(self) -> str:
        if self.relay:
            return "a TURN server lets clients behind any NAT reach you"
        if self.nat == "unknown":
            return (
                "NAT not measured (no stun: server; --ice-server stun:HOST:PORT measures it), "
                "so assumed reachable"
            )
        kinds = self.reachable_kinds
        return (
            f"{DESCRIPTIONS[self.nat]}: clients behind {len(kinds)} of {len(CLIENT_KINDS)} "
            "kinds of NAT can reach you"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "ready": self.ready,
            "line": self.line(),
            "broker_error": self.broker_error,
            "egress_error": self.egress_error,
            "nat": self.nat,
            "relay": self.relay,
            "reachable_nat_kinds": list(self.reachable_kinds),
        }


async def check_broker(http: aiohttp.ClientSession, broker_url: str) -> str | None:
    """None if the broker answers its health check (degraded counts: it still pairs)."""
    url = URL(broker_url.rstrip("/") + "/v1/health")
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT)) as reply:
            if reply.status in (200, 503):
                return None
            return f"its health check answered HTTP {reply.status}"
    except TimeoutError:
        return f"no answer in {CHECK_TIMEOUT:.0f} s"
    except aiohttp.ClientError as exc:
        return str(exc) or type(exc).__name__


async def check_egress(http: aiohttp.ClientSession, egress_url: str) -> str | None:
    """None if the egress accepts a relay WebSocket (closed at once, nothing relayed)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            ws = await http.ws_connect(egress_url, compress=0)
            await ws.close()
    except TimeoutError:
        return f"no answer in {CHECK_TIMEOUT:.0f} s"
    except (aiohttp.ClientError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


async def self_check(
    http: aiohttp.ClientSession, broker_url: str, egress_url: str, nat: NatKind, relay: bool
) -> SelfCheck:
    broker_error, egress_error = await asyncio.gather(
        check_broker(http, broker_url), check_egress(http, egress_url)
    )
    return SelfCheck(broker_error, egress_error, nat, relay)


__all__ = ["CLIENT_KINDS", "SelfCheck", "Verdict", "check_broker", "check_egress", "self_check"]
