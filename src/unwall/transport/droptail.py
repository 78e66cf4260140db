"""A bounded, never-blocking send queue in front of an async sender.

Relays must never block the side that feeds them and must never buffer without bound:
above the bound a message is dropped (tail-drop), and QUIC, end to end, retransmits it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable


class DropTailQueue:
    def __init__(self, send: Callable[[bytes], Awaitable[None]], limit_bytes: int) -> None:
        self._send = send
        self._limit = limit_bytes
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.sent_bytes = 0
        self._task = asyncio.create_task(self._run())

    def put(self, data: bytes) -> bool:
        """Queue a message; False if it was dropped."""
        if self._queued + len(data) > self._limit:
            self.dropped += 1
            return False
        self._queue.append(data)
        self._queued += len(data)
        self._wakeup.set()
        return True

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be sent."""
        return self._queued

    @property
    def done(self) -> asyncio.Task[None]:
        """Finishes when the sender failed (the other side closed)."""
        return self._task

    async def _run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    data = self._queue.popleft()
                    self._queued -= len(data)
                    await self._send(data)
                    self.sent_bytes += len(data)
        except (ConnectionError, RuntimeError):
            return  # the receiving side closed; whoever owns us notices and tears down

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
