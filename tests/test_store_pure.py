"""The store's pure parts: name validation, rendezvous placement, re-replication decisions, and
a seeded simulation of the repair protocol (idunno.testing.store_sim) over many seeds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idunno.store import plan
from idunno.store.config import StoreConfig
from idunno.store.disk import DiskStore, Version
from idunno.store.names import MAX_NAME_BYTES, InvalidName, key, validate
from idunno.store.placement import authority, rank, replica_set, score
from idunno.store.plan import Answer, Holding, Offer, answer, offers, should_drop
from idunno.store.quorum import Quorum
from idunno.store.service import StoreService
from idunno.testing.store_sim import InvariantViolation, SimConfig, StoreSim

R = 4
KEEP = 5
NAMES = [f"data/file-{i}.bin" for i in range(2000)]

# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "models/resnet18.onnx",
        "a/b/c/d.txt",
        "..a",  # dots inside a segment are fine
        "a..",
        "a/.hidden",
        "with space",
        "ünïcødé/名前",
        "x" * MAX_NAME_BYTES,
        "é" * (MAX_NAME_BYTES // 2),  # 2 bytes each: exactly the limit
        "trailing~",
    ],
)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate(name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("..", "'..' segment"),
        ("../x", "'..' segment"),
        ("a/../b", "'..' segment"),
        ("a/..", "'..' segment"),
        (".", "'.'"),
        ("./a", "'.'"),
        ("a/./b", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("/etc/passwd", "absolute"),
        ("/", "absolute"),
        ("a\\b", "backslash"),
        ("..\\x", "backslash"),
        ("a\x00b", "NUL"),
        ("\x00", "NUL"),
        ("a\nb", "control character"),
        ("a\rb", "control character"),
        ("a\tb", "control character"),
        ("a\x1bb", "control character"),
        ("a\x7fb", "control character"),
        ("x" * (MAX_NAME_BYTES + 1), "longer than 1024 bytes"),
        ("é" * (MAX_NAME_BYTES // 2) + "a", "longer than 1024 bytes"),
    ],
)
def test_invalid_names_are_refused_with_one_line_naming_the_cause(name: str, fragment: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate(name)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message  # one line, even when the name holds a newline
    assert "\x00" not in message


def test_non_string_names_are_refused() -> None:
    with pytest.raises(InvalidName, match="empty"):
        validate(None)  # type: ignore[arg-type]


def test_names_that_are_not_utf8_are_refused() -> None:
    """A lone surrogate (what Python makes of an undecodable byte in argv) has no UTF-8 form,
    so it could never be hashed into a key: it is refused up front, in one line."""
    for name in ("bad-\udcff", "\ud800", "a/\udfff/b"):
        with pytest.raises(InvalidName, match="not valid UTF-8"):
            validate(name)


def test_key_is_hex_sha256_of_the_utf8_name() -> None:
    assert key("a") == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    assert key("a") != key("A")
    assert len(key("ünïcødé/名前")) == 64


# Names as an attacker might build them: mostly path punctuation and control characters.
tricky = st.text(
    alphabet=st.sampled_from(["a", "b", ".", "/", "\\", "\x00", "\n", "\x7f", "é", "名", " "]),
    max_size=20,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(tricky, st.text(max_size=40)))
def test_accepted_names_never_escape_a_directory(name: str) -> None:
    """Whatever validate accepts is a plain relative path: joined under any root it stays there,
    has no control character, fits in 1024 bytes and has a 64-hex-digit key."""
    try:
        validate(name)
    except InvalidName as exc:
        assert "\n" not in str(exc)
        return
    path = PurePosixPath("/root/store") / name
    assert path.is_relative_to("/root/store")
    assert ".." not in PurePosixPath(name).parts
    assert not name.startswith("/")
    assert all(ord(c) >= 32 and ord(c) != 127 for c in name)
    assert "\\" not in name
    assert len(name.encode()) <= MAX_NAME_BYTES
    k = key(name)
    assert len(k) == 64
    assert int(k, 16) >= 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="abcxyz.-_", min_size=1, max_size=8), min_size=1, max_size=5),
    st.sampled_from(["\x00", "\x01", "\n", "\x1f", "\x7f"]),
    st.integers(min_value=0),
)
def test_any_control_character_anywhere_is_refused(parts: list[str], bad: str, where: int) -> None:
    name = "/".join("x" + p for p in parts)  # a valid name ...
    validate(name)
    at = where % (len(name) + 1)
    with pytest.raises(InvalidName, match="control character"):
        validate(name[:at] + bad + name[at:])  # ... until a control character goes in


# --- placement ------------------------------------------------------------------------------


def members(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def test_scores_are_deterministic_64_bit_and_depend_on_both_inputs() -> None:
    assert score("f", "n1") == score("f", "n1")
    assert 0 <= score("f", "n1") < 2**64
    assert score("f", "n1") != score("f", "n2")
    assert score("f", "n1") != score("g", "n1")
    # the separator keeps (member, name) pairs apart: "n1"+"0f" vs "n10"+"f"
    assert score("0f", "n1") != score("f", "n10")


def test_rank_is_a_permutation_independent_of_input_order() -> None:
    ms = members(9)
    rng = random.Random(1)
    for name in NAMES[:50]:
        shuffled = ms[:]
        rng.shuffle(shuffled)
        assert rank(name, ms) == rank(name, shuffled) == rank(name, set(ms))
        assert sorted(rank(name, ms)) == sorted(ms)
        scores = [score(name, m) for m in rank(name, ms)]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 10])
def test_replica_set_has_min_r_n_distinct_members(n: int) -> None:
    ms = members(n)
    for name in NAMES[:100]:
        rs = replica_set(name, ms, R)
        assert len(rs) == min(R, n)
        assert len(set(rs)) == len(rs)
        assert set(rs) <= set(ms)
        assert rs == rank(name, ms)[:R]
        assert authority(name, ms) == (rs[0] if rs else None)


def test_every_member_gets_a_fair_share_of_replicas() -> None:
    ms = members(8)
    load = Counter(m for name in NAMES for m in replica_set(name, ms, R))
    fair = len(NAMES) * R / len(ms)  # 1000
    assert set(load) == set(ms)
    assert all(0.85 * fair < c < 1.15 * fair for c in load.values()), load


def test_adding_a_member_moves_only_files_whose_top_r_it_enters() -> None:
    old_ms, new_ms = members(8), [*members(8), "n9"]
    moved = 0
    for name in NAMES:
        old, new = replica_set(name, old_ms, R), replica_set(name, new_ms, R)
        if "n9" in new:
            moved += 1
            # the newcomer takes exactly one slot: the previous last replica's
            assert set(new) == set(old[:-1]) | {"n9"}
        else:
            assert new == old
    # the expected share is R / (N + 1) = 4/9 of the files
    assert abs(moved / len(NAMES) - R / 9) < 0.05, moved


def test_removing_a_member_moves_only_the_files_it_held() -> None:
    ms = members(8)
    after = [m for m in ms if m != "n3"]
    moved = 0
    for name in NAMES:
        old, new = replica_set(name, ms, R), replica_set(name, after, R)
        if "n3" in old:
            moved += 1
            nxt = rank(name, ms)[R]  # the next in line fills the hole
            assert set(new) == (set(old) - {"n3"}) | {nxt}
        else:
            assert new == old
    assert abs(moved / len(NAMES) - R / 8) < 0.05, moved


@settings(max_examples=200, deadline=None)
@given(
    st.sets(
        st.text(alphabet="abcdefgh0123456789", min_size=1, max_size=6), min_size=1, max_size=12
    ),
    st.text(alphabet="abcdefgh0123456789", min_size=1, max_size=6),
    st.text(min_size=1, max_size=20),
    st.integers(1, 6),
)
def test_one_membership_change_moves_at_most_one_replica(
    ms: set[str], extra: str, name: str, r: int
) -> None:
    ms.discard(extra)
    if not ms:
        return
    old = replica_set(name, ms, r)
    new = replica_set(name, ms | {extra}, r)
    assert len(set(old) - set(new)) <= 1
    assert set(new) - set(old) <= {extra}
    # and the reverse change restores exactly the old set
    assert replica_set(name, (ms | {extra}) - {extra}, r) == old


# --- plan -------------------------------------------------------------------------------------


def H(*versions: int, tomb: int = 0) -> Holding:  # noqa: N802 - reads like a constructor
    return Holding(tuple(versions), tomb)


@pytest.mark.parametrize(
    ("holding", "top"),
    [(H(), 0), (H(1), 1), (H(3, 5), 5), (H(tomb=4), 4), (H(5, tomb=4), 5), (H(2, tomb=7), 7)],
)
def test_holding_top_is_the_highest_number_known(holding: Holding, top: int) -> None:
    assert holding.top == top


@pytest.mark.parametrize(
    ("mine", "offered", "want"),
    [
        # a node that has nothing needs every offered version
        (None, H(1, 2, 3), Answer((1, 2, 3), 0)),
        (H(), H(4), Answer((4,), 0)),
        # it needs only what it lacks
        (H(1), H(1, 2), Answer((2,), 0)),
        (H(1, 2, 3), H(1, 2, 3), Answer((), 0)),
        (H(1, 3), H(1, 2, 3), Answer((2,), 0)),
        # a peer that knows more than the sender needs nothing from it
        (H(1, 2, 3), H(2), Answer((), 0)),
        # only the newest KEEP of the union are worth fetching
        (H(3, 4, 5, 6, 7), H(1, 2), Answer((), 0)),
        (H(1, 2), H(3, 4, 5, 6, 7), Answer((3, 4, 5, 6, 7), 0)),
        (H(6, 7), H(1, 2, 3, 4, 5), Answer((3, 4, 5), 0)),
        (None, H(1, 2, 3, 4, 5, 6, 7), Answer((3, 4, 5, 6, 7), 0)),
        # deleted after everything offered: tell the sender
        (H(tomb=5), H(3, 4), Answer((), 5)),
        (H(tomb=5), H(5), Answer((), 5)),
        (H(tomb=5), H(tomb=2), Answer((), 5)),
        (H(tomb=5), H(tomb=5), Answer((), 5)),
        # deleted, then written again: only the newer versions are wanted
        (H(tomb=5), H(6), Answer((6,), 0)),
        (H(7, tomb=5), H(6, 7), Answer((6,), 0)),
        # the offered tombstone hides offered versions below it
        (None, H(8, tomb=6), Answer((8,), 0)),
        (None, H(tomb=6), Answer((), 0)),
    ],
)
def test_answer_table(mine: Holding | None, offered: Holding, want: Answer) -> None:
    assert answer(mine, offered, KEEP) == want


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.integers(1, 12), max_size=KEEP),
    st.integers(0, 12),
    st.sets(st.integers(1, 12), max_size=KEEP),
    st.integers(0, 12),
    st.integers(1, 6),
)
def test_answer_properties(
    mine_v: set[int], mine_t: int, off_v: set[int], off_t: int, keep: int
) -> None:
    """Needs are offered versions the receiver lacks, above both tombstones, at most `keep`;
    and after the receiver takes them, asking again needs nothing."""
    mine = Holding(tuple(sorted(v for v in mine_v if v > mine_t)), mine_t)
    offered = Holding(tuple(sorted(v for v in off_v if v > off_t)), off_t)
    ans = answer(mine, offered, keep)
    assert list(ans.needs) == sorted(set(ans.needs))
    assert set(ans.needs) <= set(offered.versions) - set(mine.versions)
    assert all(v > max(mine_t, off_t) for v in ans.needs)
    assert len(ans.needs) <= keep
    assert ans.tombstone in (0, mine_t)
    if ans.tombstone:
        # the sender is told only about a tombstone newer than something it offered
        assert ans.tombstone > max(offered.versions, default=0) or ans.tombstone >= offered.top
    # fetching what was asked satisfies the receiver
    after = Holding(tuple(sorted(set(mine.versions) | set(ans.needs))), mine_t)
    assert answer(after, offered, keep).needs == ()


def test_offers_go_to_the_other_desired_holders_grouped_by_peer() -> None:
    live = members(7)
    holdings = {name: H(1) for name in NAMES[:40]}
    me = "n1"
    got = offers(me, holdings, live, R)
    assert [o.peer for o in got] == sorted({o.peer for o in got})  # one offer per peer, sorted
    assert all(o.peer != me for o in got)
    per_file: dict[str, list[str]] = {}
    for o in got:
        for name, h in o.files.items():
            assert h == holdings[name]
            per_file.setdefault(name, []).append(o.peer)
    assert set(per_file) == set(holdings)
    for name, peers in per_file.items():
        desired = replica_set(name, live, R)
        assert sorted(peers) == sorted(p for p in desired if p != me)
        # a desired holder asks 3 peers, a surplus holder hands off to all 4
        assert len(peers) == (R - 1 if me in desired else R)


def test_offers_with_fewer_live_members_than_r_go_to_everyone_else() -> None:
    got = offers("n1", {"f": H(1, 2)}, ["n1", "n2", "n3"], R)
    assert got == [Offer("n2", {"f": H(1, 2)}), Offer("n3", {"f": H(1, 2)})]
    assert offers("n1", {"f": H(1)}, ["n1"], R) == []
    assert offers("n1", {}, members(6), R) == []


def test_should_drop_only_outside_the_replica_set() -> None:
    live = members(6)
    for name in NAMES[:100]:
        desired = replica_set(name, live, R)
        for m in live:
            assert should_drop(m, name, live, R) == (m not in desired)
    # with R or fewer live members everybody is desired
    assert not any(should_drop(m, "f", members(4), R) for m in members(4))
    assert not should_drop("n1", "f", ["n1"], R)


# --- the service's repair round, with in-memory peers -------------------------------------------


class MemPeers:
    """Stands in for store.peers.Peers: a call goes straight to the addressed service (node
    names are the addresses). A push from `me` to a node in `held` waits for its event."""

    def __init__(self, me: str, services: dict[str, StoreService]) -> None:
        self.me = me
        self.services = services
        self.held: dict[str, asyncio.Event] = {}
        self.push_started = asyncio.Event()

    async def call(self, addr: str, path: str, body: dict[str, Any]) -> Any:
        svc = self.services[addr]
        if path == "sync":
            return json.loads(json.dumps(await svc.answer_sync(body["files"])))
        if path == "resync":
            svc.kick()
            return {}
        raise AssertionError(f"unexpected call {path}")

    async def push_version(
        self, addr: str, name: str, v: Version, chunks: AsyncIterator[bytes]
    ) -> None:
        self.push_started.set()
        if addr in self.held:
            await self.held[addr].wait()  # a big file, still on its way
        await self.services[addr].receive_replica(name, v, chunks)


def store_cluster(
    root: Path,
    nodes: list[str],
    peers_for: Callable[[str, dict[str, StoreService]], Any],
    config: StoreConfig | None = None,
    holding: tuple[str, bytes, Iterable[str]] = ("", b"", ()),
    busy: Callable[[str], bool] | None = None,
) -> dict[str, StoreService]:
    """StoreServices over fresh DiskStores in `root`, every node seeing every other (names are
    addresses), talking through `peers_for(node, services)`; `holding` = (name, bytes, nodes):
    those nodes hold version 1 of that file."""
    name, data, holders = holding
    v1 = Version(1, len(data), hashlib.sha256(data).hexdigest(), 1.0)
    services: dict[str, StoreService] = {}
    for n in nodes:
        disk = DiskStore(root / n)
        if n in holders:
            w = disk.stage()
            w.write(data)
            disk.commit(name, v1, w.finish())
        services[n] = StoreService(
            n,
            disk,
            lambda: {m: m for m in nodes},
            peers_for(n, services),
            config or StoreConfig(),
            lambda *args, **kwargs: None,
            busy=(lambda n=n: busy(n)) if busy else None,  # type: ignore[misc]
        )
    return services


def versions_on(svc: StoreService, name: str) -> list[int]:
    meta = svc.disk.meta.get(name)
    return [v.version for v in meta.versions] if meta else []


async def move_with_a_slow_push(tmp_path: Path) -> list[str]:
    """A newcomer enters a file's replica set, pushing the 5th-ranked holder out. While one
    desired holder's push to the newcomer is still under way, the surplus holder runs its
    round. Returns the nodes holding the file's only version right after that round."""
    name = "moving.bin"
    nodes = ["a", "b", "c", "d", "e"]
    newcomer, d1, d2, d3, surplus = rank(name, nodes)
    data = b"acknowledged bytes" * 100
    services = store_cluster(
        tmp_path, nodes, MemPeers, holding=(name, data, [n for n in nodes if n != newcomer])
    )
    slow: MemPeers = services[d1].peers  # type: ignore[assignment]
    slow.held[newcomer] = asyncio.Event()
    pending = asyncio.create_task(services[d1].repair_round())
    try:
        await asyncio.wait_for(slow.push_started.wait(), 10)
        await services[surplus].repair_round()
        seen = [n for n in nodes if versions_on(services[n], name) == [1]]
    finally:
        slow.held[newcomer].set()
        await pending
    assert versions_on(services[newcomer], name) == [1]  # the slow push did arrive
    assert {versions_on(services[n], name) == [1] for n in (d2, d3)} == {True}
    return seen


def test_a_surplus_copy_stays_until_every_desired_holder_has_the_version(
    tmp_path: Path,
) -> None:
    """plan.py: a node outside the replica set drops its copy only after every desired holder
    has confirmed it holds everything, so copies never dip below R during a move (3 failures
    in that window must not lose an acknowledged version)."""
    holders = asyncio.run(move_with_a_slow_push(tmp_path))
    assert len(holders) >= R, holders


# --- simulation -------------------------------------------------------------------------------

SEEDS = range(120)


@pytest.mark.parametrize("seed", SEEDS)
def test_simulated_repair_keeps_every_guarantee(seed: int) -> None:
    """Random puts, deletes, partial repair rounds, lost offers and pushes, kills with and
    without the disk, restarts, additions and discarded corrupt copies; the invariants are
    checked after every step and every file is on exactly its 4 desired nodes with the
    newest versions after each quiescent point."""
    stats = StoreSim(seed).run()
    assert stats["quiescent_checks"] >= 5
    assert stats["quiescent_with_r_live"] >= 3  # mostly checked with a full replica set
    assert stats["puts"] > 0


@pytest.mark.parametrize(
    "config",
    [
        SimConfig(nodes=9, files=8, max_nodes=14),
        SimConfig(nodes=4, files=4),  # exactly R members: every file everywhere
        SimConfig(keep=2),
        SimConfig(replicas=3, max_failures=2),
        SimConfig(offer_loss=0.4, push_loss=0.4, tombstone_miss=0.7),
        SimConfig(steps=400, epoch_steps=80),
    ],
    ids=["big", "exactly-r", "keep2", "r3", "lossy", "long-epochs"],
)
def test_simulated_repair_under_other_configurations(config: SimConfig) -> None:
    totals: Counter[str] = Counter()
    for seed in range(25):
        totals += StoreSim(seed, config).run()
    # the runs did exercise the interesting paths
    for what in ("puts", "deletes", "kills", "restarts", "discards", "pushes", "drops"):
        assert totals[what] > 0, (what, totals)


@pytest.mark.slow
def test_simulated_repair_over_many_more_seeds() -> None:
    for seed in range(1000, 1100):
        StoreSim(seed).run()


def test_simulation_is_deterministic_per_seed() -> None:
    a, b, c = StoreSim(11), StoreSim(11), StoreSim(12)
    assert a.run() == b.run()
    assert a.trace == b.trace
    c.run()
    assert c.trace != a.trace


def test_a_quiescent_file_sits_on_exactly_its_desired_nodes() -> None:
    """A scripted run: the holdings after quiescence are exactly what the protocol promises."""
    sim = StoreSim(0, SimConfig(nodes=6))
    assert sim.put("f0") == 1
    assert sim.put("f0") == 2
    holders = set(sim.desired("f0"))
    sim.kill(sorted(holders)[0], lose_disk=True)
    new_desired = sim.desired("f0")
    sim.quiesce()
    sim.check_quiescent()
    for n in sim.members():
        if n in new_desired:
            assert sim.live[n].holdings["f0"] == H(1, 2)
        else:
            assert "f0" not in sim.live[n].holdings
    added = sim.add_node()
    sim.quiesce()
    sim.check_quiescent()
    assert sum("f0" in sim.live[n].holdings for n in sim.members()) == R
    assert ("f0" in sim.live[added].holdings) == (added in sim.desired("f0"))


def test_a_node_down_during_a_delete_does_not_resurrect_the_file() -> None:
    sim = StoreSim(3, SimConfig(nodes=6, tombstone_miss=0.0))
    assert sim.put("f1") == 1
    stale = sim.desired("f1")[0]
    sim.kill(stale, lose_disk=False)
    sim.quiesce()
    assert sim.delete("f1") == 2
    sim.quiesce()
    sim.restart(stale)
    assert sim.live[stale].holdings["f1"] == H(1)  # it came back with the old copy
    assert sim.readable("f1") is None  # ... which reads do not show
    sim.quiesce()
    sim.check_quiescent()
    assert all(not sim.live[n].holdings.get("f1", H()).versions for n in sim.members())


def test_the_simulation_catches_a_protocol_that_drops_too_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guard against a toothless simulator: break should_drop and it must notice."""
    monkeypatch.setattr(plan, "should_drop", lambda me, name, live, replicas: True)
    caught = 0
    for seed in range(10):
        try:
            StoreSim(seed).run()
        except InvariantViolation:
            caught += 1
    assert caught == 10


def test_the_simulation_catches_a_protocol_that_never_re_replicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = plan.answer
    monkeypatch.setattr(
        plan, "answer", lambda mine, offered, keep: Answer((), real(mine, offered, keep).tombstone)
    )
    with pytest.raises(InvariantViolation, match=r"seed 0, step \d+: "):
        StoreSim(0).run()


# --- quorums --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("known", "replicas", "write", "holders", "read"),
    [(1, 4, 1, 1, 1), (3, 4, 2, 2, 2), (6, 4, 4, 4, 3), (7, 4, 4, 4, 4), (20, 4, 11, 4, 17)],
)
def test_quorum_sizes(known: int, replicas: int, write: int, holders: int, read: int) -> None:
    q = Quorum(known, replicas)
    assert (q.write, q.holders, q.read) == (write, holders, read)


def test_every_read_quorum_meets_every_acknowledged_write_and_minorities_cannot_write() -> None:
    for known in range(1, 40):
        for replicas in range(1, 8):
            q = Quorum(known, replicas)
            assert q.read + q.holders > known  # any two such sets share a node
            assert 2 * q.write > known  # two sides of a partition never both write
            assert q.read <= known and q.holders <= q.write
