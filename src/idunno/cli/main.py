"""`idunno` command line: one subcommand per user action, each talking to a node's HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from idunno import __version__
from idunno.cli import config_cmds, dashboard_cmds, job_cmds, logs_cmds, model_cmds, store_cmds
from idunno.cli.options import add_cluster_options
from idunno.cli.render import format_time, table
from idunno.client import Client, ClientError
from idunno.inference import cpus
from idunno.localcluster import (
    DEFAULT_DIR,
    KEY_FILE,
    ClusterError,
    cluster_nodes,
    is_running,
    start_cluster,
    stop_cluster,
)
from idunno.membership.config import PRESETS
from idunno.store.names import InvalidName
from idunno.transport import keys

LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """A bad argument; the message names it and the fix."""


def _cluster_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("IDUNNO_DIR") or DEFAULT_DIR)


def _key(args: argparse.Namespace) -> bytes:
    return keys.load(args.key_file, fallback_file=_cluster_dir(args) / KEY_FILE)


def _target(args: argparse.Namespace) -> str:
    """--at, else $IDUNNO_AT, else the first running node of the local cluster."""
    at: str | None = args.at or os.environ.get("IDUNNO_AT")
    if at:
        _parse_hostport(at, "--at")
        return at
    directory = _cluster_dir(args)
    try:
        nodes = cluster_nodes(directory)
    except ClusterError:
        raise UsageError(
            "no node to talk to: pass --at HOST:PORT, or start a local cluster with `idunno up`"
        ) from None
    for n in nodes:
        if is_running(n):
            return n.address
    raise UsageError(
        f"no node of the local cluster in {directory} is running: start one with `idunno up`"
    )


def _client(args: argparse.Namespace) -> Client:
    return Client(_target(args), _key(args))


def _parse_hostport(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {text!r} is not HOST:PORT (for example 127.0.0.1:7100)")
    return host.strip("[]"), int(port)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# --- commands ---------------------------------------------------------------------------


def cmd_node(args: argparse.Namespace) -> int:
    from idunno import config
    from idunno.membership.shell import Faults
    from idunno.node.server import Node, NodeOptions, StartupError

    # Flags beat the environment, which beats the file (--config / $IDUNNO_CONFIG), which
    # beats the defaults (`idunno config show` prints the result).
    settings, _ = config.load(args.config)
    settings = config.with_flags(
        settings,
        {
            ("node", "listen"): args.listen,
            ("node", "advertise"): args.advertise,
            ("node", "join"): args.join,
            ("node", "name"): args.name,
            ("node", "data_dir"): args.data_dir,
            ("node", "preset"): args.preset,
            ("node", "inference_threads"): args.inference_threads,
            ("node", "log_level"): args.log_level,
            ("store", "replicas"): args.replicas,
            ("store", "min_replicas"): args.min_replicas,
            ("store", "keep_versions"): args.keep_versions,
        },
    )
    node = config.values(settings, "node")
    host, port = _parse_hostport(node["listen"], "--listen")
    advertise = node["advertise"] or node["listen"]
    ahost, _ = _parse_hostport(advertise, "--advertise")
    if ahost in ("0.0.0.0", "::"):
        raise UsageError("--listen on a wildcard address needs --advertise HOST:PORT for peers")
    seeds = tuple(node["join"])
    for s in seeds:
        _parse_hostport(s, "--join")
    name = node["name"] or f"{socket.gethostname()}-{port}"
    if not name.isprintable() or len(name) > 128 or any(c in name for c in "/\\ "):
        raise UsageError(f"--name {name!r} must be printable, at most 128 chars, no spaces or /")
    data_dir = Path(node["data_dir"] or DEFAULT_DIR / "nodes" / name).resolve()
    if node["preset"] not in PRESETS:
        raise UsageError(f"preset {node['preset']!r} is unknown: one of {', '.join(PRESETS)}")
    if node["log_level"] not in LOG_LEVELS:
        raise UsageError(
            f"log level {node['log_level']!r} is unknown: one of {', '.join(LOG_LEVELS)}"
        )
    cfg, _ = config.membership(settings)
    store = config.store(settings)
    if store.replicas < 1 or store.keep_versions < 1 or store.min_replicas < 1:
        raise UsageError("--replicas, --min-replicas and --keep-versions must be at least 1")
    if not 0 <= node["inference_threads"] <= 64:
        raise UsageError("--inference-threads must be from 0 (no inference work) to 64")
    executor_cpus = None
    if args.executor_cpus is not None:
        try:
            executor_cpus = cpus.usable_cpus(cpus.parse_cpu_list(args.executor_cpus))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    opts = NodeOptions(
        name=name,
        host=host,
        port=port,
        advertise=advertise,
        seeds=seeds,
        data_dir=data_dir,
        key=keys.load(args.key_file),
        preset=node["preset"],
        config=cfg,
        faults=Faults(drop=args.fault_drop),
        store=store,
        stderr_level=node["log_level"],
        inference_threads=node["inference_threads"],
        executor_cpus=executor_cpus,
    )
    try:
        asyncio.run(Node(opts).run())
    except StartupError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    data = _client(args).members()
    if args.json:
        _print_json(data)
        return 0
    rows = [
        [
            m["id"] + (" (self)" if m["id"] == data["self"] else ""),
            m["address"],
            m["status"],
            m.get("role") or "-",
            str(m["incarnation"]),
            format_time(m["changed_at"]),
        ]
        for m in data["members"]
    ]
    print(table(["ID", "ADDRESS", "STATUS", "ROLE", "INCARNATION", "SINCE"], rows))
    return 0


def cmd_self(args: argparse.Namespace) -> int:
    data = _client(args).self_info()
    if args.json:
        _print_json(data)
        return 0
    rows = [
        ["id", data["id"]],
        ["address", data["address"]],
        ["status", data["status"]],
        ["incarnation", str(data["incarnation"])],
        ["live members", str(data["live_members"])],
        ["preset", data["preset"]],
        ["pid", str(data["pid"])],
        ["data dir", data["data_dir"]],
        ["up since", format_time(data["started_at"])],
        ["awareness", str(data["awareness"])],
    ]
    print(table(["FIELD", "VALUE"], rows))
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    client = _client(args)
    data = client.leave()
    if args.json:
        _print_json(data)
    else:
        print(f"node {data['leaving']} at {client.at} is leaving the cluster")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    key = keys.generate()
    if args.out:
        path = Path(args.out)
        if path.exists() and not args.force:
            raise UsageError(f"{path} exists: pass --force to overwrite it")
        keys.write_key_file(path, key)
        print(f"wrote a new cluster key to {path} (mode 0600); give it to every node")
    else:
        print(keys.to_text(key))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    directory = _cluster_dir(args)
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    extra = ["--replicas", str(args.replicas)] if args.replicas != 4 else []
    nodes = start_cluster(
        directory, args.nodes, base_port=args.base_port, preset=args.preset, extra=extra
    )
    took = time.monotonic() - t0
    if args.json:
        _print_json({"dir": str(directory.resolve()), "nodes": [n.__dict__ for n in nodes]})
        return 0
    print(f"{len(nodes)} nodes up and converged in {took:.1f} s ({directory / 'cluster.json'}):")
    print(
        table(
            ["NAME", "ADDRESS", "PID", "DATA DIR"],
            [[n.name, n.address, str(n.pid), n.data_dir] for n in nodes],
        )
    )
    print("try: idunno members    stop with: idunno down")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stopped = stop_cluster(_cluster_dir(args))
    if args.json:
        _print_json({"stopped": stopped})
    else:
        print(f"stopped {len(stopped)} nodes" + (f": {', '.join(stopped)}" if stopped else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from idunno.demo import run_demo

    if not 1 <= args.base_port <= 65535 - 5:
        raise UsageError(f"--base-port must be 1..65530, got {args.base_port}")
    if not 16 <= args.photos <= 100_000:
        raise UsageError(f"--photos must be 16..100000, got {args.photos}")
    from idunno.demo.cluster import DemoError

    try:
        code: int = run_demo(
            _cluster_dir(args), keep=args.keep, base_port=args.base_port, photos=args.photos
        )
    except DemoError as exc:
        print(f"idunno: error: {exc}", file=sys.stderr)
        return 1
    return code


# --- parser -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line that names the fix, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"idunno: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="idunno", description="IDUNNO: a fair, fault-tolerant distributed inference cluster."
    )
    parser.add_argument("--version", action="version", version=f"idunno {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    def add(
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help_: str,
        common: bool = True,
        listing: bool = False,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        if common:
            add_cluster_options(p, listing)
        return p

    p = add("node", cmd_node, "run one node in the foreground", common=False)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="UDP (failure detector) and TCP (HTTP API) address",
    )
    p.add_argument("--join", metavar="HOST:PORT[,...]", help="any live members to join through")
    p.add_argument("--advertise", metavar="HOST:PORT", help="address peers use (default --listen)")
    p.add_argument("--data-dir", metavar="DIR", help="node data dir (default .idunno/nodes/NAME)")
    p.add_argument("--name", help="unique node name (default HOSTNAME-PORT)")
    p.add_argument("--key-file", metavar="FILE", help="cluster key (or $IDUNNO_CLUSTER_KEY)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="timing preset (default lan)")
    p.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="stderr verbosity (the JSON log always has everything)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="R",
        help="copies of every stored file (default 4: survives any 3 failures)",
    )
    p.add_argument(
        "--min-replicas",
        type=int,
        default=None,
        metavar="M",
        help="live nodes a write needs (default 2); with fewer than R live, files are written "
        "to every live node and re-replicated to R when nodes return",
    )
    p.add_argument(
        "--keep-versions",
        type=int,
        default=None,
        metavar="K",
        help="versions kept per file (default 5)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (default $IDUNNO_CONFIG; see `idunno config show`)",
    )
    p.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        metavar="T",
        help="ONNX Runtime intra-op threads of this node's worker (default 1; 0: takes no jobs)",
    )
    p.add_argument(
        "--executor-cpus",
        metavar="LIST",
        help="CPUs its worker's executor may run on, e.g. 0 or 0-3 (default: any; local "
        "clusters give each node one core, round robin)",
    )
    p.add_argument("--fault-drop", type=float, default=0.0, help=argparse.SUPPRESS)

    add("members", cmd_members, "list the cluster's members (MP2 list_mem)", listing=True)
    add("self", cmd_self, "show the node itself (MP2 list_self)", listing=True)
    add("leave", cmd_leave, "make a node leave the cluster voluntarily")
    p = add("keygen", cmd_keygen, "make a new 32-byte cluster key", common=False)
    p.add_argument("--out", metavar="FILE", help="write it to FILE (mode 0600) instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite FILE")

    store_cmds.register(add, _client)
    model_cmds.register_models(add, _client)
    model_cmds.register_datasets(add, _client)
    job_cmds.register(add, _client)
    logs_cmds.register(add, _client)
    dashboard_cmds.register(add, _client)
    config_cmds.register(add)

    p = add("up", cmd_up, "start a local cluster of N nodes on 127.0.0.1 in the background")
    p.add_argument("--nodes", type=int, default=6, metavar="N", help="how many nodes (default 6)")
    p.add_argument(
        "--base-port",
        type=int,
        default=7100,
        metavar="P",
        help="first port; node i gets P+i (default 7100)",
    )
    p.add_argument("--preset", default="lan", choices=sorted(PRESETS), help="timing preset")
    p.add_argument(
        "--replicas",
        type=int,
        default=4,
        metavar="R",
        help="copies of every stored file (default 4)",
    )
    add("down", cmd_down, "stop the local cluster started by `idunno up`")
    p = add(
        "demo",
        cmd_demo,
        "start a fresh 6-node cluster, run a ResNet18 and an AlexNet job shown live, SIGKILL a "
        "worker and then the coordinator midway, report the measurements, stop",
        common=False,
    )
    p.add_argument(
        "--dir",
        metavar="D",
        help="local cluster directory (default: $IDUNNO_DIR or .idunno); node data an earlier "
        "cluster left in D/nodes is removed",
    )
    p.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    p.add_argument(
        "--base-port",
        type=int,
        default=7100,
        metavar="P",
        help="first port; node i gets P+i (default 7100)",
    )
    p.add_argument(
        "--photos",
        type=int,
        default=2000,
        metavar="N",
        help="sample photos each of the two jobs classifies (default 2000: the jobs take about "
        "50 s on 2 cores)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except (
        UsageError,
        ClientError,
        ClusterError,
        keys.ClusterKeyError,
        InvalidName,
        store_cmds.LocalFileError,
        ValueError,
    ) as exc:
        print(f"idunno: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
