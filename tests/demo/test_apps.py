"""The demo's tiny apps as real processes: counting, echoing the caller's certificate, stopping cleanly."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest

from controlplane.demo.apps import GREETER_METHOD
from controlplane.demo.stats import AppStats, read_stats
from tests.demo.helpers import free_plan
from tests.e2e.envoyproxy import wait_for

XFCC = (
    'By=spiffe://cluster.local/ns/demo/sa/reviews;Hash=ab12;Subject="";URI=spiffe://cluster.local/ns/demo/sa/frontend'
)

Start = Callable[..., tuple[subprocess.Popen[bytes], pathlib.Path]]


@pytest.fixture
def start_app(tmp_path: pathlib.Path) -> Iterator[Start]:
    """Start `python -m controlplane.demo.apps ROLE --name NAME --stats FILE ...`; killed at the end if running."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(role: str, name: str, *args: str) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
        stats = tmp_path / f"{name}.json"
        log = (tmp_path / f"{name}.log").open("wb")
        cmd = [sys.executable, "-m", "controlplane.demo.apps", role, "--name", name, "--stats", str(stats), *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        wait_for(lambda: stats.exists() or proc.poll() is not None, timeout=30, what=f"{name} to start")
        assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
        return proc, stats

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def stop(proc: subprocess.Popen[bytes], stats: pathlib.Path) -> AppStats:
    """SIGTERM the app; it must exit 0 and leave its final counters."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    final = read_stats(stats)
    assert final is not None
    return final


def counters(stats: pathlib.Path) -> AppStats:
    found = read_stats(stats)
    assert found is not None
    return found


def test_frontend_counts_every_request_to_a_dead_backend_as_failed(start_app: Start) -> None:
    plan = free_plan()
    dead = f"{plan.loopback(1)}:9080"  # nothing listens there
    proc, stats = start_app(
        "frontend",
        "frontend",
        "--listen", f"{plan.loopback(1)}:8080",
        "--target", dead,
        "--host", "reviews.demo.svc.cluster.local",
        "--rps", "50",
    )  # fmt: skip
    wait_for(lambda: counters(stats).failed >= 10, timeout=30, what="failures to be counted")
    final = stop(proc, stats)
    assert final.sent == final.failed >= 10
    assert final.backends == {} and final.p50_ms is None
    assert dict(final.errors) == {f"cannot connect to {dead}: connection refused": final.failed}


def test_reviews_echoes_the_callers_certificate_and_frontend_counts_who_answered(start_app: Start) -> None:
    plan = free_plan()
    reviews_addr = f"{plan.loopback(2)}:9080"
    reviews, reviews_stats = start_app("reviews", "reviews-v2", "--listen", reviews_addr, "--version", "v2")

    request = urllib.request.Request(f"http://{reviews_addr}/reviews", headers={"X-Forwarded-Client-Cert": XFCC})
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert (answer["workload"], answer["version"], answer["xfcc"]) == ("reviews-v2", "v2", XFCC)

    frontend, frontend_stats = start_app(
        "frontend",
        "frontend",
        "--listen", f"{plan.loopback(1)}:8080",
        "--target", reviews_addr,
        "--host", "reviews.demo.svc.cluster.local",
        "--rps", "50",
    )  # fmt: skip
    wait_for(lambda: counters(frontend_stats).sent >= 10, timeout=30, what="frontend requests")
    sent = stop(frontend, frontend_stats)
    served = stop(reviews, reviews_stats)
    assert sent.failed == 0 and sent.backends == {"v2": sent.sent}
    assert sent.p50_ms is not None and sent.p99_ms is not None and sent.p50_ms <= sent.p99_ms
    assert served.served == sent.sent + 1
    assert served.peers == {"spiffe://cluster.local/ns/demo/sa/frontend": 1, "(no client certificate)": sent.sent}


def test_greeter_answers_with_its_name_and_the_callers_certificate(start_app: Start) -> None:
    address = f"{free_plan().loopback(3)}:7070"
    proc, stats = start_app("greeter", "greeter", "--listen", address)
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(GREETER_METHOD, request_serializer=None, response_deserializer=None)
        reply = json.loads(call(b"client-1", timeout=10, metadata=(("x-forwarded-client-cert", XFCC),)))
    assert (reply["workload"], reply["hello"], reply["xfcc"]) == ("greeter", "client-1", XFCC)
    final = stop(proc, stats)
    assert final.served == 1 and final.peers == {"spiffe://cluster.local/ns/demo/sa/frontend": 1}


def test_an_app_that_cannot_listen_says_where(start_app: Start, tmp_path: pathlib.Path) -> None:
    address = f"{free_plan().loopback(3)}:7070"
    first, _ = start_app("greeter", "greeter", "--listen", address)
    second = subprocess.run(
        [sys.executable, "-m", "controlplane.demo.apps", "greeter", "--name", "again", "--stats",
         str(tmp_path / "again.json"), "--listen", address],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert second.returncode == 1
    assert f"greeter again: cannot listen on {address} (in use?)" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None
