"""The README's Python example runs as written (on digits models, which are quick to add)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from idunno import AsyncClient, Client, ClientError
from idunno.localcluster import free_ports
from idunno.testing.jobs import add_digits_catalog, exactly_once_problem
from tests.conftest import ClusterFactory

pytestmark = pytest.mark.process
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (example,) = [b for b in blocks if "Client.local()" in b]
    return example


def test_the_readme_example_submits_two_jobs_and_prints_their_rates(
    cluster: ClusterFactory,
) -> None:
    c = cluster(4)
    add_digits_catalog(c.client("n1", timeout=30))
    code = (
        readme_example()
        .replace('"resnet18", "photos"', '"digits_mlp", "digits"')
        .replace('"alexnet", "photos"', '"digits_logreg", "digits"')
        .replace("batch_size=8", "batch_size=1")
        .replace("range(5)", "range(2)")
        .replace("time.sleep(2)", "time.sleep(0.5)")
        .replace("Client.local()", f"Client.local({str(c.directory)!r})")
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    names = {line.split()[0] for line in lines}
    assert names == {"r", "a"}, out.stdout
    assert all(re.fullmatch(r"\s*\w+\s+\d+\.\d q/s \d+/1797", line) for line in lines), lines


def test_client_lists_models_and_datasets(cluster: ClusterFactory) -> None:
    c = cluster(4)
    client = Client.local(str(c.directory))
    add_digits_catalog(c.client("n1", timeout=30), ["digits_logreg"])
    assert [m["name"] for m in client.models()] == ["digits_logreg"]
    (digits,) = client.datasets()
    assert (digits["name"], digits["count"]) == ("digits", 1797)
    assert "item_ids" not in digits


def test_async_client_covers_members_files_catalog_and_jobs(
    cluster: ClusterFactory, tmp_path: Path
) -> None:
    c = cluster(4)
    add_digits_catalog(c.client("n1", timeout=30), ["digits_logreg"])
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(3 << 20))  # several chunks each way

    async def scenario() -> None:
        async with AsyncClient.local(str(c.directory)) as ac:
            assert {m["id"] for m in (await ac.members())["members"]} == set(c.nodes)
            v1 = (await ac.put(local, "docs/a.bin"))["version"]
            v2 = (await ac.put_bytes(b"second", "docs/a.bin"))["version"]
            assert v2 > v1
            data, meta = await ac.get_bytes("docs/a.bin")
            assert (data, meta["version"]) == (b"second", v2)
            await ac.get("docs/a.bin", tmp_path / "back.bin", version=v1)
            assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
            assert [v["version"] for v in await ac.versions("docs/a.bin")] == [v2, v1]
            assert (await ac.delete("docs/a.bin"))[
                "deleted_version"
            ] > v2  # tombstones are numbered too
            with pytest.raises(ClientError) as missing:
                await ac.get_bytes("docs/a.bin")
            assert missing.value.status == 404
            assert [m["name"] for m in await ac.models()] == ["digits_logreg"]
            assert [d["name"] for d in await ac.datasets()] == ["digits"]
            job = await ac.submit_job("digits_logreg", "digits", batch_size=16, name="a")
            deadline = asyncio.get_running_loop().time() + 60
            while (await ac.job("a"))["status"] != "done":
                assert asyncio.get_running_loop().time() < deadline, "job a never finished"
                await asyncio.sleep(0.2)
            (rate,) = (await ac.rates(job["id"]))["jobs"]
            assert rate["done"] == 1797
            results = (await ac.job_results("a", limit=2000))["results"]
            assert exactly_once_problem(results, 1797) is None

    asyncio.run(scenario())


def test_async_client_errors_are_one_line_with_the_cause(cluster: ClusterFactory) -> None:
    c = cluster(4)
    at = c.nodes["n1"].address

    async def scenario() -> tuple[ClientError, ClientError, ClientError]:
        async with AsyncClient(at, b"k" * 32) as wrong_key:
            with pytest.raises(ClientError) as refused:
                await wrong_key.members()
        async with AsyncClient.local(str(c.directory)) as ac:
            with pytest.raises(ClientError) as unknown:
                await ac.job("no-such-job")
        async with AsyncClient(f"127.0.0.1:{free_ports(1)[0]}", c.key, timeout=1) as nobody:
            with pytest.raises(ClientError) as down:
                await nobody.members()
        return refused.value, unknown.value, down.value

    refused, unknown, down = asyncio.run(scenario())
    assert refused.status == 401 and "refused our credentials" in str(refused)
    assert unknown.status == 404 and "no-such-job" in str(unknown)
    assert "connection refused" in str(down) and "idunno up" in str(down)
    assert all("\n" not in str(e) for e in (refused, unknown, down))
