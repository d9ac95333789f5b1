"""What the demo shows while the jobs run: a live terminal view (rich) or, when stdout is not
a terminal, one plain progress line every few seconds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

Record = Mapping[str, Any]
EVENT_LINES = 8
ROLE_STYLE = {
    "coordinator": "bold green",
    "standby": "cyan",
    "worker": "",
    "FAILED": "bold red",
    "suspect": "yellow",
    "left": "dim",
}


@dataclass(frozen=True, slots=True)
class JobRow:
    name: str
    model: str
    done: int
    total: int
    rate: float
    workers: int
    status: str


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one screen shows; `elapsed` is seconds since the demo's t0."""

    elapsed: float
    jobs: Sequence[JobRow] = ()
    members: Sequence[tuple[str, str]] = ()  # (name, role or status)
    events: Sequence[str] = ()
    note: str = ""  # why the last poll failed (a failover under way), if it did
    phase: str = ""


def job_rows(jobs: Sequence[Record]) -> list[JobRow]:
    return [
        JobRow(
            name=str(j.get("name")),
            model=str(j.get("model")),
            done=int(j.get("done") or 0),
            total=int(j.get("total") or 0),
            rate=float(j.get("rate") or 0.0),
            workers=len(j.get("workers") or []),
            status=str(j.get("status")),
        )
        for j in jobs
    ]


def member_roles(members: Sequence[Record]) -> list[tuple[str, str]]:
    """(name, role) per member; a member that is not alive shows its status instead."""
    out = []
    for m in sorted(members, key=lambda m: str(m.get("id"))):
        status = str(m.get("status"))
        role = str(m.get("role") or "worker") if status == "alive" else status
        out.append((str(m.get("id")), "FAILED" if role == "failed" else role))
    return out


def render(frame: Frame) -> RenderableType:
    table = Table(expand=False, box=None, padding=(0, 1), header_style="bold")
    for col in ("JOB", "MODEL", "PROGRESS", "DONE", "RATE q/s", "WORKERS", "STATUS"):
        table.add_column(col, justify="right" if col in ("DONE", "RATE q/s", "WORKERS") else "left")
    for j in frame.jobs:
        bar = ProgressBar(total=max(j.total, 1), completed=j.done, width=30)
        table.add_row(
            j.name, j.model, bar, f"{j.done}/{j.total}", f"{j.rate:.1f}", str(j.workers), j.status
        )
    members = Text("members: ")
    for i, (name, role) in enumerate(frame.members):
        members.append(("  " if i else "") + f"{name} {role}", style=ROLE_STYLE.get(role, ""))
    title = Text(f"IDUNNO demo  +{frame.elapsed:5.1f}s  {frame.phase}", style="bold")
    events = Text("\n".join(frame.events[-EVENT_LINES:]) or "(none yet)")
    parts: list[RenderableType] = [title, table, members]
    if frame.note:
        parts.append(Text(frame.note, style="yellow"))
    parts.append(Panel(events, title="events", title_align="left", height=EVENT_LINES + 2))
    return Group(*parts)


def plain(frame: Frame) -> str:
    """One line: every job's progress, rate and workers, then the members' roles."""
    jobs = " | ".join(
        f"{j.name} {j.done}/{j.total} {j.rate:.1f} q/s {j.workers} workers {j.status}"
        for j in frame.jobs
    )
    members = " ".join(f"{n}:{r}" for n, r in frame.members)
    note = f" ({frame.note})" if frame.note else ""
    return f"+{frame.elapsed:5.1f}s {jobs or 'no jobs yet'} | members {members}{note}"
