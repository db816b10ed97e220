"""TurnBudget: work that many tasks are ready to start together is spread over event-loop turns."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

from controlplane.aio import TurnBudget


class Turns:
    """Counts the event loop's turns: a callback that reschedules itself runs once per turn."""

    def __init__(self) -> None:
        self.now = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.now += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


@pytest.fixture
def turns() -> Iterator[Turns]:
    counter = Turns()
    yield counter
    counter.stop()


async def started_at(budget: TurnBudget, turns: Turns, costs: list[int]) -> list[int]:
    """Start one task per cost in the same turn; the turn in which each one's work began."""
    began: dict[int, int] = {}

    async def work(i: int, cost: int) -> None:
        await budget.take(cost)
        began[i] = turns.now

    turns.start()
    await asyncio.gather(*(work(i, cost) for i, cost in enumerate(costs)))
    first = min(began.values())
    return [began[i] - first for i in range(len(costs))]


async def test_small_pieces_share_a_turn_until_it_is_full(turns: Turns) -> None:
    budget = TurnBudget(100)
    began = await started_at(budget, turns, [40, 40, 40, 40, 40])
    assert began[0] == began[1]  # two fit in a turn
    assert began == sorted(began)  # in arrival order
    assert max(Counter(began).values()) == 2  # never three (120 units) in one turn


async def test_a_piece_larger_than_a_turn_runs_alone_and_the_rest_wait_in_order(turns: Turns) -> None:
    budget = TurnBudget(100)
    began = await started_at(budget, turns, [10_000, 10_000, 10_000, 10])
    assert began[0] == 0
    assert began[0] < began[1] < began[2] < began[3]  # one heavy piece per turn, in arrival order


async def test_other_callbacks_run_between_heavy_pieces() -> None:
    budget = TurnBudget(100)
    log: list[str] = []

    async def heavy(i: int) -> None:
        await budget.take(1_000)
        log.append(f"heavy-{i}")

    tasks = [asyncio.create_task(heavy(i)) for i in range(5)]
    await asyncio.sleep(0)  # every task has taken its place
    asyncio.get_running_loop().call_soon(log.append, "ready-poll")  # e.g. a /ready request arriving
    await asyncio.gather(*tasks)
    assert log.index("ready-poll") <= 2  # not behind all five


async def test_owners_take_turns_so_one_owners_backlog_does_not_delay_another() -> None:
    budget = TurnBudget(100)
    order: list[str] = []

    async def work(owner: str, i: int) -> None:
        await budget.take(1_000, owner)
        order.append(f"{owner}{i}")

    flood = [asyncio.create_task(work("a", i)) for i in range(6)]
    other = asyncio.create_task(work("b", 0))  # asks after all of a's
    await asyncio.gather(*flood, other)
    assert order == ["a0", "a1", "b0", "a2", "a3", "a4", "a5"]  # a0 ran at once; then a and b alternate


async def test_work_already_started_goes_before_an_owners_new_work() -> None:
    """A large answer is generated in pieces: its next piece goes before the same client's answers not
    started yet, so the client's answers finish one after another (the first soon, and one answer's
    partial result held at a time) rather than all of them at the end. Between owners, turns alternate."""
    budget = TurnBudget(100)
    order: list[str] = []

    async def answer(owner: str, i: int, pieces: int) -> None:
        for piece in range(pieces):
            await budget.take(1_000, owner, resume=piece > 0)
            order.append(f"{owner}{i}.{piece}")

    tasks = [asyncio.create_task(answer("a", i, 3)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(answer("b", 0, 2)))
    await asyncio.gather(*tasks)
    mine = [step for step in order if step.startswith("a")]
    assert mine == ["a0.0", "a0.1", "a0.2", "a1.0", "a1.1", "a1.2", "a2.0", "a2.1", "a2.2"]
    assert order.index("b0.0") <= 3  # not behind all of a's pieces


async def test_pieces_resumed_together_keep_their_order() -> None:
    """Pieces granted in the same turn resume in the order they started, ahead of new work."""
    budget = TurnBudget(100)
    order: list[str] = []

    async def answer(i: int) -> None:
        await budget.take(30)  # the three first pieces fit in one turn
        await budget.take(1_000, resume=True)
        order.append(f"{i}")

    await budget.take(1_000)  # this turn is full: what follows waits
    tasks = [asyncio.create_task(answer(i)) for i in range(3)]
    newcomer = asyncio.create_task(budget.take(1_000))
    newcomer.add_done_callback(lambda _: order.append("new"))
    await asyncio.gather(*tasks, newcomer)
    assert order == ["0", "1", "2", "new"]


async def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    budget = TurnBudget(100)
    done: list[int] = []

    async def work(i: int) -> None:
        await budget.take(1_000)
        done.append(i)

    tasks = [asyncio.create_task(work(i)) for i in range(4)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert done == [0, 2, 3]
    assert budget.waiting == 0
    await budget.take(1_000)  # nothing is left holding the budget
