"""Seeded, pure simulation of coordinator election and epoch fencing (`idunno.control.roles` and
`idunno.control.fence` as `idunno.control.plane` uses them).

A round: views that are due catch up with the truth; every live node applies the rule
(`roles.choose_coordinator` on its own reign and view) and claims an epoch when the rule picks
it and it does not lead already; a leader keeps its standby (`roles.choose_standby`) and
announces its reign when the standby changes and, as `announce` says, to nodes that appear in
its view or every round; the announcements that are due are delivered; every leader stamps an
assignment with its epoch for each worker it sees and can reach.

Model:
- Epochs. A claim is a put of `_control/epoch`; its version is the epoch. `epochs="counter"`
  models the version as a cluster-wide counter (unique, increasing: the store's promise);
  `epochs="per_side"` numbers it like `StoreService.assign` does, one above the highest version
  held by the members the claimant can reach. The file is written to every member the claimant
  reaches and a read returns the newest copy among the members the reader reaches.
- A receiver of an announcement runs `Fence.admit` (a stale one answers 409: the sender steps
  down), steps down if it leads an older epoch, and adopts `roles.newer(own, announced)`. A
  worker runs `Fence.admit` on every assignment; a 409 deposes the issuer. A node that steps down
  re-reads the epoch file (as `ControlPlane._deposed` makes it do).
- Views. Every live node's membership view catches up with the truth (the live members on its
  side of the partition) 0..`view_delay` rounds after each change; a node always sees itself. A
  (re)started node reads the epoch file and starts with the true view of its side (it learned
  the membership on joining). A crash loses the reign and leadership; the fence (`persist_fence`)
  and the node's copy of the epoch file survive.
- An announcement is lost if, when it is due, its sender or its target is down or they are on
  different sides of the partition (a request in flight when its sender dies, or cut off).
- A claim needs `replicas` members in the claimant's view (the store refuses a put otherwise).
- A node that knows of no reign claims only once its view has not changed for
  `first_claim_settle` rounds and a fresh read of the epoch file still finds none
  (`roles.first_claim_waits`: 0.5 s, two rounds of ControlPlane's 0.25 s step).
- `start="partial"` starts a new cluster the way processes start: each node sees itself and a
  random few of the others, and the rest join its view over 1..`view_delay` rounds.
  `epoch_file="view"` has a claim write the epoch file to the members in the claimant's view
  and a read ask the members in the reader's view, as the store does (the default, "side",
  reaches every member on the node's side of any partition).
The defaults model ControlPlane as it is: the reign is announced on a claim, on a standby change
and to every node that joins the leader's view, and followers re-read the epoch file.

Fencing tokens are (epoch, coordinator), as in `Fence`. Checks while running (`violations`): one
claimant per token; every token whose assignments workers accepted has one issuer; no worker
accepts a token below one it accepted or admitted before. `settled()` tells whether exactly one
node leads and every live node's reign names it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from idunno.control import roles
from idunno.control.fence import Fence, StaleEpoch
from idunno.control.roles import Reign

EpochSource = Literal["counter", "per_side"]
StartViews = Literal["full", "partial"]
EpochFileReach = Literal["side", "view"]
RelearnPolicy = Literal["never", "store", "ask", "peers"]
AnnouncePolicy = Literal["on_claim", "on_join", "every_round"]


@dataclass(frozen=True)
class SimConfig:
    view_delay: int = 2  # rounds a membership view may lag behind a change
    announce_delay: int = 1  # rounds an announcement may take
    # When a leader announces its reign, besides on claiming it and on changing its standby:
    # "on_join" also to every node that appears in its view (ControlPlane.on_member_change),
    # "every_round" to every node it sees, every round; "on_claim" never.
    announce: AnnouncePolicy = "on_join"
    epochs: EpochSource = "counter"
    # How a node that does not lead learns a reign it missed, besides announcements: "store"
    # (what plane.py does) re-reads the epoch file when its fence has admitted a newer token
    # than its reign's, and every `reread_every` rounds; "ask" adopts the reign of the
    # coordinator its reign names when that node does not lead; "peers" adopts, every round, the
    # newest reign of the nodes it reaches; "never" only listens to announcements.
    relearn: RelearnPolicy = "store"
    reread_every: int = 6  # rounds between a follower's periodic re-reads of the epoch file
    replicas: int = 1  # a claim (a store put) needs this many members in the claimant's view
    first_claim_settle: int = 2  # rounds; 0 claims at once, as ControlPlane did before
    start: StartViews = "full"
    epoch_file: EpochFileReach = "side"
    persist_fence: bool = True
    p_crash: float = 0.05
    p_restart: float = 0.2
    p_join: float = 0.02
    p_partition: float = 0.05
    p_heal: float = 0.15
    max_nodes: int = 11


@dataclass
class SimNode:
    name: str
    fence: Fence = field(default_factory=Fence)
    up: bool = True
    reign: Reign | None = None
    leading: int | None = None  # the epoch this node coordinates
    view: frozenset[str] = frozenset()
    refresh_at: int | None = None
    view_changed: int = 0  # the round its view last changed
    disk: Reign | None = None  # its copy of _control/epoch (survives a crash)


@dataclass(frozen=True)
class Announcement:
    sender: str
    target: str
    reign: Reign
    due: int


class ElectionSim:
    def __init__(self, names: Iterable[str], seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.nodes: dict[str, SimNode] = {n: SimNode(n) for n in names}
        self.side: dict[str, int] = dict.fromkeys(self.nodes, 0)
        for node in self.nodes.values():
            node.view = frozenset(self.nodes)
        self.round = 0
        if self.cfg.start == "partial":
            for name in sorted(self.nodes):
                others = sorted(set(self.nodes) - {name})
                seen = self.rng.sample(others, self.rng.randint(0, len(others)))
                node = self.nodes[name]
                node.view = frozenset([name, *seen])
                node.refresh_at = self.rng.randint(1, max(1, self.cfg.view_delay))
        self.counter = 0
        self.inbox: list[Announcement] = []
        self.history: list[tuple[object, ...]] = []
        self.violations: list[str] = []
        self.claims: dict[tuple[int, str], str] = {}  # fencing token -> claimant
        self.claim_log: list[tuple[int, str, int, str | None]] = []  # round, node, epoch, standby
        # fencing token (epoch, coordinator) -> leaders whose assignments workers accepted
        self.issuers: dict[tuple[int, str], set[str]] = {}
        # oracle of each fence: the highest token each node admitted
        self.seen: dict[str, tuple[int, str]] = dict.fromkeys(self.nodes, (0, ""))
        self.accepted = 0

    # --- the world ------------------------------------------------------------------------

    def up(self) -> list[str]:
        return sorted(n for n, node in self.nodes.items() if node.up)

    def truth(self, name: str) -> frozenset[str]:
        side = self.side[name]
        return frozenset(n for n in self.up() if self.side[n] == side)

    def reaches(self, a: str, b: str) -> bool:
        na, nb = self.nodes[a], self.nodes[b]
        return na.up and nb.up and self.side[a] == self.side[b]

    def partitioned(self) -> bool:
        return len({self.side[n] for n in self.up()}) > 1

    def views_converged(self) -> bool:
        return all(self.nodes[n].view == self.truth(n) for n in self.up())

    def _changed(self) -> None:
        for name in self.up():
            node = self.nodes[name]
            due = self.round + self.rng.randint(0, self.cfg.view_delay)
            node.refresh_at = due if node.refresh_at is None else min(node.refresh_at, due)

    def crash(self, name: str) -> None:
        node = self.nodes[name]
        node.up = False
        node.reign = None
        node.leading = None
        node.view = frozenset()
        node.refresh_at = None
        self._log("crash", name)
        self._changed()

    def restart(self, name: str) -> None:
        """Start a crashed node again, or a new one (a join)."""
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = SimNode(name)
            self.seen[name] = (0, "")
            self.side[name] = 0
        elif not self.cfg.persist_fence:
            node.fence = Fence()
        node.up = True
        node.leading = None
        node.view = self.truth(name)
        node.view_changed = self.round
        node.refresh_at = None
        node.reign = self._read_epoch_file(name)
        self._log("start", name, _reign_key(node.reign))
        self._changed()

    def partition(self, *groups: Iterable[str]) -> None:
        """Members of different groups cannot talk; unlisted members join the first group."""
        sides = [sorted(g) for g in groups]
        self.side = dict.fromkeys(self.nodes, 0)
        for i, group in enumerate(sides):
            for name in group:
                self.side[name] = i
        self._log("partition", tuple(tuple(g) for g in sides))
        self._changed()

    def heal(self) -> None:
        self.side = dict.fromkeys(self.nodes, 0)
        self._log("heal")
        self._changed()

    def random_events(self) -> None:
        rng, cfg = self.rng, self.cfg
        up = self.up()
        down = sorted(set(self.nodes) - set(up))
        if len(up) > 1 and rng.random() < cfg.p_crash:
            self.crash(rng.choice(up))
        if down and rng.random() < cfg.p_restart:
            self.restart(rng.choice(down))
        if len(self.nodes) < cfg.max_nodes and rng.random() < cfg.p_join:
            self.restart(f"j{len(self.nodes)}")
        if self.partitioned():
            if rng.random() < cfg.p_heal:
                self.heal()
        elif rng.random() < cfg.p_partition:
            members = self.up()
            rng.shuffle(members)
            k = min(rng.randint(1, 2), len(members) - 1)
            cuts = sorted(rng.sample(range(1, len(members)), k))
            groups = [members[a:b] for a, b in zip([0, *cuts], [*cuts, len(members)], strict=True)]
            if len(groups) > 1:
                self.partition(*groups)

    # --- a round --------------------------------------------------------------------------

    def step(self) -> None:
        self.round += 1
        for name in self.up():
            node = self.nodes[name]
            if node.refresh_at is not None and node.refresh_at <= self.round:
                joined = self.truth(name) - node.view
                if node.view != self.truth(name):
                    node.view_changed = self.round
                node.view = self.truth(name)
                node.refresh_at = None
                if node.leading is not None and self.cfg.announce == "on_join":
                    self._announce(node, joined)
        order = self.up()
        self.rng.shuffle(order)
        for name in order:
            node = self.nodes[name]
            if node.leading is not None:
                self._keep_standby(node)
                continue
            self._relearn(node)
            if roles.choose_coordinator(node.reign, node.view) == name and self._may_claim(node):
                self._claim(node)
        due = [a for a in self.inbox if a.due <= self.round]
        self.inbox = [a for a in self.inbox if a.due > self.round]
        for a in due:
            self._deliver(a)
        for name in self.up():
            self._assign_all(self.nodes[name])
        self.history.append(
            (
                "round",
                self.round,
                tuple(
                    (n, node.leading, _reign_key(node.reign), node.fence.epoch)
                    for n, node in sorted(self.nodes.items())
                    if node.up
                ),
            )
        )

    def run(self, rounds: int, events: bool = False) -> None:
        for _ in range(rounds):
            if events:
                self.random_events()
            self.step()

    def settle(self, max_rounds: int) -> int | None:
        """Run quiet rounds until `settled()`; the rounds it took, or None."""
        for k in range(max_rounds + 1):
            if self.views_converged() and self.settled() is None:
                return k
            self.step()
        return None

    # --- the rule and the protocol --------------------------------------------------------

    def _relearn(self, node: SimNode) -> None:
        if self.cfg.relearn == "store":
            known = node.reign.key[:2] if node.reign else (0, "")
            if node.fence.token > known or self.round % self.cfg.reread_every == 0:
                node.reign = roles.newer(node.reign, self._read_epoch_file(node.name))
        elif self.cfg.relearn == "ask":
            named = node.reign.coordinator if node.reign else None
            if (
                named is not None
                and named != node.name
                and self.reaches(node.name, named)
                and self.nodes[named].leading is None
            ):
                node.reign = roles.newer(node.reign, self.nodes[named].reign)
        elif self.cfg.relearn == "peers":
            for peer in sorted(node.view):
                if self.reaches(node.name, peer):
                    node.reign = roles.newer(node.reign, self.nodes[peer].reign)

    def _may_claim(self, node: SimNode) -> bool:
        """ControlPlane._no_reign_after_settling: a node that knows of no reign waits for its
        view to settle, then reads the epoch file again."""
        if node.reign is not None:
            return True
        if self.round - node.view_changed < self.cfg.first_claim_settle:
            return False
        if self.cfg.first_claim_settle:
            node.reign = self._read_epoch_file(node.name)
        return node.reign is None

    def _claim(self, node: SimNode) -> None:
        if len(node.view) < self.cfg.replicas:
            return  # the store refuses a put with too few live members
        epoch = self._next_epoch(node.name)
        standby = roles.choose_standby(node.reign, node.name, node.view)
        reign = Reign(epoch, node.name, standby)
        self._write_epoch_file(node.name, reign)
        token = (epoch, node.name)
        if token in self.claims:
            self._violate(f"token {token} claimed by {self.claims[token]} and by {node.name}")
        self.claims.setdefault(token, node.name)
        try:
            node.fence.admit(epoch, node.name)
        except StaleEpoch:
            self._log("claim_refused", node.name, epoch)
            return
        self.seen[node.name] = max(self.seen[node.name], (epoch, node.name))
        node.reign = reign
        node.leading = epoch
        self._log("claim", node.name, epoch, standby)
        self.claim_log.append((self.round, node.name, epoch, standby))
        self._announce(node)

    def _keep_standby(self, node: SimNode) -> None:
        assert node.reign is not None and node.leading is not None
        standby = roles.choose_standby(node.reign, node.name, node.view)
        if standby != node.reign.standby:
            node.reign = Reign(node.leading, node.name, standby, node.reign.seq + 1)
            self._log("standby", node.name, node.leading, standby)
            self._announce(node)
        elif self.cfg.announce == "every_round":
            self._announce(node)

    def _announce(self, node: SimNode, to: Iterable[str] | None = None) -> None:
        assert node.reign is not None
        for target in sorted(set(node.view if to is None else to) - {node.name}):
            due = self.round + self.rng.randint(0, self.cfg.announce_delay)
            self.inbox.append(Announcement(node.name, target, node.reign, due))

    def _deliver(self, a: Announcement) -> None:
        if not self.reaches(a.sender, a.target):
            return  # lost: the connection failed
        receiver = self.nodes[a.target]
        try:
            receiver.fence.admit(a.reign.epoch, a.reign.coordinator)
        except StaleEpoch:
            sender = self.nodes[a.sender]
            if sender.leading == a.reign.epoch:
                self._step_down(sender, f"409 from {a.target}")
            return
        self.seen[a.target] = max(self.seen[a.target], (a.reign.epoch, a.reign.coordinator))
        if receiver.leading is not None and (a.reign.epoch, a.sender) > (
            receiver.leading,
            a.target,
        ):
            self._step_down(receiver, f"epoch {a.reign.epoch} announced by {a.sender}")
        receiver.reign = roles.newer(receiver.reign, a.reign)

    def _assign_all(self, leader: SimNode) -> None:
        for worker in sorted(leader.view):
            epoch = leader.leading
            if epoch is None:
                return
            if not self.reaches(leader.name, worker):
                continue
            try:
                self.nodes[worker].fence.admit(epoch, leader.name)
            except StaleEpoch:
                self._step_down(leader, f"409 from worker {worker}")
                return
            token = (epoch, leader.name)
            if token < self.seen[worker]:
                self._violate(
                    f"{worker} accepted {token} from {leader.name} after seeing {self.seen[worker]}"
                )
            self.seen[worker] = max(self.seen[worker], token)
            issuers = self.issuers.setdefault(token, set())
            issuers.add(leader.name)
            if len(issuers) > 1:
                self._violate(f"workers accepted token {token} from {sorted(issuers)}")
            self.accepted += 1

    def _step_down(self, node: SimNode, why: str) -> None:
        self._log("step_down", node.name, node.leading, why)
        node.leading = None
        node.reign = roles.newer(node.reign, self._read_epoch_file(node.name))

    # --- the store's epoch file -----------------------------------------------------------

    def _next_epoch(self, name: str) -> int:
        if self.cfg.epochs == "counter":
            self.counter += 1
            return self.counter
        tops = [self.nodes[m].disk for m in self._reach(name)]
        return max((r.epoch for r in tops if r is not None), default=0) + 1

    def _reach(self, name: str) -> frozenset[str]:
        """The members a store call from `name` reaches."""
        if self.cfg.epoch_file == "view":
            return self.nodes[name].view & self.truth(name)
        return self.truth(name)

    def _write_epoch_file(self, name: str, reign: Reign) -> None:
        for m in self._reach(name):
            node = self.nodes[m]
            if node.disk is None or node.disk.epoch < reign.epoch:
                node.disk = reign

    def _read_epoch_file(self, name: str) -> Reign | None:
        copies = [d for m in self._reach(name) if (d := self.nodes[m].disk) is not None]
        return max(copies, key=lambda r: (r.epoch, r.coordinator), default=None)

    # --- verdicts -------------------------------------------------------------------------

    def leaders(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, node in sorted(self.nodes.items()):
            if node.leading is not None:
                out[name] = node.leading
        return out

    def settled(self) -> str | None:
        """None if exactly one live node leads and every live node's reign names it (with its
        epoch), else what is wrong."""
        leaders = self.leaders()
        if len(leaders) != 1:
            return f"leaders {leaders}"
        ((leader, epoch),) = leaders.items()
        wrong = {
            n: key
            for n in self.up()
            if (key := _reign_key(self.nodes[n].reign)) is None or key[:2] != (epoch, leader)
        }
        return f"{leader} leads epoch {epoch} but reigns differ: {wrong}" if wrong else None

    def claims_since(self, round_: int) -> list[tuple[int, str, int, str | None]]:
        return [c for c in self.claim_log if c[0] > round_]

    def digest(self) -> str:
        return hashlib.sha256(repr(self.history).encode()).hexdigest()

    def _violate(self, what: str) -> None:
        self.violations.append(f"seed {self.seed} round {self.round}: {what}")

    def _log(self, kind: str, *args: object) -> None:
        self.history.append((kind, self.round, *args))


def _reign_key(reign: Reign | None) -> tuple[int, str, str | None] | None:
    return None if reign is None else (reign.epoch, reign.coordinator, reign.standby)
