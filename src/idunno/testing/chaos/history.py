"""The history of a chaos run: one JSON object per line, in the order things happened.

    {"t": 12.345, "process": "c0", "type": "invoke", "f": "put", "name": "f/a", "value": {...}}

t: seconds since the run started; type: "invoke", "ok", "fail" (definitely not applied) or
"info" (unknown outcome: a timeout, a reset, a 5xx). Records by process:

- clients "c0", "c1", ... (one operation at a time each: an invoke, then its ok/fail/info):
  put    invoke {"sha256", "size"}    ok {"version", "sha256"}
  get    invoke {}                    ok {"version", "sha256"} or {"missing": true}
  delete invoke {}                    ok {"deleted_version"}
- "nemesis" (type info): f "schedule" with the Schedule's JSON first, then f = an action's op
  (kill, start, stop, cont, network, heal) with that action's parameters;
- "jobs": f "submit" ok {"job", "model", "dataset", "queries"};
- "final" (type ok, after healing): f "read" (name; {"node", "version", "sha256"},
  {"node", "missing": true}, or {"node", "error"} if the read failed: it tells nothing),
  f "members" ({"node", "view": {member: status}}), f "truth" ({"alive": [...], "dead": [...]}),
  f "results" ({"job", "results": [API result dicts]}), f "reference" ({"model", "class_ids",
  "scores", "label"}: a testing.jobs.Reference, optionally "dataset", default "digits") and
  f "elections" ({"node", "events": [{"epoch", "coordinator", "t"}, ...]}).
Values may carry more keys (e.g. "error" on a fail/info, "node" on an ok): they are ignored.

    with HistoryWriter(run_dir / "history.jsonl") as history:   # thread-safe
        history.op("c0", INVOKE, PUT, "f/a", {"sha256": digest, "size": 1024})
    records = read_history(run_dir / "history.jsonl")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
TYPES = (INVOKE, OK, FAIL, INFO)

NEMESIS, JOBS, FINAL = "nemesis", "jobs", "final"  # every other process is a client
PUT, GET, DELETE = "put", "get", "delete"
CLIENT_FS = (PUT, GET, DELETE)
SCHEDULE = "schedule"  # nemesis
SUBMIT = "submit"  # jobs
READ, MEMBERS, TRUTH, RESULTS, REFERENCE, ELECTIONS = (  # final
    "read",
    "members",
    "truth",
    "results",
    "reference",
    "elections",
)


@dataclass(frozen=True)
class Record:
    t: float
    process: str
    type: str
    f: str
    name: str | None = None
    value: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "name": self.name,
            "value": dict(self.value),
        }

    def dumps(self) -> str:
        """The record as one line of JSON (no newline)."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Record:
        kind = obj.get("type")
        if kind not in TYPES:
            raise ValueError(f"record type {kind!r} is none of {', '.join(TYPES)}")
        name = obj.get("name")
        return cls(
            float(obj["t"]),
            str(obj["process"]),
            str(kind),
            str(obj["f"]),
            None if name is None else str(name),
            dict(obj.get("value") or {}),
        )


def parse_line(line: str) -> Record:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError(f"a history line holds a JSON object, not {type(obj).__name__}")
    return Record.from_json(obj)


def read_history(path: str | Path) -> list[Record]:
    """Every record of a history file, in file order (blank lines skipped). A malformed line
    raises ValueError naming it: a history the checker cannot trust must not pass."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(parse_line(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a history record ({exc})") from None
    return records


def write_history(path: str | Path, records: Iterable[Record]) -> None:
    """Write records as a new history file (for re-checking an edited or generated history)."""
    with Path(path).open("w", encoding="utf-8") as f:
        f.writelines(r.dumps() + "\n" for r in records)


class HistoryWriter:
    """Appends records to a history file, one flushed line each, so a run that dies keeps
    everything it recorded. Thread-safe: stamping and writing happen under one lock, so times
    never go back in the file. t is `clock() - start` (start: the clock at construction)."""

    def __init__(
        self,
        path: str | Path,
        clock: Callable[[], float] = time.monotonic,
        start: float | None = None,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._start = clock() if start is None else start
        self._lock = threading.Lock()
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")

    def elapsed(self) -> float:
        """Seconds since the run started, as records are stamped."""
        return self._clock() - self._start

    def op(
        self,
        process: str,
        type: str,  # the history field's name (shadows the builtin here only)
        f: str,
        name: str | None = None,
        value: Mapping[str, Any] | None = None,
    ) -> Record:
        """Record an event now; returns the record written."""
        if type not in TYPES:
            raise ValueError(f"record type {type!r} is none of {', '.join(TYPES)}")
        with self._lock:
            record = Record(round(self.elapsed(), 6), process, type, f, name, dict(value or {}))
            self._write(record)
        return record

    def write(self, record: Record) -> None:
        """Append a record as it is (its own t)."""
        with self._lock:
            self._write(record)

    def _write(self, record: Record) -> None:
        if self._file is None:
            raise ValueError(f"history {self.path} is closed")
        self._file.write(record.dumps() + "\n")
        self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
