"""Epoch fencing (Kleppmann's fencing tokens): a node remembers the highest coordinator token it
has seen and refuses anything stamped lower, so a coordinator that was wrongly presumed dead and
comes back cannot assign work or write results any more.

The token is (epoch, coordinator name), compared in that order, like a Paxos ballot: the store
numbers epochs, but the two sides of a partition may each number one (each sees only its own
side's versions), and the name keeps their tokens distinct and ordered, so every node that sees
both obeys the same one.
"""

from __future__ import annotations

import os
from pathlib import Path


class StaleEpoch(ValueError):
    """A command or result from an older coordinator reign."""


class Fence:
    def __init__(self, path: Path | None = None) -> None:
        # Persisted so that a restarted node still refuses a reign it had seen superseded.
        self._path = path
        self.epoch = 0
        self.owner = ""
        if path is not None:
            try:
                epoch, _, owner = path.read_text().strip().partition(" ")
                self.epoch, self.owner = int(epoch or 0), owner
            except (FileNotFoundError, ValueError):
                self.epoch, self.owner = 0, ""

    @property
    def token(self) -> tuple[int, str]:
        return (self.epoch, self.owner)

    def admit(self, epoch: int, owner: str = "") -> None:
        """Accept (epoch, owner) (recording it if it is the newest) or raise StaleEpoch. An empty
        owner matches any coordinator of that epoch (callers that only know the number)."""
        if epoch < self.epoch or (epoch == self.epoch and owner and owner < self.owner):
            raise StaleEpoch(
                f"stale epoch {epoch}{f' of {owner}' if owner else ''}: this node follows epoch "
                f"{self.epoch}{f' of {self.owner}' if self.owner else ''} "
                "(a newer coordinator took over)"
            )
        if (epoch, owner) > (self.epoch, self.owner):
            self.epoch, self.owner = epoch, owner
            self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(f"{self.epoch} {self.owner}\n")
        os.replace(tmp, self._path)
