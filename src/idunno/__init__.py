"""IDUNNO: a fair, fault-tolerant distributed inference cluster.

`idunno.Client` is the Python client (members, files, models, datasets, jobs); the CLI is
built on it. `idunno.Client.local()` talks to the cluster `idunno up` started.
`idunno.AsyncClient` has the same calls as coroutines, for asyncio programs.
"""

from typing import TYPE_CHECKING, Any

from idunno.client import Client, ClientError

if TYPE_CHECKING:
    from idunno.async_client import AsyncClient


def __getattr__(name: str) -> Any:
    # aiohttp's client is imported only by programs that use it, not by every CLI command.
    if name == "AsyncClient":
        from idunno.async_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'idunno' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "ClientError", "__version__"]
