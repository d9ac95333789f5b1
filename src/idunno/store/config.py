"""A node's store settings: in a module of their own, so that reading a configuration (the CLI
does on every command) does not import the store and aiohttp."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreConfig:
    replicas: int = 4
    # Writes go to min(replicas, live) nodes but need at least this many: with fewer live nodes
    # than `replicas` the store stays writable (the coordinator can still claim epochs and save
    # results after 3 failures of 6) and repairs bring each file back to `replicas` copies as
    # nodes return, the way HDFS treats its minimum replication.
    min_replicas: int = 2
    keep_versions: int = 5
    sync_interval: float = 10.0
    transfer_rate: float = 200e6  # bytes/s for re-replication, so repairs cannot starve jobs
    # ... and while this node runs inference: a failed node's files (models of hundreds of MB)
    # are then copied in the background without taking the cores the jobs are sharing (at
    # 20 MB/s the jobs still ran below 80% of their rate for 2 s after a node was killed; at
    # 1 MB/s not at all: bench/vs_ray.py). Full speed again 2 s after the node's last batch.
    busy_transfer_rate: float = 1e6
