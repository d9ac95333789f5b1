"""Transmit-limited broadcast queue (memberlist's TransmitLimitedQueue, simplified).

Each member has at most one queued update (a newer one replaces it). Updates are handed out
fewest-transmissions first, newest first, until the packet's byte budget is full, and dropped
after `limit` transmissions.
"""

from __future__ import annotations

from dataclasses import dataclass

from idunno.membership.codec import encode_update
from idunno.membership.messages import Update


@dataclass(slots=True)
class _Item:
    update: Update
    size: int
    order: int
    transmits: int = 0


class BroadcastQueue:
    def __init__(self) -> None:
        self._items: dict[str, _Item] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, update: Update) -> None:
        self._order += 1
        self._items[update.name] = _Item(update, len(encode_update(update)), self._order)

    def take(self, budget: int, limit: int, first: Update | None = None) -> list[Update]:
        """Updates that fit in `budget` bytes, counting one transmission for each."""
        out: list[Update] = []
        if first is not None:
            size = len(encode_update(first))
            if size <= budget:
                out.append(first)
                budget -= size
        ranked = sorted(self._items.values(), key=lambda it: (it.transmits, -it.order))
        for it in ranked:
            if it.size > budget:
                continue
            if first is not None and it.update == first:
                continue
            out.append(it.update)
            budget -= it.size
            it.transmits += 1
            if it.transmits >= limit:
                del self._items[it.update.name]
        return out

    def pending(self) -> list[Update]:
        return [it.update for it in self._items.values()]
