"""The chaos run's clients: threads that put, get and delete a few files through random nodes and
record every operation in the history (an invoke, then ok, fail or info).

Each operation goes to one node without retries, so the history says exactly what each request
did. Outcomes: a refused connection or a 4xx is `fail` (nothing was applied); a 404 on a get is
`ok` with {"missing": true}; a timeout, a reset or a 5xx is `info` (the write may or may not
have taken effect, which the checker allows either way).
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from idunno.client import Client, ClientError
from idunno.testing.chaos.history import DELETE, FAIL, GET, INFO, INVOKE, OK, PUT, HistoryWriter

PUT_SHARE, GET_SHARE = 0.5, 0.35  # the rest are deletes
PAUSE_S = 0.02  # between two operations of one client: keeps the 2 cores for the cluster


def file_names(count: int) -> list[str]:
    return [f"chaos/f{i}" for i in range(count)]


def outcome(exc: ClientError) -> str:
    """fail when the request certainly changed nothing, info when it may have."""
    if exc.status == 0 and "connection refused" in str(exc):
        return FAIL
    if 400 <= exc.status < 500:
        return FAIL
    return INFO


class FileClient(threading.Thread):
    """One history process ("c0", "c1", ...): one operation at a time until `stop` is set."""

    def __init__(
        self,
        process: str,
        seed: int,
        names: Sequence[str],
        nodes: Callable[[], Sequence[str]],
        client: Callable[[str], Client],
        history: HistoryWriter,
        scratch: Path,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"chaos-{process}", daemon=True)
        self.process = process
        self.rng = random.Random(f"{seed}:{process}")
        self.names = list(names)
        self.nodes = nodes
        self.client = client
        self.history = history
        self.scratch = scratch
        self.stop = stop
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        try:
            while not self.stop.is_set():
                self.one()
                self.stop.wait(PAUSE_S)
        except BaseException as exc:  # surfaced by the runner: a client bug must not pass silently
            self.error = exc

    def one(self) -> None:
        name = self.rng.choice(self.names)
        node = self.rng.choice(list(self.nodes()))
        x = self.rng.random()
        self.count += 1
        if x < PUT_SHARE:
            self.put(node, name)
        elif x < PUT_SHARE + GET_SHARE:
            self.get(node, name)
        else:
            self.delete(node, name)

    def _do(
        self, f: str, name: str, invoke: dict[str, Any], call: Callable[[], dict[str, Any]]
    ) -> None:
        self.history.op(self.process, INVOKE, f, name, invoke)
        try:
            value = call()
        except ClientError as exc:
            if f == GET and exc.status == 404:
                self.history.op(self.process, OK, f, name, {"missing": True})
                return
            self.history.op(self.process, outcome(exc), f, name, {"error": str(exc)[:200]})
            return
        self.history.op(self.process, OK, f, name, value)

    def put(self, node: str, name: str) -> None:
        data = f"{self.process}:{self.count}:".encode() + self.rng.randbytes(
            self.rng.randint(16, 2048)
        )
        local = self.scratch / "put.bin"
        local.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()

        def call() -> dict[str, Any]:
            out = self.client(node).put(local, name, retries=0)
            return {"version": int(out["version"]), "sha256": out["sha256"], "node": node}

        self._do(PUT, name, {"sha256": sha, "size": len(data), "node": node}, call)

    def get(self, node: str, name: str) -> None:
        local = self.scratch / "get.bin"

        def call() -> dict[str, Any]:
            meta = self.client(node).get(name, local, retries=0)
            return {"version": int(meta["version"]), "sha256": meta["sha256"], "node": node}

        self._do(GET, name, {"node": node}, call)

    def delete(self, node: str, name: str) -> None:
        def call() -> dict[str, Any]:
            out = self.client(node).delete(name)
            return {"deleted_version": int(out["deleted_version"]), "node": node}

        self._do(DELETE, name, {"node": node}, call)
