"""Shared fixtures for the agent's tests: a loopback address of its own, short paths, supervised Envoys.

Each test gets a random 127.x.y.z address on which Envoy's fixed ports (15000, 15020, 15021, 15090)
are free, so tests run next to each other and next to other Envoys. Every Envoy started through
`supervise` is stopped after the test, and any process still using its bootstrap is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from controlplane.agent.bootstrap import BootstrapParams
from controlplane.agent.envoy import EnvoySupervisor

ENVOY = pathlib.Path(sys.executable).parent / "envoy"
FIXED_PORTS = (15000, 15020, 15021, 15090)
T = TypeVar("T")


def _free_on(address: str, ports: tuple[int, ...]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def pick_loopback() -> str:
    """A 127.x.y.z address on which Envoy's and the agent's fixed ports are free right now."""
    rng = random.SystemRandom()
    for _ in range(100):
        address = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if _free_on(address, FIXED_PORTS):
            return address
    raise AssertionError("no free loopback address found")


@pytest.fixture
def loopback() -> str:
    return pick_loopback()


@functools.cache
def _refusing_socket() -> socket.socket:
    """Bound to a port on the wildcard address and never listening, for the rest of the test run: no
    program can listen on that port on any local address, so connecting there is always refused."""
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    return holder


def refused_port() -> int:
    """A port where connections to any local address are refused for the whole test run."""
    return int(_refusing_socket().getsockname()[1])


@pytest.fixture
def workdir() -> Iterator[pathlib.Path]:
    """A short directory (Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="mp-agent-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def params(address: str, workdir: pathlib.Path, **overrides: Any) -> BootstrapParams:
    values: dict[str, Any] = {
        "node_id": f"sidecar~{address}~app-1.shop~shop.svc.cluster.local",
        "cluster": "app.shop",
        "metadata": {"NAMESPACE": "shop", "SERVICE_ACCOUNT": "app", "LABELS": {"app": "app"}},
        "discovery_address": f"{address}:{refused_port()}",  # nothing listens there
        "istiod_san": "istiod.istio-system.svc",
        "sds_socket": str(workdir / "sds.sock"),
        "loopback_address": address,
        "bind_address": address,
    }
    values.update(overrides)
    return BootstrapParams(**values)


async def wait_until(check: Callable[[], Awaitable[T | None]], *, what: str, within: float = 30.0) -> T:
    """Await `check()` until it returns something truthy; fail naming `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def our_envoys(bootstrap: pathlib.Path) -> list[int]:
    """Pids of Envoy processes running with this bootstrap file."""
    out = subprocess.run(["pgrep", "-f", f"envoy.* -c {bootstrap}"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in out.stdout.split()]


Supervise = Callable[..., Awaitable[EnvoySupervisor]]


@pytest.fixture
async def supervise() -> AsyncIterator[Supervise]:
    """`await supervise(bootstrap=..., admin_url=..., **kwargs)` starts `EnvoySupervisor.run()` in a task.

    Small backoffs and drain times unless given. After the test: drain_and_stop, cancel, and kill
    any process left with one of the bootstraps.
    """
    started: list[tuple[EnvoySupervisor, asyncio.Task[None]]] = []

    async def start(**kwargs: Any) -> EnvoySupervisor:
        defaults: dict[str, Any] = {
            "binary": ENVOY,
            "concurrency": 1,
            "drain_duration": 2.0,
            "initial_backoff": 0.2,
            "max_backoff": 1.0,
            "stop_timeout": 5.0,
        }
        supervisor = EnvoySupervisor(**{**defaults, **kwargs})
        started.append((supervisor, asyncio.create_task(supervisor.run())))
        return supervisor

    try:
        yield start
    finally:
        for supervisor, task in started:
            with contextlib.suppress(Exception):
                await supervisor.drain_and_stop()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            for pid in our_envoys(supervisor.bootstrap):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
