"""asyncio helpers shared by the process wiring."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskGroup:
    """Named, long-running background tasks; the first unexpected failure is kept for the caller.

    Unlike `asyncio.TaskGroup`, a finished task does not cancel the others by itself: `wait()`
    returns when any task ends (normally or not), and `cancel_all()` stops the rest.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if name in self._tasks:
            raise ValueError(f"task {name!r} already started")
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        return task

    async def wait_first(self, *extra: asyncio.Future[Any]) -> None:
        """Return when any task (or extra future) completes; log a task that failed."""
        if not self._tasks and not extra:
            return
        done, _ = await asyncio.wait([*self._tasks.values(), *extra], return_when=asyncio.FIRST_COMPLETED)
        for fut in done:
            if isinstance(fut, asyncio.Task) and fut in self._tasks.values() and not fut.cancelled():
                exc = fut.exception()
                if exc is not None:
                    log.error("task %s failed", fut.get_name(), exc_info=exc)
                else:
                    log.error("task %s ended unexpectedly", fut.get_name())

    async def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
