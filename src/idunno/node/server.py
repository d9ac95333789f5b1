"""One node process: composes the layers (membership now; the store and the control plane
later) behind one address: UDP for the failure detector, TCP/HTTP for everything else."""

from __future__ import annotations

import asyncio
import errno
import random
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from idunno.control import api as control_api
from idunno.control.fence import Fence
from idunno.control.plane import ControlPlane
from idunno.control.rpc import Rpc
from idunno.dashboard import routes as dashboard_routes
from idunno.inference import worker_api
from idunno.inference.worker import WorkerService
from idunno.membership.config import MembershipConfig
from idunno.membership.core import MembershipCore
from idunno.membership.messages import Status
from idunno.membership.shell import Faults, MembershipShell
from idunno.node import openapi
from idunno.node.api import build_app
from idunno.node.known import KnownMembers
from idunno.node.logs import EventLog
from idunno.node.metrics import NodeMetrics
from idunno.store import api as store_api
from idunno.store.config import StoreConfig
from idunno.store.disk import DiskStore
from idunno.store.peers import Peers
from idunno.store.service import StoreService
from idunno.transport import tokens

PUSH_PULL_TIMEOUT = 3.0


class StartupError(Exception):
    """The node cannot start; the message is one line naming the cause and the fix."""


@dataclass
class NodeOptions:
    name: str
    host: str  # address to bind
    port: int
    advertise: str  # HOST:PORT other nodes use to reach us
    seeds: tuple[str, ...]
    data_dir: Path
    key: bytes
    preset: str
    config: MembershipConfig
    faults: Faults = field(default_factory=Faults)
    store: StoreConfig = field(default_factory=StoreConfig)
    stderr_level: str = "info"
    inference_threads: int = 1  # 0: this node takes no inference work
    executor_cpus: frozenset[int] | None = None  # None: its executor runs on any CPU


class Node:
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.name = opts.name
        self.data_dir = opts.data_dir
        self.preset = opts.preset
        self.started_at = time.time()
        self.log = EventLog(opts.name, opts.data_dir, stderr_level=opts.stderr_level)
        self.known = KnownMembers(opts.data_dir / "known-members.json", opts.config.dead_retention)
        self._stop = asyncio.Event()
        self._leave_on_stop = True
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.membership: MembershipShell  # set in start()
        self.store: StoreService  # set in start()
        self.worker: WorkerService  # set in start()
        self.control: ControlPlane  # set in start()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def request_stop(self, leave: bool = True) -> None:
        self._leave_on_stop = leave
        self._stop.set()

    async def _push_pull(self, addr: str, body: bytes) -> bytes:
        assert self._session is not None
        headers = {
            "Authorization": f"Bearer {tokens.mint(self.opts.key, ttl=60)}",
            "Content-Type": "application/msgpack",
        }
        url = f"http://{addr}/v1/internal/push-pull"
        timeout = aiohttp.ClientTimeout(total=PUSH_PULL_TIMEOUT)
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as r:
                if r.status != 200:
                    detail = (await r.text())[:200]
                    raise ValueError(f"HTTP {r.status} from {addr}: {detail}")
                return await r.read()
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionRefusedError(str(exc.os_error or exc)) from None
        except aiohttp.ClientError as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from None

    def live_view(self) -> dict[str, str]:
        """name -> address of members not failed or departed (suspects still count), minus
        those the control plane found gone before membership confirmed it (their port refused
        connections), so the store stops writing to a dead coordinator at once too."""
        control: ControlPlane | None = getattr(self, "control", None)
        gone = control.presumed_dead() if control is not None else frozenset()
        return {
            m.name: m.addr
            for m in self.membership.core.members.values()
            if m.status in (Status.ALIVE, Status.SUSPECT) and m.name not in gone
        }

    def known_count(self) -> int:
        """Members this node knows, not departed (failed ones until dead_retention forgets them),
        including those it knew before a restart: what the store's quorums are majorities of."""
        members = self.membership.core.members.values()
        self.known.observe((m.name, m.status) for m in members)
        return len(self.known.names() | {m.name for m in members if m.status != Status.LEFT})

    def _running_inference(self) -> bool:
        return self.worker.busy()  # the worker is made after the store, which asks this

    async def start(self) -> None:
        opts = self.opts
        loop = asyncio.get_running_loop()
        core = MembershipCore(
            opts.name, opts.advertise, opts.config, random.Random(), loop.time(), opts.seeds
        )
        self.membership = MembershipShell(core, opts.key, self._push_pull, self.log, opts.faults)
        self._session = aiohttp.ClientSession()
        disk = await asyncio.to_thread(DiskStore, opts.data_dir / "store", opts.store.keep_versions)
        self.store = StoreService(
            opts.name,
            disk,
            self.live_view,
            Peers(self._session, opts.key),
            opts.store,
            self.log,
            known=self.known_count,
            busy=self._running_inference,  # repairs slow down while this node runs batches
        )
        fence = Fence(opts.data_dir / "control" / "fence")
        self.store.fence = fence
        self.worker = WorkerService(
            opts.name,
            opts.data_dir / "cache",
            self.store.read_bytes,
            self.store.read_to_file,
            fence,
            self.log,
            threads=opts.inference_threads,
            cpus=opts.executor_cpus,
        )
        rpc = Rpc(self._session, opts.key)
        self.control = ControlPlane(opts.name, self.store, rpc, self.live_view, fence, self.log)
        self.metrics = NodeMetrics()
        self.worker.on_batch_done = lambda model, s: self.metrics.worker_batch.labels(
            model
        ).observe(s)
        self.control.on_batch_done = lambda job, model, s: self.metrics.batch_round_trip.labels(
            job, model
        ).observe(s)
        # Departures are recorded as they happen: the view may forget a departed member before
        # the next known_count() looks.
        self.membership.listeners.append(lambda c: self.known.observe([(c.name, c.new)]))
        self.membership.listeners.append(lambda _change: self.store.kick())
        self.membership.listeners.append(self.control.on_member_change)
        app = build_app(self, opts.key)
        store_api.add_routes(app, self.store)
        worker_api.add_routes(app, self.worker)
        control_api.add_routes(app, self.control)
        dashboard_routes.add_routes(app, self)
        self.metrics.attach(self)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get(openapi.PATH, openapi.serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            sock = _bind_tcp(opts.host, opts.port)
            await web.SockSite(self._runner, sock).start()
            await self.membership.start(opts.host, opts.port)
        except OSError as exc:
            await self._close()
            raise StartupError(_bind_error(opts.host, opts.port, exc)) from None
        self.store.start()
        await self.worker.start()
        self.control.start()
        self.log(
            "node_started",
            address=opts.advertise,
            preset=opts.preset,
            seeds=list(opts.seeds) or None,
            data_dir=str(opts.data_dir),
        )

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.shutdown()

    async def shutdown(self) -> None:
        if self._leave_on_stop:
            self.log("node_leaving")
            await self.membership.leave()
        await self.control.stop()
        await self.worker.stop()
        await self.store.stop()
        await self.membership.stop()
        await self._close()
        self.log("node_stopped")
        self.log.close()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is already in use on {host} (TCP or UDP): stop what holds it or "
            "choose another with --listen HOST:PORT"
        )
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return f"cannot bind {host}:{port}: this machine has no such address; use one of its own"
    if exc.errno == errno.EACCES:
        return f"cannot bind {host}:{port}: permission denied; use a port above 1023"
    return f"cannot bind {host}:{port}: {exc.strerror or exc}"
