"""Ask many members at once and go on as soon as enough have answered: a member that is paused
(SIGSTOP) or cut off but not yet declared failed must not hold every put and read up for a
whole call timeout when a quorum has already answered."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

T = TypeVar("T")

GRACE_S = 0.1  # once a quorum has answered, how long the others still get


async def quorum_answers(
    calls: Mapping[str, Awaitable[T | None]],
    need: int,
    grace: float = GRACE_S,
    counts: Callable[[T], bool] = lambda _answer: True,
) -> dict[str, T]:
    """member -> answer of every call that answered (a None result means no answer), returned
    when all have ended, or `grace` seconds after the `need`-th answer that `counts` (a grant,
    say, not a refusal); the calls still going then are cancelled. Exceptions propagate."""
    loop = asyncio.get_running_loop()
    tasks: dict[asyncio.Future[T | None], str] = {
        asyncio.ensure_future(call): member for member, call in calls.items()
    }
    answers: dict[str, T] = {}
    counted = 0
    pending: set[asyncio.Future[T | None]] = set(tasks)
    deadline: float | None = None
    try:
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break  # the grace is over
            for task in done:
                answer = task.result()
                if answer is not None:
                    answers[tasks[task]] = answer
                    counted += counts(answer)
            if deadline is None and counted >= need:
                deadline = loop.time() + grace
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return {member: answers[member] for member in calls if member in answers}
