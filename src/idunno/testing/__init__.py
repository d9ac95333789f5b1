"""Test harnesses shipped with the package: a seeded simulator of many membership cores
(`idunno.testing.sim`) and helpers that run real `idunno node` processes on loopback
(`idunno.testing.procs`)."""

from idunno.testing.sim import NetConfig, SimCluster, SimNetwork

__all__ = ["NetConfig", "SimCluster", "SimNetwork"]
