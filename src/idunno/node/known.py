"""The members this node has known, kept in its data dir: what the store's quorums count.

Quorums are majorities of the members a node knows (idunno.store.quorum). A node restarted
during a partition hears only of the members on its side at first: counting only those, it
took a minority for a majority and wrote there (found by the chaos suite, seed 64). So every
member seen is remembered with when it was last alive or suspect, across restarts, until the
membership's dead_retention has passed since then; a member that left for good is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

from idunno.membership.messages import Status

SAVE_EVERY_S = 60.0  # timestamps are rewritten at most this often; a new or departed name at once


class KnownMembers:
    def __init__(self, path: Path, retention: float) -> None:
        self.path = path
        self.retention = retention
        self._seen: dict[str, float] = {}  # name -> last time it was alive or suspect
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self._seen = {
                    str(k): float(v) for k, v in data.items() if isinstance(v, int | float)
                }
        self._saved_at = 0.0

    def observe(self, members: Iterable[tuple[str, Status]], now: float | None = None) -> None:
        """Fold in the membership's current view."""
        now = time.time() if now is None else now
        before = set(self._seen)
        for name, status in members:
            if status == Status.LEFT:
                self._seen.pop(name, None)
            elif status == Status.FAILED:
                self._seen.setdefault(name, now)
            else:
                self._seen[name] = now
        if set(self._seen) != before or now - self._saved_at >= SAVE_EVERY_S:
            self._save(now)

    def names(self, now: float | None = None) -> set[str]:
        """Members seen alive or suspect within the retention (departed ones excluded)."""
        horizon = (time.time() if now is None else now) - self.retention
        return {name for name, at in self._seen.items() if at > horizon}

    def _save(self, now: float) -> None:
        self._saved_at = now
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(OSError):  # a full disk must not stop the node; retried later
            tmp.write_text(json.dumps(self._seen, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
