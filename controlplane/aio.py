"""asyncio helpers shared by the process wiring."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import sys
import threading
from collections.abc import Coroutine, Hashable
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


class TurnBudget:
    """Spreads the synchronous work that many tasks are ready to do over turns of the event loop.

    asyncio runs every callback that is ready before it looks at its sockets again, so a hundred
    streams each handed a 10,000-name request in the same turn hold the loop for all hundred, and a
    `/ready` poll or a CSR waits behind them. A task calls `take(cost, owner)` before work of about
    `cost` units that will not await: it starts at once while the units started in this turn stay
    within `per_turn` (one piece always, however large) and nobody waits; otherwise it waits for a
    later turn, and whatever else became ready runs in between. Waiting work is started owner by
    owner in turn (each owner's in arrival order, pieces that continue started work first), so an
    owner (a client address) with a hundred pieces waiting delays another's next piece by one piece,
    not by a hundred. A turn may run up to
    twice `per_turn` (the pieces granted to it and those that found room), so `per_turn` is half of
    what one turn may cost.
    """

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self._taken = 0  # units started in the current turn
        # each owner's waiting pieces; the dict's order is the order owners are served in
        # (granted, cost, resumed): resumed pieces first, each kind in arrival order
        self._waiting: dict[Hashable, collections.deque[tuple[asyncio.Future[None], int, bool]]] = {}
        self._turn_scheduled = False

    @property
    def waiting(self) -> int:
        return sum(1 for queue in self._waiting.values() for granted, _, _ in queue if not granted.done())

    async def take(self, cost: int, owner: Hashable = None, *, resume: bool = False) -> None:
        """`resume`: the piece continues work the caller already started (the next piece of a large
        answer): it goes before the owner's other waiting pieces, so an owner's work is finished one
        piece of work after another rather than all of it at once (and its partial results are held
        for one, not for all)."""
        if not self._waiting and self._fits(cost):
            self._spend(cost)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(owner, collections.deque())
        if resume:  # after the owner's other resumed pieces, before its new ones
            queue.insert(next((i for i, entry in enumerate(queue) if not entry[2]), len(queue)), (granted, cost, True))
        else:
            queue.append((granted, cost, False))
        self._schedule()
        await granted  # cancelled while waiting: `_next_turn` drops it

    def _fits(self, cost: int) -> bool:
        return self._taken == 0 or self._taken + cost <= self.per_turn

    def _spend(self, cost: int) -> None:
        self._taken += cost
        self._schedule()

    def _schedule(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)  # runs in the loop's next turn

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        self._taken = 0
        while self._waiting:
            owner, queue = next(iter(self._waiting.items()))
            granted, cost, _ = queue[0]
            if not granted.done() and not self._fits(cost):
                break
            queue.popleft()
            del self._waiting[owner]
            if queue:
                self._waiting[owner] = queue  # to the back: the other owners go first
            if not granted.done():  # (done: its task was cancelled)
                self._taken += cost
                granted.set_result(None)
        if self._taken:
            # The next turn is scheduled after the granted tasks' wake-ups: one that continues its work
            # (`resume`) has queued its next piece by the time the next turn is shared out.
            self._schedule()


class CollectorPause:
    """While at least one holder, in any thread, is inside: automatic garbage collection off; once
    the last one leaves, as it was before the first came in. For work that builds many objects which
    all die, freed by reference counting, when it ends: an admission review (a pod's JSON, its
    injected copy, the patch), a debug answer, a config file's parse in its worker process.

    With the collector on, such work starts collections that find its objects still alive and move
    them to older generations, until a full collection walks everything the process holds, the
    registry included, while the event loop waits. Measured: 150 reviews of 53 KB pods on the event
    loop, completing at once with 10,000 Pods and 10,000 endpoints in the registry, held `/ready`
    127-153 ms and took 2.30-2.46 s; with the collector paused during each review, 79-108 ms and
    1.74-2.11 s (50 such reviews had started 3 full collections and 405 smaller ones). Cyclic garbage
    made elsewhere meanwhile waits for the next collection after the pause."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._was_enabled:
                gc.enable()


class HeavyWork:
    """For such work in a worker thread: while at least one holder is inside (thread-safe), the
    collector paused (`collector`, shared with work on the event loop), and the GIL handed between
    threads every 0.5 ms instead of 5 ms, so the event loop keeps its turns.

    A large pod is about a million short-lived objects. With the collector on, a review of one
    started full collections that walked them all, each holding the GIL (and so the event loop) for
    up to 100 ms, and doubled the review's time (a 2.6 MB pod: 850 ms, 450 ms paused). The event
    loop gives up the GIL at each system call and waits a whole switch interval for it back;
    answering `/ready` takes several such calls."""

    SWITCH_INTERVAL = 0.0005

    def __init__(self, collector: CollectorPause | None = None) -> None:
        self._collector = collector if collector is not None else CollectorPause()
        self._lock = threading.Lock()
        self._holders = 0
        self._switch_interval = sys.getswitchinterval()

    def __enter__(self) -> None:
        self._collector.__enter__()
        with self._lock:
            if self._holders == 0:
                self._switch_interval = sys.getswitchinterval()
                sys.setswitchinterval(self.SWITCH_INTERVAL)
            self._holders += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                sys.setswitchinterval(self._switch_interval)
        self._collector.__exit__()


COLLECTOR_PAUSE = CollectorPause()  # one per process: work in threads and on the loop overlaps
HEAVY_WORK = HeavyWork(COLLECTOR_PAUSE)
