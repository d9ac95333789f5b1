"""Copying a stored version out to a local file without holding it in memory.

A model is hundreds of MB: joining it into one bytes object on the event loop stalled a node's
loop for 1-2 s when six nodes loaded AlexNet at once on two cores (page faults on 244 MB of
fresh memory, under contention), long enough for the failure detector to declare live nodes
dead. Here every chunk is written and hashed in a worker thread as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO


def temp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


async def write_chunks(chunks: AsyncIterator[bytes], dest: Path) -> tuple[int, str]:
    """Write `chunks` to dest's temporary sibling; (size, sha256 hex). The caller commits with
    `commit` or discards with `discard`."""
    tmp = temp_path(dest)
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    f = await asyncio.to_thread(open, tmp, "wb")
    h = hashlib.sha256()
    size = 0
    try:
        async for chunk in chunks:
            await asyncio.to_thread(_write_and_hash, f, h, chunk)
            size += len(chunk)
    finally:
        await asyncio.to_thread(f.close)
    return size, h.hexdigest()


def _write_and_hash(f: BinaryIO, h: Any, chunk: bytes) -> None:
    f.write(chunk)
    h.update(chunk)


async def commit(dest: Path) -> None:
    # A local copy (a cache): no fsync, a torn file after a crash fails its next check.
    await asyncio.to_thread(os.replace, temp_path(dest), dest)


async def discard(dest: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(temp_path(dest).unlink)
