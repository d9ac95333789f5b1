"""Rendezvous (highest-random-weight) placement of files on live members (pure).

Each (file, member) pair gets a pseudo-random score; a file's replicas are the R members with
the highest scores. A membership change moves only the files whose top R included the changed
member, and every node computes the same answer from the same view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(name: str, member: str) -> int:
    digest = hashlib.blake2b(f"{member}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(name: str, members: Iterable[str]) -> list[str]:
    """Members from most to least preferred for `name` (ties broken by member name)."""
    return sorted(members, key=lambda m: (-score(name, m), m))


def replica_set(name: str, members: Iterable[str], replicas: int) -> list[str]:
    return rank(name, members)[:replicas]


def authority(name: str, members: Iterable[str]) -> str | None:
    """The member that numbers the versions of `name`: its highest-ranked live member."""
    ranked = rank(name, members)
    return ranked[0] if ranked else None
