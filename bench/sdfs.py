"""Store (SDFS) benchmark with real `idunno node` processes on loopback (not a timed test).

    .venv/bin/python bench/sdfs.py               # full run (about 4 minutes on 2 cores)
    .venv/bin/python bench/sdfs.py --quick       # smoke run: small sizes, 2 trials (under a minute)
    .venv/bin/python bench/sdfs.py --only transfers,rereplication --trials 3

Sections (every figure is paired with a raw baseline measured in the same run, interleaved
with the trials, and given as a ratio: machines here are noisy, ratios are stable):
  transfers      insert (put of a new name), read (get) and update (put of a new version) of
                 25 MB and 500 MB files through `idunno.Client` (the CLI's path) against one node;
                 baselines: the same bytes written as 4 local copies with fsync (for puts) and a
                 plain loopback TCP copy into a local file without fsync (for gets)
  versions       `idunno get-versions NAME N LOCAL` run as a subprocess (the CLI itself, Python
                 start-up included) for N = 1..5 of a 25 MB file; baseline N TCP copies
  small          1,000 puts of 1 KB files, sequential and from 8 threads; baseline: 4 local
                 copies of each file written and fsynced one by one
  rereplication  put the file(s) so one node holds every one, SIGKILL it, and time how long
                 until `Client.ls()` (polled at 20 Hz) shows every file at 4 replicas again:
                 one 40 MB file (several trials, a fresh 6-node cluster each) and 1 GB spread
                 over 50 files; baseline: a local copy of the same volume with fsync per file

Writes bench/results/sdfs.json, sdfs.md and sdfs.png and prints the markdown. Every node is
started through ProcCluster (killed on exit, error or Ctrl-C); all data lives in a temporary
directory under /tmp that is deleted at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psutil
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import _report
from _report import log
from idunno.client import Client, ClientError
from idunno.localcluster import KEY_FILE, ClusterError
from idunno.node.logs import read_events
from idunno.store.placement import replica_set
from idunno.testing.procs import PeakRss, ProcCluster, WaitTimeoutError

T = TypeVar("T")

MB = 1_000_000  # decimal units throughout: sizes in MB, rates in MB/s
CHUNK = 1 << 20
NODES = 6
REPLICAS = 4
PRESET = "lan"
GATEWAY = "n1"  # every client request goes to this node
VICTIM = "n6"  # the node killed in the re-replication cases (placement makes it a holder)
SECTIONS = ("transfers", "versions", "small", "rereplication", "streaming")
STARTUP_ATTEMPTS = 3
POLL_S = 0.05  # re-replication completion poll (20 Hz)
QUIET_WINDOW_S = 1.0  # survivors writing less than QUIET_BYTES in this long: repair is over
QUIET_BYTES = 1 * MB
MAX_VERSIONS = 5

# Figures to reach (the targets).
PUT_RATIO_TARGET = 0.5  # put throughput / 4 local fsynced copies
GET_RATIO_TARGET = 0.5  # get throughput / loopback TCP copy
REPAIR_RATIO_TARGET = 3.0  # re-replication time / local copy of the same volume
REPAIR_SMALL_TARGET_S = 2.0  # failure confirmation -> every file at 4 replicas, 40 MB case


def human(n: float) -> str:
    return f"{n / 1e9:g} GB" if n >= 1e9 else f"{n / MB:g} MB" if n >= MB else f"{n / 1e3:g} KB"


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    trials: int
    sizes: tuple[int, ...]  # bytes, transfers section
    versions_size: int
    versions_trials: int
    repair_size: int  # the single-file re-replication case
    repair_trials: int
    volume_files: int
    volume_file_size: int
    small_count: int
    small_size: int
    stream_size: int  # the streaming (memory) section's file
    threads: int
    gateway_role: str  # "other": the gateway holds no replica of the files it is sent
    sections: tuple[str, ...]
    out_dir: Path
    keep: bool


def parse_args(argv: Sequence[str] | None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    _report.add_run_args(
        p,
        SECTIONS,
        quick_help="smoke run: small sizes, 2 trials",
        trials_help="trials per transfer size (default 5, quick 2)",
    )
    p.add_argument(
        "--gateway-role",
        choices=("other", "replica", "any"),
        default="other",
        help="file names are chosen so the gateway node is not a replica (other, the default:\n"
        "every byte crosses one more hop), is one (replica), or either (any)",
    )
    _report.add_output_args(p)
    a = p.parse_args(argv)
    sections = _report.parse_sections(p, a.only, SECTIONS)
    q = a.quick
    trials = _report.parse_trials(p, a.trials, 2 if q else 5)
    return Settings(
        quick=q,
        trials=trials,
        sizes=(5 * MB, 50 * MB) if q else (25 * MB, 500 * MB),
        versions_size=5 * MB if q else 25 * MB,
        versions_trials=1 if q else 3,
        repair_size=40 * MB,
        repair_trials=1 if q else 3,
        volume_files=10 if q else 50,
        volume_file_size=10 * MB if q else 20 * MB,
        small_count=100 if q else 1000,
        small_size=1000,
        stream_size=200 * MB if q else 2000 * MB,
        threads=8,
        gateway_role=a.gateway_role,
        sections=sections,
        out_dir=a.out,
        keep=a.keep,
    )


# --- files and baselines -------------------------------------------------------------------


def random_file(path: Path, size: int) -> Path:
    """`size` random bytes written 1 MiB at a time (never all in memory)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def baseline_local_copies(src: Path, scratch: Path, copies: int = REPLICAS) -> float:
    """Seconds to write `copies` local copies of src in one pass, each fsynced (then deleted)."""
    scratch.mkdir(parents=True, exist_ok=True)
    paths = [scratch / f"copy{i}" for i in range(copies)]
    t0 = time.monotonic()
    outs = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    try:
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                for out in outs:
                    out.write(chunk)
        for out in outs:
            out.flush()
            os.fsync(out.fileno())
    finally:
        for out in outs:
            out.close()
    fsync_dir(scratch)
    took = time.monotonic() - t0
    for path in paths:
        path.unlink()
    return took


def baseline_copy_files(srcs: Sequence[Path], scratch: Path) -> float:
    """Seconds to copy every file once, each fsynced (the local cost of re-replicating them)."""
    scratch.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for i, src in enumerate(srcs):
        with open(src, "rb") as f, open(scratch / f"c{i}", "wb") as out:
            while chunk := f.read(CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    fsync_dir(scratch)
    took = time.monotonic() - t0
    shutil.rmtree(scratch)
    return took


def baseline_small_writes(srcs: Sequence[Path], scratch: Path, copies: int = REPLICAS) -> float:
    """Seconds to write `copies` copies of each small file, one fsync per copy."""
    scratch.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for i, src in enumerate(srcs):
        data = src.read_bytes()
        for c in range(copies):
            with open(scratch / f"s{i}-{c}", "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
    fsync_dir(scratch)
    took = time.monotonic() - t0
    shutil.rmtree(scratch)
    return took


def _receive_to_file(server: socket.socket, dst: Path, done: dict[str, float]) -> None:
    conn, _ = server.accept()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with conn, open(dst, "wb") as out:
        while n := conn.recv_into(buf):
            out.write(view[:n])
    done["at"] = time.monotonic()


def baseline_tcp_copy(src: Path, dst: Path) -> float:
    """Seconds for a plain loopback TCP copy: sendfile() to a receiver thread that writes the
    bytes to a local file (no fsync, like `Client.get`), until the receiver has them all."""
    done: dict[str, float] = {}
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        receiver = threading.Thread(target=_receive_to_file, args=(server, dst, done))
        receiver.start()
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port)) as s, open(src, "rb") as f:
                s.sendfile(f)
                s.shutdown(socket.SHUT_WR)
        finally:
            receiver.join(timeout=300)
    if "at" not in done or dst.stat().st_size != src.stat().st_size:
        raise RuntimeError("loopback TCP baseline copy did not complete")
    dst.unlink()
    return done["at"] - t0


# --- cluster helpers -----------------------------------------------------------------------


@dataclass
class Harness:
    root: Path
    settings: Settings
    startup_failures: list[dict[str, Any]] = field(default_factory=list)
    _sources: dict[int, Path] = field(default_factory=dict)

    @property
    def scratch(self) -> Path:
        """Baselines' working folder (emptied after every section)."""
        path = self.root / "scratch"
        path.mkdir(exist_ok=True)
        return path

    def source(self, size: int) -> Path:
        """A random file of `size` bytes (made once per run)."""
        if size not in self._sources:
            (self.root / "src").mkdir(exist_ok=True)
            log(f"  generating a {human(size)} random file")
            self._sources[size] = random_file(self.root / "src" / f"{size}.bin", size)
        return self._sources[size]

    @contextlib.contextmanager
    def cluster(self, label: str) -> Iterator[ProcCluster]:
        """A fresh 6-node cluster (start retried); its processes and data go away on exit."""
        with ExitStack() as stack:
            c = self._start(stack, label)
            if not self.settings.keep:
                stack.callback(shutil.rmtree, c.directory, True)
            yield c

    def _start(self, stack: ExitStack, label: str) -> ProcCluster:
        last = ""
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            directory = self.root / f"{label}-try{attempt}"
            try:
                return stack.enter_context(ProcCluster(NODES, directory, preset=PRESET))
            except ClusterError as exc:
                last = str(exc)
                self.startup_failures.append({"cluster": label, "attempt": attempt, "error": last})
                log(f"  cluster {label} did not start (attempt {attempt}): {last}")
        raise ClusterError(f"cluster {label} did not start in {STARTUP_ATTEMPTS} attempts: {last}")


def pick_name(prefix: str, members: Sequence[str], role: str, must_hold: str | None = None) -> str:
    """`prefix` plus the first suffix whose replica set fits the gateway role (and includes
    `must_hold`), computed with the same rendezvous placement the nodes use."""
    for k in range(10_000):
        name = f"{prefix}-{k}"
        holders = replica_set(name, members, REPLICAS)
        if must_hold is not None and must_hold not in holders:
            continue
        if role == "any" or (GATEWAY in holders) == (role == "replica"):
            return name
    raise RuntimeError(f"no name for {prefix!r} fits the placement constraints")


class CpuMeter:
    """CPU seconds used by the node processes and by this (client) process."""

    def __init__(self, cluster: ProcCluster) -> None:
        self._procs = [psutil.Process(nd.pid) for nd in cluster.nodes.values()]

    def nodes(self) -> float:
        total = 0.0
        for p in self._procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total


@dataclass(frozen=True)
class Timed:
    seconds: float
    node_cpu_s: float
    client_cpu_s: float


def timed(meter: CpuMeter, fn: Callable[[], T]) -> tuple[Timed, T]:
    n0, c0, t0 = meter.nodes(), time.process_time(), time.monotonic()
    out = fn()
    took = time.monotonic() - t0
    return Timed(took, meter.nodes() - n0, time.process_time() - c0), out


def mbps(size: int, seconds: float) -> float:
    return size / MB / seconds if seconds > 0 else float("nan")


# --- transfers -----------------------------------------------------------------------------


def transfer_trial(
    h: Harness, c: ProcCluster, meter: CpuMeter, size: int, i: int
) -> dict[str, Any]:
    src = h.source(size)
    client = c.client(GATEWAY, timeout=10.0)
    name = pick_name(f"xfer/{size // MB}MB/t{i}", sorted(c.nodes), h.settings.gateway_role)
    out = h.scratch / "get.out"
    local4 = baseline_local_copies(src, h.scratch / "local4")
    tcp = baseline_tcp_copy(src, h.scratch / "tcp.out")
    ins, put1 = timed(meter, lambda: client.put(src, name))
    read, got = timed(meter, lambda: client.get(name, out))
    if got["size"] != size or got["sha256"] != put1["sha256"]:
        raise RuntimeError(f"read of {name} returned different bytes")
    out.unlink()  # before the update, so its dirty pages are never written back during it
    upd, put2 = timed(meter, lambda: client.put(src, name))
    client.delete(name)  # keeps the disk footprint to two versions at a time
    return {
        "name": name,
        "replicas": put1["replicas"],
        "gateway_is_replica": GATEWAY in put1["replicas"],
        "versions": [put1["version"], put2["version"]],
        "local4_s": local4,
        "tcp_s": tcp,
        "insert": asdict(ins),
        "read": asdict(read),
        "update": asdict(upd),
        "put_ratio": local4 / ins.seconds,
        "update_ratio": local4 / upd.seconds,
        "get_ratio": tcp / read.seconds,
    }


def summarize_transfers(size: int, trials: list[dict[str, Any]]) -> dict[str, Any]:
    def col(key: str) -> list[float]:
        return [float(t[key]["seconds"]) for t in trials]

    out: dict[str, Any] = {"size": size}
    for op in ("insert", "read", "update"):
        s = _report.summarize(col(op))
        out[op] = {**s, "mbps": mbps(size, float(s["mean"] or 0))}
    for key in ("local4_s", "tcp_s", "put_ratio", "update_ratio", "get_ratio"):
        out[key] = _report.summarize([float(t[key]) for t in trials])
    return out


def run_transfers(h: Harness) -> dict[str, Any]:
    results = []
    with h.cluster("transfers") as c:
        meter = CpuMeter(c)
        for size in h.settings.sizes:
            trials = []
            for i in range(h.settings.trials):
                t = transfer_trial(h, c, meter, size, i)
                log(
                    f"  {human(size)} trial {i + 1}: put {t['insert']['seconds']:.2f} s "
                    f"(4 fsynced copies {t['local4_s']:.2f} s), get {t['read']['seconds']:.2f} s "
                    f"(TCP {t['tcp_s']:.2f} s), update {t['update']['seconds']:.2f} s"
                )
                trials.append(t)
            results.append({"trials": trials, "summary": summarize_transfers(size, trials)})
    return {"gateway_role": h.settings.gateway_role, "sizes": results}


# --- get-versions --------------------------------------------------------------------------


def cli(args: Sequence[str]) -> float:
    """Seconds to run `python -m idunno ARGS` to completion (raises if it fails)."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "idunno", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"idunno {args[0]} failed: {proc.stderr.strip()[-300:]}")
    return took


def run_versions(h: Harness) -> dict[str, Any]:
    s = h.settings
    size = s.versions_size
    src = h.source(size)
    out = h.scratch / "versions.out"
    rows: list[dict[str, Any]] = []
    with h.cluster("versions") as c:
        client = c.client(GATEWAY, timeout=10.0)
        name = pick_name("versions/file", sorted(c.nodes), s.gateway_role)
        for _ in range(MAX_VERSIONS):
            client.put(src, name)
        at = ["--at", c.nodes[GATEWAY].address, "--key-file", str(c.directory / KEY_FILE)]
        startup = [cli(["--version"]) for _ in range(3)]
        for n in range(1, MAX_VERSIONS + 1):
            times, tcps = [], []
            for _ in range(s.versions_trials):
                tcps.append(n * baseline_tcp_copy(src, h.scratch / "tcp.out"))
                times.append(cli(["get-versions", name, str(n), str(out), *at]))
                if out.stat().st_size < n * size:
                    raise RuntimeError(f"get-versions {n} wrote {out.stat().st_size} bytes")
                out.unlink()
            summary = _report.summarize(times)
            tcp_mean = statistics.fmean(tcps)
            ratio = float(summary["mean"] or 0) / tcp_mean
            rows.append({"n": n, "times": times, "summary": summary, "tcp_s": tcp_mean})
            rows[-1]["time_over_tcp"] = ratio
            log(f"  get-versions N={n}: {summary['mean']:.2f} s (N TCP copies {tcp_mean:.2f} s)")
    return {
        "size": size,
        "method": "CLI subprocess: python -m idunno get-versions NAME N LOCAL --at --key-file",
        "cli_startup_s": statistics.median(startup),
        "rows": rows,
    }


# --- small files ---------------------------------------------------------------------------


def put_many(client: Client, items: Sequence[tuple[Path, str]], threads: int) -> float:
    t0 = time.monotonic()
    if threads <= 1:
        for path, name in items:
            client.put(path, name)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda it: client.put(*it), items))
    return time.monotonic() - t0


def run_small(h: Harness) -> dict[str, Any]:
    s = h.settings
    folder = h.root / "small"
    folder.mkdir(exist_ok=True)
    srcs = [random_file(folder / f"{i}.bin", s.small_size) for i in range(s.small_count)]
    rows = []
    with h.cluster("small") as c:
        client = c.client(GATEWAY, timeout=30.0)
        members = sorted(c.nodes)
        meter = CpuMeter(c)
        for threads in (1, s.threads):
            base = baseline_small_writes(srcs, h.scratch / "small")
            names = [
                pick_name(f"small/t{threads}/{i}", members, s.gateway_role)
                for i in range(len(srcs))
            ]
            items = list(zip(srcs, names, strict=True))
            cost, took = timed(meter, partial(put_many, client, items, threads))
            listed = {f["name"]: f["replicas"] for f in client.ls()["files"]}
            missing = [n for n in names if listed.get(n) != REPLICAS]
            rate, base_rate = len(srcs) / took, len(srcs) / base
            rows.append(
                {
                    "threads": threads,
                    "files": len(srcs),
                    "seconds": took,
                    "puts_per_s": rate,
                    "baseline_s": base,
                    "baseline_files_per_s": base_rate,
                    "ratio": rate / base_rate,
                    "node_cpu_ms_per_put": 1000 * cost.node_cpu_s / len(srcs),
                    "client_cpu_ms_per_put": 1000 * cost.client_cpu_s / len(srcs),
                    "not_at_4_replicas": len(missing),
                }
            )
            log(f"  {len(srcs)} puts, {threads} thread(s): {rate:.1f}/s (local {base_rate:.0f}/s)")
    shutil.rmtree(folder)
    return {"size": s.small_size, "rows": rows}


# --- re-replication ------------------------------------------------------------------------


def replica_counts(client: Client, names: set[str]) -> dict[str, int] | None:
    try:
        files = client.ls()["files"]
    except ClientError:
        return None
    return {f["name"]: int(f["replicas"]) for f in files if f["name"] in names}


def all_restored(counts: dict[str, int] | None, names: set[str]) -> bool:
    return counts is not None and len(counts) == len(names) and min(counts.values()) >= REPLICAS


def disk_writes(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.io_counters().write_bytes
    return total


def wait_restored(client: Client, names: set[str], timeout: float) -> tuple[float, int]:
    """Poll ls at 20 Hz; the wall time of the first answer showing every file at 4 replicas
    (taken when that answer arrived: an upper bound) and how many polls it took."""
    deadline = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        counts = replica_counts(client, names)
        if all_restored(counts, names):
            return time.time(), polls
        time.sleep(POLL_S)
    raise WaitTimeoutError(f"files not back at {REPLICAS} replicas within {timeout:g} s")


def wait_quiet(procs: Sequence[psutil.Process], timeout: float = 60.0) -> float:
    """Wall time at which the survivors stopped writing (duplicate pushes may outlive ls)."""
    deadline = time.monotonic() + timeout
    last, last_t = disk_writes(procs), time.time()
    while time.monotonic() < deadline:
        time.sleep(QUIET_WINDOW_S)
        now = disk_writes(procs)
        if now - last < QUIET_BYTES:
            return last_t
        last, last_t = now, time.time()
    return last_t


def confirmations(c: ProcCluster, survivors: Sequence[str], since: float) -> dict[str, float]:
    """Per survivor, the wall time of its first log record marking the victim failed."""
    out: dict[str, float] = {}
    for s in survivors:
        marks = [
            float(e["ts"])
            for e in read_events(Path(c.nodes[s].data_dir), "member_changed", since)
            if e.get("member") == VICTIM and e.get("new") == "failed"
        ]
        if marks:
            out[s] = min(marks)
    return out


def repair_rounds(c: ProcCluster, survivors: Sequence[str], since: float) -> list[dict[str, Any]]:
    return [
        {k: e.get(k) for k in ("ts", "node", "took_s", "pushed", "dropped", "incomplete")}
        for s in survivors
        for e in read_events(Path(c.nodes[s].data_dir), "repair_round", since)
    ]


def put_files(client: Client, files: Sequence[tuple[Path, str]]) -> float:
    t0 = time.monotonic()
    for path, name in files:
        client.put(path, name)
    return time.monotonic() - t0


def check_holders(client: Client, names: Sequence[str]) -> None:
    for name in names:
        holders = {x["node"] for x in client.ls(name)["holders"] if x["versions"]}
        if VICTIM not in holders or len(holders) != REPLICAS:
            raise RuntimeError(f"{name} is held by {sorted(holders)}, expected {VICTIM} among 4")


def repair_trial(h: Harness, label: str, srcs: Sequence[Path]) -> dict[str, Any]:
    volume = sum(p.stat().st_size for p in srcs)
    with h.cluster(label) as c:
        client = c.client(GATEWAY, timeout=5.0)
        members = sorted(c.nodes)
        names = [
            pick_name(f"{label}/{i}", members, "any", must_hold=VICTIM) for i in range(len(srcs))
        ]
        put_s = put_files(client, list(zip(srcs, names, strict=True)))
        check_holders(client, names)
        baseline = baseline_copy_files(srcs, h.scratch / "copy")
        survivors = [m for m in members if m != VICTIM]
        procs = [psutil.Process(c.nodes[s].pid) for s in survivors]
        written0 = disk_writes(procs)
        killed = time.time()
        c.kill(VICTIM)
        done, polls = wait_restored(client, set(names), timeout=60 + volume / (5 * MB))
        quiet = wait_quiet(procs)
        written = disk_writes(procs) - written0
        marks = confirmations(c, survivors, killed)
        rounds = repair_rounds(c, survivors, killed)
    pushes = sum(int(r["pushed"] or 0) for r in rounds)
    confirmed = min(marks.values()) if marks else None
    repair_s = done - confirmed if confirmed is not None else None
    return {
        "files": len(srcs),
        "bytes": volume,
        "put_s": put_s,
        "killed_at": killed,
        "confirmed_at": confirmed,
        "restored_at": done,
        "quiet_at": quiet,
        "confirmed_by": marks,
        "kill_to_confirm_s": confirmed - killed if confirmed is not None else None,
        "kill_to_all_confirmed_s": max(marks.values()) - killed if marks else None,
        "confirm_to_restored_s": repair_s,
        "kill_to_restored_s": done - killed,
        "kill_to_quiet_s": max(quiet, done) - killed,
        "bandwidth_mbps": mbps(volume, repair_s) if repair_s else None,
        "polls": polls,
        "pushes": pushes,
        "bytes_pushed": pushes * volume // len(srcs),
        "survivor_disk_writes": written,
        "baseline_copy_s": baseline,
        "baseline_mbps": mbps(volume, baseline),
        "time_over_baseline": repair_s / baseline if repair_s is not None else None,
        "repair_rounds": rounds,
    }


def run_rereplication(h: Harness) -> dict[str, Any]:
    s = h.settings
    cases = []
    single = [h.source(s.repair_size)]
    trials = []
    for i in range(s.repair_trials):
        trials.append(repair_trial(h, f"repair1-t{i}", single))
        log_repair(f"1 x {human(s.repair_size)}", trials[-1])
    cases.append({"label": f"1 file of {human(s.repair_size)}", "trials": trials})
    folder = h.root / "volume"
    folder.mkdir(exist_ok=True)
    log(f"  generating {s.volume_files} files of {human(s.volume_file_size)}")
    files = [random_file(folder / f"{i}.bin", s.volume_file_size) for i in range(s.volume_files)]
    trial = repair_trial(h, "repairvol", files)
    log_repair(f"{s.volume_files} x {human(s.volume_file_size)}", trial)
    shutil.rmtree(folder)
    total = s.volume_files * s.volume_file_size
    cases.append({"label": f"{human(total)} in {s.volume_files} files", "trials": [trial]})
    return {"victim": VICTIM, "poll_hz": 1 / POLL_S, "cases": cases}


def log_repair(what: str, t: dict[str, Any]) -> None:
    confirm = t["kill_to_confirm_s"]
    log(
        f"  re-replication of {what}: confirmed {confirm if confirm is None else round(confirm, 2)}"
        f" s after kill, restored {t['kill_to_restored_s']:.2f} s after kill; local copy "
        f"{t['baseline_copy_s']:.2f} s; {t['pushes']} pushes"
    )


# --- streaming: memory stays flat --------------------------------------------------------

RSS_TARGET_MB = 150.0


def run_streaming(h: Harness) -> dict[str, Any]:
    """One large put and get; the peak RSS of every node process is the figure."""
    size = h.settings.stream_size
    src = h.source(size)
    out: dict[str, Any] = {"size": size}
    with h.cluster("streaming") as c:
        client = c.client(GATEWAY, timeout=600)
        name = pick_name("stream", list(c.nodes), h.settings.gateway_role)
        idle = max(psutil.Process(nd.pid).memory_info().rss for nd in c.nodes.values())
        out["idle_rss_mb"] = idle / MB
        for op in ("put", "get"):
            with PeakRss(nd.pid for nd in c.nodes.values()) as rss:
                t0 = time.monotonic()
                if op == "put":
                    client.put(src, name)
                else:
                    client.get(name, h.scratch / "stream.bin")
                took = time.monotonic() - t0
            out[op] = {"seconds": took, "mbps": size / MB / took, "peak_rss_mb": rss.peak / MB}
            log(f"  {human(size)} {op}: {took:.1f} s, peak node RSS {rss.peak / MB:.0f} MB")
    return out


def md_streaming(sec: dict[str, Any]) -> str:
    rows = [
        [op, sec[op]["seconds"], sec[op]["mbps"], sec[op]["peak_rss_mb"]] for op in ("put", "get")
    ]
    return (
        f"## Streaming a {human(sec['size'])} file\n\n"
        f"Peak RSS of any node process (sampled every 20 ms) during one put and one get through "
        f"{GATEWAY}; idle RSS before: {sec['idle_rss_mb']:.0f} MB. Target: under "
        f"{RSS_TARGET_MB:g} MB whatever the file size.\n\n"
        + _report.table(["operation", "seconds", "MB/s", "peak node RSS MB"], rows)
    )


# --- running -------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Harness], dict[str, Any]]] = {
    "transfers": run_transfers,
    "versions": run_versions,
    "small": run_small,
    "rereplication": run_rereplication,
    "streaming": run_streaming,
}


def ok(sec: dict[str, Any]) -> bool:
    return "error" not in sec


def run_sections(h: Harness) -> dict[str, Any]:
    """Each section on its own cluster; a failed section is recorded and the rest still run."""
    results: dict[str, Any] = {}
    for name in h.settings.sections:
        log(f"== {name}")
        t0 = time.monotonic()
        try:
            results[name] = RUNNERS[name](h)
        except (ClusterError, ClientError, WaitTimeoutError, RuntimeError, OSError) as exc:
            log(traceback.format_exc())
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["wall_s"] = time.monotonic() - t0
        shutil.rmtree(h.scratch, ignore_errors=True)
    return results


# --- figures to reach ----------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    figure: str
    target: str
    measured: str
    ok: bool | None
    value: float | None


def _largest(data: dict[str, Any]) -> dict[str, Any] | None:
    sec = data.get("transfers")
    if not sec or not ok(sec):
        return None
    out: dict[str, Any] = max(sec["sizes"], key=lambda x: x["summary"]["size"])["summary"]
    return out


def _repair_case(data: dict[str, Any], index: int) -> dict[str, Any] | None:
    sec = data.get("rereplication")
    if not sec or not ok(sec):
        return None
    case: dict[str, Any] = sec["cases"][index]
    return case


def figures(data: dict[str, Any]) -> list[Goal]:
    out = []
    stream = data.get("streaming")
    if stream and ok(stream):
        peak = max(stream["put"]["peak_rss_mb"], stream["get"]["peak_rss_mb"])
        out.append(
            Goal(
                f"node RSS during a {human(stream['size'])} put and get",
                f"< {RSS_TARGET_MB:g} MB",
                f"{peak:.0f} MB",
                peak < RSS_TARGET_MB,
                peak,
            )
        )
    big = _largest(data)
    if big is not None:
        size = human(big["size"])
        for key, op, base, target in (
            ("put_ratio", "put", "4 local fsynced copies", PUT_RATIO_TARGET),
            ("get_ratio", "get", "loopback TCP copy", GET_RATIO_TARGET),
        ):
            r = float(big[key]["mean"])
            shown = f"{r:.2f} ({big['insert' if op == 'put' else 'read']['mbps']:.0f} MB/s)"
            out.append(
                Goal(f"{op} {size}, throughput / {base}", f">= {target}", shown, r >= target, r)
            )
    vol = _repair_case(data, 1)
    if vol is not None:
        t = vol["trials"][0]
        r = t["time_over_baseline"]
        out.append(
            Goal(
                f"re-replication of {vol['label']}: time / local fsynced copy",
                f"<= {REPAIR_RATIO_TARGET:g}",
                "—" if r is None else f"{r:.2f} ({t['confirm_to_restored_s']:.2f} s)",
                None if r is None else r <= REPAIR_RATIO_TARGET,
                r,
            )
        )
    one = _repair_case(data, 0)
    if one is not None:
        times = [t["confirm_to_restored_s"] for t in one["trials"]]
        worst = None if None in times else max(times)
        out.append(
            Goal(
                f"{one['label']}: failure confirmed -> every file at {REPLICAS} replicas",
                f"< {REPAIR_SMALL_TARGET_S:g} s (every trial)",
                "—" if worst is None else f"max {worst:.2f} s of {len(times)}",
                None if worst is None else worst < REPAIR_SMALL_TARGET_S,
                worst,
            )
        )
    return out


# --- markdown ------------------------------------------------------------------------------


def _ms(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def md_transfers(sec: dict[str, Any]) -> str:
    head = [
        "size",
        "operation",
        "mean ± sd s",
        "MB/s",
        "node CPU s",
        "baseline",
        "baseline s",
        "ratio",
    ]
    rows = []
    for entry in sec["sizes"]:
        s = entry["summary"]
        size = human(s["size"])
        for op, base, key, ratio in (
            ("insert", "4 fsynced copies", "local4_s", "put_ratio"),
            ("read", "loopback TCP", "tcp_s", "get_ratio"),
            ("update", "4 fsynced copies", "local4_s", "update_ratio"),
        ):
            cpu = statistics.fmean(t[op]["node_cpu_s"] for t in entry["trials"])
            rows.append(
                [size, op, _ms(s[op]), s[op]["mbps"], cpu, base, _ms(s[key]), _ms(s[ratio])]
            )
    holders = sum(t["gateway_is_replica"] for e in sec["sizes"] for t in e["trials"])
    total = sum(len(e["trials"]) for e in sec["sizes"])
    return (
        "## Insert, read, update\n\n"
        f"Through `Client.put` / `Client.get` against {GATEWAY}, {len(sec['sizes'][0]['trials'])}"
        " trials per size, each paired with its baselines measured just before it. Ratio = "
        "store throughput / baseline throughput (baseline time / store time, averaged over "
        "trials; 1.0 = as fast as the baseline). Insert = first put of a new name; update = "
        "second put of it (a new version, same bytes); read = get of the newest version, "
        "sha256-checked by the client. Node CPU = CPU seconds of all 6 node processes "
        "(mean). File names were chosen so that the gateway is "
        f"{'not ' if sec['gateway_role'] == 'other' else ''}a replica "
        f"(gateway role `{sec['gateway_role']}`; {holders} of {total} trials had the gateway "
        "among the replicas).\n\n" + _report.table(head, rows)
    )


def md_versions(sec: dict[str, Any]) -> str:
    head = ["N", "mean ± sd s", "MB read", "N TCP copies s", "time / N TCP copies"]
    rows = [
        [
            r["n"],
            _ms(r["summary"]),
            r["n"] * sec["size"] / MB,
            r["tcp_s"],
            r["time_over_tcp"],
        ]
        for r in sec["rows"]
    ]
    table = _report.table(head, rows, 3)
    return (
        f"## get-versions ({human(sec['size'])} versions)\n\n"
        f"{sec['method']}, against {GATEWAY}; each time includes the CLI's Python start-up "
        f"(`python -m idunno --version` alone takes {sec['cli_startup_s']:.2f} s here).\n\n" + table
    )


def md_small(sec: dict[str, Any]) -> str:
    head = [
        "threads",
        "files",
        "seconds",
        "puts/s",
        "baseline files/s",
        "ratio",
        "node CPU ms/put",
        "not at 4",
    ]
    rows = [
        [
            r["threads"],
            r["files"],
            r["seconds"],
            r["puts_per_s"],
            r["baseline_files_per_s"],
            r["ratio"],
            r["node_cpu_ms_per_put"],
            r["not_at_4_replicas"],
        ]
        for r in sec["rows"]
    ]
    return (
        f"## Small files ({human(sec['size'])} each)\n\n"
        "Puts through `Client.put`, each acknowledged only once durable on 4 replicas. Baseline: "
        "each file written as 4 local copies, one fsync per copy, sequentially. Ratio = puts/s "
        "/ baseline files/s. Node CPU = CPU time of all 6 node processes per put (2 cores "
        "give at most 2,000 ms of CPU per second).\n\n" + _report.table(head, rows)
    )


def md_rereplication(sec: dict[str, Any]) -> str:
    head = [
        "case",
        "trial",
        "kill → confirmed s",
        "confirmed → restored s",
        "kill → restored s",
        "MB/s",
        "local copy s",
        "time / local",
        "pushes",
        "survivor disk MB",
    ]
    rows = []
    for case in sec["cases"]:
        for i, t in enumerate(case["trials"], start=1):
            rows.append(
                [
                    case["label"],
                    i,
                    t["kill_to_confirm_s"],
                    t["confirm_to_restored_s"],
                    t["kill_to_restored_s"],
                    t["bandwidth_mbps"],
                    t["baseline_copy_s"],
                    t["time_over_baseline"],
                    f"{t['pushes']} for {t['files']} files",
                    t["survivor_disk_writes"] / MB,
                ]
            )
    return (
        "## Re-replication after one failure\n\n"
        f"A fresh {NODES}-node cluster per trial; file names chosen so that {sec['victim']} holds "
        f"every file; SIGKILL {sec['victim']}. Confirmed = earliest survivor log record "
        f"`member_changed new=failed`; restored = first `Client.ls()` answer (polled at "
        f"{sec['poll_hz']:g} Hz against {GATEWAY}) showing every file at {REPLICAS} replicas "
        "(time taken when the answer arrived). MB/s = bytes that lost a replica / (confirmed → "
        "restored). Local copy = the same files copied once on local disk, fsync per file. "
        "Pushes = versions sent by survivors (repair_round logs); more pushes than files means "
        "several survivors sent the same file. Survivor disk MB = bytes the survivors wrote to "
        "disk from the kill until they went quiet.\n\n" + _report.table(head, rows)
    )


SECTION_MD: dict[str, Callable[[dict[str, Any]], str]] = {
    "transfers": md_transfers,
    "versions": md_versions,
    "small": md_small,
    "rereplication": md_rereplication,
    "streaming": md_streaming,
}


def render_markdown(data: dict[str, Any]) -> str:
    m, run = data["machine"], data["run"]
    figure_rows = [[f.figure, f.target, f.measured, _report.verdict(f.ok)] for f in figures(data)]
    parts = [
        "# Store (SDFS) benchmark",
        f"`{run['command']}` ({'quick smoke run' if run['quick'] else 'full run'}), "
        f"{m['date']}, {m['cores']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"{NODES} real `idunno node` processes on 127.0.0.1 (preset `{PRESET}`, replication "
        f"factor {REPLICAS}), load average {run['loadavg_start'][0]:.2f} at start and "
        f"{run['loadavg_end'][0]:.2f} at the end. Wall time {run['wall_s']:.0f} s.",
        "## Figures to reach\n\n"
        + _report.table(["figure", "target", "measured", "result"], figure_rows),
    ]
    for name in SECTIONS:
        sec = data.get(name)
        if sec is None:
            continue
        parts.append(SECTION_MD[name](sec) if ok(sec) else f"## {name}\n\nFailed: `{sec['error']}`")
    if data["startup_failures"]:
        parts.append(_report.startup_failures_md(data["startup_failures"]))
    return "\n\n".join(parts) + "\n"


# --- figure --------------------------------------------------------------------------------


def plot_transfers(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "Throughput vs same-run baselines"
    if sec is None or not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    labels, values, colors = [], [], []
    for entry in sec["sizes"]:
        s = entry["summary"]
        size = s["size"]
        tag = human(size)
        for label, secs, color in (
            ("put", s["insert"]["mean"], "tab:blue"),
            ("4 copies\nfsync", s["local4_s"]["mean"], "lightsteelblue"),
            ("update", s["update"]["mean"], "tab:cyan"),
            ("get", s["read"]["mean"], "tab:green"),
            ("TCP", s["tcp_s"]["mean"], "lightgreen"),
        ):
            labels.append(f"{label}\n{tag}")
            values.append(mbps(size, secs))
            colors.append(color)
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("MB/s (mean)")
    ax.set_title(title)


def plot_versions(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "get-versions (CLI, start-up included)"
    if sec is None or not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    ns = [r["n"] for r in sec["rows"]]
    means = [r["summary"]["mean"] for r in sec["rows"]]
    sds = [r["summary"]["sd"] for r in sec["rows"]]
    ax.errorbar(ns, means, yerr=sds, marker="o", capsize=3, label="get-versions")
    ax.plot(ns, [r["tcp_s"] for r in sec["rows"]], marker="s", label="N loopback TCP copies")
    ax.axhline(sec["cli_startup_s"], color="gray", linestyle=":", label="CLI start-up")
    ax.set_xlabel(f"N (versions of {human(sec['size'])})")
    ax.set_ylabel("seconds")
    ax.set_xticks(ns)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_rereplication(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "Re-replication after SIGKILL of one holder"
    if sec is None or not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    labels, detect, repair, base, goal = [], [], [], [], []
    for k, case in enumerate(sec["cases"]):
        for i, t in enumerate(case["trials"], start=1):
            labels.append(f"{case['label']}\n#{i}")
            d = t["kill_to_confirm_s"] or 0.0
            detect.append(d)
            repair.append(t["confirm_to_restored_s"] or 0.0)
            base.append(d + t["baseline_copy_s"])
            allowed = (
                REPAIR_SMALL_TARGET_S if k == 0 else REPAIR_RATIO_TARGET * t["baseline_copy_s"]
            )
            goal.append(d + allowed)
    ys = list(range(len(labels)))
    ax.barh(ys, detect, color="lightgray", label="kill → confirmed")
    ax.barh(ys, repair, left=detect, color="tab:orange", label="confirmed → restored")
    ax.scatter(base, ys, marker="|", s=300, color="black", zorder=3, label="+ local copy (fsync)")
    ax.scatter(goal, ys, marker="|", s=300, color="red", zorder=3, label="+ allowed (target)")
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlabel("seconds after kill")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")


def plot_small(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "Small files: puts/s"
    if sec is None or not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    labels = [f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}" for r in sec["rows"]]
    store = [r["puts_per_s"] for r in sec["rows"]]
    base = [r["baseline_files_per_s"] for r in sec["rows"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], store, width=0.4, label="store puts/s")
    ax.bar([x + 0.2 for x in xs], base, width=0.4, color="lightsteelblue", label="4 fsynced copies")
    ax.set_xticks(list(xs), labels)
    ax.set_yscale("log")
    ax.set_ylabel(f"files of {human(sec['size'])} per second")
    ax.set_title(title)
    ax.legend(fontsize=8)


def render_figure(data: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(13, 9))
    axes = fig.subplots(2, 2)
    plot_transfers(axes[0][0], data.get("transfers"))
    plot_versions(axes[0][1], data.get("versions"))
    plot_rereplication(axes[1][0], data.get("rereplication"))
    plot_small(axes[1][1], data.get("small"))
    fig.suptitle(f"IDUNNO store benchmark ({NODES} nodes, {REPLICAS} replicas, real processes)")
    fig.tight_layout()
    return fig


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    _report.stop_on_sigterm()  # unwind through every ProcCluster so the nodes are killed
    t0 = time.monotonic()
    load0 = os.getloadavg()
    with _report.workdir(settings.keep, "idunno-bench-sdfs-", parent="/tmp") as root:
        h = Harness(root, settings)
        results = run_sections(h)
    data: dict[str, Any] = {
        "machine": _report.machine_info(),
        "run": _report.run_info(settings, t0, load0),
        "targets": {
            "put_ratio_min": PUT_RATIO_TARGET,
            "get_ratio_min": GET_RATIO_TARGET,
            "repair_time_over_local_max": REPAIR_RATIO_TARGET,
            "repair_small_confirm_to_restored_max_s": REPAIR_SMALL_TARGET_S,
        },
        "startup_failures": h.startup_failures,
        **results,
    }
    data["figures"] = [asdict(f) for f in figures(data)]
    markdown = render_markdown(data)
    paths = _report.write_results("sdfs", data, markdown, render_figure(data), settings.out_dir)
    print(markdown)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = any(not ok(results[s]) for s in results) or any(f.ok is False for f in figures(data))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
