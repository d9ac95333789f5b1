"""Start and stop a cluster of real `idunno node` processes on this machine (127.0.0.1).

Used by `idunno up`/`idunno down`, the demo, the real-process tests and the benchmarks.
`D/cluster.json` records every node's name, address, pid and data dir; `D/cluster.key` is the
generated cluster key (mode 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from idunno.client import Client, ClientError
from idunno.inference import cpus
from idunno.transport import keys

DEFAULT_DIR = Path(".idunno")
CLUSTER_FILE = "cluster.json"
KEY_FILE = "cluster.key"
HOST = "127.0.0.1"


class ClusterError(Exception):
    """One-line description of why the local cluster could not be started or stopped."""


@dataclass
class NodeProc:
    name: str
    address: str
    pid: int
    data_dir: str

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if both TCP and UDP can bind host:port (a node needs both)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(n: int, host: str = HOST) -> list[int]:
    """n distinct ports that are currently free for TCP and UDP (the OS picks them)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in ports and port_is_free(port, host):
            ports.append(port)
    return ports


def ensure_key(directory: Path) -> Path:
    path = directory / KEY_FILE
    if not path.exists():
        keys.write_key_file(path, keys.generate())
    return path


def node_command(
    name: str,
    address: str,
    seeds: Sequence[str],
    data_dir: Path,
    key_file: Path,
    preset: str,
    extra: Sequence[str] = (),
) -> list[str]:
    cmd = [sys.executable, "-m", "idunno", "node", "--listen", address, "--name", name]
    cmd += ["--data-dir", str(data_dir), "--key-file", str(key_file), "--preset", preset]
    if seeds:
        cmd += ["--join", ",".join(seeds)]
    return cmd + list(extra)


def spawn_node(
    name: str,
    address: str,
    seeds: Sequence[str],
    data_dir: Path,
    key_file: Path,
    preset: str = "lan",
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start one node in the background, its stderr going to DATA_DIR/stderr.log. Its executor
    is pinned to one core, round robin by the node's number (see idunno.inference.cpus),
    unless `extra` chooses its CPUs or inference threads."""
    data_dir.mkdir(parents=True, exist_ok=True)
    extra = [*extra, *cpus.local_node_pin(name, extra, sorted(os.sched_getaffinity(0)))]
    with open(data_dir / "stderr.log", "ab") as err:
        return subprocess.Popen(
            node_command(name, address, seeds, data_dir, key_file, preset, extra),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )


def wait_converged(
    addresses: Sequence[str], key: bytes, deadline: float, expect: int | None = None
) -> None:
    """Block until every node lists `expect` (default: all) members alive, or raise."""
    expect = len(addresses) if expect is None else expect
    pending = list(addresses)
    last = ""
    while pending:
        for addr in list(pending):
            try:
                rows = Client(addr, key, timeout=1.0).members()["members"]
            except ClientError as exc:
                last = str(exc)
                continue
            alive = sum(1 for r in rows if r["status"] == "alive")
            if alive >= expect:
                pending.remove(addr)
            else:
                last = f"{addr} sees {alive} of {expect} members alive"
        if pending and time.monotonic() > deadline:
            raise ClusterError(f"cluster did not converge in time: {last}")
        if pending:
            time.sleep(0.05)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def read_cluster(directory: Path) -> dict[str, Any]:
    path = directory / CLUSTER_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(
            f"no local cluster recorded in {path}: start one with `idunno up`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    return data


def cluster_nodes(directory: Path) -> list[NodeProc]:
    return [NodeProc(**n) for n in read_cluster(directory)["nodes"]]


def is_running(node: NodeProc) -> bool:
    """True if `pid` is still the node we started (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"idunno" in b" ".join(cmdline) and node.data_dir.encode() in cmdline


def start_cluster(
    directory: Path,
    n: int,
    base_port: int | None = None,
    ports: Sequence[int] | None = None,
    preset: str = "lan",
    timeout: float = 30.0,
    extra: Sequence[str] = (),
    handles: list[subprocess.Popen[bytes]] | None = None,
    node_extra: Mapping[str, Sequence[str]] | None = None,
) -> list[NodeProc]:
    """Start n nodes and return once all of them see each other alive.

    `handles`, if given, receives each node's Popen so a long-lived caller can reap them.
    `node_extra` maps a node's name ("n1".."nN") to arguments given to that node only, after
    `extra` (e.g. {"n5": ["--inference-threads", "0"]}).
    """
    if n < 1:
        raise ClusterError(f"--nodes must be at least 1, got {n}")
    directory = directory.resolve()
    if (directory / CLUSTER_FILE).exists():
        running = [nd for nd in cluster_nodes(directory) if is_running(nd)]
        if running:
            raise ClusterError(
                f"a cluster is already running from {directory / CLUSTER_FILE} "
                f"({len(running)} nodes): run `idunno down` first"
            )
    if ports is None:
        base = 7100 if base_port is None else base_port
        ports = list(range(base, base + n))
    busy = [p for p in ports if not port_is_free(p)]
    if busy:
        raise ClusterError(
            f"port {busy[0]} on {HOST} is already in use: pick free ports with --base-port P"
        )
    key_file = ensure_key(directory)
    key = keys.load(str(key_file))
    nodes: list[NodeProc] = []
    procs: list[subprocess.Popen[bytes]] = []
    addresses = [f"{HOST}:{p}" for p in ports]
    for i, addr in enumerate(addresses):
        name = f"n{i + 1}"
        data_dir = directory / "nodes" / name
        # Any earlier node can introduce a newcomer: no single introducer.
        seeds = addresses[max(0, i - 3) : i]
        own = tuple(extra) + tuple((node_extra or {}).get(name, ()))
        proc = spawn_node(name, addr, seeds, data_dir, key_file, preset, own)
        procs.append(proc)
        if handles is not None:
            handles.append(proc)
        nodes.append(NodeProc(name, addr, proc.pid, str(data_dir)))
    write_cluster(directory, nodes, preset)
    try:
        deadline = time.monotonic() + timeout
        for proc, node in zip(procs, nodes, strict=True):
            if proc.poll() is not None:
                log = Path(node.data_dir) / "stderr.log"
                raise ClusterError(f"node {node.name} exited at start: {_tail(log, 1)}")
        wait_converged(addresses, key, deadline)
    except (ClusterError, KeyboardInterrupt):
        stop_nodes(nodes, leave=False)
        (directory / CLUSTER_FILE).unlink(missing_ok=True)
        raise
    return nodes


def write_cluster(directory: Path, nodes: Sequence[NodeProc], preset: str) -> None:
    data = {
        "preset": preset,
        "key_file": str(directory / KEY_FILE),
        "nodes": [asdict(n) for n in nodes],
    }
    tmp = directory / (CLUSTER_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(directory / CLUSTER_FILE)


def stop_nodes(nodes: Sequence[NodeProc], leave: bool = True, timeout: float = 10.0) -> list[str]:
    """SIGTERM (a voluntary leave) every node we started, SIGKILL stragglers; names stopped."""
    sig = signal.SIGTERM if leave else signal.SIGKILL
    targets = [n for n in nodes if is_running(n)]
    for n in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(n.pid, sig)
    deadline = time.monotonic() + timeout
    for n in targets:
        while is_running(n) and time.monotonic() < deadline:
            _reap(n.pid)
            time.sleep(0.05)
        if is_running(n):
            os.kill(n.pid, signal.SIGKILL)
        _reap(n.pid)
    return [n.name for n in targets]


def _reap(pid: int) -> None:
    """Collect a child's exit status if it is ours (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_cluster(directory: Path, timeout: float = 10.0) -> list[str]:
    directory = directory.resolve()
    nodes = cluster_nodes(directory)
    stopped = stop_nodes(nodes, leave=True, timeout=timeout)
    (directory / CLUSTER_FILE).unlink(missing_ok=True)
    return stopped
