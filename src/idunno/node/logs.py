"""Structured node logs: one JSON object per line in the data dir, one readable line on stderr."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

LOG_FILE = "node.jsonl"
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class EventLog:
    def __init__(
        self,
        node: str,
        data_dir: Path | None,
        stderr: TextIO | None = sys.stderr,
        stderr_level: str = "info",
    ) -> None:
        self.node = node
        self._file: TextIO | None = None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(data_dir / LOG_FILE, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._stderr = stderr
        self._stderr_level = _LEVELS[stderr_level]

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        ts = time.time()
        record = {"ts": round(ts, 6), "node": self.node, "level": level, "event": event, **fields}
        if self._file is not None:
            self._file.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        if self._stderr is not None and _LEVELS.get(level, 20) >= self._stderr_level:
            clock = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
            detail = " ".join(f"{k}={_short(v)}" for k, v in fields.items() if v is not None)
            self._stderr.write(f"{clock} {self.node} {level.upper():7} {event} {detail}\n")
            self._stderr.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."


def read_events(
    data_dir: Path, event: str | None = None, since: float = 0.0
) -> list[dict[str, Any]]:
    """Records of a node's JSON log (optionally one event type, at or after `since`)."""
    out: list[dict[str, Any]] = []
    try:
        with open(data_dir / LOG_FILE, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if (event is None or rec.get("event") == event) and rec.get("ts", 0) >= since:
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out
