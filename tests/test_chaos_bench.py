"""bench/chaos.py's bookkeeping (no cluster): runs merged by seed keep earlier outcomes, and the
summary names the commits and lists only the seeds that once failed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load() -> ModuleType:
    # bench/ is not a package: its modules import each other by name (bench/ on sys.path).
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_chaos", BENCH / "chaos.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_chaos"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


chaos = _load()


def run(seed: int, ok: bool = True) -> dict[str, Any]:
    anomalies = [] if ok else [{"kind": "lost_write", "detail": f"f{seed}: v3 gone"}]
    return {
        "seed": seed,
        "ok": ok,
        "faults": {"kill": 1},
        "ops": 10,
        "anomalies": anomalies,
        "seconds": 30.0,
        "directory": f"/tmp/x/seed-{seed}",
    }


def test_a_seed_run_again_keeps_every_earlier_outcome() -> None:
    merged = chaos.merge([run(1), run(2, ok=False)], [run(2)])
    merged = chaos.merge(merged, [run(2), run(3)])
    assert [r["seed"] for r in merged] == [1, 2, 3]
    assert [e["ok"] for e in merged[1]["earlier"]] == [False, True]
    assert "earlier" not in merged[0] and "earlier" not in merged[2]


def test_the_summary_names_commits_and_only_the_seeds_that_once_failed() -> None:
    runs = chaos.merge([run(1), run(2, ok=False)], [run(1), run(2)])
    info = {
        "command": "python bench/chaos.py --runs 2; python bench/chaos.py --runs 2 --append",
        "commits": ["aaaa", "bbbb"],
        "duration": 20.0,
        "nodes": 7,
        "wall_s": 120.0,
        "loadavg_start": [1.0, 1.0, 1.0],
    }
    text = chaos.markdown(runs, info)
    assert "(at commits aaaa, bbbb)" in text
    assert "**2 of 2 schedules passed; anomalies found: 0" in text
    assert "2 of these seeds had run before" in text and "1 passed then too" in text
    assert "## Seed 2: run again (passed)" in text and "## Seed 1:" not in text
    assert "lost_write: f2: v3 gone" in text
