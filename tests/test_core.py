"""Unit tests of the pure SWIM + Lifeguard state machine, driven with hand-made packets."""

from __future__ import annotations

import random
from typing import Any

import pytest

from idunno.membership.codec import MAX_INCARNATION, decode_packet, encode_packet
from idunno.membership.config import MembershipConfig, preset
from idunno.membership.core import (
    TRANSPORT_OVERHEAD,
    Effect,
    MemberChanged,
    MembershipCore,
    Note,
    PushPull,
    Send,
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
    Status,
    Suspect,
    Update,
)

CFG = preset("lan")


def addr(name: str) -> str:
    return f"{name}.local:7946"


def make(
    name: str = "a",
    peers: tuple[str, ...] = ("b", "c", "d"),
    now: float = 0.0,
    seeds: tuple[str, ...] = (),
    config: MembershipConfig = CFG,
    seed: int = 1,
) -> MembershipCore:
    core = MembershipCore(name, addr(name), config, random.Random(seed), now, seeds)
    if peers:
        rows = [MemberState(p, addr(p), 0, Status.ALIVE) for p in peers]
        core.on_push_pull_request(now, rows, False)
    return core


def pkt(sender: str, primary: Any = None, *updates: Update) -> Packet:
    return Packet(sender, primary, tuple(updates))


def gossip(core: MembershipCore, now: float, *updates: Update, sender: str = "x") -> list[Effect]:
    return core.handle_packet(now, addr(sender), pkt(sender, None, *updates))


def sends(effects: list[Effect], kind: type | None = None) -> list[Send]:
    out = [e for e in effects if isinstance(e, Send)]
    if kind is not None:
        out = [s for s in out if isinstance(s.packet.primary, kind)]
    return out


def notes(effects: list[Effect], event: str) -> list[Note]:
    return [e for e in effects if isinstance(e, Note) and e.event == event]


def changes(effects: list[Effect]) -> list[tuple[str, Status | None, Status]]:
    return [(e.name, e.old, e.new) for e in effects if isinstance(e, MemberChanged)]


def status(core: MembershipCore, name: str) -> Status:
    return core.members[name].status


def carried(effects: list[Effect]) -> list[Update]:
    return [u for s in sends(effects) for u in s.packet.updates]


# --- ping / ack -------------------------------------------------------------------------


def test_ping_is_acked_to_the_source_address() -> None:
    core = make()
    eff = core.handle_packet(1.0, "10.9.9.9:1234", pkt("b", Ping(42, "a")))
    acks = sends(eff, Ack)
    assert len(acks) == 1
    assert acks[0].addr == "10.9.9.9:1234"  # where it came from, not where we think b lives
    assert acks[0].packet.primary == Ack(42)
    assert acks[0].packet.sender == "a"


def test_ping_for_another_name_is_ignored() -> None:
    core = make()
    assert sends(core.handle_packet(1.0, addr("b"), pkt("b", Ping(42, "someone-else")))) == []


def test_ping_from_a_stranger_is_acked_but_does_not_add_it() -> None:
    core = make()
    eff = core.handle_packet(1.0, "10.1.1.1:1", pkt("zed", Ping(5, "a")))
    assert sends(eff, Ack)[0].packet.primary == Ack(5)
    assert "zed" not in core.members


@pytest.mark.parametrize(
    ("rumour", "expected"),
    [
        (Suspect("b", 0, "c"), Suspect("b", 0, "a")),
        (Dead("b", 0, "c"), Dead("b", 0, "a")),
        (Dead("b", 0, "b"), Dead("b", 0, "b")),  # departed: e.g. restarted under the same name
    ],
)
def test_ack_tells_a_suspected_failed_or_departed_pinger_first(
    rumour: Update, expected: Update
) -> None:
    core = make()
    gossip(core, 0.5, rumour)
    eff = core.handle_packet(1.0, addr("b"), pkt("b", Ping(9, "a")))
    assert sends(eff, Ack)[0].packet.updates[0] == expected


# --- indirect probes (relay side) -------------------------------------------------------


def _relay(core: MembershipCore, now: float = 1.0) -> int:
    eff = core.handle_packet(now, addr("b"), pkt("b", PingReq(77, "c", addr("c"))))
    pings = sends(eff, Ping)
    assert len(pings) == 1
    assert pings[0].addr == addr("c")
    assert pings[0].packet.primary is not None
    assert isinstance(pings[0].packet.primary, Ping)
    assert pings[0].packet.primary.target == "c"
    return pings[0].packet.primary.seq


def test_ping_req_relays_a_ping_and_forwards_the_ack() -> None:
    core = make()
    seq = _relay(core)
    eff = core.handle_packet(1.01, addr("c"), pkt("c", Ack(seq)))
    assert [(s.addr, s.packet.primary) for s in sends(eff, Ack)] == [(addr("b"), Ack(77))]
    # Answered: no Nack follows.
    later = core.tick(1.5) + core.tick(2.0)
    assert sends(later, Nack) == []


def test_ping_req_sends_a_nack_when_the_target_is_silent() -> None:
    core = make()
    seq = _relay(core)
    nack_at = 1.0 + CFG.probe_timeout * CFG.nack_fraction
    assert core.next_deadline() <= nack_at
    assert sends(core.tick(nack_at - 0.001), Nack) == []
    eff = core.tick(nack_at)
    assert [(s.addr, s.packet.primary) for s in sends(eff, Nack)] == [(addr("b"), Nack(77))]
    # A late ack is not forwarded after the Nack, and no second Nack is sent.
    assert sends(core.handle_packet(nack_at + 0.01, addr("c"), pkt("c", Ack(seq))), Ack) == []
    assert sends(core.tick(nack_at + 1.0), Nack) == []


def test_a_leaving_node_does_not_relay() -> None:
    core = make()
    core.leave(0.5)
    eff = core.handle_packet(1.0, addr("b"), pkt("b", PingReq(77, "c", addr("c"))))
    assert sends(eff, Ping) == []


# --- refutation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rumour", "incarnation"),
    [
        (Suspect("a", 0, "b"), 1),
        (Suspect("a", 5, "b"), 6),  # always above the accusation
        (Dead("a", 0, "b"), 1),
        (Dead("a", 3, "b"), 4),
    ],
)
def test_rumour_about_self_is_refuted(rumour: Update, incarnation: int) -> None:
    core = make()
    eff = gossip(core, 1.0, rumour)
    assert core.incarnation == incarnation
    assert status(core, "a") == Status.ALIVE
    assert len(notes(eff, "refuted")) == 1
    assert Alive("a", addr("a"), incarnation) in carried(core.tick(1.0))


def test_being_suspected_raises_awareness() -> None:
    core = make()
    gossip(core, 1.0, Suspect("a", 0, "b"))
    assert core.awareness.score == 1


def test_stale_rumour_does_not_bump_the_incarnation_but_answers_the_sender() -> None:
    core = make()
    gossip(core, 1.0, Suspect("a", 0, "b"))
    assert core.incarnation == 1
    # c missed the refutation and gossips the old suspicion to us: c hears our Alive at once.
    eff = gossip(core, 5.0, Suspect("a", 0, "c"), sender="c")
    assert core.incarnation == 1
    direct = [s for s in sends(eff) if s.addr == addr("c")]
    assert direct
    assert direct[0].packet.updates[0] == Alive("a", addr("a"), 1)


def test_stale_rumour_on_a_ping_rides_on_the_ack() -> None:
    core = make()
    gossip(core, 1.0, Dead("a", 0, "b"))
    mine = Alive("a", addr("a"), 1)
    for _ in range(10):  # let the refutation's own retransmissions run out
        core.tick(core.next_deadline())
    assert mine not in core._broadcasts.pending()
    eff = core.handle_packet(9.0, addr("c"), pkt("c", Ping(3, "a"), Suspect("a", 0, "c")))
    assert core.incarnation == 1
    assert len(sends(eff)) == 1
    assert mine in sends(eff, Ack)[0].packet.updates


def test_stale_rumour_about_a_member_that_refuted_is_answered_with_its_alive() -> None:
    core = make()
    gossip(core, 1.0, Suspect("b", 0, "c"), Alive("b", addr("b"), 1))  # b refuted
    eff = gossip(core, 2.0, Suspect("b", 0, "d"), Dead("c", 0, "d"), sender="d")
    direct = [s for s in sends(eff) if s.addr == addr("d")]
    assert len(direct) == 1
    assert direct[0].packet.primary is None
    assert direct[0].packet.updates == (Alive("b", addr("b"), 1),)
    assert status(core, "b") == Status.ALIVE


def test_no_correction_for_news_that_is_not_stale() -> None:
    core = make()
    gossip(core, 1.0, Dead("b", 1, "c"))  # b failed at incarnation 1
    eff = gossip(core, 2.0, Suspect("b", 0, "d"), Alive("c", addr("c"), 0), sender="d")
    assert sends(eff) == []


def test_a_leaving_node_sends_no_corrections() -> None:
    core = make()
    gossip(core, 1.0, Suspect("a", 0, "b"))
    core.leave(2.0)
    assert sends(gossip(core, 2.1, Suspect("a", 0, "c"), sender="c")) == []


def test_refutation_never_leaves_the_encodable_range() -> None:
    core = make()
    gossip(core, 1.0, Suspect("a", MAX_INCARNATION - 1, "b"))
    assert core.incarnation == MAX_INCARNATION - 1
    for s in sends(core.tick(1.0)):
        assert decode_packet(encode_packet(s.packet)) == s.packet


# --- precedence of updates --------------------------------------------------------------


def test_update_precedence_rules() -> None:
    core = make()
    steps: list[tuple[Update, Status, int]] = [
        (Suspect("b", 0, "c"), Status.SUSPECT, 0),
        (Alive("b", addr("b"), 0), Status.SUSPECT, 0),  # equal incarnation: suspect wins
        (Alive("b", addr("b"), 1), Status.ALIVE, 1),  # a higher one clears the suspicion
        (Suspect("b", 0, "c"), Status.ALIVE, 1),  # stale suspicion
        (Suspect("b", 1, "c"), Status.SUSPECT, 1),
        (Dead("b", 0, "c"), Status.SUSPECT, 1),  # stale failure
        (Dead("b", 1, "c"), Status.FAILED, 1),  # failed beats suspect at equal incarnation
        (Alive("b", addr("b"), 1), Status.FAILED, 1),  # ... and alive
        (Suspect("b", 1, "d"), Status.FAILED, 1),
        (Dead("b", 1, "b"), Status.LEFT, 1),  # failed may still become left
        (Dead("b", 1, "c"), Status.LEFT, 1),  # ... but never the reverse
        (Dead("b", 9, "c"), Status.LEFT, 1),
        (Suspect("b", 9, "c"), Status.LEFT, 1),
        (Alive("b", "new-addr:1", 2), Status.ALIVE, 2),  # a rejoin with a higher incarnation
    ]
    for i, (update, expected, inc) in enumerate(steps):
        gossip(core, float(i), update)
        assert (status(core, "b"), core.members["b"].incarnation) == (expected, inc), update
    assert core.members["b"].addr == "new-addr:1"


def test_alive_at_equal_incarnation_loses_to_failed() -> None:
    core = make()
    gossip(core, 1.0, Dead("b", 0, "c"))
    gossip(core, 2.0, Alive("b", addr("b"), 0))
    assert status(core, "b") == Status.FAILED


def test_membership_changes_are_reported_once_each() -> None:
    core = make()
    eff = gossip(core, 1.0, Suspect("b", 0, "c"), Suspect("b", 0, "d"), Dead("b", 0, "c"))
    eff += gossip(core, 2.0, Dead("b", 0, "b"), Alive("e", addr("e"), 0))
    assert changes(eff) == [
        ("b", Status.ALIVE, Status.SUSPECT),
        ("b", Status.SUSPECT, Status.FAILED),
        ("b", Status.FAILED, Status.LEFT),
        ("e", None, Status.ALIVE),
    ]


def test_live_count_follows_the_view() -> None:
    core = make()
    assert core.live_count() == 4
    gossip(core, 1.0, Suspect("b", 0, "c"))
    assert core.live_count() == 4  # a suspect is still live
    gossip(core, 1.0, Dead("b", 0, "c"), Dead("c", 0, "c"))
    assert core.live_count() == 2
    gossip(core, 2.0, Alive("b", addr("b"), 1), Alive("e", addr("e"), 0))
    assert core.live_count() == 4
    live = {s.name for s in core.local_states() if not s.status.gone}
    assert live == {"a", "b", "d", "e"}


# --- push-pull merge --------------------------------------------------------------------


def test_remote_failed_is_only_a_suspicion_here() -> None:
    core = make()
    rows = [
        MemberState("b", addr("b"), 0, Status.FAILED),
        MemberState("c", addr("c"), 0, Status.LEFT),
        MemberState("ghost", addr("ghost"), 0, Status.FAILED),  # unknown: not added
        MemberState("e", addr("e"), 4, Status.ALIVE),
    ]
    reply, eff = core.on_push_pull_request(1.0, rows, False)
    assert status(core, "b") == Status.SUSPECT
    assert status(core, "c") == Status.LEFT
    assert "ghost" not in core.members
    assert (status(core, "e"), core.members["e"].incarnation) == (Status.ALIVE, 4)
    assert {s.name for s in reply} == {"a", "b", "c", "d", "e"}
    assert ("e", None, Status.ALIVE) in changes(eff)


def test_push_pull_reply_carries_our_refutation() -> None:
    core = make()
    reply, _ = core.on_push_pull_request(
        1.0, [MemberState("a", addr("a"), 2, Status.FAILED)], False
    )
    me = next(s for s in reply if s.name == "a")
    assert (me.status, me.incarnation) == (Status.ALIVE, 3)


# --- leaving ----------------------------------------------------------------------------


def test_leave_gossips_dead_about_self_accused_by_self() -> None:
    core = make()
    eff = core.leave(2.0)
    targets = {s.addr for s in sends(eff)}
    assert targets == {addr("b"), addr("c"), addr("d")}
    deads = [u for u in carried(eff) if isinstance(u, Dead)]
    assert len(deads) == 3
    assert all(d == Dead("a", 0, "a") and d.left for d in deads)
    assert changes(eff) == [("a", Status.ALIVE, Status.LEFT)]
    assert core.leaving
    assert core.leave(3.0) == []


def test_after_leaving_no_probes_and_no_refutation() -> None:
    core = make()
    core.leave(2.0)
    gossip(core, 2.1, Suspect("a", 0, "b"), Dead("a", 0, "c"))
    assert core.incarnation == 0
    eff = core.tick(2.1)
    assert sends(eff, Ping) == []
    assert Dead("a", 0, "a") in carried(eff)  # still spreading the departure
    for _ in range(50):
        eff = core.tick(core.next_deadline())
        assert sends(eff, Ping) == sends(eff, PingReq) == []


# --- joining ----------------------------------------------------------------------------

SEEDS = ("s1:7946", "s2:7946")


def _join_attempts(core: MembershipCore, until: float) -> list[tuple[float, str]]:
    out = []
    t = 0.0
    for _ in range(10_000):
        if t > until:
            break
        for e in core.tick(t):
            if isinstance(e, PushPull):
                assert e.join
                assert MemberState("a", addr("a"), 0, Status.ALIVE) in e.states
                out.append((t, e.addr))
        t = core.next_deadline()
    return out


def test_join_pushes_to_every_seed_and_backs_off_while_alone() -> None:
    core = make(peers=(), seeds=(addr("a"), *SEEDS))  # our own address is not a seed
    assert core.seeds == SEEDS
    attempts = _join_attempts(core, until=60.0)
    times = sorted({t for t, _ in attempts})
    # join_retry_min 1 s doubling up to join_retry_max 15 s.
    assert times == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0, 30.0, 45.0, 60.0])
    assert all(sorted(a for t2, a in attempts if t2 == t) == list(SEEDS) for t in times)


def test_join_reply_ends_the_retries() -> None:
    core = make(peers=(), seeds=SEEDS)
    assert len(_join_attempts(core, until=0.0)) == 2
    eff = core.on_push_pull_failed(0.01, SEEDS[0], True, "refused")
    assert notes(eff, "join_failed")[0].fields["retry_in_s"] == pytest.approx(1.0)
    eff = core.on_push_pull_reply(
        0.02, SEEDS[1], [MemberState("b", addr("b"), 0, Status.ALIVE)], True
    )
    assert notes(eff, "joined")[0].fields == {"via": SEEDS[1], "members": 2}
    assert ("b", None, Status.ALIVE) in changes(eff)
    for _ in range(200):
        t = core.next_deadline()
        for e in core.tick(t):
            assert not (isinstance(e, PushPull) and e.join)
            if isinstance(e, Send) and isinstance(e.packet.primary, Ping):  # b answers
                core.handle_packet(t, e.addr, pkt("b", Ack(e.packet.primary.seq)))
    assert core.live_count() == 2


def test_knowing_members_is_not_enough_until_a_seed_answers() -> None:
    """Newcomers that found each other (not the cluster) must keep asking the seeds."""
    core = make(peers=("b",), seeds=SEEDS)
    assert sorted(a for _, a in _join_attempts(core, until=0.0)) == list(SEEDS)
    core.on_push_pull_reply(0.5, SEEDS[0], [], True)
    assert _join_attempts(core, until=0.0) == []


def test_no_seeds_no_join() -> None:
    core = make(peers=())
    assert _join_attempts(core, until=30.0) == []


# --- probing, awareness, suspicion ------------------------------------------------------


def _start_probe(core: MembershipCore, now: float) -> Send:
    pings = sends(core.tick(now), Ping)
    assert len(pings) == 1
    return pings[0]


def test_failed_probe_raises_awareness_and_suspects_the_target() -> None:
    core = make(peers=("b", "c", "d", "e"))
    ping = _start_probe(core, 0.0)
    assert isinstance(ping.packet.primary, Ping)
    target = ping.packet.primary.target
    assert sends(core.tick(0.05), PingReq) == []
    reqs = sends(core.tick(CFG.probe_timeout), PingReq)
    assert len(reqs) == CFG.indirect_checks
    assert {r.packet.primary for r in reqs} == {
        PingReq(ping.packet.primary.seq, target, addr(target))
    }
    assert addr(target) not in {r.addr for r in reqs}
    core.tick(CFG.probe_interval)
    assert status(core, target) == Status.SUSPECT
    assert core.awareness.score == 3  # no helper even nacked: probably our own fault


def test_awareness_stretches_the_probe_and_falls_on_a_direct_ack() -> None:
    core = make(peers=("b", "c", "d", "e"))
    _start_probe(core, 0.0)
    core.tick(CFG.probe_timeout)
    eff = core.tick(CFG.probe_interval)  # the first probe fails, the next one starts
    assert core.awareness.score == 3
    ping = sends(eff, Ping)[0]
    assert isinstance(ping.packet.primary, Ping)
    # Lifeguard: the next probe's timeout is scaled by (score + 1): no PingReq at 0.3 s.
    assert sends(core.tick(0.3), PingReq) == []
    assert sends(core.tick(0.59), PingReq) == []
    target, seq = ping.packet.primary.target, ping.packet.primary.seq
    core.handle_packet(0.59, ping.addr, pkt(target, Ack(seq)))
    assert core.awareness.score == 2
    assert status(core, target) == Status.ALIVE


def test_nacks_from_every_helper_keep_awareness_unchanged() -> None:
    core = make(peers=("b", "c", "d", "e"))
    ping = _start_probe(core, 0.0)
    assert isinstance(ping.packet.primary, Ping)
    seq = ping.packet.primary.seq
    for req in sends(core.tick(CFG.probe_timeout), PingReq):
        core.handle_packet(0.18, req.addr, pkt("helper", Nack(seq)))
    core.tick(CFG.probe_interval)
    assert core.awareness.score == 0
    assert status(core, ping.packet.primary.target) == Status.SUSPECT


def test_an_indirect_ack_saves_the_target_without_lowering_awareness() -> None:
    core = make(peers=("b", "c", "d", "e"))
    core.awareness.apply(2)
    ping = _start_probe(core, 0.0)
    assert isinstance(ping.packet.primary, Ping)
    core.tick(3 * CFG.probe_timeout)
    core.handle_packet(0.4, addr("c"), pkt("c", Ack(ping.packet.primary.seq)))
    core.tick(3 * CFG.probe_interval)
    assert status(core, ping.packet.primary.target) == Status.ALIVE
    assert core.awareness.score == 2


def test_awareness_is_capped() -> None:
    core = make()
    for i in range(50):
        gossip(core, float(i), Suspect("a", core.incarnation, "b"))
    assert core.awareness.score == CFG.awareness_max - 1


def test_probe_to_a_suspect_carries_the_suspicion_first() -> None:
    core = make(peers=("b",))
    gossip(core, 0.0, Suspect("b", 0, "c"))
    ping = _start_probe(core, 0.0)
    assert ping.addr == addr("b")
    assert isinstance(ping.packet.primary, Ping)
    assert ping.packet.primary.target == "b"
    assert ping.packet.updates[0] == Suspect("b", 0, "a")


def test_suspicion_expires_at_the_maximum_without_confirmations() -> None:
    core = make(peers=("b", "c", "d", "e"))  # n = 5: min 0.8 s, max 4.8 s, k = 2
    gossip(core, 0.0, Suspect("b", 0, "c"), Suspect("b", 0, "c"))  # the same accuser twice
    core.tick(4.79)
    assert status(core, "b") == Status.SUSPECT
    eff = core.tick(4.8 + 1e-9)  # 6 * 0.8 in floating point
    assert status(core, "b") == Status.FAILED
    assert notes(eff, "suspicion_expired")[0].fields == {"member": "b", "confirmations": 0}
    assert Dead("b", 0, "a") in carried(core.tick(4.9))


@pytest.mark.parametrize(
    ("accusers", "deadline"),
    [(("c",), 4.8), (("c", "d"), 2.276), (("c", "d", "e"), 0.8), (("c", "d", "e", "x"), 0.8)],
)
def test_independent_confirmations_shorten_the_suspicion(
    accusers: tuple[str, ...], deadline: float
) -> None:
    core = make(peers=("b", "c", "d", "e"))
    gossip(core, 0.0, *(Suspect("b", 0, who) for who in accusers))
    core.tick(deadline - 0.01)
    assert status(core, "b") == Status.SUSPECT
    core.tick(deadline + 0.001)
    assert status(core, "b") == Status.FAILED


def test_refutation_cancels_the_suspicion_timer() -> None:
    core = make(peers=("b", "c", "d", "e"))
    gossip(core, 0.0, Suspect("b", 0, "c"))
    gossip(core, 1.0, Alive("b", addr("b"), 1))
    core.tick(5.0)
    assert status(core, "b") == Status.ALIVE


def test_failed_members_are_forgotten_after_retention() -> None:
    core = make(config=CFG.with_overrides(dead_retention=10.0))
    gossip(core, 0.5, Dead("b", 0, "c"))
    core.tick(5.0)
    assert "b" in core.members
    core.tick(12.0)
    assert "b" not in core.members
    assert {s.name for s in core.local_states()} == {"a", "c", "d"}


def test_round_robin_probes_every_member_once_per_round() -> None:
    peers = tuple(f"p{i}" for i in range(7))
    core = make(peers=peers)
    targets = []
    t = 0.0
    while len(targets) < 3 * len(peers):
        for s in sends(core.tick(t), Ping):
            assert isinstance(s.packet.primary, Ping)
            targets.append(s.packet.primary.target)
            target, seq = s.packet.primary.target, s.packet.primary.seq
            core.handle_packet(t, s.addr, pkt(target, Ack(seq)))
        t = core.next_deadline()
    for r in range(3):
        assert sorted(targets[r * 7 : (r + 1) * 7]) == sorted(peers)


# --- packet sizes -----------------------------------------------------------------------


def test_every_datagram_fits_the_mtu_budget() -> None:
    core = make(peers=())
    rows = [
        MemberState(
            f"{'m' * (i % 200 + 1)}-{i}", f"10.{i // 250}.{i % 250}.1:7946", i, Status.ALIVE
        )
        for i in range(300)
    ]
    core.on_push_pull_request(0.0, rows, False)
    t, seen, packets = 0.0, set(), 0
    for _ in range(200):
        for s in sends(core.tick(t)):
            size = len(encode_packet(s.packet)) + TRANSPORT_OVERHEAD
            assert size <= CFG.max_packet
            packets += 1
            seen.update(u.name for u in s.packet.updates)
        t = core.next_deadline()
    assert packets > 10
    assert len(seen) == 301  # every queued update made it out despite the budget
