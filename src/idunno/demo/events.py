"""The demo's "events" panel: what the nodes log about failures, as it happens.

`LogTail` reads each node's JSON log (DATA_DIR/node.jsonl) incrementally, so polling it a few
times a second costs only the new lines; `EventFeed` turns records into short lines, folding
repeats (five survivors marking one node failed, a coordinator requeueing several batches of
one worker) into one line that counts them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idunno.node.logs import LOG_FILE

Record = Mapping[str, Any]

SHOWN = frozenset(
    {
        "member_changed",
        "worker_failed",
        "batch_requeued",
        "coordinator_gone",
        "coordinator_elected",
        "job_submitted",
        "job_done",
    }
)


class LogTail:
    """New records of the `SHOWN` events in several nodes' logs, at or after `since`."""

    def __init__(self, data_dirs: Iterable[Path], since: float) -> None:
        self._files = [Path(d) / LOG_FILE for d in data_dirs]
        self._offsets = [0] * len(self._files)
        self._since = since

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, path in enumerate(self._files):
            out.extend(self._read(i, path))
        return sorted(out, key=lambda r: float(r.get("ts", 0.0)))

    def _read(self, i: int, path: Path) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                f.seek(self._offsets[i])
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self._offsets[i] += complete
        records = (_parse(line) for line in data[:complete].splitlines())
        return [r for r in records if r is not None and self._wanted(r)]

    def _wanted(self, rec: dict[str, Any]) -> bool:
        return rec.get("event") in SHOWN and float(rec.get("ts", 0.0)) >= self._since


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


@dataclass
class EventLine:
    """One line of the panel; `nodes` and `items` grow as repeats are folded into it."""

    t: float  # seconds since the demo's t0
    kind: str
    subject: str
    detail: str = ""
    nodes: list[str] = field(default_factory=list)
    items: set[int] = field(default_factory=set)

    def text(self) -> str:
        return f"+{self.t:5.1f}s  {_describe(self)}"


def _describe(e: EventLine) -> str:
    first = e.nodes[0] if e.nodes else "?"
    more = f" (+{len(e.nodes) - 1} more)" if len(e.nodes) > 1 else ""
    if e.kind == "failed":
        return f"{e.subject} marked FAILED by {first}{more}"
    if e.kind == "requeued":
        n = len(e.items)
        return f"{first} requeued {n} batch{'es' * (n != 1)} of {e.subject}"
    if e.kind == "gone":
        return f"{first}{more}: coordinator {e.subject} is gone (its port refuses connections)"
    if e.kind == "elected":
        return f"{e.subject} elected coordinator: {e.detail}"
    if e.kind == "demo":
        return f"demo: {e.subject}"
    return f"job {e.subject} {e.detail}"


class EventFeed:
    """The panel's lines, oldest first, each stamped with its first record's time."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lines: list[EventLine] = []
        self._by_key: dict[str, EventLine] = {}
        self.fresh: list[EventLine] = []  # lines added (not updated) since the last take_fresh

    def note(self, ts: float, text: str) -> None:
        """Something the demo itself did (a SIGKILL)."""
        self._line(f"demo:{ts}", ts, "demo", text)

    def add(self, records: Iterable[Record]) -> None:
        for rec in records:
            self._add(rec)

    def last(self, n: int) -> list[str]:
        return [e.text() for e in self.lines[-n:]]

    def take_fresh(self) -> list[str]:
        out, self.fresh = [e.text() for e in self.fresh], []
        return out

    def _add(self, r: Record) -> None:
        kind = r.get("event")
        ts, node = float(r["ts"]), str(r.get("node"))
        if kind == "member_changed" and r.get("new") == "failed":
            member = str(r.get("member"))
            key = f"failed:{member}:{r.get('incarnation')}"
            _once(self._line(key, ts, "failed", member).nodes, node)
        elif kind in ("batch_requeued", "worker_failed"):
            line = self._line(f"requeued:{r.get('worker')}:{node}", ts, "requeued", r["worker"])
            _once(line.nodes, node)
            line.items.update(_batches(r))
        elif kind == "coordinator_gone":
            key = f"gone:{r.get('coordinator')}:{r.get('epoch')}"
            _once(self._line(key, ts, "gone", str(r.get("coordinator"))).nodes, node)
        elif kind == "coordinator_elected":
            self._line(f"elected:{node}:{r.get('epoch')}", ts, "elected", node, _elected(r))
        elif kind == "job_submitted":
            detail = f"submitted ({r.get('queries')} queries, batch {r.get('batch_size')})"
            self._line(f"submitted:{r.get('job')}", ts, "job", str(r.get("name")), detail)
        elif kind == "job_done":
            detail = f"done ({r.get('queries')} queries, {r.get('errors') or 0} errors)"
            self._line(f"done:{r.get('job')}", ts, "job", str(r.get("name")), detail)

    def _line(self, key: str, ts: float, kind: str, subject: str, detail: str = "") -> EventLine:
        line = self._by_key.get(key)
        if line is None:
            line = EventLine(ts - self.t0, kind, subject, detail)
            self._by_key[key] = line
            self.lines.append(line)
            self.fresh.append(line)
        return line


def _once(nodes: list[str], node: str) -> None:
    if node not in nodes:
        nodes.append(node)


def _batches(r: Record) -> set[int]:
    out = {int(b) for b in r.get("requeued") or []}
    if r.get("batch") is not None:
        out.add(int(r["batch"]))
    return out


def _elected(r: Record) -> str:
    took = r.get("took_ms")
    text = f"epoch {r.get('epoch')}, {r.get('takeover')} takeover"
    text += f" in {float(took):.0f} ms" if took is not None else ""
    adopted = int(r.get("adopted") or 0)
    return text + (f", adopted {adopted} running batches" if adopted else "")
