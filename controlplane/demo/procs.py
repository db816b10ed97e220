"""Child processes of the demo: start with a log file, wait for readiness, stop without leftovers.

Each child runs in its own process group (its own session), so a Ctrl-C in the terminal reaches only
the demo, which then stops the children in its chosen order. Stopping sends SIGTERM, waits, then
SIGKILLs the whole group; whatever the child left running in its group is killed too. On Linux a
child also gets SIGTERM when the demo itself dies, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.demo.plan import Bind


class StartError(RuntimeError):
    """A part of the demo could not start; the message says which, why, and where its log is."""


class Interrupted(RuntimeError):
    """Start-up was interrupted by a stop request (Ctrl-C, SIGTERM)."""


@dataclass
class Child:
    """One child process. `start()` once; `stop()` is idempotent."""

    name: str
    argv: Sequence[str]
    log_path: pathlib.Path
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    stopping: bool = False  # set once the demo asked it to stop: its exit is then expected

    def start(self) -> None:
        """Start the process (OSError when the program cannot be run).

        Started from the main thread on Linux, the child also gets SIGTERM should the demo die without
        stopping it (from another thread that would fire when the thread ends, so it is not set there).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        on_main_thread = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                # Only prctl runs between fork and exec: no locks, no allocation, so threads are no hazard.
                preexec_fn=_term_with_parent if on_main_thread and _PRCTL is not None else None,  # noqa: PLW1509
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """None while running (or never started), else the exit status."""
        return self.proc.poll() if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exited_unexpectedly(self) -> bool:
        return self.proc is not None and not self.stopping and self.proc.poll() is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM to it, not its group: it stops what it started itself)."""
        self.stopping = True
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait for the child until `deadline` (monotonic), then SIGKILL its group; then sweep the group."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            _killpg(self.proc.pid)
            self.proc.wait()
        _killpg(self.proc.pid)  # anything it left behind in its group

    def stop(self, timeout: float) -> None:
        self.terminate()
        self.finish(time.monotonic() + timeout)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _term_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when the demo dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_all(children: Iterable[Child], timeout: float) -> None:
    """Stop several children at once: SIGTERM to all, then wait for each up to `timeout` seconds in total."""
    group = list(children)
    for child in group:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in group:
        child.finish(deadline)


def taken(binds: Iterable[Bind]) -> list[tuple[Bind, str]]:
    """The binds that cannot be made now, each with the reason (in use, or the address does not exist)."""
    problems = []
    for bind in binds:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
            try:
                sock.bind((bind.host, bind.port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    problems.append((bind, "in use"))
                elif exc.errno == errno.EADDRNOTAVAIL:
                    problems.append((bind, f"address {bind.host} is not configured on this machine"))
                else:
                    problems.append((bind, exc.strerror or str(exc)))
    return problems


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    watch: Sequence[Child] = (),
    stop: threading.Event | None = None,
    period: float = 0.1,
) -> None:
    """Poll `check` until it is true.

    Raises StartError when `timeout` seconds pass (naming `what`) or when a watched child exits
    (with its status and the end of its log), and Interrupted when `stop` is set.
    """
    deadline = time.monotonic() + timeout
    while True:
        for child in watch:
            code = child.returncode
            if code is not None:
                raise StartError(
                    f"{child.name} exited with status {code} while waiting for {what}; "
                    f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
        if check():
            return
        if time.monotonic() >= deadline:
            logs = "; ".join(f"{c.name}: {c.log_path}" for c in watch)
            raise StartError(f"{what} not within {timeout:g}s" + (f" (logs: {logs})" if logs else ""))
        if stop is not None and stop.wait(period):
            raise Interrupted(f"stopped while waiting for {what}")
        if stop is None:
            time.sleep(period)
