"""Pure re-replication decisions: who should hold what, and what a peer lacks.

Every node runs the same rules on its own holdings:
  - for each file it holds, the desired holders are the file's replica set among live members;
  - it offers its versions (and tombstone) to every other desired holder, which answers with
    the versions it lacks (`needs`) or with a newer tombstone (the file was deleted);
  - a node outside the replica set drops its copy only after every desired holder has
    confirmed it holds everything (so copies never dip below the target during a move).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from idunno.store.placement import replica_set


@dataclass(frozen=True)
class Holding:
    """What one node holds of one file: version numbers and tombstone (0 = none)."""

    versions: tuple[int, ...]
    tombstone: int = 0

    @property
    def top(self) -> int:
        return max((*self.versions, self.tombstone))


@dataclass(frozen=True)
class Offer:
    """What to ask `peer`: here are my holdings of these files; what do you lack?"""

    peer: str
    files: dict[str, Holding]


@dataclass(frozen=True)
class Answer:
    """A peer's reply for one file."""

    needs: tuple[int, ...]  # versions the peer lacks and wants
    tombstone: int  # the peer's tombstone, if newer than our versions (0 = none)


def offers(
    me: str, holdings: Mapping[str, Holding], live: Iterable[str], replicas: int
) -> list[Offer]:
    """The sync requests to send this round, one per peer."""
    live = sorted(live)
    by_peer: dict[str, dict[str, Holding]] = {}
    for name, h in holdings.items():
        for peer in replica_set(name, live, replicas):
            if peer != me:
                by_peer.setdefault(peer, {})[name] = h
    return [Offer(p, files) for p, files in sorted(by_peer.items())]


def answer(mine: Holding | None, offered: Holding, keep: int) -> Answer:
    """What the receiver of an offer lacks, given what it holds (`mine`)."""
    tomb = mine.tombstone if mine else 0
    if tomb >= offered.top and tomb > 0:
        return Answer((), tomb)  # deleted after everything offered: tell the sender
    have = set(mine.versions) if mine else set()
    floor = max(tomb, offered.tombstone)
    # Keep the newest `keep` versions of the union, like the sender will.
    union = sorted(have | {v for v in offered.versions if v > floor}, reverse=True)[:keep]
    needs = tuple(sorted(v for v in union if v not in have and v in offered.versions))
    return Answer(needs, tomb if tomb > max(offered.versions, default=0) else 0)


def should_drop(me: str, name: str, live: Iterable[str], replicas: int) -> bool:
    """True if `me` is not among `name`'s desired holders (its copy is surplus once handed off)."""
    return me not in replica_set(name, sorted(live), replicas)
