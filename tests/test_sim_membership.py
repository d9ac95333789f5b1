"""Seeded simulations of whole clusters (virtual time): completeness, accuracy, dissemination,
rejoin, partitions, determinism. Every failing seed replays exactly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from idunno.membership.config import preset
from idunno.membership.core import MemberChanged, MembershipCore
from idunno.membership.messages import Status
from idunno.testing import NetConfig, SimCluster

LAN = preset("lan")
DETECT_BOUND = 2.5  # the design target for N=10 on the lan preset


class Invariants:
    """Checked on every membership change any node reports (i.e. after every step).

    - each report's `old` is the status that observer last reported for that member;
    - per observer, a member's incarnation never decreases;
    - gone -> alive needs a strictly higher incarnation; left only ever becomes alive;
    - a node never sees itself failed, and sees itself left only after leave();
    - the observer's live count matches its member table.
    """

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self._last: dict[tuple[int, str], tuple[Status, int]] = {}
        self._cores: list[MembershipCore] = []  # keeps ids unique for the run
        self.count = 0
        for name in cluster.names:  # the bootstrap view, set up before any listener existed
            core = cluster.core(name)
            self._cores.append(core)
            for m in core.members.values():
                if m.name != name:
                    self._last[(id(core), m.name)] = (m.status, m.incarnation)
        cluster.listeners.append(self)

    def __call__(self, now: float, observer: str, ch: MemberChanged) -> None:
        self.count += 1
        core = self.cluster.core(observer)
        if core not in self._cores:
            self._cores.append(core)
        key = (id(core), ch.name)
        last = self._last.get(key)
        where = f"seed {self.cluster.seed} t={now:.3f} {observer} sees {ch}"
        if last is None:
            assert ch.old is None or ch.name == observer, where
        else:
            last_status, last_inc = last
            assert ch.old == last_status, where
            assert ch.incarnation >= last_inc, where
            if last_status.gone and ch.new == Status.ALIVE:
                assert ch.incarnation > last_inc, where
            if last_status == Status.LEFT:
                assert ch.new == Status.ALIVE, where
        if ch.name == observer:
            assert ch.new != Status.FAILED, where
            assert ch.new != Status.LEFT or core.leaving, where
        live = sum(1 for m in core.members.values() if not m.status.gone)
        assert core.live_count() == live, where
        self._last[key] = (ch.new, ch.incarnation)


def sim(n: int, seed: int, net: NetConfig | None = None, **kw: bool) -> SimCluster:
    c = SimCluster(n, LAN, seed=seed, net=net, **kw)
    Invariants(c)
    return c


def everyone_sees(c: SimCluster, member: str, status: Status) -> Callable[[], bool]:
    return lambda: all(c.status(o, member) == status for o in c.live_names() if o != member)


def all_alive(c: SimCluster) -> Callable[[], bool]:
    names = c.live_names()
    return lambda: all(c.status(a, b) == Status.ALIVE for a in names for b in names)


def failures(c: SimCluster, since: float = 0.0) -> list[tuple[float, str, str]]:
    return [(t, o, ch.name) for t, o, ch in c.changes if ch.new == Status.FAILED and t >= since]


def seen_incarnation(c: SimCluster, member: str) -> int:
    return min(c.core(o).members[member].incarnation for o in c.live_names() if o != member)


# --- completeness -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_crash_is_detected_by_every_live_node_within_bound(seed: int) -> None:
    c = sim(10, seed)
    c.run_until(3.0 + 0.037 * seed)  # vary the phase of the probe schedule
    victim = f"n{seed % 10}"
    c.crash(victim)
    crashed_at = c.now
    assert c.run_for(DETECT_BOUND, everyone_sees(c, victim, Status.FAILED)), (
        f"seed {seed}: not detected within {DETECT_BOUND}s: "
        f"{ {o: c.status(o, victim) for o in c.live_names()} }"
    )
    c.run_for(10.0)
    assert everyone_sees(c, victim, Status.FAILED)()  # no flapping back
    assert {name for _, _, name in failures(c)} == {victim}  # and nobody else
    assert all(t >= crashed_at for t, _, _ in failures(c))


@pytest.mark.parametrize("seed", range(5))
def test_paused_node_is_detected_then_refutes_on_resume(seed: int) -> None:
    """SIGSTOP analogue: silent but not dead; after SIGCONT it must win its name back."""
    c = sim(10, seed)
    c.run_until(3.0)
    c.pause("n4")
    assert c.run_for(DETECT_BOUND, everyone_sees(c, "n4", Status.FAILED))
    declared = seen_incarnation(c, "n4")
    c.run_for(3.0)
    c.resume("n4")
    resumed_at = c.now
    assert c.run_for(2.0, everyone_sees(c, "n4", Status.ALIVE))
    assert seen_incarnation(c, "n4") > declared
    assert c.core("n4").incarnation > declared
    assert c.run_for(10.0, all_alive(c))
    # The resumed node's stale timers may raise suspicions, but nobody is declared failed.
    assert failures(c, since=resumed_at) == []


# --- accuracy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "duplicate", "seed"),
    [(0.1, 0.0, s) for s in range(3)] + [(0.1, 0.2, s) for s in range(3)],
)
def test_no_false_failures_under_loss(drop: float, duplicate: float, seed: int) -> None:
    c = sim(10, seed, NetConfig(drop=drop, duplicate=duplicate))
    false_failures: list[tuple[float, str, str, int]] = []
    suspicions = 0

    def watch(now: float, observer: str, ch: MemberChanged) -> None:
        nonlocal suspicions
        suspicions += ch.new == Status.SUSPECT
        if ch.new == Status.FAILED:
            false_failures.append((now, observer, ch.name, ch.incarnation))

    c.listeners.append(watch)
    c.run_until(600.0)
    assert false_failures == []
    assert suspicions > 0  # the loss really did provoke suspicions, and all were refuted
    assert not any(m.status.gone for n in c.names for m in c.core(n).members.values())


@pytest.mark.slow
def test_no_false_failures_under_loss_more_seeds() -> None:
    for seed in range(3, 6):  # with the 3 above: 6 seeds of 600 s at 10% loss
        c = sim(10, seed, NetConfig(drop=0.1))
        c.run_until(600.0)
        assert failures(c) == [], f"seed {seed}"


# --- dissemination ----------------------------------------------------------------------

LEAVE_BOUND = 1.0  # measured at most 0.21 s over 5 seeds at N=50


@pytest.mark.parametrize("seed", range(3))
def test_leave_reaches_all_50_nodes_as_left(seed: int) -> None:
    c = sim(50, seed)
    c.run_until(3.0)
    c.leave("n7")
    others = [n for n in c.names if n != "n7"]
    assert c.run_for(LEAVE_BOUND, lambda: all(c.status(o, "n7") == Status.LEFT for o in others))
    c.run_for(10.0)
    assert all(c.status(o, "n7") == Status.LEFT for o in others)
    assert failures(c) == []  # a departure is never mistaken for a failure
    assert c.live_names() == others  # the leaver stopped after its linger


# --- rejoin -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_restarted_node_rejoins_with_a_higher_incarnation(seed: int) -> None:
    c = sim(10, seed)
    c.run_until(3.0)
    c.crash("n5")
    assert c.run_for(DETECT_BOUND, everyone_sees(c, "n5", Status.FAILED))
    declared = seen_incarnation(c, "n5")
    c.run_for(1.0)
    c.restart("n5", seeds=(c.names["n0"],))
    assert c.core("n5").incarnation == 0  # a fresh process
    rejoined = c.run_for(
        2.0,
        lambda: everyone_sees(c, "n5", Status.ALIVE)() and c.core("n5").live_count() == 10,
    )
    assert rejoined
    assert seen_incarnation(c, "n5") > declared
    assert c.run_for(5.0, all_alive(c))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("linger_first", [True, False])
def test_left_node_can_come_back(linger_first: bool, seed: int) -> None:
    """A departed name rejoins with a higher incarnation; restarting during the old process's
    leave linger must not let the old process's exit stop the new one."""
    c = sim(10, seed)
    c.run_until(3.0)
    c.leave("n8")
    if linger_first:
        assert c.run_for(1.0, everyone_sees(c, "n8", Status.LEFT))
    c.restart("n8", seeds=(c.names["n1"],))
    assert c.run_for(3.0, lambda: all_alive(c)() and "n8" in c.live_names())
    c.run_for(2.0)
    assert "n8" in c.live_names()
    assert seen_incarnation(c, "n8") > 0
    assert failures(c) == []


# --- partitions -------------------------------------------------------------------------

HEAL_BOUND = 2 * LAN.reconnect_interval + 2.0  # measured at most 4.1 s over 100 seeds


def _split_and_heal(seed: int) -> None:
    c = sim(10, seed)
    side_a = [f"n{i}" for i in range(5)]
    side_b = [f"n{i}" for i in range(5, 10)]
    side = {n: 0 for n in side_a} | {n: 1 for n in side_b}
    wrong: list[tuple[float, str, str]] = []

    def same_side_failure(now: float, observer: str, ch: MemberChanged) -> None:
        if ch.new == Status.FAILED and side[observer] == side[ch.name]:
            wrong.append((now, observer, ch.name))

    c.listeners.append(same_side_failure)
    c.run_until(2.0)
    c.net.partition([c.names[n] for n in side_a], [c.names[n] for n in side_b])

    def split() -> bool:
        return all(
            c.status(a, b) == Status.FAILED and c.status(b, a) == Status.FAILED
            for a in side_a
            for b in side_b
        )

    # Suspicions get no confirmations across the cut: up to the maximum timeout, plus probing.
    assert c.run_for(10.0, split), f"seed {seed}: the sides did not give each other up"
    assert all(c.status(a, b) == Status.ALIVE for a in side_a for b in side_a)
    assert all(c.status(a, b) == Status.ALIVE for a in side_b for b in side_b)
    c.run_for(2.0)
    c.net.heal()
    healed = c.run_for(HEAL_BOUND, all_alive(c))
    assert healed, f"seed {seed}: reconnect push-pull did not heal within {HEAL_BOUND}s"
    # Merging the other side's stale "failed" rows makes members suspect each other after the
    # heal; every one of them must refute in time.
    assert wrong == [], f"seed {seed}"


@pytest.mark.parametrize("seed", range(5))
def test_partition_splits_then_heals(seed: int) -> None:
    _split_and_heal(seed)


@pytest.mark.slow
def test_partition_heals_without_false_failures_over_many_seeds() -> None:
    for seed in range(5, 100):
        _split_and_heal(seed)


# --- determinism ------------------------------------------------------------------------


def _scenario(seed: int) -> list[tuple[float, str, MemberChanged]]:
    c = SimCluster(10, LAN, seed=seed, net=NetConfig(drop=0.1, duplicate=0.1))
    c.run_until(3.0)
    c.crash("n3")
    c.run_until(8.0)
    c.pause("n6")
    c.run_until(12.0)
    c.resume("n6")
    c.run_until(20.0)
    return c.changes


def test_same_seed_same_history() -> None:
    first, second = _scenario(7), _scenario(7)
    assert len(first) > 50
    assert first == second


def test_different_seeds_differ() -> None:
    assert _scenario(7) != _scenario(8)


_DIGEST = """
import hashlib
from idunno.membership.config import preset
from idunno.testing import NetConfig, SimCluster
c = SimCluster(10, preset("lan"), seed=3, net=NetConfig(drop=0.1, duplicate=0.1))
c.run_until(3.0); c.crash("n2"); c.run_until(10.0)
print(hashlib.sha256(repr(c.changes).encode()).hexdigest())
"""


def test_history_does_not_depend_on_the_hash_seed() -> None:
    """Replaying a seed must work in a fresh process too (no set/dict-of-str order leaks)."""
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    assert len(next(iter(digests))) == len(hashlib.sha256().hexdigest())


# --- joining ----------------------------------------------------------------------------

# Gossip usually spreads every newcomer in ~0.2 s; in about 1 seed out of 10 one node misses a
# newcomer's Alive and only the periodic push-pull (20 s) completes the view.
JOIN_BOUND = LAN.push_pull_interval + 2.0


@pytest.mark.parametrize("seed", range(10))
def test_nodes_join_through_a_seed_without_bootstrap(seed: int) -> None:
    c = sim(8, seed, bootstrap=False)
    assert c.core("n3").live_count() == 1  # really alone at the start
    assert c.run_until(JOIN_BOUND, all_alive(c))
    assert all(c.core(n).live_count() == 8 for n in c.names)
    assert failures(c) == []


def test_late_joiner_is_learned_by_everyone() -> None:
    c = sim(10, 4)
    c.run_until(5.0)
    c.add_node("late", seeds=(c.names["n0"],))
    assert c.run_for(JOIN_BOUND, all_alive(c))
    assert failures(c) == []
