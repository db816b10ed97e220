"""Debouncing with non-zero windows: a burst becomes one push once it has been quiet for `quiet`
seconds, or `max_delay` after its first change at the latest.

The debouncer reads `time.monotonic()`; the tests give it a clock they move by hand and wait
until it has looked at the clock again, so every assertion is about debouncer time, never
about how long the machine took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

import pytest

from controlplane.model.registry import ConfigUpdate, ModelChange, UpdateKind
from discovery import pushqueue
from discovery.pushqueue import Debouncer, PushRequest
from discovery.service import debounce_from_env

HANG_GUARD = 20.0  # seconds; only so that a broken debouncer fails the test instead of hanging it


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.read = asyncio.Event()  # set whenever someone reads the clock

    def monotonic(self) -> float:
        self.read.set()
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(pushqueue, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def change(host: str) -> PushRequest:
    return PushRequest.from_change(
        ModelChange(updates=frozenset({ConfigUpdate(UpdateKind.ENDPOINTS, host)}), version=1), now=0.0
    )


class Run:
    def __init__(self, debouncer: Debouncer, clock: Clock, emitted: list[tuple[float, PushRequest]]) -> None:
        self.debouncer, self.clock, self.emitted = debouncer, clock, emitted

    async def at(self, when: float, add: str | None = None) -> None:
        """Move the clock to `when` (adding a change then, if given) and wait until the debouncer has read it."""
        self.clock.now = when
        if add is not None:
            self.debouncer.add(change(add))
        self.clock.read.clear()
        await self.clock.read.wait()


@pytest.fixture
async def start(clock: Clock) -> AsyncIterator[Callable[..., Run]]:
    tasks: list[asyncio.Task[None]] = []

    def make(*, quiet: float, max_delay: float) -> Run:
        emitted: list[tuple[float, PushRequest]] = []
        observed: list[tuple[float, PushRequest]] = []

        def emit(request: PushRequest) -> None:
            emitted.append((clock.now, request))

        debouncer = Debouncer(
            quiet=quiet, max_delay=max_delay, emit=emit, observe=lambda delay, req: observed.append((delay, req))
        )
        debouncer.observed = observed  # type: ignore[attr-defined]
        tasks.append(asyncio.create_task(debouncer.run()))
        return Run(debouncer, clock, emitted)

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_burst_is_pushed_once_when_it_has_been_quiet_long_enough(start: Callable[..., Run]) -> None:
    run = start(quiet=0.25, max_delay=1.0)
    async with asyncio.timeout(HANG_GUARD):
        await run.at(1.0, add="a")
        await run.at(1.125, add="b")  # restarts the quiet period: now due at 1.375
        for when in (1.25, 1.3125):
            await run.at(when)
            assert run.emitted == []
        await run.at(1.375)
    assert [(t, r.of_kind(UpdateKind.ENDPOINTS)) for t, r in run.emitted] == [(1.375, {"a", "b"})]
    # the debounce-time metric: how long the first change waited
    assert [(d, r.of_kind(UpdateKind.ENDPOINTS)) for d, r in run.debouncer.observed] == [(0.375, {"a", "b"})]  # type: ignore[attr-defined]


async def test_a_change_that_never_quietens_is_pushed_at_the_maximum_delay(start: Callable[..., Run]) -> None:
    run = start(quiet=0.25, max_delay=0.5)
    async with asyncio.timeout(HANG_GUARD):
        for step in range(4):  # a change every 0.125 s: never quiet for 0.25 s
            await run.at(step * 0.125, add=f"h{step}")
            assert run.emitted == []
        await run.at(0.5, add="h4")
    assert [(t, len(r.of_kind(UpdateKind.ENDPOINTS))) for t, r in run.emitted] == [(0.5, 5)]


async def test_the_next_burst_gets_its_own_windows(start: Callable[..., Run]) -> None:
    run = start(quiet=0.25, max_delay=1.0)
    async with asyncio.timeout(HANG_GUARD):
        await run.at(0.0, add="a")
        await run.at(0.25)
        await run.at(10.0, add="b")
        await run.at(10.125)
        assert len(run.emitted) == 1
        await run.at(10.25)
    assert [(t, r.of_kind(UpdateKind.ENDPOINTS)) for t, r in run.emitted] == [(0.25, {"a"}), (10.25, {"b"})]


def test_a_negative_quiet_time_is_refused_even_with_a_valid_maximum() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Debouncer(quiet=-0.1, max_delay=1.0, emit=lambda _request: None)


@pytest.mark.parametrize("value", ["nans", "infs", "-infms", "1_0ms", "\u0661\u0660ms", "1e400s"])
def test_a_debounce_time_that_float_reads_but_is_no_duration_is_refused_naming_the_variable(value: str) -> None:
    """float() reads "nan" and "inf": a NaN quiet time compares false with everything, so the wait it
    gives the loop is undefined; an infinite one never pushes."""
    with pytest.raises(ValueError, match=f"PILOT_DEBOUNCE_AFTER: '{value}' is not a duration"):
        debounce_from_env({"PILOT_DEBOUNCE_AFTER": value})


@pytest.mark.parametrize(("value", "seconds"), [("1.5s", 1.5), ("1m30s", 90.0), ("250000us", 0.25), ("0", 0.0)])
def test_a_debounce_time_is_any_go_duration_as_istio_reads_it(value: str, seconds: float) -> None:
    assert debounce_from_env({"PILOT_DEBOUNCE_MAX": value})[1] == seconds
