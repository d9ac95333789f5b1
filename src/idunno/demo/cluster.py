"""The demo's local cluster: started fresh in the cluster directory (like `idunno up`), with
the models and datasets the demo needs and every worker trained."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idunno.cli.render import human_size
from idunno.client import Client, ClientError
from idunno.localcluster import (
    CLUSTER_FILE,
    HOST,
    KEY_FILE,
    ClusterError,
    NodeProc,
    cluster_nodes,
    is_running,
    port_is_free,
    start_cluster,
    stop_nodes,
)
from idunno.transport import keys

CLIENT_TIMEOUT_S = 10.0
ELECTION_TIMEOUT_S = 30.0
PHOTO_MODELS = ("resnet18", "alexnet")
DIGITS_MODEL = "digits_logreg"
MODELS = (*PHOTO_MODELS, DIGITS_MODEL)
PHOTOS = "photos"
DIGITS = "digits"

Say = Callable[[str], None]


class DemoError(Exception):
    """One line saying why the demo could not go on."""


@dataclass
class DemoCluster:
    directory: Path
    nodes: list[NodeProc]
    key: bytes
    handles: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: dict[str, float] = field(default_factory=dict)  # name -> when it was SIGKILLed

    def node(self, name: str) -> NodeProc:
        return next(n for n in self.nodes if n.name == name)

    def live(self) -> list[str]:
        return [n.name for n in self.nodes if n.name not in self.killed]

    def client(self, name: str, timeout: float = CLIENT_TIMEOUT_S) -> Client:
        return Client(self.node(name).address, self.key, timeout=timeout)

    def kill(self, name: str) -> tuple[int, float]:
        """SIGKILL node `name` and reap it; (its pid, when the signal was sent)."""
        node = self.node(name)
        at = time.time()
        os.kill(node.pid, signal.SIGKILL)
        self.killed[name] = at
        for proc in self.handles:
            if proc.pid == node.pid:
                proc.wait(timeout=10)
        return node.pid, at

    def stop(self) -> list[str]:
        """Stop the nodes still running (a voluntary leave each); their names."""
        stopped = stop_nodes(self.nodes, leave=True)
        for proc in self.handles:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        (self.directory / CLUSTER_FILE).unlink(missing_ok=True)
        return stopped


def check_free(directory: Path, base_port: int, n: int) -> None:
    """Refuse (one line) when a cluster runs from `directory` or a port is taken."""
    running = False
    if (directory / CLUSTER_FILE).exists():
        with contextlib.suppress(ClusterError, TypeError, KeyError):
            running = any(is_running(nd) for nd in cluster_nodes(directory))
    if running:
        raise ClusterError(
            f"a cluster is already running from {directory / CLUSTER_FILE}: "
            "stop it with `idunno down` (or give the demo another --dir)"
        )
    busy = [p for p in range(base_port, base_port + n) if not port_is_free(p)]
    if busy:
        raise ClusterError(
            f"port {busy[0]} on {HOST} is in use: run `idunno down` if a cluster holds it, "
            f"or pick other ports with `idunno demo --base-port P` (needs P..P+{n - 1})"
        )


def start(directory: Path, base_port: int, n: int) -> DemoCluster:
    """A fresh cluster: node data of an earlier run in `directory` is removed first."""
    shutil.rmtree(directory / "nodes", ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    handles: list[subprocess.Popen[bytes]] = []
    nodes = start_cluster(directory, n, base_port=base_port, handles=handles)
    key = keys.load(str(directory / KEY_FILE))
    return DemoCluster(directory.resolve(), nodes, key, handles)


@contextlib.contextmanager
def timed(say: Say, what: str) -> Iterator[dict[str, Any]]:
    """Print `what` with the time it took once the block is done; the block may add a
    `detail` (appended) to the dict it gets."""
    out: dict[str, Any] = {}
    t = time.monotonic()
    yield out
    detail = f" {out['detail']}" if out.get("detail") else ""
    say(f"  {what}{detail} ({time.monotonic() - t:.1f} s)")


def add_models(client: Client, say: Say) -> None:
    from idunno.inference.catalog import Catalog, builtin_model

    cat = Catalog(client)
    with tempfile.TemporaryDirectory(prefix="idunno-demo-") as tmp:
        for name in MODELS:
            with timed(say, f"model {name}: built offline and stored") as out:
                data, record = builtin_model(name)
                local = Path(tmp) / f"{name}.onnx"
                local.write_bytes(data)
                del data
                stored = cat.add_model(record, local).record
                local.unlink()
                out["detail"] = f"({human_size(stored.size)}, {_trained(stored.test_accuracy)})"
    say(
        f"  {' and '.join(PHOTO_MODELS)} are UNTRAINED (seeded random weights): they cost what "
        "the real models cost, but their labels mean nothing"
    )


def add_datasets(client: Client, photos: int, say: Say) -> None:
    from idunno.inference.catalog import Catalog
    from idunno.inference.digits import digit_items
    from idunno.inference.images import sample_images

    cat = Catalog(client)
    with timed(say, f"dataset {PHOTOS}: {photos} sample 224x224 JPEG photos") as out:
        t = time.monotonic()
        items = list(sample_images(photos, seed=0))
        made = time.monotonic() - t
        origin = f"sample_images(count={photos}, seed=0): distinct 224x224 JPEG photos"
        m = cat.add_dataset(PHOTOS, "jpeg", iter(items), origin).record
        out["detail"] = f"made in {made:.1f} s, stored ({human_size(m.size)})"
    with timed(say, f"dataset {DIGITS}: scikit-learn's 1797 8x8 digits stored"):
        origin = "scikit-learn load_digits: 1797 8x8 digits, 64 bytes each (values 0..16)"
        cat.add_dataset(DIGITS, "digits", digit_items(), origin, (64,))


def wait_coordinator(client: Client, timeout: float = ELECTION_TIMEOUT_S) -> dict[str, Any]:
    """`GET /v1/control` once the node knows a coordinator."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            ctl = client.control()
        except ClientError as exc:
            last = str(exc)
        else:
            if ctl.get("coordinator"):
                return ctl
            last = "no coordinator elected yet"
        time.sleep(0.2)
    raise DemoError(f"the cluster elected no coordinator within {timeout:g} s ({last})")


def train(client: Client, say: Say) -> dict[str, Any]:
    from idunno.demo.figures import median_cost_ms

    with timed(say, "train: every worker loaded every model and measured it") as out:
        answer = client.train(list(MODELS))
        workers = max((len(m.get("workers", {})) for m in answer.get("models", [])), default=0)
        out["detail"] = f"({workers} workers)"
    for name in MODELS:
        cost = median_cost_ms(answer, name)
        shown = f"{cost:.3g} ms" if cost is not None else "not measured"
        say(f"    cost per query of {name} (median over the workers): {shown}")
    return answer


def _trained(accuracy: float | None) -> str:
    return "UNTRAINED" if accuracy is None else f"trained: test accuracy {accuracy:.4f}"
