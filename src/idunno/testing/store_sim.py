"""Seeded, pure simulation of the store's repair protocol (`idunno.store.plan` + placement).

Nodes hold {name: plan.Holding} in memory. A repair round on one node does what
`StoreService.repair_round` does: it sends `plan.offers(...)`, each peer applies a newer offered
tombstone and replies with `plan.answer(...)`, the sender applies a tombstone it is told about
and pushes the versions the peer needs, and finally drops every file `plan.should_drop` says is
surplus, but only if every offer for that file (and every push) succeeded. (The service's
one-offerer-per-version promises, StoreService._claim, are not modelled: they only change who
pushes, and tests/test_store_pure.py checks their effect on drops with in-memory peers.)
Puts and deletes act like the gateway: a put commits the next version (above every live
member's top) on the file's replica set; a delete records a tombstone on every live member.

Faults: nodes are killed (their holdings lost, or kept for a later restart on the same
"disk"), restarted, added; offers and pushes fail at random; a replica discards a version as a
read would after finding it corrupt. Between two quiescent points at most min(R, live) - 1 kills
and discards happen (never more than `max_failures`): every version then had min(R, live)
copies, so this is the failure model the store promises to survive.

Invariants, checked after every step:
  - every acknowledged version among the newest `keep` above the tombstone has a live holder,
    and what a read would return (newest version above the newest tombstone among live
    members) is the newest acknowledged version, or nothing after a delete (no resurrection);
  - no version number is handed out twice for one name;
  - a repair round never leaves fewer than min(R, copies before the round) live copies of a
    version (or of the tombstone) the store still promises: surplus copies go only once handed off;
and after quiescence (rounds with no faults until nothing changes): every file is held by
exactly its R desired members, all with the same newest versions, and nobody else holds it.

    StoreSim(seed=7).run()   # raises InvariantViolation naming the seed and the recent steps
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from idunno.store import plan
from idunno.store.placement import replica_set


class InvariantViolation(AssertionError):
    """A simulated run broke a store guarantee; the message names the seed and recent steps."""


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 6  # members at the start
    replicas: int = 4
    keep: int = 5
    files: int = 6  # names in play
    steps: int = 160
    epoch_steps: int = 30  # steps between quiescent points
    max_failures: int = 3  # kills + discards between quiescent points (at most R - 1)
    offer_loss: float = 0.08  # a sync call fails
    push_loss: float = 0.08  # a replica push fails
    tombstone_miss: float = 0.2  # a non-target member misses a delete's tombstone
    max_passes: int = 12  # full rounds allowed to reach quiescence
    max_nodes: int = 10


@dataclass
class SimNode:
    name: str
    holdings: dict[str, plan.Holding] = field(default_factory=dict)


# --- what a node's disk does with a pushed version or a tombstone (mirrors DiskStore) ---------


def commit(h: plan.Holding | None, version: int, keep: int) -> plan.Holding:
    """`h` after committing `version` (ignored below a tombstone or below a full window)."""
    current = h or plan.Holding(())
    if current.tombstone >= version or version in current.versions:
        return current
    versions = current.versions
    if versions and version < min(versions) and len(versions) >= keep:
        return current
    return plan.Holding(tuple(sorted((*versions, version))[-keep:]), current.tombstone)


def apply_tombstone(h: plan.Holding | None, tombstone: int) -> plan.Holding:
    """`h` after a tombstone: every version at or below it is gone."""
    current = h or plan.Holding(())
    if current.tombstone >= tombstone:
        return current
    return plan.Holding(tuple(v for v in current.versions if v > tombstone), tombstone)


class StoreSim:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.live: dict[str, SimNode] = {}
        self.down: dict[str, SimNode] = {}  # killed; holdings kept (or emptied) for a restart
        self.names = [f"f{i}" for i in range(self.cfg.files)]
        self.acked: dict[str, set[int]] = {n: set() for n in self.names}
        self.deleted: dict[str, int] = {n: 0 for n in self.names}  # newest acked tombstone
        self.numbers: dict[str, set[int]] = {n: set() for n in self.names}  # every number used
        self.failures = 0  # since the last quiescent point
        # Failures the copies made at the last quiescent point survive: min(R, live) - 1.
        self.budget = min(self.cfg.max_failures, min(self.cfg.replicas, self.cfg.nodes) - 1)
        self.step_no = 0
        self.trace: list[str] = []
        self.stats: Counter[str] = Counter()
        self._serial = 0
        for _ in range(self.cfg.nodes):
            self.add_node()

    # --- bookkeeping ----------------------------------------------------------------------

    def _log(self, text: str) -> None:
        self.trace.append(f"[{self.step_no}] {text}")

    def fail(self, message: str) -> None:
        recent = "\n  ".join(self.trace[-25:])
        raise InvariantViolation(
            f"seed {self.seed}, step {self.step_no}: {message}\n  recent steps:\n  {recent}"
        )

    def members(self) -> list[str]:
        return sorted(self.live)

    def desired(self, name: str) -> list[str]:
        return replica_set(name, self.members(), self.cfg.replicas)

    def expected(self, name: str) -> tuple[int, ...]:
        """The versions the store promises to keep: newest `keep` acked above the tombstone."""
        floor = self.deleted[name]
        return tuple(sorted(v for v in self.acked[name] if v > floor)[-self.cfg.keep :])

    def readable(self, name: str) -> int | None:
        """What a get would return: like StoreService.choose over the live members."""
        found = [node.holdings[name] for node in self.live.values() if name in node.holdings]
        tomb = max((h.tombstone for h in found), default=0)
        return max((v for h in found for v in h.versions if v > tomb), default=None)

    def _top(self, name: str) -> int:
        return max(
            (node.holdings[name].top for node in self.live.values() if name in node.holdings),
            default=0,
        )

    def _number(self, name: str) -> int:
        """The authority's choice: above every live member's top for the name."""
        number = self._top(name) + 1
        if number in self.numbers[name]:
            self.fail(f"{name}: version number {number} handed out twice")
        self.numbers[name].add(number)
        return number

    # --- membership faults ----------------------------------------------------------------

    def add_node(self) -> str:
        self._serial += 1
        name = f"s{self._serial}"
        self.live[name] = SimNode(name)
        self._log(f"add {name}")
        return name

    def kill(self, name: str, lose_disk: bool) -> None:
        node = self.live.pop(name)
        if lose_disk:
            node.holdings = {}
        self.down[name] = node
        self.failures += 1
        self.stats["kills"] += 1
        self._log(f"kill {name}" + (" (disk lost)" if lose_disk else ""))

    def restart(self, name: str) -> None:
        self.live[name] = self.down.pop(name)
        self.stats["restarts"] += 1
        self._log(f"restart {name} holding {_show(self.live[name].holdings)}")

    def discard(self, name: str, file: str, version: int) -> None:
        """A read found `version` corrupt on `name`: the copy is removed (to be re-fetched)."""
        h = self.live[name].holdings[file]
        self.live[name].holdings[file] = plan.Holding(
            tuple(v for v in h.versions if v != version), h.tombstone
        )
        self.failures += 1
        self.stats["discards"] += 1
        self._log(f"discard {file} v{version} on {name}")

    # --- client operations ----------------------------------------------------------------

    def put(self, name: str) -> int | None:
        if len(self.live) < self.cfg.replicas:
            return None  # Unavailable: fewer live members than the replication factor
        targets = self.desired(name)
        version = self._number(name)
        for t in targets:
            node = self.live[t]
            node.holdings[name] = commit(node.holdings.get(name), version, self.cfg.keep)
            if version not in node.holdings[name].versions:
                self.fail(f"put {name} v{version}: {t} did not keep the new version")
        self.acked[name].add(version)
        self.stats["puts"] += 1
        self._log(f"put {name} v{version} on {targets}")
        return version

    def delete(self, name: str) -> int | None:
        if len(self.live) < self.cfg.replicas or self.readable(name) is None:
            return None
        targets = set(self.desired(name))
        tomb = self._number(name)
        missed = []
        for n, node in self.live.items():
            if n not in targets and self.rng.random() < self.cfg.tombstone_miss:
                missed.append(n)  # a non-target's failure does not fail the delete
                continue
            node.holdings[name] = apply_tombstone(node.holdings.get(name), tomb)
        self.deleted[name] = tomb
        self.stats["deletes"] += 1
        self._log(f"delete {name} tombstone {tomb} (missed by {sorted(missed)})")
        return tomb

    # --- the repair protocol --------------------------------------------------------------

    def round(self, me: str, faults: bool = True) -> bool:
        """One repair round on `me`; returns True if any holdings changed anywhere."""
        cfg = self.cfg
        node = self.live[me]
        live = self.members()
        before = self._snapshot()
        copies = self._copies(sorted(node.holdings))
        incomplete: set[str] = set()
        for offer in plan.offers(me, node.holdings, live, cfg.replicas):
            peer = self.live[offer.peer]
            if faults and self.rng.random() < cfg.offer_loss:
                incomplete.update(offer.files)
                continue
            for name, offered in offer.files.items():
                mine = peer.holdings.get(name)
                # The receiver first applies a newer tombstone it is told about (answer_sync).
                if offered.tombstone > (mine.tombstone if mine else 0):
                    mine = peer.holdings[name] = apply_tombstone(mine, offered.tombstone)
                ans = plan.answer(mine, offered, cfg.keep)
                if name not in node.holdings:
                    continue
                if ans.tombstone:
                    node.holdings[name] = apply_tombstone(node.holdings[name], ans.tombstone)
                for number in ans.needs:
                    have = node.holdings.get(name)
                    if have is None or number not in have.versions:
                        incomplete.add(name)  # nothing to push any more
                    elif faults and self.rng.random() < cfg.push_loss:
                        incomplete.add(name)
                    else:
                        peer.holdings[name] = commit(peer.holdings.get(name), number, cfg.keep)
                        self.stats["pushes"] += 1
        for name in sorted(node.holdings):
            if name not in incomplete and plan.should_drop(me, name, live, cfg.replicas):
                del node.holdings[name]
                self.stats["drops"] += 1
        self._check_copies(me, copies)
        changed = self._snapshot() != before
        if changed:
            self._log(f"round on {me}: now {_show(node.holdings)}")
        return changed

    def _copies(self, names: list[str]) -> dict[tuple[str, int], int]:
        """Live copies of every version the store promises (and of each acked tombstone, keyed
        by its negated number)."""
        out: dict[tuple[str, int], int] = {}
        for name in names:
            found = [n.holdings[name] for n in self.live.values() if name in n.holdings]
            exp = self.expected(name)
            for v in exp:
                out[name, v] = sum(1 for h in found if v in h.versions)
            tomb = self.deleted[name]
            if tomb and not exp:
                out[name, -tomb] = sum(1 for h in found if h.tombstone >= tomb)
        return out

    def _check_copies(self, me: str, before: dict[tuple[str, int], int]) -> None:
        """A round's drops must leave at least min(R, copies before the round) of each."""
        after = self._copies(sorted({name for name, _ in before}))
        for (name, v), copies in sorted(before.items()):
            if after[name, v] < min(self.cfg.replicas, copies):
                what = f"v{v}" if v > 0 else f"tombstone {-v}"
                self.fail(
                    f"round on {me} left {after[name, v]} copies of {name} {what}, had {copies}"
                )

    def _snapshot(self) -> dict[str, dict[str, plan.Holding]]:
        return {n: dict(node.holdings) for n, node in self.live.items()}

    def quiesce(self) -> int:
        """Fault-free rounds on every live member until nothing changes; returns the passes."""
        for passes in range(1, self.cfg.max_passes + 1):
            order = self.members()
            self.rng.shuffle(order)
            changed = False
            for me in order:
                changed |= self.round(me, faults=False)
            self.check()
            if not changed:
                return passes
        self.fail(f"no quiescence after {self.cfg.max_passes} passes")
        raise AssertionError("unreachable")

    # --- invariants -----------------------------------------------------------------------

    def check(self) -> None:
        """Invariants that hold after every step."""
        copies = self._copies(self.names)
        for name in self.names:
            exp = self.expected(name)
            for v in exp:
                if not copies[name, v]:
                    self.fail(f"{name} v{v} (acknowledged) has no live holder")
            want = exp[-1] if exp else None
            got = self.readable(name)
            if got != want:
                self.fail(f"a read of {name} returns {got}, expected {want}")

    def check_quiescent(self) -> None:
        """After quiescence: each file on exactly its desired members, identical everywhere."""
        self.check()
        live = self.members()
        for name in self.names:
            exp = self.expected(name)
            desired = self.desired(name)
            holding = {
                n: self.live[n].holdings[name] for n in live if name in self.live[n].holdings
            }
            extra = sorted(set(holding) - set(desired))
            if extra:
                self.fail(f"{name} still held by {extra}, outside its replica set {desired}")
            if not exp and not self.deleted[name]:
                if holding:
                    self.fail(f"{name} was never acknowledged but is held: {holding}")
                continue
            missing = sorted(set(desired) - set(holding))
            if missing:
                self.fail(f"{name}: desired members {missing} hold nothing of it")
            for n, h in holding.items():
                if h.versions != exp:
                    self.fail(f"{name} on {n} holds {h.versions}, expected {exp}")
                if h.tombstone < self.deleted[name]:
                    self.fail(f"{name} on {n} lacks tombstone {self.deleted[name]}: {h}")

    # --- driver ---------------------------------------------------------------------------

    def step(self) -> None:
        """One random action (weighted), then the invariants."""
        self.step_no += 1
        cfg, rng = self.cfg, self.rng
        roll = rng.random()
        budget = self.failures < self.budget
        if roll < 0.30:
            self.put(rng.choice(self.names))
        elif roll < 0.35:
            self.delete(rng.choice(self.names))
        elif roll < 0.65:
            self.round(rng.choice(self.members()))
        elif roll < 0.72:
            for me in self.members():
                self.round(me)
        elif roll < 0.80:
            if budget and len(self.live) > 1:
                self.kill(rng.choice(self.members()), lose_disk=rng.random() < 0.5)
        elif roll < 0.88:
            if self.down:
                self.restart(rng.choice(sorted(self.down)))
        elif roll < 0.93:
            if len(self.live) + len(self.down) < cfg.max_nodes:
                self.add_node()
        elif budget:
            held = [
                (n, f, v)
                for n in self.members()
                for f, h in sorted(self.live[n].holdings.items())
                for v in h.versions
            ]
            if held:
                self.discard(*rng.choice(held))
        self.check()

    def run(self) -> Counter[str]:
        """Run `steps` random steps with a quiescent check every `epoch_steps`; return stats."""
        cfg = self.cfg
        for i in range(1, self.cfg.steps + 1):
            self.step()
            if i % cfg.epoch_steps == 0 or i == cfg.steps:
                self.stats["passes"] += self.quiesce()
                self.check_quiescent()
                self.failures = 0
                self.budget = min(cfg.max_failures, min(cfg.replicas, len(self.live)) - 1)
                self.stats["quiescent_checks"] += 1
                if len(self.live) >= cfg.replicas:
                    self.stats["quiescent_with_r_live"] += 1
        return self.stats


def _show(holdings: dict[str, plan.Holding]) -> str:
    return (
        "{"
        + ", ".join(
            f"{n}: {list(h.versions)}" + (f"/t{h.tombstone}" if h.tombstone else "")
            for n, h in sorted(holdings.items())
        )
        + "}"
    )
