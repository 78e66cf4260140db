"""A token bucket that paces senders to a byte rate (the volunteer's --max-rate)."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """`rate` bytes per second on average, bursts up to `burst` bytes.

    A sender that takes more than is available is let through and then made to wait the
    debt off, so big messages are never starved by small ones and the average holds.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, 64 * 1024)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, nbytes: int) -> float:
        """Take `nbytes`; return how long the caller must wait before sending them."""
        self._refill()
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, nbytes: int) -> None:
        delay = self.delay_for(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)
