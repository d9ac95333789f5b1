"""The README's Python example runs as written (on digits models, which are quick to add)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from idunno import Client
from idunno.testing.jobs import add_digits_catalog
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
