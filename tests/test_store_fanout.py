"""Quorum fan-outs go on once enough members answered: a paused member (SIGSTOP, not yet
declared failed) must not hold up version numbering and reads for a whole call timeout."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from idunno.store.fanout import quorum_answers
from idunno.store.peers import PeerError
from idunno.store.placement import rank
from idunno.store.service import StoreService, Unavailable
from tests.test_store_pure import store_cluster

HANG_LIMIT_S = 10.0  # far above the grace: reaching it means a fan-out waited for a hung call


async def answer(value: Any, delay: float = 0.0) -> Any:
    await asyncio.sleep(delay)
    return value


class Hung:
    """A call that never answers (a SIGSTOPped peer); records that it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __call__(self) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def test_every_answer_is_kept_when_all_answer() -> None:
    got = asyncio.run(quorum_answers({"a": answer(1), "b": answer(2), "c": answer(3)}, 2))
    assert got == {"a": 1, "b": 2, "c": 3}


def test_a_hung_member_is_left_behind_once_a_quorum_answered() -> None:
    hung = Hung()

    async def run() -> dict[str, Any]:
        calls = {"a": answer("x"), "b": hung(), "c": answer("y", 0.01)}
        return await asyncio.wait_for(quorum_answers(calls, 2, grace=0.02), HANG_LIMIT_S)

    assert asyncio.run(run()) == {"a": "x", "c": "y"}
    assert hung.cancelled


def test_no_answer_does_not_count_towards_the_quorum() -> None:
    """None is "did not answer": with 2 needed, the slower real answer is still awaited."""
    calls = {"a": answer(None), "b": answer("x"), "c": answer("y", 0.05)}
    assert asyncio.run(quorum_answers(calls, 2, grace=0.0)) == {"b": "x", "c": "y"}


def test_stragglers_within_the_grace_are_heard() -> None:
    calls = {"a": answer(1), "b": answer(2, 0.01)}
    assert asyncio.run(quorum_answers(calls, 1, grace=5.0)) == {"a": 1, "b": 2}


def test_errors_propagate() -> None:
    async def boom() -> Any:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        asyncio.run(quorum_answers({"a": boom(), "b": answer(1)}, 1))


def test_below_quorum_it_returns_what_it_heard_when_every_call_ended() -> None:
    calls = {"a": answer(None), "b": answer(None), "c": answer(1)}
    assert asyncio.run(quorum_answers(calls, 2)) == {"c": 1}


class PausedPeers:
    """store.peers.Peers in memory; calls to the `paused` members never return."""

    def __init__(self, services: dict[str, StoreService], paused: set[str]) -> None:
        self.services = services
        self.paused = paused
        self.timeout: float | None = None  # None: hang for ever; else fail like Peers' timeout

    async def call(self, addr: str, path: str, body: dict[str, Any]) -> Any:
        if addr in self.paused:
            if self.timeout is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.timeout)
            raise PeerError(f"{addr} unreachable for {path}: timed out")
        svc = self.services[addr]
        if path == "top":
            return svc.top(body)
        if path == "reserve":
            return svc.reserve(body)
        if path == "meta":
            meta = svc.disk.meta.get(body["name"])
            return json.loads(json.dumps(meta.to_json())) if meta else None
        raise PeerError(f"unexpected call {path}")


def test_numbering_and_reads_go_on_while_a_member_is_paused(tmp_path: Path) -> None:
    name = "model.onnx"
    nodes = ["a", "b", "c", "d", "e", "f"]
    holders = rank(name, nodes)[:4]
    data = b"acknowledged" * 100
    paused = {holders[0]}  # the top-ranked holder is paused: reads must go past it
    shared: list[PausedPeers] = []

    def peers_for(_node: str, services: dict[str, StoreService]) -> PausedPeers:
        if not shared:
            shared.append(PausedPeers(services, paused))
        return shared[0]

    services = store_cluster(tmp_path, nodes, peers_for, holding=(name, data, holders))
    peers = shared[0]
    gateway = services[holders[1]]

    async def run() -> tuple[int, list[str]]:
        version = await asyncio.wait_for(gateway.assign(name), HANG_LIMIT_S)
        chosen, where = await asyncio.wait_for(gateway.choose(name, None), HANG_LIMIT_S)
        assert chosen.version == 1
        return version, where

    version, where = asyncio.run(run())
    assert version == 2
    assert set(where) == set(holders[1:])

    # With too many members silent there is no quorum: a one-line refusal, not a stale answer.
    paused.update(n for n in nodes if n != gateway.me)
    peers.timeout = 0.05

    async def alone() -> None:
        with pytest.raises(Unavailable, match="heard from only 1 of the 6"):
            await gateway.assign(name)
        with pytest.raises(Unavailable, match="heard from only 1 of the 6"):
            await gateway.choose(name, None)

    asyncio.run(alone())
