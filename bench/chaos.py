"""Chaos runs (Jepsen-style) on real network namespaces: seeded nemesis schedules against a 7-node
cluster while clients put, get and delete files and digits jobs run; a checker reads each run's
history. Needs root, iproute2 and nftables (`make netns`).

    .venv/bin/python bench/chaos.py --runs 100           # seeds 1..100 (about 1 minute each)
    .venv/bin/python bench/chaos.py --seed 42            # replay one schedule
    .venv/bin/python bench/chaos.py --runs 5 --duration 15 --out /tmp/res
    .venv/bin/python bench/chaos.py --first 36 --runs 65 --append   # add to chaos.json

With --append the runs join those already in chaos.json (same duration and size); a seed run
again replaces its row, and the earlier outcome is kept in the row (a failure that led to a
fix stays on record next to the replay).

Each run keeps its history (history.jsonl), verdict.json and summary.json in its directory; the
directories of passing runs are deleted unless --keep. Writes bench/results/chaos.json and
chaos.md (a row per schedule: faults injected, operations, anomalies; the goal is zero) and
prints the markdown. A failing run prints its seed and the command that replays its schedule.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _report
from _report import log
from idunno.testing.chaos.runner import RunConfig, RunResult, run_chaos
from idunno.testing.chaos.schedule import KINDS
from idunno.testing.netns import NetnsUnavailable, check_available


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...]
    duration: float
    nodes: int
    out_dir: Path
    keep: bool
    workdir: Path
    append: bool


def parse_args(argv: Sequence[str] | None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=100, help="schedules to run (seeds from --first)")
    p.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--seed", type=int, help="run only this seed (a replay)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of faults per run")
    p.add_argument("--nodes", type=int, default=7, help="cluster size (at least 7 for triples)")
    p.add_argument("--workdir", type=Path, help="where run directories go (default a temp dir)")
    p.add_argument("--append", action="store_true", help="merge with the runs in chaos.json")
    _report.add_output_args(p)
    a = p.parse_args(argv)
    if a.runs < 1 or a.duration <= 0 or a.nodes < 3:
        p.error("--runs must be >= 1, --duration > 0 and --nodes >= 3")
    seeds = (a.seed,) if a.seed is not None else tuple(range(a.first, a.first + a.runs))
    work = a.workdir or Path(tempfile.mkdtemp(prefix="idunno-chaos-"))
    return Settings(seeds, a.duration, a.nodes, a.out, a.keep, work, a.append)


def one_run(s: Settings, seed: int) -> dict[str, Any]:
    directory = s.workdir / f"seed-{seed}"
    shutil.rmtree(directory, ignore_errors=True)
    config = RunConfig(seed, directory, nodes=s.nodes, duration=s.duration)
    try:
        result: RunResult = run_chaos(config, say=log)
    except Exception as exc:  # a run that could not finish is reported, never hidden
        log(traceback.format_exc())
        return {
            "seed": seed,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}"[:300],
            "faults": config.schedule().counts(),
            "schedule": config.schedule().describe(),
            "ops": 0,
            "anomalies": [],
            "directory": str(directory),
        }
    summary = result.summary()
    if result.verdict.ok and not s.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return summary


def merge(earlier: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier runs plus new ones by seed; a seed run again keeps its first outcome on record."""
    by_seed = {r["seed"]: r for r in earlier}
    for run in runs:
        before = by_seed.get(run["seed"])
        if before is not None:
            run = {**run, "earlier": [*before.get("earlier", []), _outcome(before)]}  # noqa: PLW2901
        by_seed[run["seed"]] = run
    return [by_seed[k] for k in sorted(by_seed)]


def _outcome(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run.get(k) for k in ("ok", "error", "anomalies", "seconds")}


def markdown(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    faults: collections.Counter[str] = collections.Counter()
    anomalies: collections.Counter[str] = collections.Counter()
    for r in runs:
        faults.update(r["faults"])
        anomalies.update(a["kind"] for a in r["anomalies"])
    failed = [r for r in runs if not r["ok"]]
    lines = [
        "# Chaos runs",
        "",
        f"Command: `{info['command']}`"
        + (f" (at commits {', '.join(info['commits'])})" if info.get("commits") else "")
        + f"; {len(runs)} schedules of {info['duration']:g} s of faults "
        f"on {info['nodes']} nodes in network namespaces (nftables for loss and partitions); "
        f"load average at start {info['loadavg_start'][0]:.2f}; wall time "
        f"{info['wall_s'] / 60:.1f} min.",
        "",
        f"**{len(runs) - len(failed)} of {len(runs)} schedules passed; anomalies found: "
        f"{sum(anomalies.values())}; runs that could not finish: "
        f"{sum(1 for r in runs if r.get('error'))}.**",
        "",
        "Faults injected: "
        + ", ".join(f"{k} {faults[k]}" for k in KINDS if faults[k])
        + f"; client operations: {sum(r['ops'] for r in runs)}.",
        "",
    ]
    if anomalies:
        lines += ["Anomalies by kind: " + ", ".join(f"{k} {n}" for k, n in anomalies.items()), ""]
    rows = [
        [
            r["seed"],
            ", ".join(f"{k} {n}" for k, n in r["faults"].items()) or "-",
            r["ops"],
            len(r["anomalies"]) if not r.get("error") else "run failed",
            r.get("seconds", "-"),
        ]
        for r in runs
    ]
    lines.append(_report.table(["seed", "faults", "ops", "anomalies", "s"], rows))
    again = [r for r in runs if r.get("earlier")]
    failed_before = [r for r in again if not all(e["ok"] for e in r["earlier"])]
    if again:
        lines += [
            "",
            f"{len(again)} of these seeds had run before (on the code of the time, see the "
            f"commands and commits above); {len(again) - len(failed_before)} passed then too. "
            "Those that failed before, with what they found:",
        ]
    for r in failed_before:
        lines += ["", f"## Seed {r['seed']}: run again ({'passed' if r['ok'] else 'failed'})"]
        for e in r["earlier"]:
            lines.append(f"- earlier run: {'passed' if e['ok'] else 'FAILED'}")
            lines += [f"  - {a['kind']}: {a['detail']}" for a in (e.get("anomalies") or [])[:5]]
            if e.get("error"):
                lines.append(f"  - run failed: {e['error']}")
    for r in failed:
        lines += ["", f"## Seed {r['seed']} (replay: `python bench/chaos.py --seed {r['seed']}`)"]
        if r.get("error"):
            lines.append(f"- run failed: {r['error']}")
        lines += [f"- {a['kind']}: {a['detail']}" for a in r["anomalies"][:10]]
        lines.append(f"- history and verdict: {r['directory']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    s = parse_args(argv)
    try:
        check_available()
    except NetnsUnavailable as exc:
        log(f"chaos runs need network namespaces: {exc.reason}")
        return 2
    _report.stop_on_sigterm()
    t0, load0 = time.monotonic(), os.getloadavg()
    runs: list[dict[str, Any]] = []
    try:
        for i, seed in enumerate(s.seeds, 1):
            summary = one_run(s, seed)
            runs.append(summary)
            status = "ok" if summary["ok"] else "FAILED"
            log(f"[{i}/{len(s.seeds)}] seed {seed}: {status} ({summary.get('seconds', '-')} s)")
            if not summary["ok"]:
                log(f"  replay: python bench/chaos.py --seed {seed}; files: {summary['directory']}")
    except KeyboardInterrupt:
        log(f"interrupted after {len(runs)} runs: writing what ran")
    name = "chaos" if len(s.seeds) > 1 or s.append else f"chaos_seed{s.seeds[0]}"
    commands = [" ".join(["python", *sys.argv])]
    commits = [str(_report.git_info().get("commit") or "?")[:12]]
    previous = s.out_dir / f"{name}.json"
    if s.append and previous.exists():
        before = json.loads(previous.read_text())
        runs = merge(before["runs"], runs)
        earlier = before["run"].get("commands", [before["run"]["command"]])
        commands = [*earlier, *commands]
        commits = [*before["run"].get("commits", ["?"] * len(earlier)), *commits]
        t0 -= before["run"]["wall_s"]
    info = {
        "command": "; ".join(commands),
        "commands": commands,
        "commits": commits,
        "duration": s.duration,
        "nodes": s.nodes,
        "wall_s": time.monotonic() - t0,
        "loadavg_start": load0,
    }
    data = {"machine": _report.machine_info(), "run": info, "runs": runs}
    text = markdown(runs, info)
    _report.write_results(name, data, text, None, s.out_dir)
    print(text)
    return 0 if runs and all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
