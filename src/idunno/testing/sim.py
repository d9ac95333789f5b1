"""Deterministic simulation of many membership cores in one process.

A virtual clock, an event heap and a seeded in-memory network with loss, delay, duplication
and partitions (the model is trio's MockClock and FakeNet). The same `MembershipCore` the real
node runs is driven here, so every seed replays exactly: `SimCluster(seed=...)`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from idunno.membership.codec import encode_packet
from idunno.membership.config import MembershipConfig
from idunno.membership.core import (
    TRANSPORT_OVERHEAD,
    Effect,
    MemberChanged,
    MembershipCore,
    PushPull,
    Send,
)
from idunno.membership.messages import MemberState, Packet, Status


@dataclass
class NetConfig:
    """Faults applied to every datagram (push-pull is TCP: delayed, never lost)."""

    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: float = 0.0005
    max_delay: float = 0.002
    tcp_timeout: float = 1.0


class SimNetwork:
    def __init__(self, rng: random.Random, cfg: NetConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self._side: dict[str, int] = {}  # addr -> partition id; absent = side 0

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: addresses in different groups cannot talk; unlisted ones form
        group 0 together with the first group."""
        self._side = {}
        for i, group in enumerate(groups):
            for addr in group:
                self._side[addr] = i

    def heal(self) -> None:
        self._side = {}

    def connected(self, a: str, b: str) -> bool:
        return self._side.get(a, 0) == self._side.get(b, 0)

    def delay(self) -> float:
        return self.rng.uniform(self.cfg.min_delay, self.cfg.max_delay)


@dataclass
class SimNode:
    core: MembershipCore
    up: bool = True  # False after crash(): the process is gone
    paused: bool = False  # SIGSTOP: alive but silent, timers frozen
    wake_token: int = 0
    sent_bytes: int = 0
    recv_bytes: int = 0
    sent_packets: int = 0


@dataclass(order=True)
class _Event:
    time: float
    order: int
    kind: str = field(compare=False)
    addr: str = field(compare=False)
    data: Any = field(compare=False)


def addr_of(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}:7946"


class SimCluster:
    """N simulated nodes named n0..n{N-1}, fully joined at time 0 unless `bootstrap=False`."""

    def __init__(
        self,
        n: int,
        config: MembershipConfig,
        seed: int = 0,
        net: NetConfig | None = None,
        bootstrap: bool = True,
        measure_bytes: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.net = SimNetwork(random.Random(self.rng.random()), net or NetConfig())
        self.now = 0.0
        self.measure_bytes = measure_bytes
        self.nodes: dict[str, SimNode] = {}
        self.names: dict[str, str] = {}  # name -> addr
        self.changes: list[tuple[float, str, MemberChanged]] = []  # (time, observer, change)
        self.listeners: list[Callable[[float, str, MemberChanged], None]] = []
        self._heap: list[_Event] = []
        self._order = 0
        for i in range(n):
            self._spawn(f"n{i}", addr_of(i), seeds=() if bootstrap or i == 0 else (addr_of(0),))
        if bootstrap:
            everyone = [MemberState(nm, a, 0, Status.ALIVE) for nm, a in self.names.items()]
            for node in self.nodes.values():
                node.core.on_push_pull_request(0.0, everyone, False)
                node.core.drop_pending_gossip()
                self._wake(node)

    # --- control ------------------------------------------------------------------------

    def _spawn(self, name: str, addr: str, seeds: tuple[str, ...]) -> SimNode:
        core = MembershipCore(
            name, addr, self.config, random.Random(self.rng.random()), self.now, seeds
        )
        node = SimNode(core)
        self.nodes[addr] = node
        self.names[name] = addr
        self._wake(node)
        return node

    def add_node(self, name: str, seeds: tuple[str, ...]) -> str:
        addr = addr_of(len(self.names))
        self._spawn(name, addr, seeds)
        return addr

    def crash(self, name: str) -> None:
        self.nodes[self.names[name]].up = False

    def pause(self, name: str) -> None:
        self.nodes[self.names[name]].paused = True

    def resume(self, name: str) -> None:
        node = self.nodes[self.names[name]]
        node.paused = False
        self._wake(node)

    def restart(self, name: str, seeds: tuple[str, ...]) -> None:
        """A new process with the same name and address but fresh state (incarnation 0)."""
        addr = self.names[name]
        self._spawn(name, addr, seeds)

    def leave(self, name: str) -> None:
        node = self.nodes[self.names[name]]
        self._apply(node, node.core.leave(self.now))
        self._schedule(self.now + self.config.leave_linger, "stop", node.core.addr, node)

    # --- queries ------------------------------------------------------------------------

    def live_names(self) -> list[str]:
        return [n for n, a in self.names.items() if self.nodes[a].up and not self.nodes[a].paused]

    def status(self, observer: str, member: str) -> Status | None:
        m = self.nodes[self.names[observer]].core.members.get(member)
        return None if m is None else m.status

    def core(self, name: str) -> MembershipCore:
        return self.nodes[self.names[name]].core

    # --- running ------------------------------------------------------------------------

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance virtual time to t; return True early if `stop()` becomes true."""
        while self._heap and self._heap[0].time <= t:
            ev = heapq.heappop(self._heap)
            self.now = ev.time
            self._dispatch(ev)
            if stop is not None and stop():
                return True
        self.now = max(self.now, t)
        return stop() if stop is not None else False

    def run_for(self, dt: float, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self.now + dt, stop)

    def _schedule(self, t: float, kind: str, addr: str, data: Any) -> None:
        self._order += 1
        heapq.heappush(self._heap, _Event(t, self._order, kind, addr, data))

    def _wake(self, node: SimNode) -> None:
        node.wake_token += 1
        t = max(node.core.next_deadline(), self.now)
        self._schedule(t, "tick", node.core.addr, (node, node.wake_token))

    def _dispatch(self, ev: _Event) -> None:
        if ev.kind == "tick":
            ticked: SimNode = ev.data[0]
            if ticked is not self.nodes.get(ev.addr) or ev.data[1] != ticked.wake_token:
                return  # superseded by a later wake-up, or an old incarnation of the process
            if ticked.up and not ticked.paused:
                self._apply(ticked, ticked.core.tick(self.now))
            return
        node = self.nodes.get(ev.addr)
        if node is None or not node.up or node.paused:
            if ev.kind == "pp_req":
                origin, join, _ = ev.data
                self._schedule(self.now, "pp_fail", origin, (ev.addr, join))
            return
        if ev.kind == "packet":
            src, packet, size = ev.data
            node.recv_bytes += size
            self._apply(node, node.core.handle_packet(self.now, src, packet))
        elif ev.kind == "pp_req":
            origin, join, states = ev.data
            reply, effects = node.core.on_push_pull_request(self.now, list(states), join)
            self._apply(node, effects)
            if self.net.connected(ev.addr, origin):
                self._schedule(
                    self.now + self.net.delay(), "pp_reply", origin, (ev.addr, join, reply)
                )
        elif ev.kind == "pp_reply":
            peer, join, states = ev.data
            self._apply(node, node.core.on_push_pull_reply(self.now, peer, list(states), join))
        elif ev.kind == "pp_fail":
            peer, join = ev.data
            self._apply(node, node.core.on_push_pull_failed(self.now, peer, join, "unreachable"))
        elif ev.kind == "stop" and ev.data is node:  # not a process restarted since
            node.up = False

    def _apply(self, node: SimNode, effects: list[Effect]) -> None:
        src = node.core.addr
        for e in effects:
            if isinstance(e, Send):
                self._send(node, src, e.addr, e.packet)
            elif isinstance(e, PushPull):
                if self.net.connected(src, e.addr):
                    data = (src, e.join, e.states)
                    self._schedule(self.now + self.net.delay(), "pp_req", e.addr, data)
                else:
                    when = self.now + self.net.cfg.tcp_timeout
                    self._schedule(when, "pp_fail", src, (e.addr, e.join))
            elif isinstance(e, MemberChanged):
                self.changes.append((self.now, node.core.name, e))
                for listener in self.listeners:
                    listener(self.now, node.core.name, e)
        self._wake(node)

    def _send(self, node: SimNode, src: str, dst: str, packet: Packet) -> None:
        size = len(encode_packet(packet)) + TRANSPORT_OVERHEAD if self.measure_bytes else 0
        node.sent_bytes += size
        node.sent_packets += 1
        if not self.net.connected(src, dst):
            return
        rng = self.net.rng
        copies = 2 if rng.random() < self.net.cfg.duplicate else 1
        for _ in range(copies):
            if rng.random() < self.net.cfg.drop:
                continue
            self._schedule(self.now + self.net.delay(), "packet", dst, (src, packet, size))
