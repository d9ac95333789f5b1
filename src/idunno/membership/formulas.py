"""Pure timing formulas of SWIM + Lifeguard, kept small so they can be table-tested.

Each formula follows hashicorp/memberlist (util.go, suspicion.go) unless noted.
"""

from __future__ import annotations

import math


def suspicion_min_timeout(mult: int, n: int, probe_interval: float) -> float:
    """Shortest suspicion timeout: mult * max(1, log10(n)) * probe_interval.

    Grows slowly with the cluster so a refutation has time to spread through it.
    """
    scale = max(1.0, math.log10(max(1, n)))
    return mult * scale * probe_interval


def suspicion_timeout(min_s: float, max_s: float, confirmations: int, expected: int) -> float:
    """Lifeguard's confirmation-driven timeout.

    Starts at max_s with no independent confirmation and falls logarithmically to min_s once
    `expected` members other than the first accuser have also suspected the node:
    max(min, max - (max - min) * log(c + 1) / log(k + 1)).
    """
    if expected <= 0:
        return min_s
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(min_s, max_s - (max_s - min_s) * frac)


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """k = suspicion_mult - 2 confirmations, or 0 when the cluster is too small to give them."""
    k = suspicion_mult - 2
    return 0 if n - 2 < k else max(0, k)


def retransmit_limit(mult: int, n: int) -> int:
    """How many times one update is piggybacked: mult * ceil(log10(n + 1))."""
    return mult * math.ceil(math.log10(n + 1))


def push_pull_interval(base: float, n: int) -> float:
    """Full-state sync period, stretched beyond 32 members so total TCP load stays flat."""
    threshold = 32
    if n <= threshold:
        return base
    return base * (math.ceil(math.log2(n) - math.log2(threshold)) + 1)


def scaled(timing: float, awareness_score: int) -> float:
    """Lifeguard local-health awareness: a node that misses acks/nacks waits longer."""
    return timing * (awareness_score + 1)
