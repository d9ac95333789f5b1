"""Plain-text tables and times for the CLI (no colour codes, so output pipes cleanly)."""

from __future__ import annotations

import time
from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def format_time(ts: float) -> str:
    """Local time with milliseconds, plus how long ago."""
    ago = max(0.0, time.time() - ts)
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    if ago < 120:
        rel = f"{ago:.1f}s ago"
    elif ago < 7200:
        rel = f"{ago / 60:.0f}m ago"
    else:
        rel = f"{ago / 3600:.0f}h ago"
    return f"{stamp} ({rel})"


def human_size(n: int) -> str:
    """Bytes in decimal units: 950 B, 3.0 MB, 1.2 GB."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
