"""Recent failure events for the dashboard, read from a node's own JSON log.

`LogTail` follows DATA_DIR/node.jsonl from where it last stopped (the first read starts near the
end), keeps the records of the failure events in a short ring, and folds runs of
`batch_requeued` from the same worker and job into one entry with a count, so a burst of
requeues cannot push the membership changes out of view. `describe` turns an entry into one
readable line.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# member_changed only counts when it is a failure (or the return from one); see `_wanted`.
EVENTS = (
    "member_changed",
    "coordinator_elected",
    "coordinator_gone",
    "coordinator_deposed",
    "worker_failed",
    "batch_requeued",
    "executor_died",
)
# What the coordinator's log adds to another node's view (its member_changed are duplicates).
COORDINATOR_EVENTS = frozenset(
    {"coordinator_elected", "coordinator_deposed", "worker_failed", "batch_requeued"}
)
_LINE = re.compile(rb'"event":"(' + b"|".join(e.encode() for e in EVENTS) + rb')"')
BACKLOG_BYTES = 512 << 10  # how far back from the end the first read starts
MAX_READ_BYTES = 4 << 20  # a log that grew more than this between polls: skip to its end
KEEP = 60  # entries kept (the snapshot shows the newest 20)
FOLD_WINDOW_S = 10.0  # requeues of one worker and job this close together make one entry
FIELDS = (
    "member",
    "old",
    "new",
    "epoch",
    "takeover",
    "previous",
    "standby",
    "coordinator",
    "worker",
    "job",
    "batch",
    "requeued",
    "detail",
    "pid",
)


def _wanted(rec: Mapping[str, Any]) -> bool:
    if rec.get("event") != "member_changed":
        return rec.get("event") in EVENTS
    new, old = rec.get("new"), rec.get("old")
    return new in ("suspect", "failed", "left") or (new == "alive" and old == "failed")


def entry(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The compact form of a log record kept and sent: ts, node, event, level, count, the
    fields `describe` uses (long details cut)."""
    out: dict[str, Any] = {
        "ts": float(rec.get("ts", 0.0)),
        "node": str(rec.get("node", "")),
        "event": str(rec.get("event", "")),
        "level": str(rec.get("level", "info")),
        "count": 1,
    }
    for k in FIELDS:
        v = rec.get(k)
        if v is None:
            continue
        if k == "requeued" and isinstance(v, list):
            v = len(v)
        elif isinstance(v, str) and len(v) > 160:
            v = v[:157] + "..."
        out[k] = v
    return out


def fold(entries: deque[dict[str, Any]], e: dict[str, Any]) -> None:
    """Append `e`, merging it into the newest entry when both are requeues of one job's batches
    from one worker within FOLD_WINDOW_S."""
    if e["event"] == "batch_requeued" and entries:
        last = entries[-1]
        if (
            last["event"] == "batch_requeued"
            and (last["node"], last.get("worker"), last.get("job"))
            == (e["node"], e.get("worker"), e.get("job"))
            and e["ts"] - last["ts"] <= FOLD_WINDOW_S
        ):
            last["count"] += 1
            last["ts"] = e["ts"]
            return
    entries.append(e)


class LogTail:
    def __init__(self, path: Path, keep: int = KEEP) -> None:
        self.path = path
        self.entries: deque[dict[str, Any]] = deque(maxlen=keep)
        self._offset: int | None = None  # None: not read yet

    def poll(self) -> None:
        """Read what the log gained since the last call (blocking file IO: run it in a
        thread). A missing file is an empty log; a shorter one was replaced: read it anew."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                if self._offset is None or size < self._offset:
                    self._offset = max(0, size - BACKLOG_BYTES)
                    skip_partial = self._offset > 0
                else:
                    skip_partial = False
                if size - self._offset > MAX_READ_BYTES:
                    self._offset = size - BACKLOG_BYTES
                    skip_partial = True
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except FileNotFoundError:
            self._offset = 0
            return
        end = data.rfind(b"\n")
        if end < 0:
            return  # no complete line yet
        chunk = data[: end + 1]
        self._offset += end + 1
        if skip_partial:  # started mid-line: drop the fragment
            cut = chunk.find(b"\n")
            chunk = chunk[cut + 1 :]
        for line in chunk.splitlines():
            if not _LINE.search(line):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and _wanted(rec):
                fold(self.entries, entry(rec))

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        return [dict(e) for e in list(self.entries)[-limit:]]


def merge(
    local: Iterable[Mapping[str, Any]], coordinator: Iterable[Mapping[str, Any]], limit: int = 20
) -> list[dict[str, Any]]:
    """This node's entries plus the coordinator's own kinds of events, without duplicates
    (the coordinator's view of itself is both), newest first, at most `limit`."""
    seen: set[tuple[str, str, float]] = set()
    out: list[dict[str, Any]] = []
    for e in [*local, *(c for c in coordinator if c.get("event") in COORDINATOR_EVENTS)]:
        key = (str(e.get("node")), str(e.get("event")), round(float(e.get("ts", 0.0)), 3))
        if key in seen:
            continue
        seen.add(key)
        out.append(dict(e))
    out.sort(key=lambda e: float(e.get("ts", 0.0)), reverse=True)
    return out[:limit]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'es' if word.endswith('ch') else 's'}" if n != 1 else f"1 {word}"


def describe(e: Mapping[str, Any], job_names: Mapping[str, str] | None = None) -> str:
    """One readable line for an entry (job ids shown as job names where known)."""
    names = job_names or {}
    event = e.get("event")
    node = e.get("node", "?")
    job = e.get("job")
    job_text = f"job {names.get(str(job), job)}" if job else "a job"
    detail = f": {e['detail']}" if e.get("detail") else ""
    if event == "member_changed":
        member, new, old = e.get("member", "?"), e.get("new"), e.get("old")
        if new == "alive":
            return f"{member} is alive again (was {old}), seen by {node}"
        if new == "left":
            return f"{member} left the cluster, seen by {node}"
        was = f" (was {old})" if old else ""
        return f"{member} is {new}{was}, seen by {node}"
    if event == "coordinator_elected":
        how = e.get("takeover", "")
        after = f" after {e['previous']}" if e.get("previous") else ""
        standby = e.get("standby") or "none yet"
        return (
            f"{node} elected coordinator, epoch {e.get('epoch')} ({how} takeover{after}); "
            f"standby {standby}"
        )
    if event == "coordinator_gone":
        return (
            f"coordinator {e.get('coordinator', '?')} of epoch {e.get('epoch')} stopped "
            f"answering (noticed by {node})"
        )
    if event == "coordinator_deposed":
        return f"{node} stepped down as coordinator of epoch {e.get('epoch')}{detail}"
    if event == "worker_failed":
        n = int(e.get("requeued") or 0)
        return f"worker {e.get('worker', '?')} failed: {_plural(n, 'batch')} requeued by {node}"
    if event == "batch_requeued":
        n = int(e.get("count", 1))
        return f"{_plural(n, 'batch')} of {job_text} requeued from {e.get('worker', '?')}{detail}"
    if event == "executor_died":
        return f"the inference executor of {node} died{detail} (it is restarted)"
    return f"{event} on {node}"
