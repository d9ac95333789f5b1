"""The chaos suite's nemesis schedules (idunno.testing.chaos.schedule): seeded, inside the failure
model (few nodes down, one network state at a time, spaced events) and undone by the end."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from idunno.testing.chaos.schedule import (
    BRIDGE,
    COORDINATOR,
    GAP,
    HALVES,
    KILL,
    KINDS,
    LOSS,
    MAX_DOWN,
    NETWORK_KINDS,
    PROCESS_KINDS,
    RESTART,
    ROLES,
    STANDBY,
    TRIPLE,
    Action,
    Fault,
    NetworkState,
    Schedule,
    cross_pairs,
    majority,
    make_schedule,
    resolve_targets,
    timeline,
)

NODES = tuple(f"n{i}" for i in range(1, 11))
SEEDS = range(200)


@pytest.fixture(scope="module")
def schedules() -> list[Schedule]:
    return [make_schedule(seed, NODES, 90.0) for seed in SEEDS]


# --- seeding ------------------------------------------------------------------------------------


def test_same_seed_and_nodes_give_the_same_schedule() -> None:
    a = make_schedule(42, NODES, 120.0)
    b = make_schedule(42, list(reversed(NODES)), 120.0)  # the order of the nodes does not matter
    assert a == b
    assert a.to_json() == b.to_json()
    assert timeline(a) == timeline(b)


def test_different_seeds_give_different_schedules(schedules: list[Schedule]) -> None:
    distinct = {json.dumps(s.to_json()["faults"]) for s in schedules[:50]}
    assert len(distinct) == 50


def test_every_kind_appears_over_200_seeds(schedules: list[Schedule]) -> None:
    kinds = Counter(f.kind for s in schedules for f in s.faults)
    assert set(kinds) == set(KINDS), kinds
    assert all(s.faults for s in schedules)


def test_json_round_trip_and_describe() -> None:
    schedule = make_schedule(3, NODES, 60.0)
    again = Schedule.from_json(json.loads(json.dumps(schedule.to_json())))
    assert again == schedule
    line = schedule.describe()
    assert "\n" not in line
    assert line.startswith(f"seed 3: {len(schedule.faults)} faults in 60 s on 10 nodes")
    for kind, n in schedule.counts().items():
        assert f"{n} {kind}" in line


def test_kinds_and_roles_can_be_restricted() -> None:
    only = make_schedule(1, NODES, 60.0, kinds=[KILL, LOSS], roles=False)
    assert {f.kind for f in only.faults} <= {KILL, LOSS}
    assert not any(t in ROLES for f in only.faults for t in f.targets)
    fixed = [make_schedule(s, NODES, 60.0, kinds=[TRIPLE], roles=False) for s in range(20)]
    triples = [f for s in fixed for f in s.faults]
    assert triples and all(len(set(f.targets)) == 3 for f in triples)
    assert all(set(f.targets) <= set(NODES) for f in triples)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(1, NODES, 60.0, kinds=["meteor"])
    with pytest.raises(ValueError, match="at least 3 nodes"):
        make_schedule(1, ["n1", "n2"], 60.0)


# --- the constraints ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 7, 10])
def test_faults_keep_the_failure_model(n: int) -> None:
    nodes = NODES[:n]
    for seed in range(60):
        schedule = make_schedule(seed, nodes, 90.0)
        _check_times(schedule)
        _check_targets(schedule)
        _check_down(schedule)


def _check_times(schedule: Schedule) -> None:
    """Faults end before the run does, their events are GAP apart, network faults are
    disjoint."""
    events = sorted(t for f in schedule.faults for t in f.events())
    assert all(b - a >= GAP for a, b in itertools.pairwise(events)), events
    assert all(f.at > 0 and f.end <= schedule.duration - GAP for f in schedule.faults)
    network = sorted((f.at, f.end) for f in schedule.faults if f.kind in NETWORK_KINDS)
    assert all(a_end <= b_at for (_, a_end), (b_at, _) in itertools.pairwise(network))


def _check_targets(schedule: Schedule) -> None:
    nodes = set(schedule.nodes)
    for f in schedule.faults:
        assert set(f.targets) <= nodes | set(ROLES), f
        if f.kind == TRIPLE:
            assert f.targets[:2] == (COORDINATOR, STANDBY) and f.targets[2] in nodes
        if f.kind == RESTART:
            assert f.duration == 0
        if f.kind in (HALVES, BRIDGE):
            sides = [set(side) for side in f.params["sides"]]
            assert sides[0] and sides[1] and not sides[0] & sides[1]
            bridge = {f.params["bridge"]} if f.kind == BRIDGE else set()
            assert sides[0] | sides[1] | bridge == nodes
        if f.kind == LOSS:
            assert f.params["percent"] in (10, 30)
            assert set(f.network().loss) == {tuple(sorted(p)) for p in f.params["links"]}


def _check_down(schedule: Schedule) -> None:
    """Replay the timeline: at every action, the nodes killed, paused, back for less than GAP
    or cut off from the largest connected group are at most MAX_DOWN and a minority. Symbolic
    targets count as separate nodes (the generator cannot know whom they name)."""
    down: set[str] = set()
    back_at: dict[str, float] = {}
    cut: set[str] = set()
    n = len(schedule.nodes)
    for action in timeline(schedule):
        if action.op in ("kill", "stop"):
            down |= set(action.targets)
        elif action.op in ("start", "cont"):
            down -= set(action.targets)
            back_at.update(dict.fromkeys(action.targets, action.at))
        else:
            cut = _cut_off(schedule.nodes, action.network())
        recovering = {node for node, t in back_at.items() if action.at - t < GAP}
        count = len(down | cut | recovering)
        assert count <= min(MAX_DOWN, n - majority(n)), (schedule.seed, action)
    for f in (f for f in schedule.faults if f.symbolic):  # overlaps no other process fault
        others = [
            g
            for g in schedule.faults
            if g is not f
            and g.kind in PROCESS_KINDS
            and g.at < f.down_until(GAP)
            and f.at < g.down_until(GAP)
        ]
        assert not others, (f, others)


def _cut_off(nodes: tuple[str, ...], state: NetworkState) -> set[str]:
    """The nodes outside the largest group that can reach each other (directly or through
    others: a bridge node joins its two sides)."""
    groups: list[set[str]] = []
    for node in nodes:
        linked = [
            g for g in groups if any(tuple(sorted((node, m))) not in state.blocked for m in g)
        ]
        merged = {node}.union(*linked)
        groups = [g for g in groups if g not in linked] + [merged]
    largest = max(groups, key=len)
    return set(nodes) - largest


def test_small_clusters_never_get_a_triple() -> None:
    for seed in range(50):
        schedule = make_schedule(seed, NODES[:5], 90.0)
        assert TRIPLE not in schedule.counts()


# --- the timeline -------------------------------------------------------------------------------


class FakeCluster:
    """Runs a timeline: checks each action makes sense for the nodes' states, resolving roles
    as a runner would (the coordinator: the first node up; the standby: the second)."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        self.nodes = nodes
        self.killed: set[str] = set()
        self.stopped: set[str] = set()
        self.network = NetworkState()
        self.resolved: dict[int, tuple[str, ...]] = {}

    def targets(self, action: Action) -> tuple[str, ...]:
        if action.fault not in self.resolved:  # a fault's starting action resolves its roles
            up = [n for n in self.nodes if n not in self.killed | self.stopped]
            self.resolved[action.fault] = resolve_targets(
                action.targets, up[0], up[1], self.nodes, avoid=self.killed | self.stopped
            )
        return self.resolved[action.fault]

    def run(self, action: Action) -> None:
        if action.op in ("network", "heal"):
            assert self.network.healthy or action.op == "heal", "network faults overlap"
            self.network = action.network()
            return
        targets = self.targets(action)
        assert len(targets) == len(action.targets)
        if action.op == "kill":
            assert not set(targets) & (self.killed | self.stopped), action
            self.killed |= set(targets)
        elif action.op == "start":
            assert set(targets) <= self.killed, action
            self.killed -= set(targets)
        elif action.op == "stop":
            assert not set(targets) & (self.killed | self.stopped), action
            self.stopped |= set(targets)
        else:
            assert action.op == "cont" and set(targets) <= self.stopped, action
            self.stopped -= set(targets)


def test_timeline_is_sorted_and_restores_everything(schedules: list[Schedule]) -> None:
    for schedule in schedules:
        actions = timeline(schedule)
        assert [a.at for a in actions] == sorted(a.at for a in actions)
        assert len(actions) == 2 * len(schedule.faults)
        cluster = FakeCluster(schedule.nodes)
        for action in actions:
            cluster.run(action)
        assert not cluster.killed and not cluster.stopped, schedule.describe()
        assert cluster.network.healthy and actions[-1].at < schedule.duration


def test_restart_kills_then_starts_at_once() -> None:
    schedule = Schedule(1, NODES, 30.0, (Fault(5.0, RESTART, ("n2",), 0.0),))
    assert [(a.at, a.op, a.targets) for a in timeline(schedule)] == [
        (5.0, "kill", ("n2",)),
        (5.0, "start", ("n2",)),
    ]


def test_network_actions_carry_the_whole_state() -> None:
    sides = [["n1", "n2", "n3"], ["n4", "n5"]]
    halves = Fault(2.0, HALVES, ("n4", "n5"), 5.0, {"sides": sides})
    loss = Fault(10.0, LOSS, ("n1", "n2"), 4.0, {"percent": 30, "links": [["n2", "n1"]]})
    actions = timeline(Schedule(1, NODES[:5], 30.0, (halves, loss)))
    assert [a.op for a in actions] == ["network", "heal", "network", "heal"]
    blocked, lost = actions[0].network().arguments()
    assert blocked == cross_pairs(*sides) and len(blocked) == 6 and lost == {}
    assert actions[1].network() == NetworkState()
    assert actions[2].network().arguments() == (frozenset(), {("n1", "n2"): 30})
    assert NetworkState.from_json(json.loads(json.dumps(actions[2].params))) == loss.network()
    assert json.loads(json.dumps(actions[0].to_json()))["op"] == "network"
    with pytest.raises(ValueError, match="sets no network state"):
        timeline(Schedule(1, NODES, 30.0, (Fault(5.0, KILL, ("n2",), 3.0),)))[0].network()


@pytest.mark.parametrize(
    ("targets", "coordinator", "standby", "avoid", "want"),
    [
        ((COORDINATOR,), "n3", "n4", (), ("n3",)),
        ((STANDBY,), "n3", None, (), ()),  # nobody is standby: nothing to hit
        ((COORDINATOR, STANDBY, "n7"), "n3", "n4", (), ("n3", "n4", "n7")),
        ((COORDINATOR, STANDBY, "n3"), "n3", "n4", (), ("n3", "n4", "n1")),  # n3 taken: a spare
        ((COORDINATOR, STANDBY, "n4"), "n4", "n1", ("n2",), ("n4", "n1", "n3")),
        (("n5",), "n3", "n4", (), ("n5",)),
    ],
)
def test_resolve_targets(
    targets: tuple[str, ...],
    coordinator: str,
    standby: str | None,
    avoid: tuple[str, ...],
    want: tuple[str, ...],
) -> None:
    assert resolve_targets(targets, coordinator, standby, NODES, avoid) == want
