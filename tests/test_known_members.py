"""The members a node has known survive its restart, so its quorums still count the whole
cluster while it has heard of only part of it (chaos seed 64: a node restarted during a
partition took its side's 3 of 7 nodes for a majority)."""

from __future__ import annotations

from pathlib import Path

from idunno.membership.messages import Status
from idunno.node.known import SAVE_EVERY_S, KnownMembers
from idunno.store.quorum import Quorum

HOUR = 3600.0
SEVEN = [f"n{i}" for i in range(1, 8)]


def test_a_restarted_node_still_counts_every_member_it_knew(tmp_path: Path) -> None:
    path = tmp_path / "known-members.json"
    before = KnownMembers(path, HOUR)
    before.observe([(n, Status.ALIVE) for n in SEVEN], now=1000.0)
    # Restarted behind a partition: it hears of only 3 of the 7 so far.
    after = KnownMembers(path, HOUR)
    heard = {"n1", "n2", "n3"}
    known = after.names(now=1010.0) | heard
    assert known == set(SEVEN)
    assert len(heard) < Quorum(len(known), 4).write  # its side is no majority: no writes there


def test_a_departed_member_is_forgotten_at_once_and_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "known-members.json"
    k = KnownMembers(path, HOUR)
    k.observe([(n, Status.ALIVE) for n in SEVEN], now=1000.0)
    k.observe([("n7", Status.LEFT)], now=1001.0)
    assert k.names(now=1002.0) == set(SEVEN[:6])
    assert KnownMembers(path, HOUR).names(now=1002.0) == set(SEVEN[:6])


def test_a_failed_member_counts_until_the_retention_after_it_was_last_alive(
    tmp_path: Path,
) -> None:
    k = KnownMembers(tmp_path / "known-members.json", HOUR)
    k.observe([("n1", Status.ALIVE), ("n2", Status.SUSPECT)], now=1000.0)
    k.observe([("n1", Status.FAILED), ("n3", Status.FAILED)], now=1500.0)
    assert k.names(now=1000.0 + HOUR - 1) == {"n1", "n2", "n3"}
    assert k.names(now=1000.0 + HOUR + 1) == {"n3"}  # n3 was first seen (failed) at 1500
    assert k.names(now=1500.0 + HOUR + 1) == set()


def test_timestamps_are_saved_periodically_and_names_at_once(tmp_path: Path) -> None:
    path = tmp_path / "known-members.json"
    k = KnownMembers(path, HOUR)
    k.observe([("n1", Status.ALIVE)], now=1000.0)
    k.observe([("n1", Status.ALIVE)], now=1000.0 + SAVE_EVERY_S / 2)
    assert KnownMembers(path, HOUR).names(now=1000.0 + HOUR + 1) == set()  # not rewritten yet
    k.observe([("n1", Status.ALIVE)], now=1000.0 + SAVE_EVERY_S)
    assert KnownMembers(path, HOUR).names(now=1000.0 + HOUR + 1) == {"n1"}


def test_a_missing_or_damaged_file_starts_empty(tmp_path: Path) -> None:
    assert KnownMembers(tmp_path / "none.json", HOUR).names() == set()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert KnownMembers(bad, HOUR).names() == set()
