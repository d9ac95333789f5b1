"""Searching a node's JSON log (the course's MP1 distributed grep), pure: the node route and the
CLI's fan-out both use it. A line matches a fixed string (default) or a regular expression
(Python `re` syntax, like `grep -E`), optionally ignoring case, anywhere in its JSON text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAX_PATTERN = 1000
DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000


class BadPattern(ValueError):
    """The pattern cannot be used; the message says why."""


@dataclass(frozen=True)
class Matcher:
    pattern: str
    regex: bool = False
    ignore_case: bool = False

    def __post_init__(self) -> None:
        if not self.pattern:
            raise BadPattern("the pattern is empty: give something to search for")
        if len(self.pattern) > MAX_PATTERN:
            raise BadPattern(f"the pattern is longer than {MAX_PATTERN} characters")
        if self.regex:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise BadPattern(f"not a valid regular expression ({exc})") from None

    def lines(self, lines: Iterable[str]) -> Iterator[str]:
        if self.regex:
            rx = re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)
            yield from (ln for ln in lines if rx.search(ln))
        elif self.ignore_case:
            needle = self.pattern.casefold()
            yield from (ln for ln in lines if needle in ln.casefold())
        else:
            yield from (ln for ln in lines if self.pattern in ln)


def search(matcher: Matcher, lines: Iterable[str], limit: int) -> tuple[list[str], int]:
    """(the first `limit` matching lines without their newline, the number of matches)."""
    found: list[str] = []
    count = 0
    for line in matcher.lines(lines):
        count += 1
        if len(found) < limit:
            found.append(line.rstrip("\n"))
    return found, count
