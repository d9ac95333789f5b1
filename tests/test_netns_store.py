"""The store under a real partition (network namespaces): the minority side refuses reads and
writes with a one-line 503 instead of answering from what it alone holds, the majority side keeps
working, and after healing every node reads the majority's newest version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from idunno.client import ClientError
from idunno.testing.netns import NetnsCluster, NetnsUnavailable, check_available
from idunno.testing.procs import wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]

MINORITY, MAJORITY = ["n1", "n2", "n3"], ["n4", "n5", "n6", "n7"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NetnsCluster]:
    try:
        check_available()
    except NetnsUnavailable as exc:
        pytest.skip(exc.reason)
    with NetnsCluster(7, tmp_path / "cluster", preset="local") as c:
        yield c


def _put(c: NetnsCluster, node: str, name: str, data: bytes, tmp: Path) -> int:
    local = tmp / "put.bin"
    local.write_bytes(data)
    return int(c.client(node, timeout=10).put(local, name, retries=0)["version"])


def _get(c: NetnsCluster, node: str, name: str, tmp: Path) -> tuple[int, bytes]:
    local = tmp / "get.bin"
    meta = c.client(node, timeout=10).get(name, local, retries=0)
    return int(meta["version"]), local.read_bytes()


@pytest.mark.timeout(120)
def test_a_partitioned_minority_refuses_and_the_majority_goes_on(
    cluster: NetnsCluster, tmp_path: Path
) -> None:
    c = cluster
    v1 = _put(c, "n1", "p/file", b"before", tmp_path)
    c.partition(MINORITY, MAJORITY)
    for m in MINORITY:
        c.wait_status(m, "failed", observers=MAJORITY, timeout=20)
    v2 = _put(c, "n4", "p/file", b"during", tmp_path)
    assert v2 > v1
    assert _get(c, "n5", "p/file", tmp_path) == (v2, b"during")
    for node in MINORITY:  # it must not serve v1 (stale) nor write on its own
        with pytest.raises(ClientError) as read:
            _get(c, node, "p/file", tmp_path)
        assert read.value.status == 503 and "heal" in str(read.value), read.value
        with pytest.raises(ClientError) as write:
            _put(c, node, "p/file", b"minority", tmp_path)
        assert write.value.status == 503 and "majority" in str(write.value), write.value
        assert "\n" not in str(read.value) + str(write.value)
    c.heal()

    def everyone_reads_v2() -> bool:
        try:
            return all(_get(c, n, "p/file", tmp_path) == (v2, b"during") for n in c.names)
        except ClientError:
            return False

    wait_for(everyone_reads_v2, 30, "every node to read the majority's version after healing")
