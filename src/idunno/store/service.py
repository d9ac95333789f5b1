"""The store's distributed logic on one node: gateway, version authority, replica, repairer.

Put: the node that takes the request (the gateway) streams the bytes to every member of the
file's replica set at once (each stages them in tmp/ and fsyncs), asks the file's authority for
the next version number, then commits that version on every replica. The client gets its ack
only when all of them have it durably: an acknowledged put survives any R-1 failures.

Versions: the authority (highest-ranked live member for the name) serializes numbering per name
and numbers above anything any live member has seen, so concurrent puts get distinct versions.

Get: the gateway asks the live members what they hold, picks the newest version, and streams it
from a holder that first verifies the checksum (a corrupt copy answers 409, is discarded and
re-fetched from a healthy peer; the read moves on to the next holder).

Repair: see plan.py; rounds run on every membership change and every `sync_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from idunno.control.fence import Fence, StaleEpoch
from idunno.store import copyout, plan
from idunno.store.config import StoreConfig
from idunno.store.disk import (
    CHUNK,
    Corrupt,
    DiskStore,
    FileMeta,
    Staged,
    StoreError,
    Tombstone,
    Version,
)
from idunno.store.fanout import quorum_answers
from idunno.store.names import validate
from idunno.store.peers import PeerError, Peers
from idunno.store.placement import rank, replica_set
from idunno.store.quorum import Quorum
from idunno.store.reservations import Reservations
from idunno.store.throttle import Throttle

LogFn = Callable[..., None]
STAGE_QUEUE = 4  # chunks in flight per replica during a put: bounds memory to ~4 MB each
PROMISE_TIMEOUT = 10.0  # s an offerer has to start sending a version it was asked for
ASSIGN_TRIES = 4  # attempts to get a version number promised by a majority
ASSIGN_BACKOFF_S = 0.05  # random pause after a refused attempt, growing with each attempt


class Unavailable(StoreError):
    """Not enough live nodes, or a replica failed mid-operation; retrying may succeed."""


class NotFound(StoreError):
    pass


def holding(meta: FileMeta) -> plan.Holding:
    return plan.Holding(
        tuple(v.version for v in meta.versions), meta.tombstone.version if meta.tombstone else 0
    )


class StoreService:
    def __init__(
        self,
        me: str,
        disk: DiskStore,
        view: Callable[[], dict[str, str]],
        peers: Peers,
        config: StoreConfig,
        log: LogFn,
        known: Callable[[], int] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.me = me
        self.disk = disk
        self._view = view
        # Members this node knows (alive, suspect or failed): what quorums are counted against.
        self._known = known or (lambda: len(self._view()))
        # name -> the highest version number promised here (each number to one authority)
        self.reservations = Reservations(disk.root / "promised.jsonl")
        self.peers = peers
        self.config = config
        self.log = log
        self.throttle = Throttle(config.transfer_rate)
        self._busy = busy or (lambda: False)  # is this node running inference?
        self._staged: dict[str, tuple[Staged, float]] = {}
        self._promised: dict[tuple[str, int], float] = {}  # (name, version) -> promise expiry
        self._assigned: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_round: dict[str, Any] = {}
        self.repairs: Counter[str] = Counter()  # totals for /metrics
        self.fence = Fence()  # the node replaces it with its persisted one

    # --- membership ---------------------------------------------------------------------

    def live(self) -> dict[str, str]:
        """name -> address of every member not failed or departed (self included)."""
        return self._view()

    def kick(self) -> None:
        """Run a repair round soon (membership changed, or a copy was found corrupt)."""
        self._kick.set()

    def quorum(self) -> Quorum:
        return Quorum(max(self._known(), len(self.live())), self.config.replicas)

    def _need(self, count: int, what: str) -> None:
        need = min(self.config.min_replicas, self.config.replicas)
        if count < need:
            raise Unavailable(
                f"only {count} live node{'s' * (count != 1)}, {what} needs {need} "
                f"(--min-replicas; the replication factor is {self.config.replicas}): "
                "start more nodes or wait for failed ones to return"
            )
        q = self.quorum()
        if count < q.write:
            raise Unavailable(
                f"only {count} of the {q.known} known nodes are reachable, {what} needs a "
                f"majority ({q.write}) so that a partitioned minority never diverges: wait for "
                "the partition to heal or failed nodes to return (failed nodes are forgotten "
                "after an hour)"
            )

    def _heard(self, answered: int, what: str) -> None:
        q = self.quorum()
        if answered < q.read:
            raise Unavailable(
                f"{what} heard from only {answered} of the {q.known} known nodes and needs "
                f"{q.read} to be sure it sees every acknowledged write: retry when the network "
                "heals"
            )

    # --- gateway: put -------------------------------------------------------------------

    async def put(
        self, name: str, source: AsyncIterator[bytes], epoch: tuple[int, str] | None = None
    ) -> dict[str, Any]:
        """Store a new version. With `epoch` (the coordinator's writes) every replica refuses the
        commit if it has seen a newer coordinator epoch: a deposed coordinator writes nothing."""
        validate(name)
        live = self.live()
        self._need(len(live), "a put")
        targets = replica_set(name, live, self.config.replicas)
        upload = uuid.uuid4().hex
        results = await self._stage_everywhere(upload, targets, live, source)
        sizes = {(r["size"], r["sha256"]) for r in results.values()}
        if len(sizes) != 1:
            raise Unavailable(f"replicas of {name!r} received different bytes: retry the put")
        size, sha = sizes.pop()
        version = await self._assign_remote(name, live)
        v = Version(version, size, sha, time.time())
        await self._commit_everywhere(name, upload, v, targets, live, epoch)
        self.log("file_put", file=name, version=version, size=size, replicas=targets)
        if len(targets) < self.config.replicas:
            self.log(
                "put_degraded",
                level="warning",
                file=name,
                version=version,
                replicas=len(targets),
                wanted=self.config.replicas,
            )
        return {"name": name, **asdict(v), "replicas": targets}

    async def _stage_everywhere(
        self, upload: str, targets: list[str], live: dict[str, str], source: AsyncIterator[bytes]
    ) -> dict[str, dict[str, Any]]:
        queues = [asyncio.Queue[bytes | None](STAGE_QUEUE) for _ in targets]

        async def feed() -> None:
            async for chunk in source:
                for q in queues:
                    await q.put(chunk)
            for q in queues:
                await q.put(None)

        async def drain(q: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
            while (chunk := await q.get()) is not None:
                yield chunk

        async def one(target: str, q: asyncio.Queue[bytes | None]) -> dict[str, Any]:
            if target == self.me:
                return await self.stage(upload, drain(q))
            return await self.peers.stage(live[target], upload, drain(q))

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(feed())
                tasks = {t: tg.create_task(one(t, q)) for t, q in zip(targets, queues, strict=True)}
        except* PeerError as eg:
            raise Unavailable(f"put failed: {eg.exceptions[0]}; retry the put") from None
        return {t: task.result() for t, task in tasks.items()}

    async def _assign_remote(self, name: str, live: dict[str, str]) -> int:
        authority = rank(name, live)[0]
        if authority == self.me:
            return await self.assign(name)
        try:
            out = await self.peers.call(live[authority], "assign", {"name": name})
        except PeerError as exc:
            raise Unavailable(f"no version number for {name!r}: {exc}; retry") from None
        return int(out["version"])

    async def _commit_everywhere(
        self,
        name: str,
        upload: str,
        v: Version,
        targets: list[str],
        live: dict[str, str],
        epoch: tuple[int, str] | None,
    ) -> None:
        body = {
            "name": name,
            "upload": upload,
            "epoch": epoch[0] if epoch else None,
            "owner": epoch[1] if epoch else None,
            **asdict(v),
        }

        async def one(target: str) -> None:
            if target == self.me:
                await self.commit(name, upload, v, epoch)
            else:
                await self.peers.call(live[target], "commit", body)

        results = await asyncio.gather(*(one(t) for t in targets), return_exceptions=True)
        failed = [(t, r) for t, r in zip(targets, results, strict=True) if isinstance(r, Exception)]
        for _, err in failed:
            if isinstance(err, StaleEpoch) or "stale epoch" in str(err):
                raise StaleEpoch(f"put of {name!r} refused: {err}")
        if failed:
            who, err = failed[0]
            raise Unavailable(
                f"put of {name!r} v{v.version} not acknowledged: {who} failed to commit ({err}); "
                "retry the put"
            )

    # --- gateway: delete ----------------------------------------------------------------

    async def delete(self, name: str) -> dict[str, Any]:
        validate(name)
        live = self.live()
        self._need(len(live), "a delete")
        found = await self.locate(name)
        if not any(m.versions for m in found.values()):
            raise NotFound(f"no file named {name!r} in the cluster (see `idunno ls`)")
        version = await self._assign_remote(name, live)
        tomb = Tombstone(version, time.time())
        body = {"name": name, **asdict(tomb)}
        targets = set(replica_set(name, live, self.config.replicas))

        async def one(member: str) -> None:
            if member == self.me:
                await self.apply_tombstone(name, tomb)
            else:
                await self.peers.call(live[member], "delete", body)

        # Every live node records the tombstone, so no stale copy anywhere can come back.
        members = sorted(live)
        results = await asyncio.gather(*(one(m) for m in members), return_exceptions=True)
        failed = [m for m, r in zip(members, results, strict=True) if isinstance(r, Exception)]
        if targets & set(failed):
            raise Unavailable(f"delete of {name!r} reached only some replicas: retry the delete")
        self.log("file_deleted", file=name, version=version)
        return {"name": name, "deleted_version": version}

    # --- gateway: reads and listings ----------------------------------------------------

    async def locate(self, name: str) -> dict[str, FileMeta]:
        """What every live member holds of `name`. Members that do not answer are skipped, but
        the answers must make a read quorum, or a file could look missing or old."""
        live = self.live()

        async def one(member: str) -> tuple[FileMeta | None] | None:
            """(what it holds,) or None when it does not answer."""
            if member == self.me:
                return (self.disk.meta.get(name),)
            try:
                out = await self.peers.call(live[member], "meta", {"name": name})
            except PeerError:
                return None
            return (FileMeta.from_json(out) if out else None,)

        members = rank(name, live)  # the answers keep this order: best holders first
        heard = await quorum_answers({m: one(m) for m in members}, self.quorum().read)
        self._heard(len(heard), f"a read of {name!r}")
        return {m: meta for m, (meta,) in heard.items() if meta is not None}

    async def choose(self, name: str, version: int | None) -> tuple[Version, list[str]]:
        """The version to read and its holders, best first (self first when it holds it)."""
        validate(name)
        found = await self.locate(name)
        tomb = max((m.tombstone.version for m in found.values() if m.tombstone), default=0)
        versions: dict[int, Version] = {}
        holders: dict[int, list[str]] = {}
        for member, meta in found.items():
            for v in meta.versions:
                if v.version > tomb:
                    versions[v.version] = v
                    holders.setdefault(v.version, []).append(member)
        if not versions:
            if tomb:
                raise NotFound(f"{name!r} was deleted (tombstone v{tomb})")
            raise NotFound(f"no file named {name!r} in the cluster (see `idunno ls`)")
        if version is None:
            version = max(versions)
        elif version not in versions:
            have = ", ".join(str(v) for v in sorted(versions, reverse=True))
            raise NotFound(f"{name!r} has no version {version} (available: {have})")
        who = holders[version]
        who.sort(key=lambda m: m != self.me)
        return versions[version], who

    async def local_chunks(self, name: str, v: Version) -> AsyncIterator[bytes]:
        """Our copy of `v`, checked against its sha256 on the way out in a single pass.

        The last chunk is held back until the whole file has hashed right; a corrupt copy
        raises Corrupt instead (the reader sees a cut-short transfer and retries, by then
        without this copy, which is discarded and re-fetched from a healthy peer).
        """
        h = hashlib.sha256()
        size = 0
        held: bytes | None = None
        try:
            f = open(self.disk.blob(name, v.version), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            await self._corrupt(name, v, "missing on disk")
            raise Corrupt(f"{self.me}'s copy of {name!r} v{v.version} is missing") from None
        with f:
            while chunk := await asyncio.to_thread(_read_and_hash, f, h):
                size += len(chunk)
                if held is not None:
                    yield held
                held = chunk
        if size != v.size or h.hexdigest() != v.sha256:
            await self._corrupt(name, v, "fails its sha256 check")
            raise Corrupt(f"{self.me}'s copy of {name!r} v{v.version} is corrupt (repairing)")
        if held is not None:
            yield held

    async def put_bytes(self, name: str, data: bytes, epoch: tuple[int, str] | None = None) -> int:
        """Store a small file held in memory; returns its version."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        out = await self.put(name, one(), epoch)
        return int(out["version"])

    async def names(self, prefix: str) -> list[str]:
        """Names under `prefix` that have a live (not deleted) version on some live member."""
        found: dict[str, int] = {}
        tombs: dict[str, int] = {}
        for inv in (await self.inventory_everywhere()).values():
            for name, meta in inv.items():
                if not name.startswith(prefix):
                    continue
                if meta.get("tombstone"):
                    tombs[name] = max(tombs.get(name, 0), meta["tombstone"]["version"])
                for v in meta["versions"]:
                    found[name] = max(found.get(name, 0), v["version"])
        return sorted(n for n, top in found.items() if top > tombs.get(n, 0))

    async def read_bytes(self, name: str, version: int | None = None) -> tuple[Version, bytes]:
        """A whole (small) file in memory, verified: our own copy if we hold it, else a holder's.
        For models, shards and control files; large user files stream through the HTTP API."""
        v, holders = await self.choose(name, version)
        live = self.live()
        last_error = "no live holder"
        for holder in holders:
            try:
                if holder == self.me:
                    data = b"".join([c async for c in self.local_chunks(name, v)])
                else:
                    addr = live.get(holder)
                    if addr is None:
                        continue
                    resp = await self.peers.open_blob(addr, name, v.version)
                    try:
                        data = await resp.read()
                    finally:
                        resp.release()
            except (Corrupt, PeerError, OSError) as exc:
                last_error = str(exc)
                continue
            # Hashed off the event loop: a model is hundreds of MB, and a stalled loop misses
            # failure-detector probes.
            if len(data) == v.size and await asyncio.to_thread(_sha256, data) == v.sha256:
                return v, data
            last_error = f"{holder} sent bytes that fail the sha256 check"
        raise Unavailable(f"no replica of {name!r} v{v.version} could be read ({last_error})")

    async def read_to_file(self, name: str, version: int | None, dest: Path) -> Version:
        """A whole file copied to `dest` (replaced once complete and verified), chunk by chunk:
        never held in memory, never joined on the event loop. For models."""
        v, holders = await self.choose(name, version)
        live = self.live()
        last_error = "no live holder"
        for holder in holders:
            if holder != self.me and holder not in live:
                continue
            chunks = (
                self.local_chunks(name, v)
                if holder == self.me
                else self._remote_chunks(live[holder], name, v)
            )
            try:
                size, digest = await copyout.write_chunks(chunks, dest)
            except (Corrupt, PeerError, OSError, TimeoutError, aiohttp.ClientError) as exc:
                last_error = str(exc) or type(exc).__name__
                await copyout.discard(dest)
                continue
            if size == v.size and digest == v.sha256:
                await copyout.commit(dest)
                return v
            await copyout.discard(dest)
            last_error = f"{holder} sent bytes that fail the sha256 check"
        raise Unavailable(f"no replica of {name!r} v{v.version} could be read ({last_error})")

    async def _remote_chunks(self, addr: str, name: str, v: Version) -> AsyncIterator[bytes]:
        resp = await self.peers.open_blob(addr, name, v.version)
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                yield chunk
        finally:
            resp.release()

    async def _corrupt(self, name: str, v: Version, why: str) -> None:
        self.log("corrupt_copy", level="warning", file=name, version=v.version, detail=why)
        await asyncio.to_thread(self.disk.discard_version, name, v.version)
        await self._ask_peers_to_resync(name)

    async def verify_local(self, name: str, v: Version) -> bool:
        """Check our copy; a corrupt one is discarded and re-fetched from peers."""
        try:
            await asyncio.to_thread(self.disk.verify, name, v)
        except Corrupt as exc:
            await self._corrupt(name, v, str(exc))
            return False
        return True

    async def _ask_peers_to_resync(self, name: str) -> None:
        live = self.live()
        for member in replica_set(name, live, self.config.replicas):
            if member != self.me:
                with contextlib.suppress(PeerError):
                    await self.peers.call(live[member], "resync", {})

    async def inventory_everywhere(self) -> dict[str, dict[str, Any]]:
        """member -> its inventory, for `ls` (members that do not answer are skipped)."""
        live = self.live()

        async def one(member: str) -> dict[str, Any] | None:
            if member == self.me:
                return self.inventory()
            try:
                out: dict[str, Any] = await self.peers.call(live[member], "inventory", {})
            except PeerError:
                return None
            return out

        members = sorted(live)
        got = await asyncio.gather(*(one(m) for m in members))
        return {m: inv for m, inv in zip(members, got, strict=True) if inv is not None}

    def inventory(self) -> dict[str, Any]:
        return {name: meta.to_json() for name, meta in self.disk.meta.items()}

    # --- authority ----------------------------------------------------------------------

    async def assign(self, name: str) -> int:
        """A version number above every one a read quorum knows of, reserved on enough nodes
        that any later choice hears of it (an authority on the other side of a partition, or
        after this one dies, cannot hand out the same number)."""
        validate(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            floor = self._assigned.get(name, 0)
            for attempt in range(ASSIGN_TRIES):
                live = self.live()
                q = self.quorum()
                tops = await quorum_answers(
                    {m: self._ask(m, live, "top", {"name": name}, self.top) for m in live}, q.read
                )
                self._heard(len(tops), f"numbering a version of {name!r}")
                version = max([floor, *(int(t["top"]) for t in tops.values())]) + 1
                body = {"name": name, "version": version}
                answers = await quorum_answers(
                    {m: self._ask(m, live, "reserve", body, self.reserve) for m in live},
                    q.write,
                    counts=lambda a: bool(a.get("ok")),
                )
                granted = sum(bool(a.get("ok")) for a in answers.values())
                if granted >= q.write:
                    self._assigned[name] = version
                    return version
                # Another authority is numbering this name too (two views of who the authority
                # is, for a moment): go above what the refusals name, after a random pause.
                floor = max([version, *(int(a.get("top", 0)) for a in answers.values())])
                await asyncio.sleep(random.uniform(0, ASSIGN_BACKOFF_S * (attempt + 1)))
            raise Unavailable(
                f"version {version} of {name!r} was promised by only {granted} of the "
                f"{q.write} nodes it needs (another node is numbering the same file): retry"
            )

    async def _ask(
        self,
        member: str,
        live: dict[str, str],
        op: str,
        body: dict[str, Any],
        local: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any] | None:
        """One internal call (run locally for this node); None when the member does not answer."""
        if member == self.me:
            return local(body)
        try:
            out: dict[str, Any] = await self.peers.call(live[member], op, body)
        except PeerError:
            return None
        return out

    def top(self, body: dict[str, Any]) -> dict[str, Any]:
        """The highest version number of a name this node holds, deleted or promised."""
        return {"top": self._top(validate(str(body["name"])))}

    def _top(self, name: str) -> int:
        meta = self.disk.meta.get(name)
        return max(meta.top if meta else 0, self.reservations.get(name))

    def reserve(self, body: dict[str, Any]) -> dict[str, Any]:
        """Promise a version number, unless this node holds or has promised it (or a higher
        one): each number goes to one authority at most, so two authorities that chose the same
        number at once cannot both gather a majority."""
        name = validate(str(body["name"]))
        version = int(body["version"])
        top = self._top(name)
        if version <= top:
            return {"ok": False, "top": top}
        self.reservations.grant(name, version)
        return {"ok": True}

    # --- replica ------------------------------------------------------------------------

    async def _receive(self, chunks: AsyncIterator[bytes]) -> Staged:
        """Write a stream to tmp/ and fsync it. Disk writes and hashing run in a worker thread,
        ~1 MiB at a time, so a big transfer never stalls the event loop that also answers the
        failure detector's probes (hashlib releases the GIL on large buffers)."""
        writer = self.disk.stage()
        buf: list[bytes] = []
        buffered = 0
        try:
            async for chunk in chunks:
                buf.append(chunk)
                buffered += len(chunk)
                if buffered >= CHUNK:
                    await asyncio.to_thread(writer.write, b"".join(buf))
                    buf, buffered = [], 0
            if buf:
                await asyncio.to_thread(writer.write, b"".join(buf))
            return await asyncio.to_thread(writer.finish)
        except BaseException:
            writer.abort()
            raise

    async def stage(self, upload: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        staged = await self._receive(chunks)
        self._staged[upload] = (staged, time.monotonic())
        self._forget_old_stages()
        return {"size": staged.size, "sha256": staged.sha256}

    def _forget_old_stages(self, max_age: float = 600.0) -> None:
        horizon = time.monotonic() - max_age
        for upload, (staged, at) in list(self._staged.items()):
            if at < horizon:
                del self._staged[upload]
                self.disk.cleanup_tmp(staged.path)

    async def commit(
        self, name: str, upload: str, v: Version, epoch: tuple[int, str] | None = None
    ) -> None:
        validate(name)
        if epoch is not None:
            self.fence.admit(*epoch)
        entry = self._staged.pop(upload, None)
        if entry is None:
            raise NotFound(f"upload {upload[:8]} of {name!r} is not staged here: retry the put")
        await asyncio.to_thread(self.disk.commit, name, v, entry[0])

    async def apply_tombstone(self, name: str, tomb: Tombstone) -> None:
        validate(name)
        await asyncio.to_thread(self.disk.delete, name, tomb)

    async def receive_replica(self, name: str, v: Version, chunks: AsyncIterator[bytes]) -> None:
        validate(name)
        key = (name, v.version)
        self._promised[key] = float("inf")  # arriving now: no other offerer should send it
        try:
            staged = await self._receive(chunks)
            await asyncio.to_thread(self.disk.commit, name, v, staged)
        finally:
            self._promised.pop(key, None)

    async def answer_sync(self, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Reply to a peer's offer: what we lack; apply tombstones it knows and we do not.

        `needs` are the versions this offerer should send; `pending` the ones we lack but another
        offerer is already sending, so this one must keep its copy until they have arrived.
        """
        out: dict[str, Any] = {}
        for name, offered_json in files.items():
            validate(name)
            offered = plan.Holding(
                tuple(int(v) for v in offered_json["versions"]), int(offered_json["tombstone"])
            )
            meta = self.disk.meta.get(name)
            mine = holding(meta) if meta else None
            if offered.tombstone > (mine.tombstone if mine else 0):
                tomb = Tombstone(offered.tombstone, float(offered_json.get("deleted_at", 0.0)))
                await asyncio.to_thread(self.disk.delete, name, tomb)
                mine = holding(self.disk.meta[name])
            ans = plan.answer(mine, offered, self.config.keep_versions)
            needs, pending = self._claim(name, ans.needs)
            out[name] = {"needs": needs, "pending": pending, "tombstone": ans.tombstone}
        return out

    def _claim(self, name: str, needs: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """Ask for each missing version from one offerer only: after a failure every surviving
        holder offers the same file at once, and without this each would push a full copy. A
        promise that is not kept within PROMISE_TIMEOUT is released for the next round."""
        now = time.monotonic()
        claimed, pending = [], []
        for number in needs:
            if self._promised.get((name, number), 0.0) > now:
                pending.append(number)
                continue
            self._promised[(name, number)] = now + PROMISE_TIMEOUT
            claimed.append(number)
        if len(self._promised) > 10_000:
            self._promised = {k: t for k, t in self._promised.items() if t > now}
        return claimed, pending

    # --- repair loop --------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.config.sync_interval)
            self._kick.clear()
            try:
                await self.repair_round()
            except Exception as exc:  # a round must never kill the loop; log and go on
                self.log("repair_failed", level="warning", detail=f"{type(exc).__name__}: {exc}")

    async def repair_round(self) -> dict[str, Any]:
        t0 = time.monotonic()
        live = self.live()
        holdings = {name: holding(meta) for name, meta in self.disk.meta.items()}
        offers = plan.offers(self.me, holdings, live, self.config.replicas)
        incomplete: set[str] = set()
        pushed = 0
        for offer in offers:
            files = {
                name: {
                    "versions": list(h.versions),
                    "tombstone": h.tombstone,
                    "deleted_at": t.deleted_at if (t := self.disk.meta[name].tombstone) else 0.0,
                }
                for name, h in offer.files.items()
                if name in self.disk.meta
            }
            try:
                answers = await self.peers.call(live[offer.peer], "sync", {"files": files})
            except PeerError:
                incomplete.update(offer.files)
                continue
            for name, ans in answers.items():
                if name not in self.disk.meta:
                    continue
                if ans["tombstone"]:
                    tomb = Tombstone(int(ans["tombstone"]), time.time())
                    await asyncio.to_thread(self.disk.delete, name, tomb)
                if ans.get("pending"):
                    incomplete.add(name)  # another holder is still sending: keep our copy
                for number in ans["needs"]:
                    if not await self._push(offer.peer, live[offer.peer], name, int(number)):
                        incomplete.add(name)
                    else:
                        pushed += 1
        dropped = []
        for name in list(self.disk.meta):
            if name not in incomplete and plan.should_drop(
                self.me, name, live, self.config.replicas
            ):
                await asyncio.to_thread(self.disk.drop, name)
                dropped.append(name)
        self.repairs["versions_pushed"] += pushed
        self.repairs["copies_dropped"] += len(dropped)
        self.repairs["rounds"] += 1
        self.last_round = {
            "took_s": round(time.monotonic() - t0, 3),
            "pushed": pushed,
            "dropped": len(dropped),
            "incomplete": len(incomplete),
            "at": time.time(),
        }
        if pushed or dropped:
            self.log("repair_round", **self.last_round)
        return self.last_round

    def repair_rate(self) -> float:
        """Bytes/s for re-replication now: slower while this node runs inference."""
        if self._busy():
            return min(self.config.transfer_rate, self.config.busy_transfer_rate)
        return self.config.transfer_rate

    async def _push(self, peer: str, addr: str, name: str, number: int) -> bool:
        meta = self.disk.meta.get(name)
        v = meta.get(number) if meta else None
        if v is None:
            return False

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in self.local_chunks(name, v):
                self.throttle.rate = self.repair_rate()
                await self.throttle.consume(len(chunk))
                yield chunk

        try:
            await self.peers.push_version(addr, name, v, chunks())
        except Corrupt:
            return False  # our copy went bad: discarded, and re-fetched by the next rounds
        except PeerError as exc:
            self.log("replica_push_failed", level="warning", file=name, peer=peer, detail=str(exc))
            return False
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="store-repair")
        self.kick()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _read_and_hash(f: BinaryIO, h: Any) -> bytes:
    """One chunk of a file, already fed to the hash (runs in a worker thread)."""
    chunk = f.read(CHUNK)
    h.update(chunk)
    return chunk


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
