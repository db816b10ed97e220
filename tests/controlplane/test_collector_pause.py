"""The collector paused around work whose objects all die when it ends: admission reviews, large
ones in a thread (`HeavyWork`, which also shortens the switch interval) and small ones on the event
loop (`CollectorPause`), and debug answers. The collector and the switch interval always come back,
and such work starts no full collection, which would walk the registry while everyone waits."""

from __future__ import annotations

import asyncio
import gc
import pathlib
import re
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from controlplane.aio import CollectorPause, HeavyWork
from tests.discovery.harness import SotwClient, node
from tests.e2e.test_stall_probe import CLUSTER, many_containers, many_services
from tests.helpers.serve import Running, admission_review, post_webhook, start_serve
from webhook.app import OFFLOAD_BYTES


def test_overlapping_holders_restore_the_collector_and_switch_interval_after_the_last() -> None:
    heavy, interval = HeavyWork(), sys.getswitchinterval()
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
    pause = (False, HeavyWork.SWITCH_INTERVAL)
    assert seen == [pause, pause, pause]
    assert gc.isenabled() and sys.getswitchinterval() == interval


def test_a_review_that_raises_still_restores_them() -> None:
    heavy, interval = HeavyWork(), sys.getswitchinterval()
    with pytest.raises(RuntimeError), heavy:
        raise RuntimeError("boom")
    assert gc.isenabled() and sys.getswitchinterval() == interval


def test_a_collector_disabled_before_stays_disabled() -> None:
    heavy = HeavyWork()
    gc.disable()
    try:
        with heavy:
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_pause_lasts_while_a_review_on_the_loop_or_in_a_thread_is_inside() -> None:
    pause = CollectorPause()
    heavy = HeavyWork(pause)
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


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


async def test_debug_answers_start_no_full_collection(tmp_path: pathlib.Path) -> None:
    """Ten config dumps of a proxy in a mesh of 1,000 Services (1.5 MB of JSON each, built and encoded
    in a worker thread) started 4 full collections before the pause."""
    running = start_serve(tmp_path)
    try:
        assert running.config_dir is not None
        (running.config_dir / "many.yaml").write_text(many_services(1_000))
        deadline = time.monotonic() + 60
        while "svc-999.many.svc.cluster.local" not in await asyncio.to_thread(
            get, f"{running.http_url}/debug/registryz"
        ):
            assert time.monotonic() < deadline, "the 1,000-service file was never applied"
            await asyncio.sleep(0.2)
        async with grpc.aio.insecure_channel(running.addr("grpc")) as channel:
            dumped = SotwClient(channel, node("dumped"))
            await dumped.request(CLUSTER, [])
            assert len((await dumped.recv(wait=60)).resources) > 1_000
            before = collections(running)
            for _ in range(10):
                assert "svc-999.many.svc.cluster.local" in get(
                    f"{running.http_url}/debug/config_dump?proxyID=dumped.default"
                )
            after = collections(running)
    finally:
        running.stop()
    started = {generation: after[generation] - before[generation] for generation in before}
    assert started["2"] == 0, started
