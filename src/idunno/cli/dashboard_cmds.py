"""`idunno dashboard [--ttl 12h] [--open]`: print a link to the web dashboard of the node we talk
to, signed in with a freshly minted token in the URL fragment (`#token=...`: the browser keeps
it and never sends it to the node, so it lands in no server log)."""

from __future__ import annotations

import argparse
import json
import re
import time
import webbrowser
from collections.abc import Callable

from idunno.client import Client
from idunno.transport import tokens

ClientFactory = Callable[[argparse.Namespace], Client]
AddParser = Callable[..., argparse.ArgumentParser]
DEFAULT_TTL = "12h"
MIN_TTL_S = 60
MAX_TTL_S = 30 * 86400
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TTL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")


class DashboardUsage(ValueError):
    """A bad argument (one line, exit 2)."""


def parse_ttl(text: str) -> int:
    """'90s', '30m', '12h', '7d' or plain seconds -> seconds (1 minute to 30 days)."""
    m = _TTL.match(text.strip().lower())
    if not m:
        raise DashboardUsage(f"--ttl {text!r} is not a duration: use e.g. 30m, 12h or 7d")
    seconds = int(float(m.group(1)) * _UNITS[m.group(2)])
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise DashboardUsage(f"--ttl must be from 1 minute to 30 days, got {text!r}")
    return seconds


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def dashboard_url(at: str, token: str) -> str:
    host, _, port = at.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}/#token={token}"


def cmd_dashboard(args: argparse.Namespace, client: ClientFactory) -> int:
    ttl = parse_ttl(args.ttl)
    c = client(args)
    me = c.self_info()  # the node answers and accepts the key: the link will work
    token = tokens.mint(c.key, ttl=ttl)
    expires_at = int(token.split(".")[1])
    url = dashboard_url(c.at, token)
    if args.json:
        out = {"url": url, "node": me["id"], "at": c.at, "expires_at": expires_at, "ttl_s": ttl}
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(expires_at)).strip()
        print(f"Dashboard of node {me['id']} at {c.at}:\n")
        print(f"  {url}\n")
        print(
            f"The token in the link expires at {when} (in {_human(ttl)}); until then the link "
            "opens the dashboard and the whole API, so share it like the cluster key."
        )
    if args.open:
        opened = False
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if not opened:
            print("could not start a browser here: open the link above yourself")
    return 0


def register(add: AddParser, client: ClientFactory) -> None:
    p = add(
        "dashboard",
        lambda args: cmd_dashboard(args, client),
        "print a link to the node's web dashboard, signed in with a fresh token",
    )
    p.add_argument(
        "--ttl",
        default=DEFAULT_TTL,
        metavar="DURATION",
        help=f"how long the link's token works: 30m, 12h, 7d ... (default {DEFAULT_TTL})",
    )
    p.add_argument("--open", action="store_true", help="also open the link in a browser")
