"""How many nodes a read or a write must reach so that every read sees every acknowledged write,
even when a partition splits the cluster (pure arithmetic on the members a node knows).

K is the number of members this node knows (alive, suspect or failed; not departed; failed ones
are forgotten after the membership's dead_retention). A write needs a majority of K live, so
two sides of a partition never both write; an acknowledged write is on all of its min(R, live)
replicas, so on at least `holders` nodes; a read (and a version number's choice) hears from at
least `read` nodes, and read + holders > K: the two sets always share a node.
"""

from __future__ import annotations

from dataclasses import dataclass


def majority(n: int) -> int:
    return n // 2 + 1


@dataclass(frozen=True)
class Quorum:
    known: int  # members this node knows, itself included
    replicas: int  # the replication factor R

    @property
    def write(self) -> int:
        """Live nodes a put or a delete needs."""
        return majority(self.known)

    @property
    def holders(self) -> int:
        """Fewest nodes an acknowledged write (or a reserved version number) is on."""
        return min(self.replicas, self.write)

    @property
    def read(self) -> int:
        """Nodes whose answers a read needs: enough to meet every acknowledged write."""
        return max(1, self.known - self.holders + 1)
