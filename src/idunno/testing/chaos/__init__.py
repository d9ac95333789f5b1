"""A Jepsen-style chaos suite. Its pure core (no processes, no network):

- `idunno.testing.chaos.schedule`: seeded nemesis schedules (`make_schedule`) and the timeline
  of concrete actions a runner executes (`timeline`, `resolve_targets`);
- `idunno.testing.chaos.history`: the history format (one JSON record per line), a thread-safe
  `HistoryWriter` and `read_history`;
- `idunno.testing.chaos.checker`: `check(records) -> Verdict`, the anomalies a history shows
  (lost or wrong writes, stale reads, resurrections, lost or duplicated queries, split brain).

Around it, on real processes: `workload` (the file clients) and `runner` (one whole run).
"""
