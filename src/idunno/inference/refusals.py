"""Fragments of a worker's 503 messages that the coordinator acts on (the reply carries only a
one-line message, so both sides name the fragment here rather than repeat the text)."""

from typing import Final

NO_INFERENCE: Final = "takes no inference work"  # --inference-threads 0: never give it work
EXECUTOR_LOST: Final = "executor failed"  # restarting: its models are loading again
