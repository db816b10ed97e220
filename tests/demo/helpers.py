"""Helpers for the demo's tests: an address plan nobody else uses, and processes left behind."""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import signal

from controlplane.demo.plan import AddressPlan, required_binds, workloads
from controlplane.demo.procs import taken


def free_plan() -> AddressPlan:
    """A plan on random 127.x.y.0/24 ranges where every address:port the mesh needs is free now."""
    rng = random.Random()
    for _ in range(50):
        x, y = rng.randint(1, 254), rng.randint(0, 250)
        plan = AddressPlan(
            pod_prefix=f"127.{x}.{y}", loopback_prefix=f"127.{x}.{y + 1}", control_plane=f"127.{x}.{y + 2}.1"
        )
        if not taken(required_binds(plan, workloads(plan))):
            return plan
    raise AssertionError("no free 127.x.y.0/24 ranges found for the demo")


def processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line contains `text`."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def kill_processes_mentioning(text: str) -> None:
    """Clean-up after a failed test: SIGKILL every process (by pid) whose command line contains `text`."""
    for pid in processes_mentioning(text):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
