"""Epoch fencing (Kleppmann's fencing tokens): a node remembers the highest coordinator epoch it
has seen and refuses anything stamped lower, so a coordinator that was wrongly presumed dead and
comes back cannot assign work or write results any more."""

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
        if path is not None:
            try:
                self.epoch = int(path.read_text().strip() or 0)
            except (FileNotFoundError, ValueError):
                self.epoch = 0

    def admit(self, epoch: int) -> None:
        """Accept `epoch` (recording it if it is the newest) or raise StaleEpoch."""
        if epoch < self.epoch:
            raise StaleEpoch(
                f"stale epoch {epoch}: this node follows epoch {self.epoch} "
                "(a newer coordinator took over)"
            )
        if epoch > self.epoch:
            self.epoch = epoch
            self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(f"{self.epoch}\n")
        os.replace(tmp, self._path)
