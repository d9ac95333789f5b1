"""Options shared by every command that talks to a cluster."""

from __future__ import annotations

import argparse


def add_cluster_options(p: argparse.ArgumentParser, listing: bool = False) -> None:
    p.add_argument("--at", metavar="HOST:PORT", help="node to ask (default: the local cluster)")
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="cluster key (default: $IDUNNO_CLUSTER_KEY or DIR/cluster.key)",
    )
    p.add_argument("--dir", metavar="D", help="local cluster directory (default: .idunno)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of a table" if listing else "print JSON",
    )
