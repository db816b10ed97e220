"""Resident memory of `meshplane serve` and its child processes, by role, and its CPU time, read from /proc."""

from __future__ import annotations

import os
import pathlib


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` in bytes; 0 when the process is gone."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` so far (seconds); 0 when the process is gone."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (children of all its threads, recursively)."""
    found: list[int] = []
    try:
        tasks = list(pathlib.Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            direct = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in direct:
            found += [child, *children(child)]
    return found


def _cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class ProcessRss:
    """Samples the server (`pid`), its Envoy TLS front end, and its other children (the CA's workers)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> dict[str, float]:
        """RSS in bytes: `server`, `front_end` (Envoy children), `ca_workers` (the other children, summed),
        `ca_worker_count`, and the server process's CPU seconds so far (`server_cpu_s`)."""
        front = workers = count = 0
        for child in children(self.pid):
            cmdline = _cmdline(child)
            if "envoy" in cmdline.split(" ", 1)[0]:
                front += rss_bytes(child)
            elif "resource_tracker" not in cmdline:
                workers += rss_bytes(child)
                count += 1
        return {
            "server": rss_bytes(self.pid),
            "front_end": front,
            "ca_workers": workers,
            "ca_worker_count": count,
            "server_cpu_s": cpu_seconds(self.pid),
        }
