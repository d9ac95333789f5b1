"""The replicated store (SDFS) with real `idunno node` processes on loopback: round trips,
surviving 3 simultaneous failures, concurrent puts, version GC, corruption repair, delete during
an outage, restart on the same data dir, name validation over HTTP, and user-facing errors.

Tests that kill nodes start their own cluster; the others share one 6-node cluster."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from idunno.client import Client, ClientError
from idunno.node.logs import read_events
from idunno.store.names import key
from idunno.testing.procs import ProcCluster, wait_for
from idunno.transport import tokens
from tests.conftest import CliRunner, ClusterFactory, all_alive, assert_one_line_error

pytestmark = pytest.mark.process

R = 4
DETECT = 15.0  # `lan` detects a crash in about 2 s; generous for a busy 2-core machine
REPAIR = 30.0  # detection plus a repair round plus copying
# Periodic repair rounds (10 s apart by default) for tests that wait for one after a restart.
FAST_REPAIR_S = "2"


# --- helpers ------------------------------------------------------------------------------------


def client(c: ProcCluster, node: str) -> Client:
    return c.client(node, timeout=10.0)


def put_bytes(
    c: ProcCluster, via: str, name: str, data: bytes, scratch: Path, retries: int = 3
) -> dict[str, Any]:
    local = scratch / f"up-{hashlib.sha256(data).hexdigest()[:16]}-{threading.get_ident()}"
    local.write_bytes(data)
    try:
        return client(c, via).put(local, name, retries=retries)
    finally:
        local.unlink()


def get_bytes(
    c: ProcCluster, via: str, name: str, scratch: Path, version: int | None = None
) -> tuple[bytes, dict[str, Any]]:
    local = scratch / f"down-{via}-{threading.get_ident()}"
    meta = client(c, via).get(name, local, version)
    data = local.read_bytes()
    local.unlink()
    return data, meta


def holders(c: ProcCluster, via: str, name: str) -> dict[str, list[int]]:
    """node -> versions it holds of `name`, as `ls NAME` on `via` reports."""
    return {h["node"]: h["versions"] for h in client(c, via).ls(name)["holders"] if h["versions"]}


def blob(c: ProcCluster, node: str, name: str, version: int) -> Path:
    return Path(c.nodes[node].data_dir) / "store" / "files" / key(name) / f"v{version}.blob"


def blob_bytes(c: ProcCluster, node: str, name: str, version: int) -> bytes | None:
    try:
        return blob(c, node, name, version).read_bytes()
    except FileNotFoundError:
        return None


def listed(c: ProcCluster, via: str) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in client(c, via).ls()["files"]}


def held_versions(c: ProcCluster, node: str, name: str) -> list[int] | None:
    """What node's own `store` lists for `name` (None if it has no entry)."""
    for f in client(c, node).store()["files"]:
        if f["name"] == name:
            versions: list[int] = f["versions"]
            return versions
    return None


def answers(c: ProcCluster, node: str) -> bool:
    try:
        client(c, node).store()
    except ClientError:
        return False
    return True


def kill_and_wait_failed(c: ProcCluster, victims: list[str]) -> list[str]:
    """SIGKILL `victims` back to back; wait until every survivor counts them failed."""
    for v in victims:
        c.kill(v)
    survivors = [n for n in c.nodes if n not in victims]
    for v in victims:
        c.wait_status(v, "failed", observers=survivors, timeout=DETECT)
    return survivors


def rounds_since(c: ProcCluster, nodes: list[str], since: float) -> bool:
    """True once every node finished a repair round that started after `since` (wall clock)."""
    for n in nodes:
        last = client(c, n).store()["last_repair"]
        if not last or last["at"] - last["took_s"] <= since:
            return False
    return True


def raw_request(c: ProcCluster, node: str, method: str, path: str) -> tuple[int, Any]:
    """An HTTP request with the path sent exactly as given (no client-side normalization)."""
    host, port = c.nodes[node].address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            method,
            path,
            body=b"payload" if method == "PUT" else None,
            headers={"Authorization": f"Bearer {tokens.mint(c.key, ttl=60)}"},
        )
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body else None
    finally:
        conn.close()


def tree(root: Path) -> set[Path]:
    """Every file under `root` except the nodes' logs (which grow by themselves)."""
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".log", ".jsonl")
    }


# --- one shared cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(6, tmp_path_factory.mktemp("store-shared")) as c:
        yield c


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    d = tmp_path / "scratch"
    d.mkdir()
    return d


def test_put_then_get_from_every_node_is_byte_identical(shared: ProcCluster, scratch: Path) -> None:
    c = shared
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)  # several 1 MiB chunks
    out = put_bytes(c, "n1", "rt/big.bin", data, scratch)

    assert out["version"] == 1
    assert out["size"] == len(data)
    assert out["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(set(out["replicas"])) == R
    assert set(holders(c, "n2", "rt/big.bin")) == set(out["replicas"])
    for node in sorted(c.nodes):  # holders and non-holders alike
        got, meta = get_bytes(c, node, "rt/big.bin", scratch)
        assert got == data, node
        assert meta["version"] == 1
        assert meta["sha256"] == out["sha256"]
    for node in sorted(c.nodes):  # exactly the 4 replicas hold the bytes on disk
        assert blob_bytes(c, node, "rt/big.bin", 1) == (data if node in out["replicas"] else None)
    entry = listed(c, "n3")["rt/big.bin"]
    assert (entry["version"], entry["size"], entry["replicas"]) == (1, len(data), R)
    [row] = client(c, "n4").versions("rt/big.bin")
    assert (row["version"], row["sha256"]) == (1, out["sha256"])


def test_an_empty_file_round_trips(shared: ProcCluster, scratch: Path) -> None:
    out = put_bytes(shared, "n2", "rt/empty", b"", scratch)
    assert out["size"] == 0
    got, meta = get_bytes(shared, "n5", "rt/empty", scratch)
    assert got == b""
    assert meta["size"] == 0


def concurrent_puts(
    c: ProcCluster, name: str, scratch: Path
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """One writer per node, all released at the same moment; returns (contents, results)."""
    gateways = sorted(c.nodes)
    contents = {g: f"{name} through {g} ".encode() * 5000 for g in gateways}
    start = threading.Barrier(len(gateways))

    def writer(g: str) -> dict[str, Any]:
        start.wait(timeout=30)
        return put_bytes(c, g, name, contents[g], scratch)

    with ThreadPoolExecutor(len(gateways)) as pool:
        results = dict(zip(gateways, pool.map(writer, gateways), strict=True))
    return contents, results


def test_concurrent_puts_to_one_name_all_get_distinct_versions(
    shared: ProcCluster, scratch: Path
) -> None:
    c = shared
    name = "race/one-name.txt"
    contents, results = concurrent_puts(c, name, scratch)

    numbers = sorted(r["version"] for r in results.values())
    assert numbers == list(range(1, len(c.nodes) + 1))  # all succeeded, no number twice
    by_version = {r["version"]: g for g, r in results.items()}
    for g, r in results.items():
        assert r["sha256"] == hashlib.sha256(contents[g]).hexdigest()
        assert len(set(r["replicas"])) == R
    # no version number ever carries bytes other than the ones put under it
    listed_versions = [v["version"] for v in client(c, "n1").versions(name)]
    assert listed_versions
    assert set(listed_versions) <= set(numbers)
    for v in listed_versions:
        got, meta = get_bytes(c, "n3", name, scratch, version=v)
        assert got == contents[by_version[v]], v
        assert meta["version"] == v
    newest, meta = get_bytes(c, "n6", name, scratch)
    assert newest == contents[by_version[meta["version"]]]


def test_concurrent_puts_are_durable_on_every_replica(shared: ProcCluster, scratch: Path) -> None:
    """Right after concurrent puts are acknowledged, every replica lists every one of the
    newest 5 (a race in DiskStore.commit once lost acknowledged versions on every replica)."""
    c = shared
    for burst in range(3):
        name = f"race/durable-{burst}.txt"
        _, results = concurrent_puts(c, name, scratch)
        numbers = sorted(r["version"] for r in results.values())
        newest = numbers[-5:]
        assert [v["version"] for v in client(c, "n1").versions(name)] == newest[::-1]
        for node in next(iter(results.values()))["replicas"]:
            # every acknowledged version (of the newest 5) is on every replica, right away
            assert held_versions(c, node, name) == newest, (name, node)


def test_only_the_newest_five_versions_are_kept(shared: ProcCluster, scratch: Path) -> None:
    c = shared
    name = "gc/seven.txt"
    for i in range(1, 8):
        assert put_bytes(c, f"n{i % 6 + 1}", name, f"v{i}".encode(), scratch)["version"] == i

    assert [v["version"] for v in client(c, "n2").versions(name)] == [7, 6, 5, 4, 3]
    for v in (3, 7):
        assert get_bytes(c, "n4", name, scratch, version=v)[0] == f"v{v}".encode()
    with pytest.raises(ClientError) as info:
        get_bytes(c, "n4", name, scratch, version=2)
    assert info.value.status == 404
    assert "has no version 2 (available: 7, 6, 5, 4, 3)" in str(info.value)
    for node in holders(c, "n1", name):  # old blobs are gone from disk too
        d = blob(c, node, name, 1).parent
        assert sorted(p.name for p in d.glob("v*.blob")) == [f"v{v}.blob" for v in range(3, 8)]
    assert listed(c, "n5")[name]["version"] == 7


def test_a_corrupt_copy_is_detected_served_around_and_repaired(
    shared: ProcCluster, scratch: Path
) -> None:
    c = shared
    since = time.time()
    for name, through_holder in (("rot/a.bin", True), ("rot/b.bin", False)):
        data = random.Random(name).randbytes(200_000)
        put_bytes(c, "n1", name, data, scratch)
        ranked = list(holders(c, "n1", name))  # `ls NAME` lists holders in rank order
        bad = ranked[0]  # the holder a read asks first
        path = blob(c, bad, name, 1)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        path.write_bytes(bytes(raw))  # bit rot on one replica
        # read through the corrupt holder itself, or through a node holding nothing
        via = bad if through_holder else next(n for n in sorted(c.nodes) if n not in ranked)
        got, meta = get_bytes(c, via, name, scratch)
        assert got == data, (name, via)
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()

        def repaired() -> bool:
            # the blob is renamed into place before meta.json lists it: wait for both
            return (
                held_versions(c, bad, name) == [1]  # noqa: B023 - used inside the loop
                and blob_bytes(c, bad, name, 1) == data  # noqa: B023
            )

        wait_for(repaired, REPAIR, f"{bad}'s corrupt copy of {name} to be repaired")
        logged = read_events(Path(c.nodes[bad].data_dir), "corrupt_copy", since)
        assert any(e.get("file") == name for e in logged), logged
        assert listed(c, "n2")[name]["replicas"] == R


def test_unknown_names_and_versions_are_one_line_404s(shared: ProcCluster, scratch: Path) -> None:
    c = shared
    with pytest.raises(ClientError) as info:
        get_bytes(c, "n1", "no/such/file", scratch)
    assert info.value.status == 404
    assert "no file named 'no/such/file'" in str(info.value)
    with pytest.raises(ClientError) as info:
        client(c, "n2").delete("no/such/file")
    assert info.value.status == 404
    with pytest.raises(ClientError) as info:
        client(c, "n3").ls("no/such/file")
    assert info.value.status == 404
    put_bytes(c, "n1", "known.txt", b"k", scratch)
    with pytest.raises(ClientError) as info:
        get_bytes(c, "n4", "known.txt", scratch, version=9)
    assert info.value.status == 404
    assert "has no version 9 (available: 1)" in str(info.value)
    assert "\n" not in str(info.value)
    assert not list(scratch.iterdir())  # a failed get leaves no partial file behind


BAD_PATHS = [
    ("/v1/files/..%2Fx", "'..' segment"),
    ("/v1/files/../x", "'..' segment"),
    ("/v1/files/a/../../x", "'..' segment"),
    ("/v1/files/a%2F..%2F..%2F..%2Fescaped", "'..' segment"),
    ("/v1/files/%2Fetc%2Fpasswd", "absolute"),
    ("/v1/files//etc/passwd", "absolute"),
    ("/v1/files/a%00b", "control character"),
    ("/v1/files/a%1Bb", "control character"),
    ("/v1/files/a%0Ab", "control character"),  # a newline, which `.` in a route would miss
    ("/v1/files/a%0D%0Ab", "control character"),
    ("/v1/files/a%5C..%5Cx", "backslash"),
    ("/v1/files/a//b", "empty"),
    ("/v1/files/" + "x" * 1025, "longer than 1024 bytes"),
    ("/v1/files/" + "%C3%A9" * 513, "longer than 1024 bytes"),
]


def test_bad_names_over_http_get_400_and_nothing_is_written(shared: ProcCluster) -> None:
    c = shared
    root = c.directory
    before = tree(root.parent)
    for path, fragment in BAD_PATHS:
        for method in ("PUT", "GET", "DELETE"):
            status, body = raw_request(c, "n1", method, path)
            assert status == 400, (method, path, status, body)
            assert isinstance(body, dict)
            assert fragment in body["error"], (method, path, body)
            assert "\n" not in body["error"]
    for query in ("/v1/ls?name=..%2Fx", "/v1/versions?name=%2Fetc%2Fpasswd"):
        status, body = raw_request(c, "n2", "GET", query)
        assert status == 400, (query, status, body)
        assert "error" in body
    assert tree(root.parent) == before  # no file appeared anywhere, inside or outside
    assert not (root.parent / "x").exists()
    assert not (root.parent / "escaped").exists()


def test_cli_put_of_a_missing_local_file_is_one_line(
    shared: ProcCluster, idunno: CliRunner, tmp_path: Path
) -> None:
    c = shared
    common = ["--at", c.nodes["n1"].address, "--key-file", str(c.directory / "cluster.key")]
    missing = tmp_path / "does-not-exist.bin"
    result = idunno("put", str(missing), "cli/missing", *common)
    assert_one_line_error(result, "no such local file", str(missing))
    assert "cli/missing" not in listed(c, "n1")

    local = tmp_path / "present.bin"
    local.write_bytes(b"present")
    result = idunno("put", str(local), "../escape", *common)
    assert_one_line_error(result, "'..'")
    result = idunno("put", str(local), os.fsdecode(b"bad-\xff-byte"), *common)
    assert_one_line_error(result, "not valid UTF-8")
    result = idunno("get", "cli/never-put", str(tmp_path / "out.bin"), *common)
    assert_one_line_error(result, "404", "no file named 'cli/never-put'")
    assert not (tmp_path / "out.bin").exists()


# --- clusters of their own (nodes die) ----------------------------------------------------------


def test_killing_three_of_four_holders_at_once_loses_nothing(
    cluster: ClusterFactory, scratch: Path
) -> None:
    c = cluster(7)
    name = "survive/three.bin"
    old = random.Random(3).randbytes(500_000)
    new = random.Random(4).randbytes(1_500_000)
    put_bytes(c, "n1", name, old, scratch)
    out = put_bytes(c, "n2", name, new, scratch)
    assert out["version"] == 2
    replicas = list(holders(c, "n1", name))
    assert sorted(replicas) == sorted(out["replicas"])
    victims, survivor = replicas[:3], replicas[3]
    others = [n for n in c.nodes if n not in replicas]

    for v in victims:  # three SIGKILLs back to back, before anyone notices
        c.kill(v)
    # reads work at once, through the last holder and through nodes that hold nothing
    for via in (survivor, others[0]):
        got, meta = get_bytes(c, via, name, scratch)
        assert got == new, via
        assert meta["version"] == 2
    assert get_bytes(c, others[1], name, scratch, version=1)[0] == old

    live = [survivor, *others]
    for v in victims:
        c.wait_status(v, "failed", observers=live, timeout=DETECT)

    def back_to_four() -> bool:
        entry = listed(c, others[0]).get(name)
        return bool(entry) and entry["replicas"] == R and entry["version"] == 2

    wait_for(back_to_four, REPAIR, f"{name} to be back at {R} replicas")
    assert holders(c, survivor, name) == {n: [1, 2] for n in live}  # both versions, everywhere
    for n in live:  # every new copy is byte-identical
        assert blob_bytes(c, n, name, 2) == new, n
        assert blob_bytes(c, n, name, 1) == old, n
    # and the store takes new versions with exactly R live nodes
    assert put_bytes(c, others[2], name, b"v3", scratch)["version"] == 3


def test_a_node_down_during_a_delete_does_not_resurrect_the_file(
    cluster: ClusterFactory, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check below waits for a repair round that starts after the node is back everywhere:
    # the periodic one, 10 s apart by default.
    monkeypatch.setenv("IDUNNO_STORE_SYNC_INTERVAL", FAST_REPAIR_S)
    c = cluster(6)
    name = "outage/deleted.txt"
    put_bytes(c, "n1", name, b"first", scratch)
    put_bytes(c, "n1", name, b"second", scratch)
    replicas = list(holders(c, "n1", name))
    stale = replicas[0]
    survivors = kill_and_wait_failed(c, [stale])

    assert client(c, survivors[0]).delete(name)["deleted_version"] == 3
    assert blob_bytes(c, stale, name, 2) == b"second"  # its stale copy is still on disk

    c.restart(stale)
    names = sorted(c.nodes)
    wait_for(lambda: all_alive(c, names), DETECT, f"{stale} back and alive in every view")
    back_at = time.time()
    wait_for(lambda: rounds_since(c, names, back_at), REPAIR, "a repair round on every node")

    assert held_versions(c, stale, name) in (None, [])
    assert blob_bytes(c, stale, name, 1) is None
    assert blob_bytes(c, stale, name, 2) is None
    for via in (stale, survivors[0]):
        with pytest.raises(ClientError) as info:
            get_bytes(c, via, name, scratch)
        assert info.value.status == 404, via
        assert name not in listed(c, via)
        with pytest.raises(ClientError) as info:
            client(c, via).ls(name)
        assert info.value.status == 404
    for n in names:
        assert held_versions(c, n, name) in (None, []), n
    # the name is free for a new file, numbered after the delete
    assert put_bytes(c, stale, name, b"reborn", scratch)["version"] == 4
    assert get_bytes(c, survivors[1], name, scratch)[0] == b"reborn"


def test_a_node_restarted_on_its_data_dir_keeps_and_reconciles_its_copies(
    cluster: ClusterFactory, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDUNNO_STORE_SYNC_INTERVAL", FAST_REPAIR_S)  # see the test above
    c = cluster(6)
    name = "restart/kept.bin"
    v1 = random.Random(7).randbytes(300_000)
    put_bytes(c, "n1", name, v1, scratch)
    replicas = list(holders(c, "n1", name))
    node = replicas[1]
    survivors = kill_and_wait_failed(c, [node])
    v2 = random.Random(8).randbytes(300_000)
    out = put_bytes(c, survivors[0], name, v2, scratch)  # written while the node is down
    assert node not in out["replicas"]
    stand_in = next(n for n in out["replicas"] if n not in replicas)

    c.restart(node)
    wait_for(lambda: answers(c, node), DETECT, f"{node} to answer again")
    kept = held_versions(c, node, name)
    assert kept is not None
    assert 1 in kept  # the copy it had before the crash
    assert blob_bytes(c, node, name, 1) == v1

    # it catches up on the version it missed, and the stand-in hands its copy back
    wait_for(
        lambda: held_versions(c, node, name) == [1, 2], REPAIR, f"{node} to fetch v2 of {name}"
    )
    assert blob_bytes(c, node, name, 2) == v2
    wait_for(
        lambda: set(holders(c, node, name)) == set(replicas),
        REPAIR,
        f"{name} back on exactly its original replicas (and off {stand_in})",
    )
    assert blob_bytes(c, stand_in, name, 2) is None
    got, meta = get_bytes(c, node, name, scratch)
    assert (got, meta["version"]) == (v2, 2)


def test_with_fewer_live_nodes_than_the_replication_factor_writes_go_to_all_of_them(
    cluster: ClusterFactory, scratch: Path
) -> None:
    c = cluster(3)
    out = put_bytes(c, "n1", "few/nodes.txt", b"data", scratch, retries=0)
    assert sorted(out["replicas"]) == ["n1", "n2", "n3"]
    got, _ = get_bytes(c, "n3", "few/nodes.txt", scratch)
    assert got == b"data"


def test_a_put_below_the_minimum_replication_fails_clearly(
    cluster: ClusterFactory, scratch: Path
) -> None:
    c = cluster(3, extra=["--min-replicas", "4"])
    with pytest.raises(ClientError) as info:
        put_bytes(c, "n1", "few/nodes.txt", b"data", scratch, retries=0)
    err = info.value
    assert err.status == 503
    message = str(err)
    assert "replication factor is 4" in message
    assert "only 3 live nodes" in message
    assert "needs 4" in message
    assert "\n" not in message
    with pytest.raises(ClientError) as info:
        client(c, "n2").delete("few/nodes.txt")
    assert info.value.status == 503
    for n in c.nodes:  # nothing was stored or left staged
        store_dir = Path(c.nodes[n].data_dir) / "store"
        assert list((store_dir / "files").iterdir()) == [], n
        assert list((store_dir / "tmp").iterdir()) == [], n
        assert client(c, n).store()["files"] == []
