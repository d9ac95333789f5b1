"""SWIM + Lifeguard membership as a pure state machine.

Inputs are method calls carrying the current time (`tick`, `handle_packet`, the push-pull
callbacks, `leave`); outputs are effects (`Send`, `PushPull`) and notifications
(`MemberChanged`, `Note`). No sockets, no sleeps, no clock: the asyncio shell
(`idunno.membership.shell`) and the simulator (`idunno.testing`) both drive this same code.

The rules for applying updates follow hashicorp/memberlist (state.go): an update about a member
wins only with a higher incarnation, except that at equal incarnation suspect beats alive and
failed/left beat both; a node refutes any suspicion or failure about itself by gossiping a
higher incarnation.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from idunno.membership.broadcast import BroadcastQueue
from idunno.membership.codec import MAX_INCARNATION, encode_packet, encode_update
from idunno.membership.config import MembershipConfig
from idunno.membership.formulas import (
    expected_confirmations,
    push_pull_interval,
    retransmit_limit,
    scaled,
    suspicion_min_timeout,
)
from idunno.membership.messages import (
    Ack,
    Alive,
    Dead,
    MemberState,
    Nack,
    Packet,
    Ping,
    PingReq,
    Primary,
    Status,
    Suspect,
    Update,
)
from idunno.membership.suspicion import Awareness, Suspicion

# Bytes the transport adds to every datagram (see idunno.transport.packet.OVERHEAD).
TRANSPORT_OVERHEAD = 25


# --- effects and notifications ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    addr: str
    packet: Packet


@dataclass(frozen=True, slots=True)
class PushPull:
    """Open a full-state exchange with `addr`; report back with on_push_pull_reply/failed."""

    addr: str
    join: bool
    states: tuple[MemberState, ...]


@dataclass(frozen=True, slots=True)
class MemberChanged:
    name: str
    addr: str
    incarnation: int
    old: Status | None  # None: first time this member is seen
    new: Status
    at: float


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a log line that is not a membership change."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Effect = Send | PushPull | MemberChanged | Note


@dataclass(slots=True)
class Member:
    name: str
    addr: str
    incarnation: int
    status: Status
    changed_at: float

    def state(self) -> MemberState:
        return MemberState(self.name, self.addr, self.incarnation, self.status)


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    indirect_at: float
    ends_at: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    origin_addr: str
    origin_seq: int
    nack_at: float


class MembershipCore:
    def __init__(
        self,
        name: str,
        addr: str,
        config: MembershipConfig,
        rng: random.Random,
        now: float,
        seeds: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.addr = addr
        self.config = config
        self._rng = rng
        self.seeds = tuple(s for s in seeds if s != addr)
        self.members: dict[str, Member] = {name: Member(name, addr, 0, Status.ALIVE, now)}
        self._peers: list[str] = []  # names of every other known member, for O(1) sampling
        self._live = 1  # members not failed or departed, self included
        self.awareness = Awareness(config.awareness_max)
        self._broadcasts = BroadcastQueue()
        self._suspicions: dict[str, Suspicion] = {}
        self._ring: list[str] = []
        self._ring_pos = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._out: list[Effect] = []
        # For /metrics: protocol counters and the round-trip times of recent direct probes.
        self.counters: Counter[str] = Counter()
        self.probe_rtts: deque[float] = deque(maxlen=256)
        self.leaving = False
        self._corrections: list[Update] = []  # refutations the current packet's sender missed
        self._next_probe = now
        self._next_gossip = now
        # Random phases, so the nodes of a cluster started together do not sync in lockstep.
        self._next_push_pull = now + config.push_pull_interval * rng.uniform(0.5, 1.0)
        self._next_reconnect = now + config.reconnect_interval * rng.uniform(0.5, 1.0)
        self._introduced: dict[str, float] = {}  # unknown pingers we synced with, and when
        self._next_join = now
        self._join_backoff = config.join_retry_min
        self._joined = False  # a seed answered our join at least once
        self._next_reap = now + config.dead_retention / 10
        self._broadcasts.queue(Alive(name, addr, 0))

    # --- public queries -----------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.members[self.name].incarnation

    def live_count(self) -> int:
        """Members not failed or departed, self included."""
        return self._live

    def drop_pending_gossip(self) -> None:
        """Forget queued updates. For simulators that build a fully joined cluster in one step:
        a real cluster joins node by node and has long disseminated those rumours, so keeping
        N^2 of them would make the first minute of a large simulation unrepresentative."""
        self._broadcasts = BroadcastQueue()

    def local_states(self) -> tuple[MemberState, ...]:
        return tuple(m.state() for m in self.members.values())

    def next_deadline(self) -> float:
        # The gossip timer only matters while updates are queued: an idle node sleeps longer.
        times = [self._next_gossip] if len(self._broadcasts) else []
        if self.leaving:
            return min(times, default=self._next_gossip)
        times += [self._next_push_pull, self._next_reconnect, self._next_probe]
        if self._probe is not None:
            times.append(
                self._probe.ends_at if self._probe.indirect_sent else self._probe.indirect_at
            )
        times += [r.nack_at for r in self._relays.values()]
        times += [s.deadline for s in self._suspicions.values()]
        if self._needs_join():
            times.append(self._next_join)
        return min(times)

    # --- inputs -------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        if not self.leaving:
            self._join_tick(now)
            self._relay_tick(now)
            self._probe_tick(now)
            self._suspicion_tick(now)
            self._push_pull_tick(now)
            self._reap(now)
        self._gossip_tick(now)
        return self._drain()

    def handle_packet(self, now: float, src_addr: str, packet: Packet) -> list[Effect]:
        self._corrections = []
        for update in packet.updates:
            self._apply(now, update)
        if packet.primary is not None:
            self._handle_primary(now, src_addr, packet.sender, packet.primary)
        self._send_corrections(src_addr, packet)
        return self._drain()

    def on_push_pull_request(
        self, now: float, states: list[MemberState], join: bool
    ) -> tuple[tuple[MemberState, ...], list[Effect]]:
        """A peer sent us its state; merge it and answer with ours (after the merge, so that a
        refutation we just made travels back at once)."""
        self._merge(now, states)
        return self.local_states(), self._drain()

    def on_push_pull_reply(
        self, now: float, addr: str, states: list[MemberState], join: bool
    ) -> list[Effect]:
        self._merge(now, states)
        if join:
            self._joined = True
            self._join_backoff = self.config.join_retry_min
            self._out.append(Note("joined", {"via": addr, "members": self.live_count()}))
        return self._drain()

    def on_push_pull_failed(self, now: float, addr: str, join: bool, reason: str) -> list[Effect]:
        if join:
            retry_in = round(max(0.0, self._next_join - now), 1)
            self._out.append(
                Note("join_failed", {"addr": addr, "reason": reason, "retry_in_s": retry_in})
            )
        return self._drain()

    def leave(self, now: float) -> list[Effect]:
        """Depart voluntarily: gossip Dead(self, accuser=self) so others mark us `left`."""
        if self.leaving:
            return []
        me = self.members[self.name]
        self.leaving = True
        self._set_status(now, me, Status.LEFT)
        self._broadcasts.queue(Dead(self.name, me.incarnation, self.name))
        peers = self._pick(self.config.gossip_nodes * 3, lambda m: m.status == Status.ALIVE)
        for peer in peers:
            self._send_gossip(peer)
        self._next_gossip = now + self.config.gossip_interval
        return self._drain()

    # --- timers -------------------------------------------------------------------------

    def _needs_join(self) -> bool:
        # Until a seed itself has answered, knowing other members is not enough: they may be
        # newcomers that joined *us* and together we would form an island.
        return bool(self.seeds) and (not self._joined or self.live_count() <= 1)

    def _join_tick(self, now: float) -> None:
        if not self._needs_join():
            self._join_backoff = self.config.join_retry_min
            return
        if now < self._next_join:
            return
        for seed in self.seeds:
            self._out.append(PushPull(seed, True, self.local_states()))
        self._next_join = now + self._join_backoff
        self._join_backoff = min(self._join_backoff * 2, self.config.join_retry_max)

    def _relay_tick(self, now: float) -> None:
        for seq, relay in list(self._relays.items()):
            if now >= relay.nack_at:
                del self._relays[seq]
                self._send(relay.origin_addr, Nack(relay.origin_seq))

    def _probe_tick(self, now: float) -> None:
        probe = self._probe
        if probe is not None and not probe.indirect_sent and now >= probe.indirect_at:
            self._send_indirect(probe)
        if probe is not None and now >= probe.ends_at:
            self._probe_failed(now, probe)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now)

    def _suspicion_tick(self, now: float) -> None:
        for name, susp in list(self._suspicions.items()):
            if now >= susp.deadline:
                m = self.members[name]
                self._out.append(
                    Note(
                        "suspicion_expired",
                        {"member": name, "confirmations": susp.confirmations},
                    )
                )
                self._apply(now, Dead(name, m.incarnation, self.name))

    def _push_pull_tick(self, now: float) -> None:
        if now >= self._next_push_pull:
            n = self.live_count()
            self._next_push_pull = now + push_pull_interval(self.config.push_pull_interval, n)
            for m in self._pick(1, lambda m: m.status == Status.ALIVE):
                self._out.append(PushPull(m.addr, False, self.local_states()))
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval
            for m in self._pick(1, lambda m: m.status == Status.FAILED):
                self._out.append(PushPull(m.addr, False, self.local_states()))

    def _gossip_tick(self, now: float) -> None:
        if now < self._next_gossip:
            return
        self._next_gossip = now + self.config.gossip_interval
        if not len(self._broadcasts):
            return
        for m in self._pick(self.config.gossip_nodes, lambda m: not m.status.gone):
            self._send_gossip(m)

    def _reap(self, now: float) -> None:
        if now < self._next_reap:
            return
        self._next_reap = now + self.config.dead_retention / 10
        horizon = now - self.config.dead_retention
        for name, m in list(self.members.items()):
            if m.status.gone and m.changed_at < horizon and name != self.name:
                del self.members[name]
        self._peers = [n for n in self.members if n != self.name]

    # --- probing ------------------------------------------------------------------------

    def _next_target(self) -> Member | None:
        for _ in range(2):
            while self._ring_pos < len(self._ring):
                name = self._ring[self._ring_pos]
                self._ring_pos += 1
                m = self.members.get(name)
                if m is not None and name != self.name and not m.status.gone:
                    return m
            self._ring = [
                n for n, m in self.members.items() if n != self.name and not m.status.gone
            ]
            self._rng.shuffle(self._ring)
            self._ring_pos = 0
        return None

    def _start_probe(self, now: float) -> None:
        score = self.awareness.score
        self._next_probe = now + scaled(self.config.probe_interval, score)
        target = self._next_target()
        if target is None:
            return
        self._seq += 1
        self.counters["probes"] += 1
        self._probe = _Probe(
            target=target.name,
            seq=self._seq,
            started=now,
            indirect_at=now + scaled(self.config.probe_timeout, score),
            ends_at=self._next_probe,
        )
        # Lifeguard's buddy system: tell a suspect it is suspected so it can refute at once.
        first = None
        if target.status == Status.SUSPECT:
            first = Suspect(target.name, target.incarnation, self.name)
        self._send(target.addr, Ping(self._seq, target.name), first=first)

    def _send_indirect(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self.members.get(probe.target)
        if target is None or target.status.gone:
            return
        helpers = self._pick(
            self.config.indirect_checks,
            lambda m: m.status == Status.ALIVE and m.name != probe.target,
        )
        probe.expected_nacks = len(helpers)
        for h in helpers:
            self._send(h.addr, PingReq(probe.seq, target.name, target.addr))

    def _probe_succeeded(self, now: float, probe: _Probe) -> None:
        self._probe = None
        # A direct ack means our own networking and scheduling are healthy.
        if not probe.indirect_sent:
            self.awareness.apply(-1)

    def _probe_failed(self, now: float, probe: _Probe) -> None:
        self._probe = None
        self.counters["probes_failed"] += 1
        if probe.expected_nacks > 0:
            # Helpers that did not even nack suggest the fault is ours, not the target's.
            self.awareness.apply(max(0, probe.expected_nacks - probe.nacks))
        else:
            self.awareness.apply(1)
        target = self.members.get(probe.target)
        if target is None or target.status.gone:
            return
        self._apply(now, Suspect(target.name, target.incarnation, self.name))

    def _handle_primary(self, now: float, src: str, sender: str, msg: Primary) -> None:
        match msg:
            case Ping(seq, target):
                if target != self.name:
                    return  # an old address of someone else's: stay silent
                self._send(src, Ack(seq), first=self._rumour_about(sender))
                if sender not in self.members:
                    self._introduce(now, sender, src)
            case Ack(seq):
                probe = self._probe
                if probe is not None and probe.seq == seq:
                    if not probe.indirect_sent:
                        self.probe_rtts.append(now - probe.started)
                    self._probe_succeeded(now, probe)
                relay = self._relays.pop(seq, None)
                if relay is not None:
                    self._send(relay.origin_addr, Ack(relay.origin_seq))
            case PingReq(seq, target, target_addr):
                if self.leaving:
                    return
                self._seq += 1
                nack_at = now + self.config.probe_timeout * self.config.nack_fraction
                self._relays[self._seq] = _Relay(src, seq, nack_at)
                self._send(target_addr, Ping(self._seq, target))
            case Nack(seq):
                probe = self._probe
                if probe is not None and probe.seq == seq:
                    probe.nacks += 1

    def _introduce(self, now: float, sender: str, src: str) -> None:
        """A member we have never heard of pings us: its Alive gossip missed us. Sync state with
        it now rather than at the next periodic push-pull (at most once a reconnect interval)."""
        if now - self._introduced.get(sender, -1e18) < self.config.reconnect_interval:
            return
        if len(self._introduced) > 1024:
            self._introduced.clear()
        self._introduced[sender] = now
        self._out.append(PushPull(src, False, self.local_states()))

    def _rumour_about(self, sender: str) -> Update | None:
        """If we believe the pinging node is suspect, failed or departed, tell it so it can
        refute (a process restarted under a departed name learns it must, instead of waiting
        for the next push-pull: nobody gossips to a member they think has left)."""
        m = self.members.get(sender)
        if m is None or sender == self.name:
            return None
        if m.status == Status.SUSPECT:
            return Suspect(m.name, m.incarnation, self.name)
        if m.status == Status.FAILED:
            return Dead(m.name, m.incarnation, self.name)
        if m.status == Status.LEFT:
            return Dead(m.name, m.incarnation, m.name)
        return None

    # --- applying updates ---------------------------------------------------------------

    def _apply(self, now: float, u: Update) -> None:
        match u:
            case Alive():
                self._apply_alive(now, u)
            case Suspect():
                self._apply_suspect(now, u)
            case Dead():
                self._apply_dead(now, u)

    def _apply_alive(self, now: float, a: Alive) -> None:
        if a.name == self.name:
            if a.incarnation > self.incarnation and not self.leaving:
                self._refute(now, a.incarnation, "stale alive record")
            return
        m = self.members.get(a.name)
        if m is None:
            m = Member(a.name, a.addr, a.incarnation, Status.ALIVE, now)
            self.members[a.name] = m
            self._peers.append(a.name)
            self._live += 1
            # Insert at a random ring position so the newcomer is probed within one round.
            self._ring.insert(self._rng.randint(self._ring_pos, len(self._ring)), a.name)
            self._out.append(MemberChanged(m.name, m.addr, m.incarnation, None, Status.ALIVE, now))
            self._broadcasts.queue(a)
            return
        if a.incarnation <= m.incarnation:
            return
        m.incarnation = a.incarnation
        m.addr = a.addr
        self._suspicions.pop(a.name, None)
        if m.status != Status.ALIVE:
            if m.status.gone and a.name not in self._ring:
                self._ring.insert(self._rng.randint(self._ring_pos, len(self._ring)), a.name)
            self._set_status(now, m, Status.ALIVE)
        self._broadcasts.queue(a)

    def _apply_suspect(self, now: float, s: Suspect) -> None:
        m = self.members.get(s.name)
        if m is None:
            return
        if s.incarnation < m.incarnation:
            self._stale_rumour(s)
            return
        if s.name == self.name:
            if not self.leaving:
                self.awareness.apply(1)  # being suspected hints that we are the slow one
                self._refute(now, s.incarnation, f"suspected by {s.accuser}", s.accuser)
            return
        if m.status.gone:
            return
        if m.status == Status.SUSPECT:
            susp = self._suspicions.get(s.name)
            if susp is not None and susp.confirm(s.accuser):
                self._broadcasts.queue(s)
            return
        n = self.live_count()
        min_s = suspicion_min_timeout(self.config.suspicion_mult, n, self.config.probe_interval)
        max_s = self.config.suspicion_max_mult * min_s
        k = expected_confirmations(self.config.suspicion_mult, n)
        self._suspicions[s.name] = Suspicion(now, s.accuser, k, min_s, max_s)
        self.counters["suspicions"] += 1
        m.incarnation = s.incarnation
        self._set_status(now, m, Status.SUSPECT)
        self._broadcasts.queue(s)

    def _apply_dead(self, now: float, d: Dead) -> None:
        m = self.members.get(d.name)
        if m is None:
            return
        if d.incarnation < m.incarnation:
            self._stale_rumour(d)
            return
        if d.name == self.name:
            if not self.leaving:
                self._refute(now, d.incarnation, f"declared failed by {d.accuser}", d.accuser)
            return
        new = Status.LEFT if d.left else Status.FAILED
        # Failed may still become left (the departure notice arrived late); nothing else moves.
        if m.status == Status.LEFT or (m.status == Status.FAILED and new == Status.FAILED):
            return
        m.incarnation = d.incarnation
        self._suspicions.pop(d.name, None)
        if self._probe is not None and self._probe.target == d.name:
            self._probe = None
        self._set_status(now, m, new)
        self._broadcasts.queue(d)

    def _stale_rumour(self, u: Suspect | Dead) -> None:
        """`u` accuses an incarnation older than the one we know: if that is us, or a member we
        know to be alive, the refutation missed the sender. Gossip alone reaches everyone only
        with high probability, and a sender that keeps the stale suspicion until it times out
        declares a live member failed; so answer the sender directly (_send_corrections) and,
        for ourselves, gossip the current Alive again (no new incarnation)."""
        if u.name == self.name:
            if not self.leaving:
                me = Alive(self.name, self.addr, self.incarnation)
                self._broadcasts.queue(me)
                self._corrections.append(me)
            return
        m = self.members[u.name]
        if m.status == Status.ALIVE:
            self._corrections.append(Alive(m.name, m.addr, m.incarnation))

    def _send_corrections(self, src_addr: str, packet: Packet) -> None:
        fixes, self._corrections = self._corrections, []
        if self.leaving:
            return
        if isinstance(packet.primary, Ping) and packet.primary.target == self.name:
            fixes = [u for u in fixes if u.name != self.name]  # our Ack already carried it
        bare = Packet(self.name, None, ())
        budget = self.config.max_packet - TRANSPORT_OVERHEAD - len(encode_packet(bare)) - 3
        out: list[Update] = []
        for u in dict.fromkeys(fixes):
            size = len(encode_update(u))
            if size <= budget:
                out.append(u)
                budget -= size
        if out:
            self._out.append(Send(src_addr, Packet(self.name, None, tuple(out))))

    def _refute(self, now: float, incarnation: int, why: str, accuser: str | None = None) -> None:
        me = self.members[self.name]
        me.incarnation = min(max(me.incarnation, incarnation) + 1, MAX_INCARNATION - 1)
        alive = Alive(self.name, self.addr, me.incarnation)
        self._broadcasts.queue(alive)
        self._out.append(Note("refuted", {"incarnation": me.incarnation, "why": why}))
        self.counters["refutations"] += 1
        # Gossip reaches everyone only with high probability; the accuser is the one whose
        # timer will declare us failed, so it gets the refutation directly as well.
        accused_by = self.members.get(accuser) if accuser else None
        if accused_by is not None and accuser != self.name and not accused_by.status.gone:
            self._out.append(Send(accused_by.addr, Packet(self.name, None, (alive,))))

    def _merge(self, now: float, states: list[MemberState]) -> None:
        for s in states:
            if s.status == Status.ALIVE:
                self._apply(now, Alive(s.name, s.addr, s.incarnation))
            elif s.status == Status.LEFT:
                self._apply(now, Dead(s.name, s.incarnation, s.name))
            else:
                # A remote "failed" is only a suspicion here: the member gets its chance to refute.
                # A copied view is no independent evidence: it never confirms a suspicion.
                known = self.members.get(s.name)
                if known is None or (known.status == Status.SUSPECT and s.name != self.name):
                    continue
                self._apply(now, Suspect(s.name, s.incarnation, self.name))

    def _set_status(self, now: float, m: Member, status: Status) -> None:
        old = m.status
        self._live += int(old.gone) - int(status.gone)
        m.status = status
        m.changed_at = now
        self._out.append(MemberChanged(m.name, m.addr, m.incarnation, old, status, now))

    # --- sending ------------------------------------------------------------------------

    def _pick(self, k: int, keep: Callable[[Member], bool]) -> list[Member]:
        """Up to k distinct random peers satisfying `keep`.

        Samples by rejection first (O(k) in large, mostly-live clusters) and falls back to a
        full scan when few peers qualify.
        """
        peers = self._peers
        chosen: dict[str, Member] = {}
        for _ in range(3 * k):
            if len(chosen) >= k or not peers:
                break
            m = self.members[peers[self._rng.randrange(len(peers))]]
            if m.name not in chosen and keep(m):
                chosen[m.name] = m
        if len(chosen) >= k:
            return list(chosen.values())
        candidates = [self.members[n] for n in peers if keep(self.members[n])]
        if len(candidates) <= k:
            return candidates
        return self._rng.sample(candidates, k)

    def _send(self, addr: str, msg: Primary | None, first: Update | None = None) -> None:
        bare = Packet(self.name, msg, ())
        budget = self.config.max_packet - TRANSPORT_OVERHEAD - len(encode_packet(bare)) - 3
        limit = retransmit_limit(self.config.retransmit_mult, self.live_count())
        updates = tuple(self._broadcasts.take(budget, limit, first=first))
        self._out.append(Send(addr, Packet(self.name, msg, updates)))

    def _send_gossip(self, m: Member) -> None:
        self._send(m.addr, None)

    def _drain(self) -> list[Effect]:
        out, self._out = self._out, []
        return out
