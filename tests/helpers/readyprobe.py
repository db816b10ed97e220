"""A `/ready` prober in its own process: every poll's wait while a test or a benchmark loads `meshplane serve`.

One event loop serves the webhook, the CA, xDS and `/ready`, so a poll that waits long shows a stall
of all of them. The prober polls every `POLL_EVERY` seconds on a new connection each time (the next
poll starts one interval after the previous one started, at once when that one took longer), until
told to finish; `marks` record what was being done when, to name what a slow poll overlapped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.helpers.serve import Running

POLL_EVERY = 0.050

PROBER = r"""
import http.client, json, sys, time, threading
host, port, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
polls = []
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("probing", flush=True)
while not done.is_set():
    start = time.time()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/ready")
        status = conn.getresponse().status
        conn.close()
    except OSError as exc:
        status = str(exc)
    polls.append((start, time.time() - start, status))
    time.sleep(max(0.0, every - (time.time() - start)))
print(json.dumps(polls), flush=True)
"""


class Prober:
    """A child process polling /ready; `marks` record which input was being sent when."""

    def __init__(self, running: Running) -> None:
        host, port = running.addr("http").rsplit(":", 1)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBER, host, port, str(POLL_EVERY)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "probing"
        self.marks: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self.marks.append((time.time(), what))

    def finish(self) -> list[tuple[float, float, Any]]:
        out, _ = self.proc.communicate(input="", timeout=30)
        polls: list[tuple[float, float, Any]] = json.loads(out.strip().splitlines()[-1])
        return polls

    def during(self, at: float) -> str:
        current = "(before the first input)"
        for when, what in self.marks:
            if when <= at:
                current = what
        return current

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
