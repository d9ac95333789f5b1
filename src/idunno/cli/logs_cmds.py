"""`idunno logs grep PATTERN [-E] [-i] [-c] [--node NAME]`: search every node's structured log
in parallel (the course's MP1). Each live member is asked at once; a member that is down, or
does not answer in time, is reported on stderr and not waited for."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from idunno.cli.options import add_cluster_options
from idunno.client import Client, ClientError
from idunno.node.grep import DEFAULT_LIMIT, MAX_LIMIT, BadPattern, Matcher

ClientFactory = Callable[[argparse.Namespace], Client]
AddParser = Callable[..., argparse.ArgumentParser]
NODE_TIMEOUT_S = 3.0


class LogsUsage(ValueError):
    """A bad argument (one line, exit 2)."""


def _one(client: Client, name: str, addr: str, query: dict[str, Any]) -> dict[str, Any]:
    peer = Client(addr, client.key, timeout=NODE_TIMEOUT_S)
    try:
        out = peer.grep_logs(**query)
    except ClientError as exc:
        return {"node": name, "error": str(exc)}
    return {"node": name, **out}


def cmd_grep(args: argparse.Namespace, client: ClientFactory) -> int:
    try:
        Matcher(args.pattern, args.regex, args.ignore_case)  # a bad pattern fails here, once
    except BadPattern as exc:
        raise LogsUsage(str(exc)) from None
    if not 1 <= args.limit <= MAX_LIMIT:
        raise LogsUsage(f"--limit must be from 1 to {MAX_LIMIT}, got {args.limit}")
    c = client(args)
    try:
        members = c.members()["members"]
    except ClientError as exc:
        print(f"idunno: error: {exc}", file=sys.stderr)
        return 1
    if args.node:
        members = [m for m in members if m["id"] in args.node]
        missing = set(args.node) - {m["id"] for m in members}
        if missing:
            raise LogsUsage(f"no member named {', '.join(sorted(missing))}: see `idunno members`")
    live = [m for m in members if m["status"] in ("alive", "suspect")]
    down = [m for m in members if m not in live]
    query = {
        "pattern": args.pattern,
        "regex": args.regex,
        "ignore_case": args.ignore_case,
        "limit": args.limit,
    }
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(live)))) as pool:
        answers = list(pool.map(lambda m: _one(c, m["id"], m["address"], query), live))
    for m in down:
        answers.append({"node": m["id"], "error": f"{m['status']}: not searched"})
    answers.sort(key=lambda a: a["node"])
    if args.json:
        print(json.dumps({"nodes": answers}, indent=2, sort_keys=True))
    else:
        _print(answers, args.count)
    failed = [a for a in answers if "error" in a]
    for a in failed:
        print(f"idunno: warning: {a['node']}: {a['error']}", file=sys.stderr)
    return 0 if any(a.get("count") for a in answers) else 1  # like grep: 1 when nothing matched


def _print(answers: list[dict[str, Any]], count_only: bool) -> None:
    if count_only:
        for a in answers:
            if "error" not in a:
                print(f"{a['node']}: {a['count']}")
        print(f"total: {sum(a.get('count', 0) for a in answers)}")
        return
    for a in answers:
        for line in a.get("lines", []):
            print(f"{a['node']}: {line}")
        if a.get("truncated"):
            shown = len(a["lines"])
            print(f"{a['node']}: ... {a['count'] - shown} more (raise --limit)", file=sys.stderr)


def register(add: AddParser, client: ClientFactory) -> None:
    parent = add("logs", _no_action, "search the nodes' logs", common=False)
    sub = parent.add_subparsers(
        dest="logs_action", metavar="ACTION", required=True, parser_class=type(parent)
    )
    p = sub.add_parser(
        "grep",
        help="search every node's log in parallel (MP1)",
        description="Print the log lines of every live node that contain PATTERN, prefixed "
        "with the node's name; exit 1 when nothing matched (like grep).",
    )
    p.set_defaults(fn=lambda args: cmd_grep(args, client))
    add_cluster_options(p, listing=True)
    p.add_argument("pattern", metavar="PATTERN", help="a fixed string (or a regex with -E)")
    p.add_argument("-E", "--regex", action="store_true", help="PATTERN is a regular expression")
    p.add_argument("-i", "--ignore-case", action="store_true", help="ignore case")
    p.add_argument("-c", "--count", action="store_true", help="print match counts per node")
    p.add_argument("--node", action="append", metavar="NAME", help="only this node (repeatable)")
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"lines per node at most (default {DEFAULT_LIMIT})",
    )


def _no_action(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires ACTION
    raise LogsUsage("give an ACTION (see `idunno logs --help`)")
