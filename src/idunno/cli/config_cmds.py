"""`idunno config show [--config FILE] [--json]`: the effective node configuration, each value
with where it came from (default, preset, file, env)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from idunno import config

AddParser = Callable[..., argparse.ArgumentParser]


def cmd_show(args: argparse.Namespace) -> int:
    settings, file = config.load(args.config)
    _, members = config.membership(settings)
    shown = {"node": settings["node"], "membership": members, "store": settings["store"]}
    if args.json:
        data: dict[str, Any] = {
            "file": str(file) if file else None,
            **{s: {k: v.value for k, v in vals.items()} for s, vals in shown.items()},
            "sources": {s: {k: v.source for k, v in vals.items()} for s, vals in shown.items()},
        }
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(f"# config file: {file or f'none (--config FILE or ${config.ENV_FILE})'}")
    for section, vals in shown.items():
        print(f"\n[{section}]")
        for key, s in vals.items():
            print(f"{key} = {json.dumps(s.value)}  # {s.source}")
    return 0


def register(add: AddParser) -> None:
    parent = add("config", _no_action, "the node configuration (TOML file and env)", common=False)
    sub = parent.add_subparsers(
        dest="config_action", metavar="ACTION", required=True, parser_class=type(parent)
    )
    p = sub.add_parser(
        "show",
        help="print the effective configuration and where each value comes from",
        description="Print the configuration a node started here would use: built-in "
        "defaults, the timing preset, the file (--config or $IDUNNO_CONFIG), then "
        "IDUNNO_<SECTION>_<KEY> environment variables (flags of `idunno node` override all).",
    )
    p.set_defaults(fn=cmd_show)
    p.add_argument("--config", metavar="FILE", help="a TOML file (default: $IDUNNO_CONFIG)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _no_action(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires ACTION
    raise ValueError("give an ACTION (see `idunno config --help`)")
