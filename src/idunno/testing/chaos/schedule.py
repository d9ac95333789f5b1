"""Seeded nemesis schedules: which faults hit the cluster when, and the timeline of concrete
actions (kill/start/stop/cont/network/heal) a runner executes in order.

    schedule = make_schedule(7, ["n1", ..., "n10"], duration=120.0)
    for action in timeline(schedule):
        wait_until(action.at)
        execute(action)  # network/heal: cluster.set_network(*action.network().arguments())

The generator keeps every fault inside the failure model the system promises to survive, so an
anomaly the checker reports afterwards is a bug, not an impossible demand:
  - at most `max_down` (3) nodes down at any moment and a majority up. Down counts killed and
    paused nodes, the minority side of a halves partition, and a node for `gap` seconds after it
    comes back (it must rejoin and catch up before it counts as a replica again). A bridge
    partition cuts nobody off (the bridge joins both sides) and loss takes no node down;
  - one network state at a time: network faults never overlap;
  - every start and end of a fault is at least `gap` seconds from every other one, so the
    cluster can detect each change and react before the next;
  - every fault ends at least `gap` seconds before `duration`.

Roles: the coordinator and its standby are only known at run time, so process faults may name
the symbolic targets "@coordinator" and "@standby" (`resolve_targets` maps them to nodes). A
fault with a symbolic target never overlaps another process fault, so its resolution cannot
collide with a node that is already down; its ending action (start/cont) names the same symbols
and means the nodes its starting action resolved them to (`Action.fault` links the two).
Everything else is concrete.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KILL = "kill"  # SIGKILL; restarted on the same data dir when the fault ends
PAUSE = "pause"  # SIGSTOP, then SIGCONT when the fault ends
HALVES = "partition_halves"  # a majority and a minority that cannot talk
BRIDGE = "partition_bridge"  # two sides that cannot talk, one node talking to both
LOSS = "loss"  # a percentage of packets lost on a few links
RESTART = "restart"  # SIGKILL then an immediate restart on the same data dir
TRIPLE = "triple"  # the coordinator, its standby and a third node killed at once
KINDS = (KILL, PAUSE, HALVES, BRIDGE, LOSS, RESTART, TRIPLE)
PROCESS_KINDS = frozenset({KILL, PAUSE, RESTART, TRIPLE})
NETWORK_KINDS = frozenset({HALVES, BRIDGE, LOSS})

COORDINATOR = "@coordinator"
STANDBY = "@standby"
ROLES = (COORDINATOR, STANDBY)

# Action ops: what a runner does (kill/start: SIGKILL/spawn; stop/cont: SIGSTOP/SIGCONT;
# network/heal: set_network with the action's complete network state).
OP_KILL, OP_START, OP_STOP, OP_CONT, OP_NETWORK, OP_HEAL = (
    "kill",
    "start",
    "stop",
    "cont",
    "network",
    "heal",
)

GAP = 2.0  # seconds between any two fault events (failure detection takes about that long)
MAX_DOWN = 3  # the store keeps 4 replicas: 3 may be down at once
LOSS_PERCENTS = (10, 30)
MAX_LOSS_LINKS = 3
ROLE_CHANCE = 0.35  # chance that a one-node process fault targets a role, not a fixed node
DRAWS = 8  # faults drawn at one candidate time before moving on to the next
DURATIONS = {  # seconds, (shortest, longest)
    KILL: (3.0, 10.0),
    PAUSE: (2.0, 8.0),
    HALVES: (4.0, 12.0),
    BRIDGE: (4.0, 12.0),
    LOSS: (4.0, 12.0),
    RESTART: (0.0, 0.0),
    TRIPLE: (4.0, 10.0),
}

Pair = tuple[str, str]


def _pair(a: str, b: str) -> Pair:
    """An unordered link, spelled one way (a < b) so that equal states compare equal."""
    return (a, b) if a < b else (b, a)


def cross_pairs(left: Iterable[str], right: Iterable[str]) -> frozenset[Pair]:
    """Every link between a node of `left` and a node of `right`."""
    others = list(right)
    return frozenset(_pair(a, b) for a in left for b in others)


@dataclass(frozen=True)
class NetworkState:
    """A complete network state, as the harness's declarative `set_network(blocked, loss)` takes
    it: a blocked pair exchanges no packet either way, a loss pair loses that percentage of its
    packets in each direction. Pairs are unordered (spelled a < b). Not hashable (a dict)."""

    blocked: frozenset[Pair] = frozenset()
    loss: Mapping[Pair, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.blocked and not self.loss

    def arguments(self) -> tuple[frozenset[Pair], dict[Pair, int]]:
        """(blocked, loss), the arguments of `set_network`."""
        return self.blocked, dict(self.loss)

    def to_json(self) -> dict[str, Any]:
        return {
            "blocked": [list(p) for p in sorted(self.blocked)],
            "loss": [[a, b, percent] for (a, b), percent in sorted(self.loss.items())],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NetworkState:
        return cls(
            frozenset(_pair(str(a), str(b)) for a, b in obj.get("blocked", ())),
            {_pair(str(a), str(b)): int(p) for a, b, p in obj.get("loss", ())},
        )


HEALED = NetworkState()


@dataclass(frozen=True)
class Fault:
    """One fault: `kind` hits `targets` at `at` seconds from the start for `duration` seconds.

    params: partition_halves {"sides": [majority, minority]} (targets: the minority);
    partition_bridge {"sides": [side, side], "bridge": node} (targets: the bridge);
    loss {"percent": 10|30, "links": [[a, b], ...]} (targets: the nodes on those links);
    the process kinds have none."""

    at: float
    kind: str
    targets: tuple[str, ...]
    duration: float
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return round(self.at + self.duration, 3)  # times are kept to the millisecond

    @property
    def symbolic(self) -> bool:
        return any(t in ROLES for t in self.targets)

    def network(self) -> NetworkState:
        """The network state this fault sets (healthy for a process fault)."""
        if self.kind in (HALVES, BRIDGE):
            left, right = self.params["sides"]
            return NetworkState(cross_pairs(left, right))
        if self.kind == LOSS:
            percent = int(self.params["percent"])
            return NetworkState(loss={_pair(a, b): percent for a, b in self.params["links"]})
        return HEALED

    def down(self) -> tuple[str, ...]:
        """The nodes this fault takes down or cuts off from the majority."""
        return self.targets if self.kind in PROCESS_KINDS or self.kind == HALVES else ()

    def down_until(self, gap: float) -> float:
        """When the nodes it took down count as up again: `gap` after they come back."""
        return round(self.end + gap, 3)

    def events(self) -> tuple[float, ...]:
        """The times at which this fault changes the cluster."""
        return (self.at,) if self.duration == 0 else (self.at, self.end)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": self.kind,
            "targets": list(self.targets),
            "duration": self.duration,
            "params": dict(self.params),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Fault:
        return cls(
            float(obj["at"]),
            str(obj["kind"]),
            tuple(str(t) for t in obj["targets"]),
            float(obj["duration"]),
            dict(obj.get("params") or {}),
        )


@dataclass(frozen=True)
class Schedule:
    seed: int
    nodes: tuple[str, ...]
    duration: float
    faults: tuple[Fault, ...]

    def counts(self) -> dict[str, int]:
        """Faults by kind."""
        return dict(Counter(f.kind for f in self.faults))

    def describe(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts().items()))
        return (
            f"seed {self.seed}: {len(self.faults)} faults in {self.duration:g} s on "
            f"{len(self.nodes)} nodes ({kinds or 'none'})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "nodes": list(self.nodes),
            "duration": self.duration,
            "faults": [f.to_json() for f in self.faults],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Schedule:
        return cls(
            int(obj["seed"]),
            tuple(str(n) for n in obj["nodes"]),
            float(obj["duration"]),
            tuple(Fault.from_json(f) for f in obj["faults"]),
        )


# --- generation ---------------------------------------------------------------------------------


def majority(n: int) -> int:
    return n // 2 + 1


def make_schedule(
    seed: int,
    nodes: Sequence[str],
    duration: float,
    *,
    kinds: Sequence[str] = KINDS,
    roles: bool = True,
    gap: float = GAP,
    max_down: int = MAX_DOWN,
) -> Schedule:
    """A random schedule of faults over `duration` seconds, the same for the same seed and set
    of nodes (in any order). `roles`: let process faults target "@coordinator"/"@standby" (a
    triple always does when true; without roles it kills three fixed nodes). Candidate times
    are 1-3 `gap`s apart; at each one up to DRAWS faults are drawn and the first one that keeps
    the constraints of the module docstring is kept (so some times stay quiet)."""
    names = tuple(sorted(set(nodes)))
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose among {KINDS}")
    if len(names) < 3:
        raise ValueError(f"a schedule needs at least 3 nodes, not {len(names)}")
    rng = random.Random(seed)
    plan = _Plan(gap, min(max_down, len(names) - majority(len(names))))
    t = gap
    while True:
        at = round(t + rng.uniform(0.0, 2.0 * gap), 3)
        if at + gap > duration:
            break
        for _ in range(DRAWS):
            fault = _draw(rng, rng.choice(kinds), at, names, duration - gap, roles, plan.limit)
            if fault is not None and plan.fits(fault):
                plan.faults.append(fault)
                break
        t = at + gap
    return Schedule(seed, names, duration, tuple(plan.faults))


def _draw(
    rng: random.Random,
    kind: str,
    at: float,
    names: tuple[str, ...],
    last_end: float,
    roles: bool,
    limit: int,
) -> Fault | None:
    """A random fault of `kind` starting at `at` and ending by `last_end` (None if none fits)."""
    lo, hi = DURATIONS[kind]
    span = round(min(rng.uniform(lo, hi), last_end - at), 3)
    if span < lo:
        return None
    if kind == TRIPLE:
        if limit < 3:
            return None
        three = (COORDINATOR, STANDBY, rng.choice(names)) if roles else rng.sample(names, 3)
        return Fault(at, kind, tuple(three), span)
    if kind in PROCESS_KINDS:
        return Fault(at, kind, (_one_target(rng, names, roles),), span)
    if kind == HALVES:
        return _halves(rng, at, names, span, limit)
    if kind == BRIDGE:
        return _bridge(rng, at, names, span)
    return _loss(rng, at, names, span)


def _halves(
    rng: random.Random, at: float, names: tuple[str, ...], span: float, limit: int
) -> Fault | None:
    """A minority of 1..limit nodes cut off from the rest (it counts as down)."""
    largest = min(limit, (len(names) - 1) // 2)
    if largest < 1:
        return None
    minority = sorted(rng.sample(names, rng.randint(1, largest)))
    rest = [n for n in names if n not in minority]
    return Fault(at, HALVES, tuple(minority), span, {"sides": [rest, minority]})


def _bridge(rng: random.Random, at: float, names: tuple[str, ...], span: float) -> Fault:
    """Two halves of the other nodes that cannot talk; the bridge talks to both."""
    bridge = rng.choice(names)
    others = [n for n in names if n != bridge]
    rng.shuffle(others)
    half = len(others) // 2
    sides = [sorted(others[:half]), sorted(others[half:])]
    return Fault(at, BRIDGE, (bridge,), span, {"sides": sides, "bridge": bridge})


def _loss(rng: random.Random, at: float, names: tuple[str, ...], span: float) -> Fault:
    links = rng.sample(list(itertools.combinations(names, 2)), rng.randint(1, MAX_LOSS_LINKS))
    params = {"percent": rng.choice(LOSS_PERCENTS), "links": [list(p) for p in sorted(links)]}
    return Fault(at, LOSS, tuple(sorted({n for p in links for n in p})), span, params)


def _one_target(rng: random.Random, names: tuple[str, ...], roles: bool) -> str:
    if roles and rng.random() < ROLE_CHANCE:
        return COORDINATOR if rng.random() < 0.7 else STANDBY
    return rng.choice(names)


@dataclass
class _Plan:
    """The faults kept so far and the constraints a new one must keep."""

    gap: float
    limit: int  # nodes that may be down at once
    faults: list[Fault] = field(default_factory=list)

    def fits(self, fault: Fault) -> bool:
        return (
            self._spaced(fault)
            and self._one_network(fault)
            and self._process_faults_compatible(fault)
            and self._few_down(fault)
        )

    def _spaced(self, fault: Fault) -> bool:
        """Every event of the new fault is `gap` away from every other event."""
        times = [t for f in self.faults for t in f.events()]
        return all(abs(a - b) >= self.gap for a in fault.events() for b in times)

    def _one_network(self, fault: Fault) -> bool:
        if fault.kind not in NETWORK_KINDS:
            return True
        return all(
            f.end <= fault.at or fault.end <= f.at for f in self.faults if f.kind in NETWORK_KINDS
        )

    def _overlapping(self, fault: Fault) -> list[Fault]:
        """The kept faults whose down time overlaps the new fault's."""
        start, stop = fault.at, fault.down_until(self.gap)
        return [f for f in self.faults if f.at < stop and start < f.down_until(self.gap)]

    def _process_faults_compatible(self, fault: Fault) -> bool:
        """No node is hit by two process faults at once, and a fault with a symbolic target
        overlaps no other process fault (its resolution must not land on a down node)."""
        if fault.kind not in PROCESS_KINDS:
            return True
        for other in self._overlapping(fault):
            if other.kind not in PROCESS_KINDS:
                continue
            if fault.symbolic or other.symbolic or set(fault.targets) & set(other.targets):
                return False
        return True

    def _few_down(self, fault: Fault) -> bool:
        """At most `limit` nodes down at every moment of the new fault's down time. Down sets
        only grow when a fault starts, so checking at those starts is enough."""
        overlapping = [*self._overlapping(fault), fault]
        starts = {f.at for f in overlapping if f.at >= fault.at} | {fault.at}
        for s in starts:
            down = {n for f in overlapping if f.at <= s < f.down_until(self.gap) for n in f.down()}
            if len(down) > self.limit:
                return False
        return True


# --- the timeline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One thing the runner does at `at` seconds: kill/start/stop/cont `targets` (resolve
    symbolic ones with `resolve_targets`; an ending action reuses its fault's resolution), or
    network/heal: make `network()` the whole network state. `params` is JSON (for the history)."""

    at: float
    op: str
    targets: tuple[str, ...]
    params: Mapping[str, Any]
    fault: int  # index of the fault in Schedule.faults

    def network(self) -> NetworkState:
        if self.op not in (OP_NETWORK, OP_HEAL):
            raise ValueError(f"a {self.op} action sets no network state")
        return NetworkState.from_json(self.params)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "op": self.op,
            "targets": list(self.targets),
            "params": dict(self.params),
            "fault": self.fault,
        }


def timeline(schedule: Schedule) -> list[Action]:
    """Every action of the schedule by time (a restart's kill before its start). Each fault's
    ending action undoes it, so after the last one every node runs and the network is healed."""
    actions = [a for i, f in enumerate(schedule.faults) for a in _actions(i, f)]
    return sorted(actions, key=lambda a: (a.at, a.fault))  # stable: a fault's own order stays


def _actions(index: int, fault: Fault) -> list[Action]:
    targets = fault.targets
    if fault.kind in NETWORK_KINDS:
        return [
            Action(fault.at, OP_NETWORK, (), fault.network().to_json(), index),
            Action(fault.end, OP_HEAL, (), HEALED.to_json(), index),
        ]
    if fault.kind == PAUSE:
        return [
            Action(fault.at, OP_STOP, targets, {}, index),
            Action(fault.end, OP_CONT, targets, {}, index),
        ]
    return [  # kill, triple, restart (duration 0: the start follows the kill at once)
        Action(fault.at, OP_KILL, targets, {}, index),
        Action(fault.end, OP_START, targets, {}, index),
    ]


def resolve_targets(
    targets: Sequence[str],
    coordinator: str | None,
    standby: str | None,
    nodes: Sequence[str],
    avoid: Collection[str] = (),
) -> tuple[str, ...]:
    """The nodes `targets` name now: "@coordinator"/"@standby" become those nodes (a role
    nobody holds drops out), and a fixed target that a role already resolved to is replaced by
    the first node of `nodes` not chosen and not in `avoid` (so a triple still hits three
    distinct nodes). Call it once per fault, at its starting action."""
    roles = {COORDINATOR: coordinator, STANDBY: standby}
    out = list(dict.fromkeys(n for t in targets if t in roles and (n := roles[t])))
    for t in targets:
        if t in roles:
            continue
        node: str | None = t
        if t in out:  # a role already resolved to this node: hit a spare one instead
            spare = (s for s in nodes if s not in out and s not in targets and s not in avoid)
            node = next(spare, None)
        if node is not None and node not in out:
            out.append(node)
    return tuple(out)
