"""The multi-host harness (idunno.testing.netns): nodes in their own network namespaces, with
partitions and packet loss from nftables.

Every case but the ruleset's needs root, `ip` and `nft` (`make netns`), and skips saying so.
Most share one 3-node cluster (starting one takes about 2 s); each case leaves it healed with all
nodes alive. The "local" preset detects a partition in under 1 s, "lan" in about 2 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from idunno.localcluster import NodeProc, is_running
from idunno.testing.netns import (
    TABLE,
    NetnsCluster,
    NetnsUnavailable,
    bridge_name,
    chaos_ruleset,
    check_available,
    cross_pairs,
    exec_argv,
    namespace_name,
    sweep_stale,
)
from idunno.testing.procs import wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(60)]

PRESET = "local"  # probes every 0.1 s: a partition shows as failed in about 0.8 s (lan: 2 s)
DOWN = {"suspect", "failed"}
DATAGRAMS = 200
UDP_PORT = 9999  # in the receiving namespace only: nothing else listens there
IP = shutil.which("ip") or "/usr/sbin/ip"  # not on every PATH

# Runs in the receiving namespace: counts datagrams until none came for 1 s.
RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(5.0)  # the first datagram (the sender starts after "ready")
count = 0
try:
    while True:
        s.recv(64)
        count += 1
        s.settimeout(1.0)
except TimeoutError:
    pass
print(count)
"""
# Runs in the sending namespace.
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"%d" % i, (sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def available() -> None:
    try:
        check_available()
    except NetnsUnavailable as exc:
        pytest.skip(exc.reason)


@pytest.fixture(scope="module")
def shared(available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    with NetnsCluster(3, tmp_path_factory.mktemp("netns"), preset=PRESET) as c:
        yield c


@pytest.fixture
def net(shared: NetnsCluster) -> Iterator[NetnsCluster]:
    """The shared cluster; afterwards healed, every node running and alive in every view."""
    yield shared
    shared.heal()
    for name in shared.names:
        if not is_running(shared.nodes[name]):
            shared.restart(name)
        elif not shared.is_up(name):
            shared.resume(name)
    wait_for(lambda: all_alive(shared), 20, "every node alive in every view")


def all_alive(c: NetnsCluster) -> bool:
    views = [c.statuses(o) for o in c.names]
    return all(v is not None and set(v.values()) == {"alive"} for v in views)


def sees_down(c: NetnsCluster, observer: str, member: str) -> bool:
    return (c.statuses(observer) or {}).get(member) in DOWN


def namespaces() -> set[str]:
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def links() -> set[str]:
    out = subprocess.run([IP, "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(": ")[1].split("@")[0] for line in out.stdout.splitlines()}


def assert_all_gone(ns: list[str], ifaces: list[str], procs: list[NodeProc]) -> None:
    assert ns and ifaces and procs
    assert not set(ns) & namespaces()
    assert not set(ifaces) & links()
    assert not [p.pid for p in procs if is_running(p) or Path(f"/proc/{p.pid}").exists()]


# --- without namespaces ---------------------------------------------------------------------------


def test_ruleset_drops_by_source_address_and_replaces_the_table_atomically() -> None:
    script = chaos_ruleset({"10.1.2.3": 100, "10.1.2.4": 30, "10.1.2.5": 0})
    lines = [line.strip() for line in script.splitlines()]
    # add (so that delete cannot fail), delete, define: one transaction in `nft -f -`.
    assert lines[:3] == [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    assert "ip saddr 10.1.2.3 counter drop" in lines
    assert "ip saddr 10.1.2.4 numgen random mod 100 < 30 counter drop" in lines
    assert not [line for line in lines if "10.1.2.5" in line]


def test_cross_pairs_join_only_different_groups() -> None:
    assert cross_pairs({"n1"}, {"n2", "n3"}) == {("n1", "n2"), ("n1", "n3")}
    with pytest.raises(ValueError, match="n2 in two groups"):
        cross_pairs({"n1", "n2"}, {"n2"})


# --- one shared cluster ---------------------------------------------------------------------------


def test_nodes_converge_each_on_its_own_address(net: NetnsCluster) -> None:
    assert net.names == ["n1", "n2", "n3"]
    assert len({net.ip(n) for n in net.names}) == 3
    for name in net.names:
        info = net.client(name).self_info()
        assert info["address"] == net.address(name) == f"{net.ip(name)}:7000"
        # `ip netns exec` execs the node: the pid we signal is the node's.
        assert info["pid"] == net.nodes[name].pid
        assert Path(info["data_dir"]) == net.data_dir(name)
        assert net.namespace(name) in namespaces()
    assert all_alive(net)


def test_partition_separates_the_sides_and_heal_joins_them(net: NetnsCluster) -> None:
    net.partition({"n1"}, {"n2", "n3"})
    assert net.network().blocked == {("n1", "n2"), ("n1", "n3")}

    def separated() -> bool:
        # statuses() talks to each node from the root namespace: never partitioned.
        views = {o: net.statuses(o) for o in net.names}
        assert all(v is not None for v in views.values()), views
        return all(sees_down(net, a, b) and sees_down(net, b, a) for a, b in net.network().blocked)

    wait_for(separated, 15, "n1 and n2, n3 to see each other down")
    assert (net.statuses("n2") or {})["n3"] == "alive"
    net.heal()
    assert net.network() == (frozenset(), {})
    wait_for(lambda: all_alive(net), 20, "every node alive after heal()")


def test_loss_rule_drops_about_that_fraction_each_way(net: NetnsCluster) -> None:
    net.set_network(loss={("n2", "n1"): 30})
    assert net.network().loss == {("n1", "n2"): 30}
    received = udp_transfer(net, "n1", "n2")
    assert 0.15 <= 1 - received / DATAGRAMS <= 0.45, received


def udp_transfer(c: NetnsCluster, sender: str, receiver: str) -> int:
    """Datagrams of DATAGRAMS sent from `sender`'s namespace that arrive in `receiver`'s."""
    argv = [sys.executable, "-I", "-c", RECEIVE, c.ip(receiver), str(UDP_PORT)]
    with subprocess.Popen(
        exec_argv(c.namespace(receiver), argv),
        stdout=subprocess.PIPE,
        text=True,
    ) as rx:
        try:
            assert rx.stdout is not None
            assert rx.stdout.readline().strip() == "ready"
            sent = c.run_in(
                sender,
                [sys.executable, "-I", "-c", SEND, c.ip(receiver), str(UDP_PORT), str(DATAGRAMS)],
            )
            assert sent.returncode == 0, sent.stderr
            out, _ = rx.communicate(timeout=15)
        finally:
            if rx.poll() is None:
                rx.kill()
    return int(out.strip())


def test_pause_then_resume(net: NetnsCluster) -> None:
    net.pause("n2")
    wait_for(lambda: not net.is_up("n2"), 5, "n2 stopped")
    net.wait_status("n2", "failed", timeout=15)
    net.resume("n2")
    assert net.is_up("n2")
    net.wait_status("n2", "alive", timeout=15)


def test_kill_then_restart_on_the_same_address_and_data_dir(net: NetnsCluster) -> None:
    old = net.nodes["n3"]
    net.kill("n3")
    assert not net.is_up("n3")
    net.wait_status("n3", "failed", timeout=15)
    new = net.restart("n3")
    assert new.pid != old.pid and (new.address, new.data_dir) == (old.address, old.data_dir)
    net.wait_status("n3", "alive", timeout=20)
    info = net.client("n3").self_info()
    assert (info["pid"], info["address"]) == (new.pid, old.address)


# --- cleanup --------------------------------------------------------------------------------------


@pytest.mark.parametrize("body_raises", [False, True])
def test_close_leaves_no_namespace_interface_or_process(
    available: None, tmp_path: Path, body_raises: bool
) -> None:
    class BodyFailed(Exception):
        pass

    seen: dict[str, list[str]] = {}
    procs: list[NodeProc] = []
    failing = pytest.raises(BodyFailed) if body_raises else contextlib.nullcontext()
    with failing, NetnsCluster(3, tmp_path, preset=PRESET) as c:
        seen["ns"] = [c.namespace(n) for n in c.names]
        seen["links"] = c.links
        c.partition({"n1"}, {"n2"})
        c.pause("n3")
        c.kill("n1")
        procs += c.processes
        assert set(seen["ns"]) <= namespaces()
        assert set(seen["links"]) <= links()
        if body_raises:
            raise BodyFailed
    assert_all_gone(seen["ns"], seen["links"], procs)


def test_sweep_removes_only_runs_whose_owner_is_dead(available: None) -> None:
    probe = subprocess.Popen(["true"])
    probe.wait()  # its pid is now dead: the owner of a run killed before its cleanup
    stale_ns, stale_br = namespace_name(probe.pid, 1, "n1"), bridge_name(probe.pid, 1)
    live_ns = namespace_name(os.getpid(), 999, "n1")  # our own pid: a run in progress
    try:
        for ns in (stale_ns, live_ns):
            subprocess.run([IP, "netns", "add", ns], check=True)
        subprocess.run([IP, "link", "add", stale_br, "type", "bridge"], check=True)
        removed = sweep_stale()  # (a concurrent test run may sweep the stale ones first)
        assert live_ns not in removed
        assert live_ns in namespaces()
        assert stale_ns not in namespaces()
        assert stale_br not in links()
    finally:
        subprocess.run([IP, "netns", "del", live_ns], check=False)
        subprocess.run([IP, "netns", "del", stale_ns], check=False, capture_output=True)
        subprocess.run([IP, "link", "del", stale_br], check=False, capture_output=True)
