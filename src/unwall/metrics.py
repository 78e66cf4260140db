"""Prometheus metrics shared by the roles: one registry each, and the rounding rule.

Counts that could single out a person (sessions, clients, volunteers of one kind) are
rounded up to a multiple of :data:`BIN` (as Snowflake's broker does), so that one more or
one fewer user cannot be seen; bytes, refusals and events are exact, as they name nobody.
No metric has a label that carries an address or a destination.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest

#: Counts of people are rounded up to a multiple of this.
BIN: Final = 8


def rounded(count: float) -> int:
    """`count` rounded up to a multiple of BIN (0 stays 0)."""
    return int(math.ceil(count / BIN) * BIN) if count > 0 else 0


def people_gauge(
    registry: CollectorRegistry, name: str, text: str, read: Callable[[], float]
) -> Gauge:
    """A gauge of people, read when scraped and rounded up to a multiple of BIN."""
    gauge = Gauge(name, f"{text} (rounded up to a multiple of {BIN}).", registry=registry)
    gauge.set_function(lambda: rounded(read()))
    return gauge


def handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics


__all__ = ["BIN", "handler", "people_gauge", "rounded"]
