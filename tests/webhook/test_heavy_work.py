"""The collector paused around admission reviews: large ones in a thread (`_HeavyWork`, which also
shortens the switch interval), small ones on the event loop (`_CollectorPause`). Both always come
back, and the reviews on the loop start no collection that would walk the registry."""

from __future__ import annotations

import gc
import pathlib
import re
import sys
import threading
import urllib.request

import pytest

from tests.e2e.test_stall_probe import many_containers
from tests.helpers.serve import Running, admission_review, post_webhook, start_serve
from webhook.app import OFFLOAD_BYTES, _CollectorPause, _HeavyWork


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


def test_the_pause_lasts_while_a_review_on_the_loop_or_in_a_thread_is_inside() -> None:
    pause = _CollectorPause()
    heavy = _HeavyWork(pause)
    in_thread, release = threading.Event(), threading.Event()

    def large_review() -> None:
        with heavy:
            in_thread.set()
            release.wait(10)

    thread = threading.Thread(target=large_review)
    thread.start()
    try:
        assert in_thread.wait(10)
        with pause:  # a small review on the loop, started and ended while the large one runs
            assert not gc.isenabled()
        assert not gc.isenabled(), "the small review's end turned the collector back on under the large one"
    finally:
        release.set()
        thread.join(10)
    assert gc.isenabled()


def collections(running: Running) -> dict[str, float]:
    with urllib.request.urlopen(running.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'python_gc_collections_total\{generation="(\d)"\} (\S+)', text)
    return {generation: float(count) for generation, count in found}


def test_reviews_on_the_event_loop_start_no_full_collection(tmp_path: pathlib.Path) -> None:
    """A full collection walks everything the process holds (with a large registry, 100 ms and more
    in which xDS, the CA and `/ready` wait). 50 reviews of 53 KB pods on the loop started 3 of them
    and 405 smaller ones before the pause; a review's objects all die with it."""
    body = admission_review(many_containers(250))
    assert len(body) < OFFLOAD_BYTES  # reviewed on the event loop, not offloaded to a thread
    running = start_serve(tmp_path)
    try:
        before = collections(running)
        for _ in range(50):
            status, _ = post_webhook(running, body)
            assert status == 200
        after = collections(running)
    finally:
        running.stop()
    started = {generation: after[generation] - before[generation] for generation in before}
    assert started["2"] == 0 and sum(started.values()) < 10, started
