"""How the broker and the egress listen: bounded in time and in connections per address.

aiohttp's own defaults let a stranger hold a connection for an hour: an idle one, or one
that sends its request head a byte at a time (its keep-alive timeout is 3,630 s, and it has
no separate timeout for a request head). Here:
- a connection with no complete request in progress is closed after `IDLE_TIMEOUT`, from
  its first byte on (idle keep-alive, and a request head that never ends, alike);
  requests in progress (a volunteer's long poll, a WebSocket) are not touched;
- a request body must arrive within `BODY_TIMEOUT` (the broker's bodies: its handlers);
- one address holds at most `MAX_CONNECTIONS_PER_ADDRESS` connections at once; the next
  is closed at once, before it costs a parser or a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from aiohttp import web

from unwall.logs import Throttle

log = logging.getLogger("unwall.serving")

IDLE_TIMEOUT = 15.0
BODY_TIMEOUT = 10.0
#: Generous: many volunteers or clients can share one address (a carrier-grade NAT).
MAX_CONNECTIONS_PER_ADDRESS = 256
#: At most one log line per this many seconds about refused connections.
REFUSAL_LOG_EVERY = 10.0


def runner_options() -> dict[str, Any]:
    """What every `web.AppRunner` of ours is given."""
    return {"keepalive_timeout": IDLE_TIMEOUT}


class _PerAddress(asyncio.Protocol):
    """In front of aiohttp's request handler: count the peer's connections, refuse the
    one over the limit before the handler sees it, and pass everything else through."""

    def __init__(self, site: GuardedSite, handler: Any) -> None:
        self._site = site
        self._handler = handler
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if self._site.connections[address] >= self._site.per_address:
            self._site.refused(transport)
            return
        self._site.connections[address] += 1
        self._address = address
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return
        self._site.connections[self._address] -= 1
        if self._site.connections[self._address] <= 0:
            del self._site.connections[self._address]
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._address is not None:
            return bool(self._handler.eof_received())
        return None

    def pause_writing(self) -> None:
        if self._address is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._address is not None:
            self._handler.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are counted and capped per source address."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        super().__init__(runner, host, port)
        self.per_address = per_address
        self.connections: Counter[str] = Counter()
        self.refusals = 0
        self._throttle = Throttle(REFUSAL_LOG_EVERY)

    def refused(self, transport: asyncio.BaseTransport) -> None:
        self.refusals += 1
        transport.close()
        allowed, left_out = self._throttle.allow()
        if allowed:
            more = f" ({left_out} more since the last line)" if left_out else ""
            log.warning(
                "refused a connection: one address already holds %d%s", self.per_address, more
            )

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _PerAddress(self, server()),
            self._host,
            self._port,
            reuse_address=True,
        )
