"""StoreService.read_to_file: a stored version copied to a local file chunk by chunk (models
are hundreds of MB; joining one in memory on the event loop stalled nodes for 1-2 s, long
enough to be declared dead), verified before it replaces the destination."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from idunno.store.disk import Version
from idunno.store.service import StoreService, Unavailable
from tests.test_store_pure import store_cluster

NAME = "models/big.onnx"
DATA = bytes(range(256)) * 12_000  # about 3 MB: several 1 MB chunks


class Content:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), n):
            yield self.data[i : i + n]


class Response:
    def __init__(self, data: bytes) -> None:
        self.content = Content(data)
        self.released = False

    def release(self) -> None:
        self.released = True


class BlobPeers:
    """open_blob answers with the bytes each address serves (its stored copy, or `damaged`)."""

    def __init__(self, me: str, services: dict[str, StoreService]) -> None:
        self.services = services
        self.damaged: dict[str, bytes] = {}
        self.responses: list[Response] = []

    async def open_blob(self, addr: str, name: str, version: int) -> Response:
        data = self.damaged.get(addr)
        if data is None:
            data = self.services[addr].disk.blob(name, version).read_bytes()
        self.responses.append(Response(data))
        return self.responses[-1]


def cluster(tmp_path: Path, holders: list[str], order: list[str]) -> dict[str, StoreService]:
    services = store_cluster(tmp_path, ["a", "b", "c"], BlobPeers, holding=(NAME, DATA, holders))
    v1 = Version(1, len(DATA), hashlib.sha256(DATA).hexdigest(), 1.0)

    async def choose(name: str, version: int | None) -> tuple[Version, list[str]]:
        return v1, order

    for svc in services.values():
        svc.choose = choose  # type: ignore[method-assign]
    return services


def test_a_local_copy_is_copied_and_verified(tmp_path: Path) -> None:
    services = cluster(tmp_path, ["a", "b"], ["a", "b"])
    dest = tmp_path / "cache" / "big.onnx"
    v = asyncio.run(services["a"].read_to_file(NAME, 1, dest))
    assert v.version == 1 and dest.read_bytes() == DATA
    assert not list(dest.parent.glob("*.part"))
    assert services["a"].peers.responses == []  # type: ignore[attr-defined]


def test_a_holder_sending_bad_bytes_is_skipped_for_the_next(tmp_path: Path) -> None:
    services = cluster(tmp_path, ["b", "c"], ["b", "c"])
    peers: Any = services["a"].peers
    peers.damaged["b"] = DATA[:-1] + b"\0"
    dest = tmp_path / "cache" / "big.onnx"
    dest.parent.mkdir()
    dest.write_bytes(b"an older copy")
    asyncio.run(services["a"].read_to_file(NAME, 1, dest))
    assert dest.read_bytes() == DATA
    assert [r.released for r in peers.responses] == [True, True]
    assert not list(dest.parent.glob("*.part"))


def test_no_good_copy_leaves_the_destination_alone(tmp_path: Path) -> None:
    services = cluster(tmp_path, ["b"], ["b", "c"])  # c is listed but holds nothing
    peers: Any = services["a"].peers
    peers.damaged["b"] = DATA[: len(DATA) // 2]
    dest = tmp_path / "cache" / "big.onnx"
    with pytest.raises(Unavailable, match="could be read"):
        asyncio.run(services["a"].read_to_file(NAME, 1, dest))
    assert not dest.exists()
    assert not list((tmp_path / "cache").glob("*.part"))
