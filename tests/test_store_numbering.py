"""Version numbers: each is promised to one authority at most, and promises survive a restart.
The chaos suite found two nodes giving out the same number when their views disagreed on who
the file's authority was (just after a restart): both read the same top, both reserved it."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from idunno.store.config import StoreConfig
from idunno.store.disk import DiskStore
from idunno.store.reservations import RETENTION_S, Reservations
from idunno.store.service import StoreService
from tests.test_store_fanout import PausedPeers
from tests.test_store_pure import store_cluster

NODES = ["a", "b", "c", "d", "e", "f", "g"]


class ShuffledPeers(PausedPeers):
    """Every call yields to the loop a random number of times first, so concurrent authorities
    interleave their reads and promises in seeded, varied orders."""

    def __init__(self, services: dict[str, StoreService], rng: random.Random) -> None:
        super().__init__(services, set())
        self.rng = rng

    async def call(self, addr: str, path: str, body: dict[str, Any]) -> Any:
        for _ in range(self.rng.randrange(4)):
            await asyncio.sleep(0)
        return await super().call(addr, path, body)


def cluster(root: Path, rng: random.Random) -> dict[str, StoreService]:
    shared: list[ShuffledPeers] = []

    def peers_for(_node: str, services: dict[str, StoreService]) -> ShuffledPeers:
        if not shared:
            shared.append(ShuffledPeers(services, rng))
        return shared[0]

    return store_cluster(root, NODES, peers_for)


def test_concurrent_authorities_never_hand_out_one_number_twice(tmp_path: Path) -> None:
    for seed in range(20):
        services = cluster(tmp_path / str(seed), random.Random(seed))

        async def race(svcs: dict[str, StoreService] = services) -> list[int]:
            # Three nodes each believe they are the authority of the same name, at once.
            authorities = [svcs["a"], svcs["c"], svcs["f"]]
            got = await asyncio.gather(*(a.assign("f.bin") for _ in range(3) for a in authorities))
            return list(got)

        numbers = asyncio.run(race())
        assert len(numbers) == len(set(numbers)), (seed, sorted(numbers))


def test_a_node_refuses_a_number_it_promised_or_holds(tmp_path: Path) -> None:
    svc = cluster(tmp_path, random.Random(0))["a"]
    assert svc.reserve({"name": "f.bin", "version": 3}) == {"ok": True}
    assert svc.reserve({"name": "f.bin", "version": 3}) == {"ok": False, "top": 3}
    assert svc.reserve({"name": "f.bin", "version": 2}) == {"ok": False, "top": 3}
    assert svc.top({"name": "f.bin"}) == {"top": 3}
    assert svc.reserve({"name": "other.bin", "version": 1}) == {"ok": True}


def test_promises_survive_a_restart(tmp_path: Path) -> None:
    svc = cluster(tmp_path, random.Random(0))["b"]
    assert svc.reserve({"name": "f.bin", "version": 7}) == {"ok": True}
    again = StoreService(
        "b",
        DiskStore(tmp_path / "b"),
        lambda: {"b": "b"},
        None,  # type: ignore[arg-type]
        StoreConfig(),
        lambda *args, **kwargs: None,
    )
    assert again.reserve({"name": "f.bin", "version": 7}) == {"ok": False, "top": 7}
    assert again.reserve({"name": "f.bin", "version": 8}) == {"ok": True}


def test_the_log_keeps_the_highest_promise_ignores_a_torn_line_and_compacts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "promised.jsonl"
    r = Reservations(path)
    for version in range(1, 30):
        r.grant("x", version)
    r.grant("y", 4)
    r.grant("x", 3)  # a lower promise never lowers the mark
    with path.open("a") as f:
        f.write('["x", 90')  # a write cut short by a crash
    again = Reservations(path)
    assert (again.get("x"), again.get("y"), again.get("z")) == (29, 4, 0)
    assert len(path.read_text().splitlines()) == 2  # compacted on load


def test_old_promises_are_dropped_when_the_log_is_compacted(tmp_path: Path) -> None:
    path = tmp_path / "promised.jsonl"
    now = time.time()
    r = Reservations(path)
    r.grant("old", 5, now=now - RETENTION_S - 1)
    r.grant("new", 6, now=now - 1)
    again = Reservations(path)
    assert (again.get("old"), again.get("new")) == (0, 6)
