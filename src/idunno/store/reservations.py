"""The version numbers this node has promised, per file name, kept across a restart.

A version number is promised to one authority at most (see StoreService.assign): a node that
forgot its promises when it restarted could promise the same number again to a second
authority, and two different versions would carry one number. Each promise is appended to a
JSON-lines log, written to the kernel before it is given (a killed process loses nothing; a
power cut may lose the last promises, as it may lose any process's unsynced writes); the log
is compacted on load and whenever it has grown well past the map it records. The file is
opened per promise: nothing stays open, so there is nothing to close.

A promise matters only until its version is committed (the holders then report the number
themselves) or abandoned, seconds later: compaction drops promises older than RETENTION_S, so
the log does not grow with every name ever written (result segments are new names).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

COMPACT_MIN_LINES = 10_000
RETENTION_S = 3600.0


class Reservations:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._top: dict[str, tuple[int, float]] = {}  # name -> (version, when promised)
        self._lines = 0
        with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    name, version, at = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(name, str) and isinstance(version, int):
                    self._keep(name, version, float(at))
        self._compact(time.time())

    def get(self, name: str) -> int:
        return self._top.get(name, (0, 0.0))[0]

    def grant(self, name: str, version: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._keep(name, version, now)
        with self.path.open("a", encoding="utf-8") as log:
            log.write(json.dumps([name, version, now]) + "\n")
        self._lines += 1
        if self._lines > max(COMPACT_MIN_LINES, 4 * len(self._top)):
            self._compact(now)

    def _keep(self, name: str, version: int, at: float) -> None:
        if version >= self.get(name):
            self._top[name] = (version, at)

    def _compact(self, now: float) -> None:
        horizon = now - RETENTION_S
        self._top = {n: va for n, va in self._top.items() if va[1] > horizon}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for name, (version, at) in self._top.items():
                f.write(json.dumps([name, version, at]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._lines = len(self._top)
