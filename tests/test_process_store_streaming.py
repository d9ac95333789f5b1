"""Files stream through the nodes: memory does not grow with file size."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from idunno.testing.procs import PeakRss, ProcCluster

SIZE = 200 << 20  # buffered whole, it alone would pass RSS_LIMIT: streaming shows plainly
RSS_LIMIT = 150 << 20


def write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


@pytest.mark.process
@pytest.mark.slow
def test_a_large_put_and_get_stream_without_growing_node_memory(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    digest = write_random(src, SIZE)
    with ProcCluster(5, tmp_path / "cluster") as c:
        pids = [n.pid for n in c.nodes.values()]
        client = c.client("n1", timeout=60)
        with PeakRss(pids) as rss:
            client.put(src, "big/file.bin")
            back = tmp_path / "back.bin"
            client.get("big/file.bin", back)
        assert rss.peak < RSS_LIMIT, f"a node reached {rss.peak >> 20} MB RSS"
        h = hashlib.sha256()
        with open(back, "rb") as f:
            while chunk := f.read(4 << 20):
                h.update(chunk)
        assert h.hexdigest() == digest
