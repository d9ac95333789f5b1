"""SDFS: the replicated, versioned file store."""
