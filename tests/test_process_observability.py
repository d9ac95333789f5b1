"""`/metrics` (Prometheus text format) and `idunno logs grep` on a real cluster."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from idunno.testing.procs import ProcCluster, wait_for
from idunno.transport import tokens
from tests.conftest import CliRunner, ClusterFactory

pytestmark = pytest.mark.process


def scrape(c: ProcCluster, node: str, token: str | None = None) -> dict[str, list]:  # type: ignore[type-arg]
    req = urllib.request.Request(f"http://{c.nodes[node].address}/metrics")
    req.add_header("Authorization", f"Bearer {token or tokens.mint(c.key, ttl=60)}")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples: dict[str, list] = {}  # type: ignore[type-arg]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # by sample name: counters end in _total, and so on
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: list, **labels: str) -> float:  # type: ignore[type-arg]
    for s in samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample with {labels} in {samples}")


def at(c: ProcCluster, node: str) -> list[str]:
    return ["--at", c.nodes[node].address, "--key-file", str(c.directory / "cluster.key")]


def test_metrics_describe_members_store_role_and_jobs(
    cluster: ClusterFactory, idunno: CliRunner
) -> None:
    c = cluster(4)
    for args in (
        ("model", "add", "digits_logreg", "--builtin"),
        ("dataset", "add", "digits", "--builtin"),
    ):
        r = idunno(*args, *at(c, "n1"))
        assert r.returncode == 0, r.stderr
    r = idunno("job", "submit", "--model", "digits_logreg", "--dataset", "digits",
               "--batch-size", "32", "--name", "m", *at(c, "n1"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = idunno("job", "wait", "m", "--timeout", "120", *at(c, "n1"))
    assert r.returncode == 0, r.stderr

    control = c.client("n1").control()
    coordinator = control["coordinator"]
    m = scrape(c, coordinator)
    assert value(m["idunno_members"], status="alive") == 4
    assert value(m["idunno_members"], status="failed") == 0
    assert value(m["idunno_role"], role="coordinator") == 1
    assert value(m["idunno_coordinator_epoch"]) == control["epoch"]
    assert value(m["idunno_probes_total"]) > 0
    assert value(m["idunno_probe_rtt_seconds"], quantile="0.5") > 0
    assert value(m["idunno_traffic_bytes_total"], transport="udp", direction="sent") > 0
    assert value(m["idunno_store_repairs_total"], kind="rounds") >= 1
    assert value(m["idunno_store_bytes"]) > 0
    assert value(m["idunno_job_queries_done"], name="m") == 1797
    assert value(m["idunno_job_queue_depth"], name="m") == 0
    assert value(m["idunno_batch_round_trip_seconds_count"], model="digits_logreg") >= 1797 / 32
    # Every node's worker reports its batches; together they ran every batch at least once. A
    # worker that ran none (still loading the model when this short job ended) has no sample.
    ran = sum(
        s.value
        for n in c.nodes
        for s in scrape(c, n).get("idunno_worker_batch_seconds_count", [])
        if s.labels.get("model") == "digits_logreg"
    )
    assert ran >= 1797 / 32
    others = [n for n in c.nodes if n != coordinator]
    assert "idunno_job_query_rate" not in scrape(c, others[0])  # jobs live on the coordinator

    # The key protects /metrics like every route.
    with pytest.raises(urllib.error.HTTPError) as info:
        scrape(c, "n1", token="idn1.0.bad")
    assert info.value.code == 401
    info.value.close()  # its socket now, not when a later test's garbage collection finds it


def test_logs_grep_searches_every_node_and_reports_a_dead_one(
    cluster: ClusterFactory, idunno: CliRunner
) -> None:
    c = cluster(4)
    c.kill("n4")
    wait_for(lambda: (c.statuses("n1") or {}).get("n4") == "failed", 15, "n4 to be failed")

    r = idunno("logs", "grep", '"member":"n4"', *at(c, "n1"))
    assert r.returncode == 0, r.stderr
    nodes = {line.split(":", 1)[0] for line in r.stdout.splitlines()}
    assert nodes == {"n1", "n2", "n3"}, r.stdout
    assert "n4: failed: not searched" in r.stderr

    r = idunno("logs", "grep", "-E", '"new":"(failed|left)"', "-c", "--node", "n2", *at(c, "n1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("n2: ")
    assert int(r.stdout.splitlines()[0].split(": ")[1]) >= 1

    r = idunno("logs", "grep", "no-such-text-anywhere", "--json", *at(c, "n1"))
    assert r.returncode == 1
    assert "no-such" not in r.stdout.replace('"pattern"', "")  # nothing matched anywhere

    r = idunno("logs", "grep", "-E", "(", *at(c, "n1"))
    assert r.returncode == 2 and "not a valid regular expression" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
