"""A token bucket in bytes per second, so background copying leaves room for real work."""

from __future__ import annotations

import asyncio
import time

BURST_S = 0.25  # the bucket holds this many seconds' worth of the current rate


class Throttle:
    def __init__(self, rate: float) -> None:
        # `rate` may be changed between calls: a node slows its repairs while it runs inference.
        self.rate = rate
        self._tokens = rate * BURST_S
        self._at = time.monotonic()

    async def consume(self, n: int) -> None:
        rate = self.rate
        if rate <= 0:
            return
        now = time.monotonic()
        self._tokens = min(rate * BURST_S, self._tokens + (now - self._at) * rate)
        self._at = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / rate)
