"""A one-line progress bar on stderr for long transfers (silent when stderr is not a TTY)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, min_size: int = 8 << 20) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self._shown = 0.0
        self._t0 = time.monotonic()
        self.enabled = sys.stderr.isatty() and total >= min_size

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._shown > 0.1:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(frac * 30)
        rate = self.done / max(now - self._t0, 1e-6) / 1e6
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {rate:7.1f} MB/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
