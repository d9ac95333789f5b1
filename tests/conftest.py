"""Shared fixtures and helpers for the real-process tests (`idunno node` on 127.0.0.1).

Every process a test starts is stopped when the test ends, pass or fail: clusters through the
`cluster` factory (ProcCluster as a context manager), lone nodes through `node_proc`, and, as a
last resort, anything still running from `spawn_node` at the end of the session.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from idunno import localcluster
from idunno.client import Client, ClientError
from idunno.localcluster import HOST, KEY_FILE, NodeProc, free_ports
from idunno.testing import procs
from idunno.testing.procs import ProcCluster, wait_for

IDUNNO = Path(sys.executable).with_name("idunno")  # the venv's console script
CLI_TIMEOUT = 60.0
# Environment variables the CLI reads; tests start from none of them.
IDUNNO_ENV = ("IDUNNO_DIR", "IDUNNO_AT", "IDUNNO_CLUSTER_KEY")

# --- process bookkeeping ----------------------------------------------------------------------

# Every Popen made by localcluster.spawn_node during the session. start_cluster() drops its Popen
# objects while the children still run, which makes CPython emit "ResourceWarning: subprocess N
# is still running" (an error under filterwarnings=error). Keeping a reference here avoids that
# and lets the session end reap anything a test failed to stop.
_SPAWNED: list[subprocess.Popen[bytes]] = []


def popen_for(pid: int) -> subprocess.Popen[bytes]:
    """The Popen of a node process started in this session (to read its exit code)."""
    for p in _SPAWNED:
        if p.pid == pid:
            return p
    raise LookupError(f"pid {pid} was not started by spawn_node in this session")


@pytest.fixture(autouse=True, scope="session")
def _track_spawned_nodes() -> Iterator[None]:
    original = localcluster.spawn_node

    def spawn_and_track(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = original(*args, **kwargs)
        _SPAWNED.append(proc)
        return proc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(localcluster, "spawn_node", spawn_and_track)
        mp.setattr(procs, "spawn_node", spawn_and_track)
        yield
    for proc in _SPAWNED:  # only our own children: Popen never signals a reaped pid
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)


# --- clusters -----------------------------------------------------------------------------------

ClusterFactory = Callable[..., ProcCluster]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """`cluster(n, **ProcCluster kwargs)` starts a converged cluster; all are closed at the end."""
    counter = itertools.count(1)
    with contextlib.ExitStack() as stack:

        def make(n: int, **kwargs: Any) -> ProcCluster:
            directory = tmp_path / f"cluster{next(counter)}"
            return stack.enter_context(ProcCluster(n, directory, **kwargs))

        yield make


NodeStarter = Callable[..., tuple[NodeProc, subprocess.Popen[bytes]]]


@pytest.fixture
def node_proc() -> Iterator[NodeStarter]:
    """`node_proc(name, seeds, directory)` starts one extra node (through spawn_node) on a free
    port, with DIRECTORY/cluster.key and data dir DIRECTORY/nodes/NAME; stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        name: str,
        seeds: Sequence[str],
        directory: Path,
        preset: str = "lan",
        extra: Sequence[str] = (),
    ) -> tuple[NodeProc, subprocess.Popen[bytes]]:
        address = f"{HOST}:{free_ports(1)[0]}"
        data_dir = Path(directory) / "nodes" / name
        proc = localcluster.spawn_node(
            name, address, seeds, data_dir, Path(directory) / KEY_FILE, preset, extra
        )
        started.append(proc)
        return NodeProc(name, address, proc.pid, str(data_dir)), proc

    yield start
    for proc in started:
        stop_popen(proc)


def stop_popen(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL and reap a child we started (a stopped one too), if it still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=10)


# --- queries ------------------------------------------------------------------------------------


def view(c: ProcCluster, observer: str) -> dict[str, dict[str, Any]]:
    """observer's member rows by id (raises ClientError if it does not answer)."""
    rows = c.client(observer, timeout=2.0).members()["members"]
    return {r["id"]: r for r in rows}


def self_info(c: ProcCluster, name: str) -> dict[str, Any]:
    return c.client(name, timeout=2.0).self_info()


def dropped(c: ProcCluster, name: str) -> Counter[str]:
    return Counter(self_info(c, name)["dropped"])


def all_alive(c: ProcCluster, names: Sequence[str]) -> bool:
    """True if every node in `names` answers and lists every node in `names` as alive."""
    for observer in names:
        statuses = c.statuses(observer)
        if statuses is None or any(statuses.get(m) != "alive" for m in names):
            return False
    return True


def wait_all_alive(c: ProcCluster, names: Sequence[str], timeout: float = 20.0) -> None:
    wait_for(lambda: all_alive(c, names), timeout, f"{', '.join(names)} alive in every view")


def answers(address: str, key: bytes) -> bool:
    try:
        Client(address, key, timeout=1.0).self_info()
    except ClientError:
        return False
    return True


# --- sending datagrams --------------------------------------------------------------------------


def udp_send(address: str, *datagrams: bytes, sock: socket.socket | None = None) -> None:
    """Send datagrams to a node's UDP port (loopback only), from `sock` or a fresh socket."""
    host, _, port = address.rpartition(":")
    assert host == HOST, f"tests only send to {HOST}, not {host}"
    with contextlib.ExitStack() as stack:
        if sock is None:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((HOST, 0))
        for d in datagrams:
            sock.sendto(d, (host, int(port)))


# --- the CLI ------------------------------------------------------------------------------------


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in IDUNNO_ENV}
    env.update(extra or {})
    return env


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def idunno(tmp_path: Path) -> CliRunner:
    """`idunno("members", "--json", cwd=..., env={...})` runs the installed CLI in a subprocess
    (cwd defaults to a fresh tmp dir; IDUNNO_* variables are unset unless given)."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    def run(
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(IDUNNO), *args],
            cwd=cwd or workdir,
            env=cli_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def assert_one_line_error(
    result: subprocess.CompletedProcess[str],
    *fragments: str,
    code: int = 2,
    stdout_empty: bool = True,
) -> str:
    """The CLI failed the documented way: exit `code` (2: bad usage; 1: the cluster refused),
    one `idunno: error:` line on stderr naming the problem, nothing on stdout, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("idunno: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    if stdout_empty:
        assert result.stdout == ""
    return line
