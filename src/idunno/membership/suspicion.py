"""Lifeguard suspicion timer state: a deadline that shrinks as independent accusers agree."""

from __future__ import annotations

from idunno.membership.formulas import suspicion_timeout


class Suspicion:
    def __init__(self, start: float, accuser: str, expected: int, min_s: float, max_s: float):
        self.start = start
        self.expected = expected
        self.min_s = min_s
        self.max_s = max_s
        self._accusers = {accuser}

    @property
    def confirmations(self) -> int:
        """Accusers beyond the first one."""
        return len(self._accusers) - 1

    def confirm(self, accuser: str) -> bool:
        """Record an accuser; True if it is a new, independent one (worth re-gossiping)."""
        if accuser in self._accusers or self.confirmations >= self.expected:
            return False
        self._accusers.add(accuser)
        return True

    @property
    def deadline(self) -> float:
        timeout = suspicion_timeout(self.min_s, self.max_s, self.confirmations, self.expected)
        return self.start + timeout


class Awareness:
    """Local-health score in [0, maximum - 1]; higher means "I may be the slow one"."""

    def __init__(self, maximum: int):
        self.maximum = maximum
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.maximum - 1)
