"""Real `idunno node` processes on separate "hosts" (Linux network namespaces) joined by a bridge,
for tests that need a network between nodes that can fail: partitions and packet loss.

    from idunno.testing.netns import NetnsCluster, check_available

    check_available()  # raises NetnsUnavailable(reason): tests pytest.skip(exc.reason)
    with NetnsCluster(4, tmp_path, preset="local") as c:
        c.partition({"n1"}, {"n2", "n3"})  # n4 is in no group: it still sees both sides
        c.wait_status("n1", "failed", observers=["n2", "n3"])
        c.set_network(loss={("n1", "n2"): 30})  # replaces the partition: 30% loss each way
        c.heal()  # no fault at all

Layout of one run (PID = this process, K = a per-process counter, so runs never collide):
  - a bridge `idbPID-K` (PID and K in hex; interface names have at most 15 characters) in the root
    namespace, holding 10.B.C.254/24 on a /24 that no route or address of this machine uses
    (chosen under a lock file, so concurrent runs pick different ones). This process reaches every
    node through it, and faults never apply to it;
  - per node nI a namespace `idunno-PID-K-nI` with `lo` up and one veth `eth0` = 10.B.C.I whose
    other end (`idvPID-K-I`) is a port of the bridge. Node nI listens on 10.B.C.I:7000, keeps its
    data (and stderr.log, its stdout and stderr) in DIRECTORY/nI and joins through the others.

Faults are declarative: `set_network(blocked, loss)` describes every fault of the network and
replaces the previous ones. Each namespace gets one complete `table inet idunno_chaos`, loaded with
`nft -f -` in a single transaction (the old table is deleted and the new one created atomically),
that drops on its input hook the packets coming from the peers it must not hear (blocked) or
drops a percentage of them (`numgen random mod 100 < P`). Each end filters what it receives, so
both directions are covered. There is no netem and no tc: only nftables.

Cleanup: `close()` (also `__exit__`, even when the body raised, and an atexit hook) SIGKILLs every
process it started (by pid: `ip netns exec` execs the node, so the Popen pid is the node's) and
deletes its veths, bridge and namespaces. A run killed before its cleanup leaves them behind: each
new cluster first removes those whose owning PID (encoded in the names) is dead
(`sweep_stale()`). Nothing whose name does not follow this scheme is ever touched.

Needs Linux, root, iproute2 (`ip`) and nftables (`nft`): `make netns` installs the tools.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from idunno.localcluster import (
    KEY_FILE,
    ClusterError,
    NodeProc,
    ensure_key,
    is_running,
    node_command,
    wait_converged,
)
from idunno.testing.procs import ProcCluster
from idunno.transport import keys

PORT = 7000  # every node has its own address, so all can use the same port
TABLE = "idunno_chaos"  # the nftables table this module owns in each namespace
BRIDGE_HOST = 254  # the bridge's (this process's) last octet: nodes are 1..N
IFNAMSIZ = 15  # longest Linux interface name
LOCK_FILE = Path("/run/idunno-netns.lock")
# Private ranges searched, in order, for a /24 this machine does not use.
POOLS = (ipaddress.IPv4Network("10.0.0.0/8"), ipaddress.IPv4Network("172.16.0.0/12"))

_NS_RE = re.compile(r"^idunno-(\d+)-(\d+)-[\w.-]+$")
_LINK_RE = re.compile(r"^id[bv]([0-9a-f]+)-([0-9a-f]+)(-\d+)?$")
_RUNS = itertools.count(1)  # with the pid, makes every run's names unique


class NetnsUnavailable(Exception):
    """Network namespaces cannot be used here; `reason` says why and how to fix it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NetnsError(RuntimeError):
    """An `ip` or `nft` command failed while building, faulting or removing a test network."""


class NetworkFaults(NamedTuple):
    """Every fault of the network; pairs are ordered as the nodes are (n1 before n2)."""

    blocked: frozenset[tuple[str, str]]
    loss: Mapping[tuple[str, str], int]  # pair -> percentage dropped in each direction


# --- names --------------------------------------------------------------------------------------


def namespace_name(pid: int, run: int, node: str) -> str:
    return f"idunno-{pid}-{run}-{node}"


def bridge_name(pid: int, run: int) -> str:
    return f"idb{pid:x}-{run:x}"


def veth_name(pid: int, run: int, index: int) -> str:
    """The root-namespace end of node `index`'s veth (the other end is `eth0` in its namespace)."""
    return f"idv{pid:x}-{run:x}-{index}"


# --- commands -----------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """Full path of `ip` or `nft`: /usr/sbin is not on every PATH, even for root."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise NetnsError(f"{name} not found")
    return found


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a short command; its stdout, or NetnsError with its stderr."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{shlex.join(argv)}: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit status {done.returncode}"
        raise NetnsError(f"{shlex.join(argv)} failed: {why}")
    return done.stdout


def _ip(*args: str) -> str:
    return _run([_tool("ip"), *args])


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _ip("-j", *args).strip()
    rows: list[dict[str, Any]] = json.loads(out) if out else []
    return rows


def exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """The command line running `argv` inside `namespace` (`ip netns exec` execs it)."""
    return [_tool("ip"), "netns", "exec", namespace, *argv]


def chaos_ruleset(drops: Mapping[str, int]) -> str:
    """The complete nft script of one namespace's fault table: packets whose source address is a
    key of `drops` are dropped with that percentage (100: all, 0: none). Adding, deleting and
    defining the table in one script is one transaction: faults are swapped atomically, whether
    or not the table existed."""
    rules = []
    for source, percent in sorted(drops.items()):
        if percent >= 100:
            rules.append(f"ip saddr {source} counter drop")
        elif percent > 0:
            rules.append(f"ip saddr {source} numgen random mod 100 < {percent} counter drop")
    body = "".join(f"\t\t{rule}\n" for rule in rules)
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        f"{body}"
        "\t}\n"
        "}\n"
    )


def _load_ruleset(namespace: str, script: str) -> None:
    _run(exec_argv(namespace, [_tool("nft"), "-f", "-"]), stdin=script)


# --- availability -------------------------------------------------------------------------------


@functools.cache  # a success is remembered; a failure (an exception) is checked again
def check_available() -> None:
    """Return if this machine can run NetnsCluster, else raise NetnsUnavailable saying why and
    how to fix it. Probes for real (a namespace with a bridge, a veth and the nft table)."""
    if sys.platform != "linux":
        raise NetnsUnavailable(f"network namespaces need Linux, this is {sys.platform}")
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            f"network namespaces need root (running as uid {os.geteuid()}): "
            "run these tests as root, e.g. in the CI container"
        )
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        try:
            _tool(tool)
        except NetnsError:
            raise NetnsUnavailable(
                f"{tool} not found: run `make netns` (installs Debian's {package}) "
                f"or apt-get install {package}"
            ) from None
    try:
        _probe()
    except NetnsError as exc:
        raise NetnsUnavailable(
            f"cannot build a test network ({exc}): the kernel needs network namespaces, veth, "
            "bridge and nf_tables, and a container needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
        ) from None


def _probe() -> None:
    """Everything a cluster needs, inside a throwaway namespace (the root one is not touched)."""
    ns = namespace_name(os.getpid(), next(_RUNS), "probe")
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "add", "probe-br", "type", "bridge")
        _ip("-n", ns, "link", "add", "probe-v0", "type", "veth", "peer", "name", "probe-v1")
        _load_ruleset(ns, chaos_ruleset({"192.0.2.1": 50}))
    finally:
        _ip("netns", "del", ns)


# --- stale runs ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_dead(pid: int) -> bool:
    return pid != os.getpid() and not _pid_alive(pid)


def _namespaces() -> list[str]:
    """`ip netns list` prints `NAME` or `NAME (id: N)` per line."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _links() -> list[str]:
    return [str(row["ifname"]) for row in _ip_json("link", "show")]


def _kill_nodes_in(namespace: str) -> None:
    """SIGKILL the idunno nodes still running in a dead run's namespace: they were started by
    that run (nothing else enters these namespaces) and would otherwise run forever."""
    try:
        pids = _ip("netns", "pids", namespace).split()
    except NetnsError:  # already deleted (by a concurrent sweep)
        return
    for word in pids:
        pid = int(word)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"idunno" in cmdline and b"node" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def sweep_stale() -> list[str]:
    """Remove the namespaces, bridges and veths of runs whose owning process is dead (killed
    before its cleanup ran); return their names. Live runs, this process's included, and
    anything not named by this module are left alone."""
    stale_ns = [ns for ns in _namespaces() if (m := _NS_RE.match(ns)) and _owner_dead(int(m[1]))]
    stale_links = [
        link for link in _links() if (m := _LINK_RE.match(link)) and _owner_dead(int(m[1], 16))
    ]
    for ns in stale_ns:
        _kill_nodes_in(ns)
    _remove(stale_links, stale_ns)
    return stale_links + stale_ns


def _remove(links: Iterable[str], namespaces: Iterable[str]) -> None:
    """Delete `links` then `namespaces` (a veth's deletion takes its peer along at once; a
    namespace's own teardown is asynchronous). Tries all, then raises for those still there:
    one already gone (e.g. swept by another process at the same time) is not an error."""
    failed = _delete_each(["link", "del"], links, _links)
    failed += _delete_each(["netns", "del"], namespaces, _namespaces)
    if failed:
        raise NetnsError("; ".join(failed))


def _delete_each(
    command: Sequence[str], names: Iterable[str], listing: Callable[[], list[str]]
) -> list[str]:
    """`ip COMMAND NAME` for every name `listing()` shows; the errors of those still listed."""
    present = set(listing())
    errors = {}
    for name in [n for n in names if n in present]:
        try:
            _ip(*command, name)
        except NetnsError as exc:
            errors[name] = str(exc)
    remaining = set(listing()) if errors else set()
    return [error for name, error in errors.items() if name in remaining]


# --- addresses ----------------------------------------------------------------------------------


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address in or a route to (default route aside)."""
    used = []
    for row in _ip_json("-4", "addr", "show"):
        for info in row.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for row in _ip_json("-4", "route", "show", "table", "all"):
        dst = str(row.get("dst", "default"))
        if dst != "default":
            used.append(ipaddress.IPv4Network(dst, strict=False))
    return used


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A private /24 overlapping nothing in use, searched from a seed-dependent start so that
    runs usually get different ones at the first try."""
    used = _used_networks()
    for pool in POOLS:
        count = pool.num_addresses // 256
        base = int(pool.network_address)
        for step in range(count):
            net = ipaddress.IPv4Network((base + ((seed + step) % count) * 256, 24))
            if not any(net.overlaps(u) for u in used):
                return net
    raise NetnsError("no free private /24 for a test network (10/8 and 172.16/12 are all in use)")


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Serialises choosing a subnet and claiming it (the bridge's address) between processes."""
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


# --- the cluster --------------------------------------------------------------------------------


class NetnsCluster(ProcCluster):
    """N nodes, one per network namespace, on a bridge; faults with nftables. See the module.

    Kills, pauses and the member queries (`kill`, `pause`, `resume`, `client`, `statuses`,
    `wait_status`) are ProcCluster's: only how nodes are started and cleaned up differs.
    """

    def __init__(
        self,
        n: int,
        directory: Path,
        *,
        seed_prefix: int | None = None,
        extra: Sequence[str] = (),
        node_extra: Mapping[str, Sequence[str]] | None = None,
        preset: str = "lan",
        start_timeout: float = 60.0,
    ) -> None:
        """`seed_prefix`: nodes join through the first `seed_prefix` nodes only (with 1, n1 is
        the lone introducer); None: through every other node."""
        if not 1 <= n < BRIDGE_HOST:
            raise ValueError(f"a NetnsCluster has 1 to {BRIDGE_HOST - 1} nodes, not {n}")
        super().__init__(n, directory, preset, extra, start_timeout, node_extra)
        self.directory = self.directory.resolve()
        self.seed_prefix = seed_prefix
        self.run = next(_RUNS)
        self.bridge = bridge_name(os.getpid(), self.run)
        if len(veth_name(os.getpid(), self.run, n)) > IFNAMSIZ:
            raise ValueError(f"too many nodes ({n}) for {IFNAMSIZ}-character interface names")
        self.subnet: ipaddress.IPv4Network | None = None
        self._ips: dict[str, str] = {}
        self._links: list[str] = []  # created (or being created) by this run, for cleanup
        self._namespaces: list[str] = []
        self._faults = NetworkFaults(frozenset(), {})

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        sweep_stale()
        atexit.register(self._close_at_exit)
        try:
            self._build_network()
            self._start_nodes()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every process started (restarts too), then delete veths, bridge, namespaces."""
        try:
            super().close()
        finally:
            atexit.unregister(self._close_at_exit)
            links, self._links = self._links, []
            namespaces, self._namespaces = self._namespaces, []
            _remove(links, namespaces)

    def _close_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _build_network(self) -> None:
        pid = os.getpid()
        with _allocation_lock():
            self.subnet = _free_subnet(pid * 2654435761 + self.run * 40503)
            self._links.append(self.bridge)
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self._host(BRIDGE_HOST)}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.n + 1):
            self._add_host(f"n{i}", i)

    def _host(self, index: int) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + index)

    def _add_host(self, name: str, index: int) -> None:
        """Namespace `name` with lo, and eth0 = .index bridged to the root namespace."""
        ns = self.namespace(name)
        veth = veth_name(os.getpid(), self.run, index)
        self._namespaces.append(ns)
        _ip("netns", "add", ns)
        self._links.append(veth)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        self._ips[name] = self._host(index)
        _ip("-n", ns, "addr", "add", f"{self._ips[name]}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _load_ruleset(ns, chaos_ruleset({}))

    def _start_nodes(self) -> None:
        key_file = ensure_key(self.directory)
        self.key = keys.load(str(key_file))
        names = list(self._ips)
        for name in names:
            seeds = names[: self.seed_prefix] if self.seed_prefix is not None else names
            own = tuple(self.extra) + self.node_extra.get(name, ())
            self._spawn(name, [self.address(s) for s in seeds if s != name], own)
        try:
            wait_converged(
                [self.address(name) for name in names],
                self.key,
                time.monotonic() + self.start_timeout,
            )
        except ClusterError as exc:
            raise ClusterError(f"{exc}{self._exited_nodes()}") from None

    def _exited_nodes(self) -> str:
        """Why nodes that already exited did (the last line of their log), for error messages."""
        notes = []
        for node in self.nodes.values():
            if not is_running(node):
                log = Path(node.data_dir) / "stderr.log"
                lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
                notes.append(f"; {node.name} exited: {lines[-1] if lines else '(no output)'}")
        return "".join(notes)

    def _spawn(self, name: str, seeds: Sequence[str], extra: Sequence[str]) -> NodeProc:
        """Start node `name` in its namespace; its stdout and stderr go to DATA_DIR/stderr.log."""
        data_dir = self.directory / name
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.directory / KEY_FILE
        cmd = node_command(name, self.address(name), seeds, data_dir, key_file, self.preset, extra)
        with open(data_dir / "stderr.log", "ab") as log:
            proc = subprocess.Popen(
                exec_argv(self.namespace(name), cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._procs.append(proc)
        node = NodeProc(name, self.address(name), proc.pid, str(data_dir))
        self.nodes[name] = node
        self._started.append(node)
        return node

    # --- faults ---------------------------------------------------------------------------

    def restart(self, name: str, extra: Sequence[str] | None = None) -> NodeProc:
        """Start `name` again on the same address and data dir, joining through the others."""
        if is_running(self.nodes[name]):
            raise ValueError(f"{name} is still running: kill it before restarting it")
        own = (tuple(self.extra) + self.node_extra.get(name, ())) if extra is None else extra
        seeds = [self.address(other) for other in self.names if other != name]
        return self._spawn(name, seeds, own)

    def set_network(
        self,
        blocked: Iterable[tuple[str, str]] = (),
        loss: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """Make these the network's only faults: each `blocked` pair exchanges no packet either
        way; each `loss` pair loses that percentage of packets in each direction. Traffic with
        this process (the bridge address) is never affected."""
        faults = NetworkFaults(
            frozenset(self._pair(a, b) for a, b in blocked),
            {self._pair(a, b): self._percent(p) for (a, b), p in (loss or {}).items()},
        )
        for name in self.names:
            _load_ruleset(self.namespace(name), chaos_ruleset(self._drops(name, faults)))
        self._faults = faults

    def _drops(self, name: str, faults: NetworkFaults) -> dict[str, int]:
        """Source address -> percentage `name` drops of what it receives from there."""
        drops: dict[str, int] = {}
        for (a, b), percent in faults.loss.items():
            if name in (a, b):
                drops[self._ips[b if name == a else a]] = percent
        for a, b in faults.blocked:  # a block wins over a loss on the same pair
            if name in (a, b):
                drops[self._ips[b if name == a else a]] = 100
        return drops

    def _pair(self, a: str, b: str) -> tuple[str, str]:
        for name in (a, b):
            if name not in self._ips:
                raise ValueError(f"no node {name!r} in this cluster ({', '.join(self.names)})")
        if a == b:
            raise ValueError(f"a fault needs two different nodes, not {a} and {b}")
        return (a, b) if self.names.index(a) < self.names.index(b) else (b, a)

    @staticmethod
    def _percent(value: int) -> int:
        if not 0 <= value <= 100:
            raise ValueError(f"a loss is a percentage from 0 to 100, not {value}")
        return int(value)

    def heal(self) -> None:
        """Remove every network fault."""
        self.set_network()

    def partition(self, *groups: Iterable[str]) -> None:
        """Replace all faults with a partition: no packet between nodes of different groups.
        Nodes in no group keep talking to everyone (a bridge node that sees both sides)."""
        self.set_network(blocked=cross_pairs(*groups))

    def network(self) -> NetworkFaults:
        """The faults currently in force (as given to set_network, pairs in node order)."""
        return NetworkFaults(self._faults.blocked, dict(self._faults.loss))

    # --- queries --------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._ips)

    @property
    def processes(self) -> list[NodeProc]:
        """Every node process this cluster started, restarts included."""
        return list(self._started)

    @property
    def links(self) -> list[str]:
        """The root-namespace interfaces of this run (bridge and veths) until close()."""
        return list(self._links)

    def namespace(self, name: str) -> str:
        return namespace_name(os.getpid(), self.run, name)

    def ip(self, name: str) -> str:
        return self._ips[name]

    def address(self, name: str) -> str:
        return f"{self._ips[name]}:{PORT}"

    def data_dir(self, name: str) -> Path:
        return self.directory / name

    def is_up(self, name: str) -> bool:
        """True if `name`'s process runs and is not paused."""
        node = self.nodes.get(name)
        return node is not None and is_running(node) and _proc_state(node.pid) not in {"T", "t"}

    def run_in(
        self, name: str, argv: Sequence[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside `name`'s namespace (e.g. to send traffic from that host)."""
        return subprocess.run(
            exec_argv(self.namespace(name), argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def cross_pairs(*groups: Iterable[str]) -> frozenset[tuple[str, str]]:
    """Every pair of nodes in different groups (for set_network(blocked=...))."""
    sets = [frozenset(g) for g in groups]
    for i, j in itertools.combinations(range(len(sets)), 2):
        if sets[i] & sets[j]:
            raise ValueError(f"{', '.join(sorted(sets[i] & sets[j]))} in two groups")
    return frozenset(
        (a, b)
        for i, j in itertools.combinations(range(len(sets)), 2)
        for a in sets[i]
        for b in sets[j]
    )


def _proc_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat (T: stopped), or "" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]
