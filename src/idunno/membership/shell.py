"""The thin asyncio shell around MembershipCore: one UDP socket, one timer task, push-pull over
HTTP. It owns every side effect; the core decides everything."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from idunno.membership.codec import (
    DecodeError,
    decode_packet,
    decode_states,
    encode_packet,
    encode_states,
)
from idunno.membership.core import (
    Effect,
    MemberChanged,
    MembershipCore,
    Note,
    PushPull,
    Send,
)
from idunno.membership.messages import MemberState
from idunno.transport.packet import MAX_DATAGRAM, Opener, seal

# (addr, body) -> reply body; raises OSError/asyncio.TimeoutError when the peer is unreachable.
PushPullFn = Callable[[str, bytes], Awaitable[bytes]]
LogFn = Callable[..., None]


@dataclass
class Faults:
    """Transport fault hook for tests and benchmarks: drop or delay outgoing datagrams."""

    drop: float = 0.0
    delay: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, shell: MembershipShell) -> None:
        self.shell = shell

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.shell._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable from a dead peer surfaces here; the probe timeout handles it.
        self.shell.stats["udp_errors"] += 1


class MembershipShell:
    def __init__(
        self,
        core: MembershipCore,
        key: bytes,
        push_pull: PushPullFn,
        log: LogFn,
        faults: Faults | None = None,
    ) -> None:
        self.core = core
        self._key = key
        self._push_pull = push_pull
        self._log = log
        self.faults = faults or Faults()
        self.opener = Opener(key)
        self.stats: Counter[str] = Counter()
        self.listeners: list[Callable[[MemberChanged], None]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_drop_log: dict[str, float] = {}
        self._last_drop_any = -1e9

    # --- clock: the core sees the loop's monotonic time; people see wall-clock time ---------

    def now(self) -> float:
        return self._loop.time()

    def wall(self, mono: float) -> float:
        return time.time() - (self._loop.time() - mono)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(host, port)
        )
        self._transport = transport
        self._runner = asyncio.create_task(self._run(), name="membership-timers")

    async def leave(self) -> None:
        """Gossip our departure, linger so it spreads, then stop."""
        self._execute(self.core.leave(self.now()))
        self._wakeup.set()
        await asyncio.sleep(self.core.config.leave_linger)

    async def stop(self) -> None:
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()

    async def _run(self) -> None:
        while True:
            delay = self.core.next_deadline() - self.now()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
            self._execute(self.core.tick(self.now()))

    # --- inputs -------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.stats["udp_recv_bytes"] += len(data)
        self.stats["udp_recv_packets"] += 1
        payload = self.opener.open(data, time.time())
        if payload is None:
            self._log_drop(addr)
            return
        try:
            packet = decode_packet(payload)
        except DecodeError as exc:
            self.opener.dropped["malformed"] += 1
            self._log_drop(addr, str(exc))
            return
        src = f"{addr[0]}:{addr[1]}"
        self._execute(self.core.handle_packet(self.now(), src, packet))
        self._wakeup.set()

    def _log_drop(self, addr: tuple[str, int], detail: str = "") -> None:
        # At most one line per 10 s per source host and one per second overall: a flood, even
        # from ever-changing ports, must not flood the log or grow this table without bound.
        src = f"{addr[0]}:{addr[1]}"
        now = time.monotonic()
        if now - self._last_drop_log.get(addr[0], -1e9) < 10 or now - self._last_drop_any < 1:
            return
        if len(self._last_drop_log) > 1024:
            self._last_drop_log.clear()
        self._last_drop_log[addr[0]] = now
        self._last_drop_any = now
        self._log(
            "packet_dropped",
            level="warning",
            source=src,
            detail=detail,
            dropped=dict(self.opener.dropped),
        )

    async def handle_push_pull(self, body: bytes) -> bytes:
        """Serve a peer's push-pull request (called by the HTTP route)."""
        states, join = decode_states(body)
        self.stats["tcp_recv_bytes"] += len(body)
        reply, effects = self.core.on_push_pull_request(self.now(), states, join)
        self._execute(effects)
        self._wakeup.set()
        out = encode_states(list(reply))
        self.stats["tcp_sent_bytes"] += len(out)
        return out

    # --- effects ------------------------------------------------------------------------

    def _execute(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Send):
                self._send(e.addr, encode_packet(e.packet))
            elif isinstance(e, PushPull):
                self._spawn(self._do_push_pull(e.addr, e.join, e.states))
            elif isinstance(e, MemberChanged):
                self._on_change(e)
            elif isinstance(e, Note):
                level = "warning" if e.event in ("join_failed", "refuted") else "info"
                self._log(e.event, level=level, **e.fields)

    def _on_change(self, e: MemberChanged) -> None:
        self._log(
            "member_changed",
            member=e.name,
            address=e.addr,
            old=e.old.value if e.old else None,
            new=e.new.value,
            incarnation=e.incarnation,
        )
        for listener in self.listeners:
            listener(e)

    def _send(self, addr: str, payload: bytes) -> None:
        if self._transport is None:
            return
        frame = seal(self._key, payload, time.time())
        if len(frame) > MAX_DATAGRAM:
            self.stats["oversize_not_sent"] += 1
            return
        if self.faults.drop and self.faults.rng.random() < self.faults.drop:
            self.stats["fault_dropped"] += 1
            return
        try:
            target = split_addr(addr)
        except ValueError:
            self.stats["bad_address"] += 1
            return
        self.stats["udp_sent_bytes"] += len(frame)
        self.stats["udp_sent_packets"] += 1
        if self.faults.delay:
            self._loop.call_later(self.faults.delay, self._sendto, frame, target)
        else:
            self._sendto(frame, target)

    def _sendto(self, frame: bytes, target: tuple[str, int]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(frame, target)
        except (OSError, OverflowError, ValueError, TypeError):
            # An unusable address from a peer must cost one datagram, never the socket.
            self.stats["bad_address"] += 1

    async def _do_push_pull(self, addr: str, join: bool, states: tuple[MemberState, ...]) -> None:
        body = encode_states(list(states), join)
        try:
            reply = await self._push_pull(addr, body)
            remote, _ = decode_states(reply)
        except (OSError, TimeoutError, DecodeError, ValueError) as exc:
            reason = _describe(exc)
            self._execute(self.core.on_push_pull_failed(self.now(), addr, join, reason))
        else:
            self.stats["tcp_sent_bytes"] += len(body)  # counted once the exchange happened
            self.stats["tcp_recv_bytes"] += len(reply)
            self._execute(self.core.on_push_pull_reply(self.now(), addr, remote, join))
        self._wakeup.set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
