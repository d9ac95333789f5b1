"""Shared helpers for the benchmarks in bench/: machine info, summary statistics, markdown
tables and writing `NAME.json`, `NAME.md` and `NAME.png` under bench/results/.

    data = {"machine": machine_info(), ...}
    paths = write_results("membership", data, markdown, figure)

Figures are built on `matplotlib.figure.Figure` directly (no pyplot, no global backend), so a
benchmark never opens a window and never touches another module's plotting state.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_DIR = Path(__file__).resolve().parent.parent


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
