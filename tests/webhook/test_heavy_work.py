"""`_HeavyWork`, around large admission reviews: the collector and the switch interval always come back."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from webhook.app import _HeavyWork


def test_overlapping_holders_restore_the_collector_and_switch_interval_after_the_last() -> None:
    heavy, interval = _HeavyWork(), sys.getswitchinterval()
    assert gc.isenabled()
    first_inside, second_done, release_first = threading.Event(), threading.Event(), threading.Event()
    seen: list[tuple[bool, float]] = []

    def first() -> None:
        with heavy:
            first_inside.set()
            release_first.wait(10)
            seen.append((gc.isenabled(), sys.getswitchinterval()))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_inside.wait(10)
        with heavy:  # the second holder leaves first: the pause must last until the first leaves too
            seen.append((gc.isenabled(), sys.getswitchinterval()))
        second_done.set()
        seen.append((gc.isenabled(), sys.getswitchinterval()))
    finally:
        release_first.set()
        thread.join(10)
    pause = (False, _HeavyWork.SWITCH_INTERVAL)
    assert seen == [pause, pause, pause]
    assert gc.isenabled() and sys.getswitchinterval() == interval


def test_a_review_that_raises_still_restores_them() -> None:
    heavy, interval = _HeavyWork(), sys.getswitchinterval()
    with pytest.raises(RuntimeError), heavy:
        raise RuntimeError("boom")
    assert gc.isenabled() and sys.getswitchinterval() == interval


def test_a_collector_disabled_before_stays_disabled() -> None:
    heavy = _HeavyWork()
    gc.disable()
    try:
        with heavy:
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
