"""Which CPUs a node's executor may run on (`idunno node --executor-cpus`), and the local
cluster's choice of one core per node.

Several nodes on one machine (a local cluster, a benchmark) otherwise leave it to the kernel to
spread their single-threaded executors over the cores, and it keeps moving them: with six
executors on two cores a batch's time varied by about 30% (standard deviation over the mean)
with whichever core was busier at the moment, and the jobs' query rates over 10 s windows with
it. Pinned three to a core, each executor runs at a steady third of one: `bench/inference.py
--only fairness` gave a worst sliding window of 1.027-1.030 pinned against 1.043-1.056 not,
and more queries per second. A machine that runs one node does not need it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Final

FLAG: Final = "--executor-cpus"
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_cpu_list(text: str) -> frozenset[int]:
    """CPU numbers from a list such as "0", "0,2" or "0-3,6"; ValueError naming the problem."""
    cpus: set[int] = set()
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise ValueError(f"{FLAG} {text!r}: expected CPU numbers such as 0,2 or 0-3")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first:
            raise ValueError(f"{FLAG} {text!r}: the range {part.strip()} runs backwards")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def usable_cpus(wanted: frozenset[int], available: Iterable[int] | None = None) -> frozenset[int]:
    """`wanted` if this process may run on all of them; ValueError naming one it may not."""
    allowed = frozenset(os.sched_getaffinity(0) if available is None else available)
    missing = sorted(wanted - allowed)
    if missing:
        raise ValueError(
            f"{FLAG}: CPU {missing[0]} is not available here (available: "
            f"{format_cpu_list(allowed)})"
        )
    return wanted


def local_node_pin(name: str, extra: Sequence[str], cores: Sequence[int]) -> list[str]:
    """The flag that pins local node `name` ("n1", "n2", ...) to one core, round robin over
    `cores`; none if its arguments already choose its CPUs or its inference threads (more
    threads want more than one core; 0 runs no executor), or the name has no number."""
    match = re.fullmatch(r"n(\d+)", name)
    if match is None or not cores or any(a in (FLAG, "--inference-threads") for a in extra):
        return []
    ordered = sorted(cores)
    return [FLAG, str(ordered[(int(match.group(1)) - 1) % len(ordered)])]
