"""CLI commands of the store (the course's MP3): put, get, delete, ls, store, get-versions."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from idunno.cli.progress import Progress
from idunno.cli.render import format_time, human_size, table
from idunno.client import Client
from idunno.store.names import InvalidName, validate

ClientFactory = Callable[[argparse.Namespace], Client]


class LocalFileError(Exception):
    pass


def cmd_put(args: argparse.Namespace, client: Client) -> int:
    local = Path(args.local)
    if not local.is_file():
        raise LocalFileError(f"no such local file: {local} (check the path)")
    validate(args.name)
    size = local.stat().st_size
    t0 = time.monotonic()

    def attempt() -> dict[str, Any]:
        bar = Progress(f"put {args.name}", size)
        try:
            return client.put(local, args.name, progress=bar)
        finally:
            bar.close()

    out = attempt()
    took = time.monotonic() - t0
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(
            f"put {args.name}: version {out['version']}, {human_size(out['size'])}, "
            f"on {', '.join(out['replicas'])} ({took:.2f} s)"
        )
    return 0


def cmd_get(args: argparse.Namespace, client: Client) -> int:
    validate(args.name)
    local = Path(args.local)
    if local.is_dir():
        raise LocalFileError(f"{local} is a folder: give a file path to write")
    if not local.parent.exists():
        raise LocalFileError(f"folder {local.parent} does not exist: create it first")
    t0 = time.monotonic()

    def attempt() -> dict[str, Any]:
        bar = Progress(f"get {args.name}", 0)
        bar.enabled = False
        return client.get(args.name, local, args.version, progress=bar)

    out = attempt()
    if args.json:
        print(json.dumps({**out, "local": str(local)}, indent=2, sort_keys=True))
    else:
        took = time.monotonic() - t0
        print(
            f"got {args.name} version {out['version']} ({human_size(out['size'])}) "
            f"-> {local} ({took:.2f} s)"
        )
    return 0


def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    validate(args.name)
    out = client.delete(args.name)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"deleted {args.name} (every version)")
    return 0


def cmd_ls(args: argparse.Namespace, client: Client) -> int:
    if args.name is not None:
        validate(args.name)
    out = client.ls(args.name)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    if args.name is not None:
        rows = [
            [h["node"], ", ".join(str(v) for v in sorted(h["versions"], reverse=True)) or "-"]
            for h in out["holders"]
        ]
        print(table(["NODE", "VERSIONS (newest first)"], rows))
        return 0
    rows = [
        [
            f["name"],
            str(f["version"]),
            human_size(f["size"]),
            str(f["replicas"]),
            format_time(f["created_at"]),
        ]
        for f in out["files"]
    ]
    print(table(["NAME", "VERSION", "SIZE", "REPLICAS", "WRITTEN"], rows))
    if not rows:
        print("(no files yet: add one with `idunno put LOCAL NAME`)")
    return 0


def cmd_store(args: argparse.Namespace, client: Client) -> int:
    out = client.store()
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    rows = [
        [
            f["name"],
            ", ".join(str(v) for v in reversed(f["versions"])) or "-",
            human_size(f["size"]),
        ]
        for f in out["files"]
        if f["versions"]
    ]
    files = "file" if len(rows) == 1 else "files"
    print(f"node {out['node']} holds {len(rows)} {files}, {human_size(out['bytes'])}:")
    print(table(["NAME", "VERSIONS (newest first)", "SIZE (newest)"], rows))
    return 0


def delimiter(name: str, v: dict[str, Any]) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(v["created_at"]))
    stamp += f".{int(v['created_at'] % 1 * 1000):03d}Z"
    return (
        f"==> idunno {name} version {v['version']} size {v['size']} bytes written {stamp} <==\n"
    ).encode()


def cmd_get_versions(args: argparse.Namespace, client: Client) -> int:
    validate(args.name)
    if args.count < 1:
        raise InvalidName(f"N must be at least 1, got {args.count}")
    local = Path(args.local)
    versions = client.versions(args.name)[: args.count]
    tmp = local.with_name(f".{local.name}.idunno-part")
    parts = []
    try:
        with open(tmp, "wb") as out:
            for v in versions:
                piece = local.with_name(f".{local.name}.v{v['version']}.idunno-part")
                try:
                    got = client.get(args.name, piece, v["version"])
                    out.write(delimiter(args.name, got))
                    with open(piece, "rb") as f:
                        while chunk := f.read(1 << 20):
                            out.write(chunk)
                    out.write(b"\n")
                finally:
                    piece.unlink(missing_ok=True)
                parts.append(v["version"])
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    if args.json:
        print(json.dumps({"name": args.name, "versions": parts, "local": str(local)}))
    else:
        listed = ", ".join(str(p) for p in parts)
        noun = "version" if len(parts) == 1 else "versions"
        print(f"wrote {len(parts)} {noun} of {args.name} ({listed}) to {local}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser], client: ClientFactory) -> None:
    def bind(fn: Callable[[argparse.Namespace, Client], int]) -> Callable[..., int]:
        return lambda args: fn(args, client(args))

    p = add("put", bind(cmd_put), "upload LOCAL as the next version of NAME")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("name", metavar="NAME")
    p = add("get", bind(cmd_get), "download NAME (newest version, or --version V) to LOCAL")
    p.add_argument("name", metavar="NAME")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("--version", type=int, metavar="V", help="a specific version")
    p = add("delete", bind(cmd_delete), "delete NAME and every version of it")
    p.add_argument("name", metavar="NAME")
    p = add(
        "ls", bind(cmd_ls), "every file in the cluster, or the nodes holding NAME", listing=True
    )
    p.add_argument("name", metavar="NAME", nargs="?")
    add("store", bind(cmd_store), "the files held on one node (--at NODE)", listing=True)
    p = add(
        "get-versions",
        bind(cmd_get_versions),
        "the newest N versions of NAME in one LOCAL file, newest first, with delimiters",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("count", metavar="N", type=int)
    p.add_argument("local", metavar="LOCAL")
