"""Membership with real `idunno node` processes on loopback: join, leave, crash, pause, rejoin."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from idunno.localcluster import HOST, is_running
from idunno.node.logs import read_events
from idunno.testing.procs import ProcCluster, wait_for
from tests.conftest import (
    IDUNNO,
    ClusterFactory,
    NodeStarter,
    all_alive,
    cli_env,
    popen_for,
    self_info,
    view,
    wait_all_alive,
)

pytestmark = pytest.mark.process

DETECT_TIMEOUT = 15.0  # `lan` detects a crash in about 2 s; generous for a busy 2-core machine


def transitions(c: ProcCluster, observer: str, member: str, since: float = 0.0) -> list[str]:
    """The statuses `observer` moved `member` to (at or after `since`), from its JSON log."""
    events = read_events(Path(c.nodes[observer].data_dir), "member_changed", since)
    return [e["new"] for e in events if e.get("member") == member]


def wait_exit(c: ProcCluster, name: str, timeout: float = 10.0) -> int:
    """Wait for node `name` to exit on its own and return its exit code."""
    nd = c.nodes[name]
    wait_for(lambda: not is_running(nd), timeout, f"{name} (pid {nd.pid}) to exit")
    return popen_for(nd.pid).wait(timeout=5)


def test_five_nodes_converge(cluster: ClusterFactory) -> None:
    c = cluster(5)
    names = sorted(c.nodes)
    assert names == ["n1", "n2", "n3", "n4", "n5"]
    # ProcCluster returns only once every node counts 5 alive; check each full view.
    wait_all_alive(c, names, timeout=10)
    for observer in names:
        rows = view(c, observer)
        assert sorted(rows) == names
        for name, row in rows.items():
            assert row["address"] == c.nodes[name].address
            assert row["status"] == "alive"
            assert isinstance(row["incarnation"], int)
            assert row["incarnation"] >= 0
        me = self_info(c, observer)
        assert me["id"] == observer
        assert me["status"] == "alive"
        assert me["live_members"] == 5
        assert me["pid"] == c.nodes[observer].pid
        assert me["dropped"] == {}  # peers only ever send well-formed, signed frames


def test_join_through_a_non_first_member(cluster: ClusterFactory, node_proc: NodeStarter) -> None:
    """There is no single introducer: with n1 (the first node) dead, a newcomer joins through
    n4 alone and the survivors and the newcomer converge."""
    c = cluster(5)
    # start_cluster seeds node i with up to three earlier nodes, so n5 joined without n1.
    joined = read_events(Path(c.nodes["n5"].data_dir), "joined")
    assert joined, "n5 logged no `joined` event"
    assert {j["via"] for j in joined} <= {c.nodes[n].address for n in ("n2", "n3", "n4")}

    c.kill("n1")
    c.wait_status("n1", "failed", timeout=DETECT_TIMEOUT)

    n6, proc = node_proc("n6", [c.nodes["n4"].address], c.directory)
    c.nodes["n6"] = n6  # so the cluster helpers can ask it; node_proc stops it
    members = ["n2", "n3", "n4", "n5", "n6"]
    wait_all_alive(c, members, timeout=20)

    assert proc.poll() is None
    events = read_events(Path(n6.data_dir), "joined")
    assert events, "n6 logged no `joined` event"
    assert events[0]["via"] == c.nodes["n4"].address
    # The newcomer never learned of n1 as a live member.
    assert (c.statuses("n6") or {}).get("n1") in (None, "failed")
    for observer in ("n2", "n3", "n4", "n5"):
        assert view(c, observer)["n6"]["address"] == n6.address


@pytest.mark.parametrize("how", ["cli", "sigterm"])
def test_voluntary_leave_is_left_not_failed(cluster: ClusterFactory, how: str) -> None:
    c = cluster(4)
    leaver = "n2"
    others = [n for n in c.nodes if n != leaver]
    since = time.time()
    if how == "cli":
        key_file = str(c.directory / "cluster.key")
        result = subprocess.run(
            [str(IDUNNO), "leave", "--at", c.nodes[leaver].address, "--key-file", key_file],
            cwd=c.directory,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"node {leaver} at {c.nodes[leaver].address} is leaving" in result.stdout
    else:
        c.signal(leaver, signal.SIGTERM)

    c.wait_status(leaver, "left", observers=others, timeout=DETECT_TIMEOUT)
    assert wait_exit(c, leaver) == 0
    wait_all_alive(c, others, timeout=10)

    log = read_events(Path(c.nodes[leaver].data_dir))
    kinds = [e["event"] for e in log]
    assert "node_leaving" in kinds
    assert kinds[-1] == "node_stopped"
    for observer in others:
        seen = transitions(c, observer, leaver, since)
        assert seen[-1] == "left", (observer, seen)
        assert "failed" not in seen, (observer, seen)
        assert self_info(c, observer)["live_members"] == len(others)


def test_sigkill_is_detected_by_every_survivor(cluster: ClusterFactory) -> None:
    c = cluster(5)
    victim = "n3"
    survivors = [n for n in c.nodes if n != victim]
    c.kill(victim)
    assert not is_running(c.nodes[victim])

    took = c.wait_status(victim, "failed", observers=survivors, timeout=DETECT_TIMEOUT)
    assert took < DETECT_TIMEOUT
    wait_all_alive(c, survivors, timeout=10)
    for observer in survivors:
        assert "failed" in transitions(c, observer, victim)
        assert "left" not in transitions(c, observer, victim)
        assert self_info(c, observer)["live_members"] == len(survivors)


def test_sigstop_is_detected_and_sigcont_comes_back_with_higher_incarnation(
    cluster: ClusterFactory,
) -> None:
    c = cluster(5)
    victim = "n2"
    survivors = [n for n in c.nodes if n != victim]
    before = {o: view(c, o)[victim]["incarnation"] for o in survivors}

    c.pause(victim)
    try:
        c.wait_status(victim, "failed", observers=survivors, timeout=DETECT_TIMEOUT)
        failed_inc = max(view(c, o)[victim]["incarnation"] for o in survivors)
    finally:
        c.resume(victim)

    # The resumed node learns it was declared failed and refutes with a higher incarnation.
    c.wait_status(victim, "alive", observers=survivors, timeout=20)
    wait_all_alive(c, sorted(c.nodes), timeout=20)
    own = self_info(c, victim)["incarnation"]
    assert own > failed_inc >= max(before.values())
    for observer in survivors:
        row = view(c, observer)[victim]
        assert row["incarnation"] > before[observer]
        assert row["incarnation"] > failed_inc
        seen = transitions(c, observer, victim)
        assert "failed" in seen and seen[-1] == "alive", (observer, seen)
    refuted = read_events(Path(c.nodes[victim].data_dir), "refuted")
    assert own in [r["incarnation"] for r in refuted]


def test_restarted_node_rejoins_with_higher_incarnation(cluster: ClusterFactory) -> None:
    c = cluster(4)
    victim = "n4"
    survivors = [n for n in c.nodes if n != victim]
    old_pid = c.nodes[victim].pid
    c.kill(victim)
    c.wait_status(victim, "failed", observers=survivors, timeout=DETECT_TIMEOUT)
    failed_inc = max(view(c, o)[victim]["incarnation"] for o in survivors)

    nd = c.restart(victim)
    assert nd.pid != old_pid
    assert nd.address.startswith(f"{HOST}:")
    wait_all_alive(c, sorted(c.nodes), timeout=20)

    me = self_info(c, victim)
    assert me["pid"] == nd.pid
    assert me["incarnation"] > failed_inc
    for observer in survivors:
        wait_for(
            lambda o=observer: view(c, o)[victim]["incarnation"] == me["incarnation"],
            10,
            f"{observer} to see {victim} at incarnation {me['incarnation']}",
        )
        seen = transitions(c, observer, victim)
        assert "failed" in seen and seen[-1] == "alive", (observer, seen)
    assert all_alive(c, sorted(c.nodes))
    joined = read_events(Path(nd.data_dir), "joined")
    assert joined, "the restarted node logged no `joined` event"
