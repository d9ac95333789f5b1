"""Shared helpers for the benchmarks in bench/: machine info, summary statistics, markdown
tables and writing `NAME.json`, `NAME.md` and `NAME.png` under bench/results/.

    data = {"machine": machine_info(), ...}
    paths = write_results("membership", data, markdown, figure)

Figures are built on `matplotlib.figure.Figure` directly (no pyplot, no global backend), so a
benchmark never opens a window and never touches another module's plotting state.

The benchmarks that run named sections (membership.py, sdfs.py) also share their command line
(`add_run_args`, `add_output_args`, `parse_sections`, `parse_trials`), progress lines on stderr
(`log`), their scratch directory (`workdir`), SIGTERM handling (`stop_on_sigterm`) and the panel
drawn for a section that did not run (`blank_axis`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from matplotlib.axes import Axes
from matplotlib.figure import Figure

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_DIR = Path(__file__).resolve().parent.parent


# --- command line and run ------------------------------------------------------------------


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the markdown report)."""
    print(msg, file=sys.stderr, flush=True)


def add_run_args(
    parser: argparse.ArgumentParser, sections: Sequence[str], *, quick_help: str, trials_help: str
) -> None:
    """--quick, --trials and --only (read back with parse_trials and parse_sections)."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--trials", type=int, help=trials_help)
    parser.add_argument("--only", help=f"comma-separated sections to run: {', '.join(sections)}")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """--out (the results directory, RESULTS_DIR by default) and --keep (see workdir)."""
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep node data dirs and logs")


def parse_sections(
    parser: argparse.ArgumentParser, only: str | None, sections: Sequence[str]
) -> tuple[str, ...]:
    """The sections named by --only (every one when it is not given), in the order given; an
    unknown name ends the program through parser.error (exit status 2)."""
    chosen = tuple(s.strip() for s in only.split(",")) if only else tuple(sections)
    unknown = [s for s in chosen if s not in sections]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}: choose from {', '.join(sections)}")
    return chosen


def parse_trials(parser: argparse.ArgumentParser, trials: int | None, default: int) -> int:
    """--trials, or `default` when it is not given; less than 1 ends the program (parser.error)."""
    value = trials if trials is not None else default
    if value < 1:
        parser.error("--trials must be at least 1")
    return value


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, as Ctrl-C does, so the run unwinds through every
    context manager (each ProcCluster kills its nodes) instead of dying on the spot."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


@contextlib.contextmanager
def workdir(keep: bool, prefix: str, parent: str | None = None) -> Iterator[Path]:
    """A fresh temporary directory (under `parent`, or the system's default) deleted on exit;
    with `keep`, left in place and its path logged."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        log(f"node data and logs kept in {path}")
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as tmp:
            yield Path(tmp)


# --- machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (absolute figures are only comparable on one machine)."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _memory_mb(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip("\n")


def git_info() -> dict[str, Any]:
    """The commit measured and the source files that differed from it (read-only git)."""
    dirty = _git("status", "--porcelain", "--", "src")
    return {
        "commit": (_git("rev-parse", "HEAD") or "").strip() or None,
        "src_changes": [] if not dirty else [line[3:] for line in dirty.splitlines()],
    }


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics (numpy's
    default). With 10 samples p99 lies 91% of the way from the 9th to the 10th value."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, sample sd, min, p50, p90, p99, max of `values` (None fields when empty)."""
    n = len(values)
    if n == 0:
        keys = ("mean", "sd", "min", "p50", "p90", "p99", "max")
        return {"n": 0, **dict.fromkeys(keys)}
    return {
        "n": n,
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if n > 1 else 0.0,
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


# --- markdown ------------------------------------------------------------------------------


def fmt(value: object, digits: int = 2) -> str:
    """A table cell: floats rounded, None as an em dash, everything else as str()."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("PASS" if ok else "FAIL")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], digits: int = 2) -> str:
    """A GitHub markdown table; numeric cells go through fmt()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [c if isinstance(c, str) else fmt(c, digits) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- figures -------------------------------------------------------------------------------


def blank_axis(ax: Axes, title: str, *, hide_axes: bool = False) -> None:
    """The panel of a section that was not run (or failed): its title and "not run" in the
    middle; with `hide_axes`, no frame or ticks."""
    ax.set_title(title)
    if hide_axes:
        ax.set_axis_off()
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)


# --- output --------------------------------------------------------------------------------


def _json_default(value: object) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_results(
    name: str,
    data: dict[str, Any],
    markdown: str,
    figure: Figure | None = None,
    out_dir: Path = RESULTS_DIR,
) -> dict[str, Path]:
    """Write out_dir/NAME.json, NAME.md and (if given) NAME.png; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    text = json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n"
    _atomic_write(paths["json"], text.encode())
    _atomic_write(paths["md"], markdown.rstrip("\n").encode() + b"\n")
    if figure is not None:
        paths["png"] = out_dir / f"{name}.png"
        tmp = paths["png"].with_name(paths["png"].name + ".tmp")
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        tmp.replace(paths["png"])
    return paths


def startup_failures_md(failures: list[dict[str, Any]]) -> str:
    """The markdown section listing cluster starts that had to be retried."""
    lines = [f"- {x['cluster']} attempt {x['attempt']}: {x['error']}" for x in failures]
    return "## Cluster starts that did not converge (retried)\n\n" + "\n".join(lines)


def run_info(settings: Any, t0: float, load0: tuple[float, float, float]) -> dict[str, Any]:
    """How a benchmark was run: its command line, settings (a dataclass), wall time, load."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "quick": getattr(settings, "quick", False),
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()
        },
        "wall_s": time.monotonic() - t0,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
