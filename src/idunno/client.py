"""Synchronous HTTP client for a node's /v1 API (the CLI is built on it).

Every failure surfaces as ClientError with a one-line message naming the cause and the fix.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from idunno.transport import tokens


class ClientError(Exception):
    pass


class Client:
    def __init__(self, at: str, key: bytes, timeout: float = 5.0) -> None:
        self.at = at
        self._key = key
        self.timeout = timeout

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(f"http://{self.at}{path}", data=body, method=method)
        req.add_header("Authorization", f"Bearer {tokens.mint(self._key, ttl=300)}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ClientError(self._http_error(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(self._unreachable(reason)) from None

    def _http_error(self, exc: urllib.error.HTTPError) -> str:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        if exc.code == 401:
            return f"node at {self.at} refused our credentials: {detail or 'unauthorized'}"
        return f"node at {self.at} answered {exc.code}: {detail or exc.reason}"

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, socket.timeout | TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = str(reason)
        return (
            f"cannot reach a node at {self.at} ({why}): is it running? "
            "Start a local cluster with `idunno up` or pass --at HOST:PORT"
        )

    def members(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/v1/members")
        return out

    def self_info(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/v1/self")
        return out

    def leave(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("POST", "/v1/leave", b"")
        return out
