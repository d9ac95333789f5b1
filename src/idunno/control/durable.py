"""Where the control plane keeps its durable state in the store, and its (de)serialization.

_control/epoch                   the reign: {coordinator, standby}; its version IS the epoch
_control/jobs/<id>.json          a job's spec, current batch size and status
jobs/<id>/results/<epoch>-<seq>.jsonl
                                 results flushed by the coordinator of <epoch>, one JSON
                                 object per line; a query may appear in several segments
                                 (re-flushed after a takeover) and the first one wins
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Final

EPOCH_FILE: Final = "_control/epoch"
JOBS_PREFIX: Final = "_control/jobs/"
_SPEC = re.compile(r"_control/jobs/([A-Za-z0-9._-]+)\.json")
_SEGMENT = re.compile(r"jobs/([A-Za-z0-9._-]+)/results/(\d+)-(\d+)\.jsonl")


def spec_file(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.json"


def results_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/results/"


def segment_file(job_id: str, epoch: int, seq: int) -> str:
    return f"{results_prefix(job_id)}{epoch:010d}-{seq:08d}.jsonl"


def job_ids(names: Iterable[str]) -> list[str]:
    return sorted(m.group(1) for n in names if (m := _SPEC.fullmatch(n)))


def segments_of(job_id: str, names: Iterable[str]) -> list[str]:
    """A job's segments in the order they were written (epoch, then sequence)."""
    return sorted(n for n in names if (m := _SEGMENT.fullmatch(n)) and m.group(1) == job_id)


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def encode_segment(results: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(dump_json(r) + b"\n" for r in results)


def decode_segment(data: bytes) -> Iterator[dict[str, Any]]:
    """The results in a segment; a torn or garbled line is skipped (it is re-run, not lost)."""
    for line in data.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("q"), int):
            yield obj
