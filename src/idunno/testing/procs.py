"""Real `idunno node` processes on loopback for tests and benchmarks.

    with ProcCluster(6, tmp_path) as c:
        c.kill("n3")
        c.wait_status("n3", "failed", timeout=10)

Ports are picked free by the OS; every process started here (including restarts) is SIGKILLed on
exit, even when the test fails. Only processes this object started are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from idunno.client import Client, ClientError
from idunno.localcluster import (
    KEY_FILE,
    NodeProc,
    free_ports,
    is_running,
    spawn_node,
    start_cluster,
    stop_nodes,
)
from idunno.transport import keys

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    pass


def wait_for(cond: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `cond` until it returns a truthy value; raise WaitTimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class ProcCluster:
    def __init__(
        self,
        n: int,
        directory: Path,
        preset: str = "lan",
        extra: Sequence[str] = (),
        start_timeout: float = 30.0,
        node_extra: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.n = n
        # Per-node extra arguments on top of `extra` (e.g. {"n3": ["--inference-threads", "0"]}).
        self.node_extra = {k: tuple(v) for k, v in (node_extra or {}).items()}
        self.directory = Path(directory)
        self.preset = preset
        self.extra = tuple(extra)
        self.start_timeout = start_timeout
        self.nodes: dict[str, NodeProc] = {}
        self._started: list[NodeProc] = []  # every process we launched, restarts included
        self._procs: list[subprocess.Popen[bytes]] = []
        self.key = b""

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> ProcCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            nodes = start_cluster(
                self.directory,
                self.n,
                ports=free_ports(self.n),
                preset=self.preset,
                timeout=self.start_timeout,
                extra=self.extra,
                handles=self._procs,
                node_extra=self.node_extra,
            )
        except BaseException:
            self.close()
            raise
        self.key = keys.load(str(self.directory / KEY_FILE))
        for nd in nodes:
            self.nodes[nd.name] = nd
            self._started.append(nd)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for nd in self._started:
            if is_running(nd):  # only our own node, never a recycled pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(nd.pid, signal.SIGCONT)  # a stopped process must not linger
        stop_nodes(self._started, leave=False, timeout=5.0)
        for p in self._procs:
            # Our own children, by handle: safe even where /proc could not yet show the process.
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)

    # --- faults -------------------------------------------------------------------------

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.nodes[name].pid, sig)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.nodes[name].pid, 0)

    def pause(self, name: str) -> None:
        self.signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.signal(name, signal.SIGCONT)

    def restart(self, name: str, extra: Sequence[str] | None = None) -> NodeProc:
        """Start `name` again on the same address and data dir, joining through the others."""
        old = self.nodes[name]
        seeds = [n.address for n in self.nodes.values() if n.name != name]
        proc = spawn_node(
            name,
            old.address,
            seeds,
            Path(old.data_dir),
            self.directory / KEY_FILE,
            self.preset,
            self.extra if extra is None else extra,
        )
        self._procs.append(proc)
        nd = NodeProc(name, old.address, proc.pid, old.data_dir)
        self.nodes[name] = nd
        self._started.append(nd)
        return nd

    # --- queries ------------------------------------------------------------------------

    def client(self, name: str, timeout: float = 2.0) -> Client:
        return Client(self.nodes[name].address, self.key, timeout=timeout)

    def statuses(self, observer: str) -> dict[str, str] | None:
        """observer's view {member: status}, or None if it does not answer."""
        try:
            rows = self.client(observer, timeout=1.0).members()["members"]
        except ClientError:
            return None
        return {r["id"]: r["status"] for r in rows}

    def wait_status(
        self,
        member: str,
        status: str,
        observers: Iterable[str] | None = None,
        timeout: float = 15.0,
    ) -> float:
        """Wait until every observer (default: all other nodes) reports `member` as `status`;
        return the seconds it took."""
        names = [o for o in (observers or self.nodes) if o != member]
        t0 = time.monotonic()

        def done() -> bool:
            return all((self.statuses(o) or {}).get(member) == status for o in names)

        wait_for(done, timeout, f"{member} to be {status} in the view of {', '.join(names)}")
        return time.monotonic() - t0


class PeakRss:
    """Highest RSS of any of `pids`, sampled every 20 ms in a thread while the block runs.

    with PeakRss(pids) as rss:
        client.put(big_file, "name")
    assert rss.peak < 150 << 20
    """

    def __init__(self, pids: Iterable[int], every: float = 0.02) -> None:
        import psutil  # a test/bench dependency, not a runtime one

        self._procs = [psutil.Process(p) for p in pids]
        self._error = psutil.Error
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            for p in self._procs:
                with contextlib.suppress(self._error):
                    self.peak = max(self.peak, int(p.memory_info().rss))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
