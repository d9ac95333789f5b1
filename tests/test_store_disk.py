"""DiskStore on a temporary directory: atomic commits, versions, GC, tombstones, checksums,
and what a restart (a new DiskStore on the same directory) finds."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idunno.store.disk import (
    Conflict,
    Corrupt,
    DiskStore,
    FileMeta,
    Staged,
    StoreError,
    Tombstone,
    Version,
)
from idunno.store.names import key

NAME = "models/net.onnx"


def stage(store: DiskStore, data: bytes, pieces: int = 3) -> Staged:
    w = store.stage()
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        w.write(data[i : i + step])
    return w.finish()


def version(number: int, data: bytes, at: float = 1000.0) -> Version:
    return Version(number, len(data), hashlib.sha256(data).hexdigest(), at + number)


def put(store: DiskStore, name: str, number: int, data: bytes) -> FileMeta:
    return store.commit(name, version(number, data), stage(store, data))


def data_of(n: int) -> bytes:
    return f"version {n} ".encode() * (n + 1)


def tmp_files(store: DiskStore) -> list[Path]:
    return list(store.tmp_dir.iterdir())


def numbers(meta: FileMeta | None) -> list[int]:
    return [v.version for v in meta.versions] if meta else []


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(tmp_path / "store", keep_versions=5)


def test_layout_hashes_the_name_and_commit_makes_the_version_visible(store: DiskStore) -> None:
    data = b"hello world" * 1000
    staged = stage(store, data)
    assert staged.path.parent == store.tmp_dir
    assert staged.size == len(data)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert NAME not in store.meta  # staged bytes are not a version yet

    meta = store.commit(NAME, version(1, data), staged)

    assert numbers(meta) == [1]
    assert store.meta[NAME] is meta
    d = store.root / "files" / key(NAME)
    assert store.blob(NAME, 1) == d / "v1.blob"
    assert (d / "v1.blob").read_bytes() == data
    on_disk = json.loads((d / "meta.json").read_text())
    assert on_disk["name"] == NAME
    assert on_disk["versions"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert on_disk["tombstone"] is None
    assert tmp_files(store) == []  # the staged file was renamed into place
    assert store.usage() == len(data)
    # the name never became a path
    assert not (store.root / "files" / "models").exists()


def test_empty_file_is_a_version_too(store: DiskStore) -> None:
    meta = put(store, NAME, 1, b"")
    assert meta.versions[0].size == 0
    store.verify(NAME, meta.versions[0])
    assert store.blob(NAME, 1).read_bytes() == b""


def test_commit_of_the_same_bytes_again_is_idempotent(store: DiskStore) -> None:
    data = data_of(1)
    first = put(store, NAME, 1, data)
    again = put(store, NAME, 1, data)
    assert numbers(again) == numbers(first) == [1]
    assert again.versions[0] == first.versions[0]  # the first commit's record stays
    assert store.blob(NAME, 1).read_bytes() == data
    assert tmp_files(store) == []  # the duplicate upload was cleaned up


def test_same_version_with_different_bytes_is_a_conflict(store: DiskStore) -> None:
    put(store, NAME, 1, b"original")
    with pytest.raises(Conflict, match="v1 already holds different bytes"):
        put(store, NAME, 1, b"imposter")
    assert store.blob(NAME, 1).read_bytes() == b"original"
    assert tmp_files(store) == []


def test_bytes_that_do_not_match_the_announced_checksum_are_refused(store: DiskStore) -> None:
    staged = stage(store, b"what arrived")
    with pytest.raises(StoreError, match="arrived damaged") as info:
        store.commit(NAME, version(1, b"what was sent"), staged)
    assert not isinstance(info.value, Conflict)
    assert NAME not in store.meta
    assert not store.blob(NAME, 1).exists()
    assert tmp_files(store) == []


def test_only_the_newest_five_versions_are_kept(store: DiskStore) -> None:
    for n in range(1, 8):
        meta = put(store, NAME, n, data_of(n))
    assert numbers(meta) == [3, 4, 5, 6, 7]
    assert meta.latest is not None
    assert meta.latest.version == 7
    for n in (1, 2):
        assert not store.blob(NAME, n).exists()
    for n in range(3, 8):
        assert store.blob(NAME, n).read_bytes() == data_of(n)
    assert store.usage() == sum(len(data_of(n)) for n in range(3, 8))


def test_versions_arriving_out_of_order_are_sorted_and_gc_keeps_the_newest(
    store: DiskStore,
) -> None:
    for n in (4, 2, 6, 1, 5, 3):
        meta = put(store, NAME, n, data_of(n))
    assert numbers(meta) == [2, 3, 4, 5, 6]
    # a version older than a full window is garbage already: ignored, nothing written
    meta = put(store, NAME, 1, data_of(1))
    assert numbers(meta) == [2, 3, 4, 5, 6]
    assert not store.blob(NAME, 1).exists()
    assert tmp_files(store) == []


def test_an_old_version_still_fits_while_the_window_is_not_full(store: DiskStore) -> None:
    put(store, NAME, 5, data_of(5))
    meta = put(store, NAME, 2, data_of(2))
    assert numbers(meta) == [2, 5]


def test_keep_versions_is_configurable(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "s", keep_versions=2)
    for n in range(1, 5):
        meta = put(store, NAME, n, data_of(n))
    assert numbers(meta) == [3, 4]


def test_tombstone_removes_every_version_and_blocks_older_commits(store: DiskStore) -> None:
    for n in (1, 2, 3):
        put(store, NAME, n, data_of(n))
    meta = store.delete(NAME, Tombstone(4, 2000.0))
    assert meta.versions == []
    assert meta.tombstone == Tombstone(4, 2000.0)
    assert meta.top == 4
    for n in (1, 2, 3):
        assert not store.blob(NAME, n).exists()
    # a late copy of a deleted version (a replica that was down) does not come back
    meta = put(store, NAME, 3, data_of(3))
    assert meta.versions == []
    assert not store.blob(NAME, 3).exists()
    assert tmp_files(store) == []
    # an older tombstone changes nothing; a put after the delete is a new file
    assert store.delete(NAME, Tombstone(2, 1.0)).tombstone == Tombstone(4, 2000.0)
    meta = put(store, NAME, 5, data_of(5))
    assert numbers(meta) == [5]
    assert meta.tombstone == Tombstone(4, 2000.0)
    assert meta.top == 5


def test_tombstone_keeps_versions_newer_than_itself(store: DiskStore) -> None:
    for n in (1, 2, 5):
        put(store, NAME, n, data_of(n))
    meta = store.delete(NAME, Tombstone(3, 1.0))
    assert numbers(meta) == [5]
    assert store.blob(NAME, 5).exists()
    assert not store.blob(NAME, 2).exists()


def test_tombstone_for_a_file_never_seen_is_recorded(store: DiskStore) -> None:
    meta = store.delete(NAME, Tombstone(7, 1.0))
    assert meta.versions == []
    assert meta.top == 7
    assert DiskStore(store.root).meta[NAME].tombstone == Tombstone(7, 1.0)


def test_verify_detects_a_flipped_byte_a_truncation_and_a_missing_blob(store: DiskStore) -> None:
    data = bytes(range(256)) * 64
    v = put(store, NAME, 1, data).versions[0]
    store.verify(NAME, v)  # healthy

    blob = store.blob(NAME, 1)
    raw = bytearray(blob.read_bytes())
    raw[1000] ^= 0x01
    blob.write_bytes(bytes(raw))
    with pytest.raises(Corrupt, match="fails its sha256 check"):
        store.verify(NAME, v)

    blob.write_bytes(data[:-1])
    with pytest.raises(Corrupt, match="fails its sha256 check"):
        store.verify(NAME, v)

    blob.write_bytes(data + b"\x00")
    with pytest.raises(Corrupt, match="fails its sha256 check"):
        store.verify(NAME, v)

    blob.unlink()
    with pytest.raises(Corrupt, match="missing on disk"):
        store.verify(NAME, v)


def test_discarding_a_corrupt_version_makes_room_to_fetch_it_again(store: DiskStore) -> None:
    put(store, NAME, 1, data_of(1))
    put(store, NAME, 2, data_of(2))
    store.blob(NAME, 1).write_bytes(b"rot")
    store.discard_version(NAME, 1)
    assert numbers(store.meta[NAME]) == [2]
    assert not store.blob(NAME, 1).exists()
    assert numbers(DiskStore(store.root).meta[NAME]) == [2]  # durable
    meta = put(store, NAME, 1, data_of(1))  # the healthy copy from a peer
    assert numbers(meta) == [1, 2]
    store.verify(NAME, meta.versions[0])
    store.discard_version("never-stored", 1)  # a no-op, not an error


def test_drop_forgets_the_file_entirely(store: DiskStore) -> None:
    put(store, NAME, 1, data_of(1))
    store.drop(NAME)
    assert NAME not in store.meta
    assert not (store.root / "files" / key(NAME)).exists()
    assert NAME not in DiskStore(store.root).meta
    store.drop(NAME)  # twice is fine


def test_a_restart_finds_every_version_tombstone_and_checksum(store: DiskStore) -> None:
    for n in range(1, 8):
        put(store, NAME, n, data_of(n))
    put(store, "other", 1, b"x")
    store.delete("gone", Tombstone(3, 5.0))
    before = {name: meta.to_json() for name, meta in store.meta.items()}

    again = DiskStore(store.root, keep_versions=5)

    assert {name: meta.to_json() for name, meta in again.meta.items()} == before
    for v in again.meta[NAME].versions:
        again.verify(NAME, v)
    assert numbers(again.meta[NAME]) == [3, 4, 5, 6, 7]
    # and it keeps working: idempotent re-commit, conflict detection, GC
    assert numbers(put(again, NAME, 7, data_of(7))) == [3, 4, 5, 6, 7]
    with pytest.raises(Conflict):
        put(again, NAME, 7, b"different")
    assert numbers(put(again, NAME, 8, data_of(8))) == [4, 5, 6, 7, 8]


def test_leftovers_in_tmp_are_removed_at_start(store: DiskStore) -> None:
    (store.tmp_dir / "up-0123abcd").write_bytes(b"half an upload")  # a crash mid-upload
    staged = stage(store, b"staged, never committed")
    (store.tmp_dir / "subdir").mkdir()
    (store.tmp_dir / "subdir" / "junk").write_bytes(b"?")
    assert len(tmp_files(store)) == 3

    again = DiskStore(store.root)

    assert tmp_files(again) == []
    assert not staged.path.exists()
    assert again.meta == {}


def test_aborting_an_upload_removes_its_staged_bytes(store: DiskStore) -> None:
    w = store.stage()
    w.write(b"partial")
    w.abort()
    assert tmp_files(store) == []


def test_a_meta_pointing_at_a_missing_blob_is_tolerated(store: DiskStore) -> None:
    """A crash between the blob's removal and the meta's update (or a lost blob) leaves a meta
    naming a version whose bytes are gone: the restart keeps the rest."""
    for n in (1, 2, 3):
        put(store, NAME, n, data_of(n))
    store.blob(NAME, 2).unlink()
    again = DiskStore(store.root)
    assert numbers(again.meta[NAME]) == [1, 3]
    assert numbers(put(again, NAME, 2, data_of(2))) == [1, 2, 3]  # fetched back later


def test_unreadable_or_misplaced_metas_are_skipped(store: DiskStore) -> None:
    put(store, NAME, 1, data_of(1))
    put(store, "b", 1, data_of(1))
    put(store, "c", 1, data_of(1))
    files = store.root / "files"
    (files / key("b") / "meta.json").write_bytes(b"{not json")
    # a meta whose name does not hash to its folder
    moved = json.loads((files / key("c") / "meta.json").read_text())
    moved["name"] = "somebody-else"
    (files / key("c") / "meta.json").write_text(json.dumps(moved))
    # a folder with a blob but no meta: the crash came before the first commit finished
    (files / key("d")).mkdir()
    (files / key("d") / "v1.blob").write_bytes(b"never acknowledged")

    again = DiskStore(store.root)

    assert set(again.meta) == {NAME}


def test_meta_is_replaced_atomically(store: DiskStore) -> None:
    """No temporary meta file survives a completed write, and meta.json is always whole JSON."""
    for n in range(1, 4):
        put(store, NAME, n, data_of(n))
        d = store.root / "files" / key(NAME)
        assert sorted(p.name for p in d.iterdir()) == sorted(
            ["meta.json", *(f"v{k}.blob" for k in range(1, n + 1))]
        )
        assert numbers(FileMeta.from_json(json.loads((d / "meta.json").read_bytes()))) == list(
            range(1, n + 1)
        )


def test_concurrent_commits_of_one_name_keep_every_version(tmp_path: Path) -> None:
    """Commits of one name from several threads at once (the service runs them in
    asyncio.to_thread workers) keep every version: without a lock around the read-modify-write
    of meta.json, the last writer wins and the others' versions vanish."""
    for trial in range(3):
        store = DiskStore(tmp_path / f"s{trial}", keep_versions=10)
        uploads = [(version(n, data_of(n)), stage(store, data_of(n))) for n in range(1, 9)]
        commit_all_at_once(store, uploads)
        assert numbers(store.meta[NAME]) == list(range(1, 9))
        assert numbers(DiskStore(store.root).meta[NAME]) == list(range(1, 9))


def commit_all_at_once(store: DiskStore, uploads: list[tuple[Version, Staged]]) -> None:
    """Commit every upload of NAME from its own thread, all released together (as the service
    does when puts or repair pushes of one file arrive together)."""
    start = threading.Barrier(len(uploads))

    def commit(upload: tuple[Version, Staged]) -> None:
        start.wait(timeout=10)
        store.commit(NAME, *upload)

    with ThreadPoolExecutor(len(uploads)) as pool:
        list(pool.map(commit, uploads))


def test_stage_copy_of_a_local_file(store: DiskStore, tmp_path: Path) -> None:
    src = tmp_path / "local.bin"
    data = bytes(range(256)) * 9000  # more than one CHUNK
    src.write_bytes(data)
    staged = store.stage_copy(src)
    assert staged.size == len(data)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    meta = store.commit(NAME, version(1, data), staged)
    assert store.blob(NAME, 1).read_bytes() == data
    store.verify(NAME, meta.versions[0])
    with pytest.raises(FileNotFoundError):
        store.stage_copy(tmp_path / "missing")
    assert tmp_files(store) == []  # the failed copy left nothing behind
