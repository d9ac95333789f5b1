"""`/metrics` in Prometheus' text format (prometheus-client), one registry per node.

Most values are read from the node's state when scraped (a custom collector: membership,
probes, traffic, store, role and epoch, the coordinator's jobs); the per-batch latencies are
real histograms, observed as batches finish (by the worker on every node and by the
coordinator for the whole round trip).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from idunno.node.server import Node

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROLES = ("coordinator", "standby", "worker")


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.worker_batch = Histogram(
            "idunno_worker_batch_seconds",
            "Time this node's worker took to fetch, decode and run a batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_round_trip = Histogram(
            "idunno_batch_round_trip_seconds",
            "Coordinator's view of a batch: dispatched to result accepted",
            ["job", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def attach(self, node: Node) -> None:
        self.registry.register(_NodeCollector(node))


class _NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        yield from self._membership()
        yield from self._store()
        yield from self._control()

    def _membership(self) -> Iterator[Metric]:
        core = self.node.membership.core
        members = GaugeMetricFamily(
            "idunno_members", "Members this node knows, by status", labels=["status"]
        )
        counts: dict[str, int] = {}
        for m in core.members.values():
            counts[m.status.value] = counts.get(m.status.value, 0) + 1
        for status in ("alive", "suspect", "failed", "left"):
            members.add_metric([status], counts.get(status, 0))
        yield members
        for key, help_text in (
            ("probes", "Direct probes started"),
            ("probes_failed", "Probes that got no ack, direct or indirect"),
            ("suspicions", "Members this node started to suspect"),
            ("refutations", "Times this node refuted a suspicion of itself"),
        ):
            yield CounterMetricFamily(f"idunno_{key}", help_text, value=core.counters[key])
        rtt = GaugeMetricFamily(
            "idunno_probe_rtt_seconds",
            "Round-trip time of the last 256 direct probes, by quantile",
            labels=["quantile"],
        )
        samples = sorted(core.probe_rtts)
        if samples:
            for q in (0.5, 0.9, 0.99):
                rtt.add_metric([str(q)], samples[min(len(samples) - 1, int(q * len(samples)))])
        yield rtt
        traffic = CounterMetricFamily(
            "idunno_traffic_bytes", "Bytes sent and received", labels=["transport", "direction"]
        )
        stats = self.node.membership.stats
        for transport in ("udp", "tcp"):
            for direction, key in (("sent", "sent"), ("received", "recv")):
                traffic.add_metric([transport, direction], stats[f"{transport}_{key}_bytes"])
        yield traffic

    def _store(self) -> Iterator[Metric]:
        store = self.node.store
        versions = [v for meta in store.disk.meta.values() for v in meta.versions]
        yield GaugeMetricFamily(
            "idunno_store_bytes",
            "Bytes of file versions held here",
            value=sum(v.size for v in versions),
        )
        yield GaugeMetricFamily(
            "idunno_store_files", "Files with a version held here", value=len(store.disk.meta)
        )
        repairs = CounterMetricFamily(
            "idunno_store_repairs", "Re-replication work done by this node", labels=["kind"]
        )
        for kind in ("rounds", "versions_pushed", "copies_dropped"):
            repairs.add_metric([kind], store.repairs[kind])
        yield repairs

    def _control(self) -> Iterator[Metric]:
        plane = self.node.control
        yield GaugeMetricFamily(
            "idunno_coordinator_epoch", "Highest coordinator epoch this node follows",
            value=plane.fence.epoch,
        )  # fmt: skip
        role = GaugeMetricFamily("idunno_role", "This node's role (1 for the current one)",
                                 labels=["role"])  # fmt: skip
        mine = plane.role_of(plane.me)
        for r in ROLES:
            role.add_metric([r], 1.0 if r == mine else 0.0)
        yield role
        status = self.node.worker.status()
        yield GaugeMetricFamily(
            "idunno_worker_batches_running", "Batches in this node's worker now",
            value=status["running"],
        )  # fmt: skip
        coordinator = plane.coordinator
        if coordinator is None:
            return
        now = time.time()
        rate = GaugeMetricFamily("idunno_job_query_rate", "Queries/s over the last 10 s",
                                 labels=["job", "name"])  # fmt: skip
        done = GaugeMetricFamily("idunno_job_queries_done", "Queries answered",
                                 labels=["job", "name"])  # fmt: skip
        queued = GaugeMetricFamily("idunno_job_queue_depth", "Queries not dispatched yet",
                                   labels=["job", "name"])  # fmt: skip
        inflight = GaugeMetricFamily("idunno_job_batches_in_flight", "Batches out on workers",
                                     labels=["job", "name"])  # fmt: skip
        state = coordinator.state
        for job_id, book in state.books.items():
            labels = [job_id, book.spec.name]
            rate.add_metric(labels, state.rate(job_id, now))
            done.add_metric(labels, len(book.results))
            queued.add_metric(labels, len(state.scheduler.jobs[job_id].pending))
            inflight.add_metric(labels, len(state.scheduler.held_by_job(job_id)))
        yield from (rate, done, queued, inflight)
