"""Re-replication pacing: the token bucket, and the slower rate a node uses while it runs
inference (so copying a failed node's files does not take the cores the jobs share)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from idunno.store import throttle as throttle_mod
from idunno.store.config import StoreConfig
from idunno.store.disk import DiskStore
from idunno.store.placement import rank
from idunno.store.service import StoreService
from idunno.store.throttle import BURST_S, Throttle
from tests.test_store_pure import MemPeers, store_cluster, versions_on


class FakeClock:
    """Monotonic time that moves only when the throttle sleeps: pacing becomes exact."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(throttle_mod.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(throttle_mod.asyncio, "sleep", fake.sleep)
    return fake


def test_the_bucket_lets_a_burst_through_then_paces_at_the_rate(clock: FakeClock) -> None:
    t = Throttle(1000.0)
    asyncio.run(t.consume(int(1000 * BURST_S)))
    assert clock.slept == []  # the burst is free
    asyncio.run(t.consume(500))
    assert clock.slept == [pytest.approx(0.5)]
    for _ in range(10):
        asyncio.run(t.consume(100))
    assert clock.now - 100.0 == pytest.approx(1.5)  # 1,500 bytes past the burst at 1,000 B/s


def test_a_new_rate_applies_from_the_next_chunk(clock: FakeClock) -> None:
    t = Throttle(1000.0)
    asyncio.run(t.consume(int(1000 * BURST_S)))
    t.rate = 100.0
    asyncio.run(t.consume(100))
    assert clock.slept == [pytest.approx(1.0)]
    t.rate = 0  # no limit
    asyncio.run(t.consume(10**9))
    assert len(clock.slept) == 1


def service(tmp_path: Path, busy: list[bool], config: StoreConfig) -> StoreService:
    return StoreService(
        "a",
        DiskStore(tmp_path / "a"),
        lambda: {"a": "a"},
        None,  # type: ignore[arg-type]
        config,
        lambda *args, **kwargs: None,
        busy=lambda: busy[0],
    )


def test_repairs_slow_down_while_the_node_runs_inference(tmp_path: Path) -> None:
    busy = [False]
    svc = service(tmp_path, busy, StoreConfig(transfer_rate=200e6, busy_transfer_rate=20e6))
    assert svc.repair_rate() == 200e6
    busy[0] = True
    assert svc.repair_rate() == 20e6
    # A busy rate above the normal one never speeds repairs up.
    fast = service(tmp_path, busy, StoreConfig(transfer_rate=10e6, busy_transfer_rate=20e6))
    assert fast.repair_rate() == 10e6


def test_a_repair_push_from_a_busy_node_is_paced_at_the_busy_rate(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A real repair round between in-memory services: the holder that pushes the missing copy
    sleeps as long as the busy rate demands for the file's size."""
    name = "model.onnx"
    nodes = ["a", "b", "c", "d", "e"]
    ranked = rank(name, nodes)
    holders, missing = ranked[:3], ranked[3]  # the 4th replica is gone
    data = bytes(range(256)) * 4096  # 1 MiB
    services = store_cluster(
        tmp_path,
        nodes,
        MemPeers,
        StoreConfig(transfer_rate=200e6, busy_transfer_rate=1e6),
        holding=(name, data, holders),
        busy=lambda _node: True,
    )

    async def rounds() -> None:
        for n in holders:
            await services[n].repair_round()

    asyncio.run(rounds())
    assert versions_on(services[missing], name) == [1]
    assert services[missing].disk.meta[name].versions[0].sha256 == hashlib.sha256(data).hexdigest()
    # 1 MiB at 1 MB/s, less the burst the bucket starts with.
    assert sum(clock.slept) == pytest.approx((len(data) - 1e6 * BURST_S) / 1e6, rel=0.01)
