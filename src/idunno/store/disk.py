"""A node's share of the store on disk: versions of files, their checksums, tombstones.

Layout under DATA_DIR/store/ (names never become paths; see names.key):

    files/<key>/meta.json     {"name", "versions": [...], "tombstone": ...}
    files/<key>/v<N>.blob     the bytes of version N
    tmp/                      uploads being received (never visible as versions)

Every write is atomic: data goes to tmp/, is fsynced, then renamed into place, and the
directory is fsynced; meta.json is replaced the same way. A restart finds either the old or the
new state, never a half-written one; leftovers in tmp/ are deleted at start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from idunno.store.names import key

CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation failed; the message is one line naming the cause."""


class Conflict(StoreError):
    """A version number already holds different bytes here."""


class Corrupt(StoreError):
    """A stored version no longer matches its checksum."""


@dataclass(frozen=True)
class Version:
    version: int
    size: int
    sha256: str
    created_at: float


@dataclass(frozen=True)
class Tombstone:
    version: int
    deleted_at: float


@dataclass
class FileMeta:
    name: str
    versions: list[Version] = field(default_factory=list)  # ascending by version
    tombstone: Tombstone | None = None

    @property
    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    @property
    def top(self) -> int:
        """Highest version number this node knows for the name (data or tombstone)."""
        v = self.versions[-1].version if self.versions else 0
        return max(v, self.tombstone.version if self.tombstone else 0)

    def get(self, version: int) -> Version | None:
        for v in self.versions:
            if v.version == version:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [asdict(v) for v in self.versions],
            "tombstone": asdict(self.tombstone) if self.tombstone else None,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> FileMeta:
        tomb = d.get("tombstone")
        return FileMeta(
            name=d["name"],
            versions=[Version(**v) for v in d.get("versions", [])],
            tombstone=Tombstone(**tomb) if tomb else None,
        )


@dataclass(frozen=True)
class Staged:
    path: Path
    size: int
    sha256: str


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


class StageWriter:
    """Receives one upload into tmp/, hashing as it goes (blocking calls: run off the loop)."""

    def __init__(self, tmp_dir: Path) -> None:
        self.path = tmp_dir / f"up-{uuid.uuid4().hex}"
        self._f: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> Staged:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return Staged(self.path, self.size, self._hash.hexdigest())

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


class DiskStore:
    def __init__(self, root: Path, keep_versions: int = 5) -> None:
        self.root = root
        self.keep_versions = keep_versions
        self.files_dir = root / "files"
        self.tmp_dir = root / "tmp"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)  # half-received uploads from before a crash
        self.tmp_dir.mkdir(parents=True)
        self.meta: dict[str, FileMeta] = {}
        self._lock = threading.Lock()
        self._load()

    # --- loading ------------------------------------------------------------------------

    def _load(self) -> None:
        for d in self.files_dir.iterdir():
            meta_path = d / "meta.json"
            try:
                meta = FileMeta.from_json(json.loads(meta_path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # no committed meta: nothing here was ever acknowledged
            if key(meta.name) != d.name:
                continue
            # Keep only versions whose blob exists (a crash between rename and meta write).
            meta.versions = [v for v in meta.versions if self.blob(meta.name, v.version).exists()]
            self.meta[meta.name] = meta

    # --- paths --------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self.files_dir / key(name)

    def blob(self, name: str, version: int) -> Path:
        return self._dir(name) / f"v{version}.blob"

    # --- writes (blocking: call through asyncio.to_thread) ------------------------------

    def stage(self) -> StageWriter:
        return StageWriter(self.tmp_dir)

    def stage_copy(self, src: Path) -> Staged:
        """Stage a copy of a local file (used when this node is both source and replica)."""
        w = self.stage()
        try:
            with open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    w.write(chunk)
            return w.finish()
        except BaseException:
            w.abort()
            raise

    def _commit_unlocked(self, name: str, version: Version, staged: Staged) -> FileMeta:
        """Make `staged` visible as `version` of `name` (idempotent for identical bytes)."""
        if staged.sha256 != version.sha256 or staged.size != version.size:
            staged.path.unlink(missing_ok=True)
            raise StoreError(
                f"upload of {name!r} v{version.version} arrived damaged "
                f"(sha256 {staged.sha256[:12]} != {version.sha256[:12]}): retry the put"
            )
        meta = self.meta.get(name) or FileMeta(name)
        if meta.tombstone and meta.tombstone.version >= version.version:
            staged.path.unlink(missing_ok=True)
            return meta  # deleted after this version was written: stay deleted
        existing = meta.get(version.version)
        if existing is not None:
            staged.path.unlink(missing_ok=True)
            if existing.sha256 != version.sha256:
                raise Conflict(f"{name!r} v{version.version} already holds different bytes")
            return meta
        if (
            meta.versions
            and version.version < meta.versions[0].version
            and (len(meta.versions) >= self.keep_versions)
        ):
            staged.path.unlink(missing_ok=True)
            return meta  # older than everything we keep: garbage already
        d = self._dir(name)
        d.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, self.blob(name, version.version))
        fsync_dir(d)
        versions = sorted([*meta.versions, version], key=lambda v: v.version)
        dropped = versions[: -self.keep_versions] if len(versions) > self.keep_versions else []
        new = FileMeta(name, versions[-self.keep_versions :], meta.tombstone)
        self._write_meta(new)
        for v in dropped:
            self.blob(name, v.version).unlink(missing_ok=True)
        return new

    def _delete_unlocked(self, name: str, tombstone: Tombstone) -> FileMeta:
        """Record a tombstone: every version at or below it is removed and never returns."""
        meta = self.meta.get(name) or FileMeta(name)
        if meta.tombstone and meta.tombstone.version >= tombstone.version:
            return meta
        keep = [v for v in meta.versions if v.version > tombstone.version]
        gone = [v for v in meta.versions if v.version <= tombstone.version]
        new = FileMeta(name, keep, tombstone)
        self._dir(name).mkdir(parents=True, exist_ok=True)
        self._write_meta(new)
        for v in gone:
            self.blob(name, v.version).unlink(missing_ok=True)
        return new

    def _drop_unlocked(self, name: str) -> None:
        """Forget a local copy entirely (after it was handed to the nodes that should hold it)."""
        self.meta.pop(name, None)
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def _discard_version_unlocked(self, name: str, version: int) -> None:
        """Remove one corrupt version so it can be re-fetched."""
        meta = self.meta.get(name)
        if meta is None:
            return
        new = FileMeta(name, [v for v in meta.versions if v.version != version], meta.tombstone)
        self._write_meta(new)
        self.blob(name, version).unlink(missing_ok=True)

    # Metadata changes run in worker threads: one lock keeps read-modify-write of meta.json
    # atomic when two versions of one name commit at the same moment.

    def commit(self, name: str, version: Version, staged: Staged) -> FileMeta:
        """Make `staged` visible as `version` of `name` (idempotent for identical bytes)."""
        with self._lock:
            return self._commit_unlocked(name, version, staged)

    def delete(self, name: str, tombstone: Tombstone) -> FileMeta:
        """Record a tombstone: every version at or below it is removed and never returns."""
        with self._lock:
            return self._delete_unlocked(name, tombstone)

    def drop(self, name: str) -> None:
        """Forget a local copy entirely (after it was handed to the nodes that should hold it)."""
        with self._lock:
            self._drop_unlocked(name)

    def discard_version(self, name: str, version: int) -> None:
        """Remove one corrupt version so it can be re-fetched."""
        with self._lock:
            self._discard_version_unlocked(name, version)

    def _write_meta(self, meta: FileMeta) -> None:
        atomic_write_bytes(self._dir(meta.name) / "meta.json", json.dumps(meta.to_json()).encode())
        self.meta[meta.name] = meta

    # --- reads --------------------------------------------------------------------------

    def verify(self, name: str, version: Version) -> None:
        """Raise Corrupt if the blob's bytes no longer match the recorded checksum."""
        h = hashlib.sha256()
        size = 0
        try:
            with open(self.blob(name, version.version), "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise Corrupt(f"{name!r} v{version.version} is missing on disk") from None
        if size != version.size or h.hexdigest() != version.sha256:
            raise Corrupt(f"{name!r} v{version.version} fails its sha256 check")

    def usage(self) -> int:
        total = 0
        for meta in self.meta.values():
            total += sum(v.size for v in meta.versions)
        return total

    def cleanup_tmp(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
