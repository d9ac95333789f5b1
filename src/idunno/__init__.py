"""IDUNNO: a fair, fault-tolerant distributed inference cluster.

`idunno.Client` is the Python client (members, files, models, datasets, jobs); the CLI is
built on it. `idunno.Client.local()` talks to the cluster `idunno up` started.
"""

from idunno.client import Client, ClientError

__version__ = "0.1.0"
__all__ = ["Client", "ClientError", "__version__"]
