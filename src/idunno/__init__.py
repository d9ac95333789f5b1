"""IDUNNO: a fair, fault-tolerant distributed inference cluster."""

__version__ = "0.1.0"
