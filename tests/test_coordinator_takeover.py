"""A new reign learns which models the workers already have loaded (its predecessor's
`ready` map lived in that process only): found when a coordinator change during a benchmark's
training phase made the next job wait for every worker to be asked to load its model, and
its first batch go out as a full batch instead of the urgent single query."""

from __future__ import annotations

import asyncio
from typing import Any

from idunno.control.coordinator import STATUS_PATH, Coordinator
from idunno.control.rpc import RpcError
from idunno.control.state import ControlState


class StatusRpc:
    """Each address answers GET status with its models, or is unreachable."""

    def __init__(self, models: dict[str, dict[str, Any] | None]) -> None:
        self.models = models
        self.asked: list[tuple[str, str]] = []

    async def get(self, addr: str, path: str, timeout: float) -> Any:
        self.asked.append((addr, path))
        models = self.models[addr]
        if models is None:
            raise RpcError(f"{addr} unreachable: ConnectionRefusedError")
        return {"worker": addr, "models": models}


def _coordinator(rpc: StatusRpc, live: dict[str, str]) -> Coordinator:
    return Coordinator(
        "n1",
        3,
        ControlState(),
        None,
        rpc,
        lambda: dict(live),
        None,
        lambda *a, **k: None,  # type: ignore[arg-type]
        lambda why: None,
    )


def test_a_new_reign_learns_the_models_each_worker_has_loaded() -> None:
    rpc = StatusRpc(
        {
            "a:1": {"resnet18": {"version": 2, "cost_per_query_s": 0.016}},
            "b:1": {
                "resnet18": {"version": 2, "cost_per_query_s": 0.018},
                "alexnet": {"version": 1, "cost_per_query_s": 0.007},
            },
            "c:1": None,  # down: left for pump() to ask when a job needs it
            "d:1": {"resnet18": {"version": "two"}},  # garbled: ignored like a down worker
        }
    )
    c = _coordinator(rpc, {"n1": "a:1", "n2": "b:1", "n3": "c:1", "n4": "d:1"})
    asyncio.run(c._learn_loaded())
    assert sorted(a for a, _ in rpc.asked) == ["a:1", "b:1", "c:1", "d:1"]
    assert {p for _, p in rpc.asked} == {STATUS_PATH}
    assert c.ready == {"n1": {"resnet18": 2}, "n2": {"resnet18": 2, "alexnet": 1}}
    assert c.costs["n2"] == {"resnet18": 0.018, "alexnet": 0.007}


def test_what_the_reign_learned_itself_is_not_overwritten() -> None:
    rpc = StatusRpc({"a:1": {"resnet18": {"version": 1, "cost_per_query_s": 0.02}}})
    c = _coordinator(rpc, {"n1": "a:1"})
    c.ready["n1"] = {"resnet18": 2}  # loaded by this reign while the status call was out
    asyncio.run(c._learn_loaded())
    assert c.ready == {"n1": {"resnet18": 2}}
