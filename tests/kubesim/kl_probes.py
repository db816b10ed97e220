"""The prober: startup, readiness and liveness probes of one running container, executed for real.

(Lifecycle hooks - `run_hook` - use the same handlers.)

httpGet, tcpSocket and grpc probes go from the node to the pod IP (httpGet: scheme, host, path, port by
number or by the name of a container port, headers, `User-Agent: kube-probe/1.32`, 200-399 is success,
redirects are not followed, HTTPS is not verified); grpc calls `grpc.health.v1.Health/Check` (SERVING is
success); exec runs the command in the container's namespaces as its user (exit 0 is success). Each probe
honours initialDelaySeconds (from the container's start), periodSeconds, timeoutSeconds, successThreshold and
failureThreshold. The startup probe gates the others; until it passes the container is not `started`.
Readiness starts false and flips after successThreshold successes or failureThreshold failures; without a
readiness probe a started container is ready. `Prober.run()` returns a message when the container must be
killed (startup or liveness probe failed), and otherwise runs until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

Obj = Mapping[str, Any]
ExecFn = Callable[[Sequence[str], float], Awaitable[tuple[int, bytes]]]
USER_AGENT = "kube-probe/1.32"


@dataclass(frozen=True)
class Result:
    success: bool
    message: str = ""


def resolve_port(port: Any, container: Obj) -> int:
    """A probe's port: a number, or the name of one of the container's ports; ValueError otherwise."""
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for declared in container.get("ports") or []:
        if declared.get("name") == text:
            return int(declared["containerPort"])
    raise ValueError(f"couldn't find port {text!r} in the container's ports")


def _grpc_request(service: str) -> bytes:
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _grpc_status(message: bytes) -> int:
    if len(message) >= 2 and message[0] == 0x08:
        return message[1]
    return 0


async def _http(spec: Obj, container: Obj, pod_ip: str, limit: float) -> Result:
    scheme = str(spec.get("scheme", "HTTP")).lower()
    host = str(spec.get("host") or pod_ip)
    port = resolve_port(spec.get("port"), container)
    path = str(spec.get("path") or "/")
    url = f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    for header in spec.get("httpHeaders") or []:
        headers[str(header.get("name"))] = str(header.get("value", ""))
    verify = scheme != "https"  # the kubelet does not verify a probe's certificate
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as session,
        session.get(url, headers=headers, allow_redirects=False, ssl=verify) as response,
    ):
        await response.read()
        if 200 <= response.status < 400:
            return Result(True)
        return Result(False, f"HTTP probe failed with statuscode: {response.status}")


async def _tcp(spec: Obj, container: Obj, pod_ip: str, limit: float) -> Result:
    port = resolve_port(spec.get("port"), container)
    host = str(spec.get("host") or pod_ip)
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=limit)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Result(True)


async def _grpc(spec: Obj, pod_ip: str, limit: float) -> Result:
    import grpc  # only pods with gRPC probes pay for the import

    port = int(spec.get("port", 0))
    async with grpc.aio.insecure_channel(f"{pod_ip}:{port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            answer = await check(_grpc_request(str(spec.get("service") or "")), timeout=limit)
        except grpc.aio.AioRpcError as exc:
            return Result(False, f"rpc error: code = {exc.code().name} desc = {exc.details()}")
    status = _grpc_status(bytes(answer))
    return Result(status == 1, "" if status == 1 else f"service unhealthy (responded with status {status})")


async def run_probe(probe: Obj, *, container: Obj, pod_ip: str, exec_fn: ExecFn) -> Result:
    """One execution of `probe`; never raises (errors are failures with the reason)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            return await _http(probe["httpGet"], container, pod_ip, timeout)
        if "tcpSocket" in probe:
            return await _tcp(probe["tcpSocket"], container, pod_ip, timeout)
        if "grpc" in probe:
            return await _grpc(probe["grpc"], pod_ip, timeout)
        if "exec" in probe:
            code, output = await exec_fn([str(a) for a in probe["exec"].get("command") or []], timeout)
            return Result(code == 0, "" if code == 0 else output.decode(errors="replace").strip()[:512])
    except TimeoutError:
        return Result(False, f"probe timed out after {timeout:g}s")
    except (OSError, aiohttp.ClientError, ValueError) as exc:
        return Result(False, str(exc) or type(exc).__name__)
    return Result(False, "probe has no handler (httpGet, tcpSocket, grpc or exec)")


async def run_hook(hook: Obj, *, container: Obj, pod_ip: str, exec_fn: ExecFn, limit: float) -> None:
    """A lifecycle hook (exec, httpGet or sleep); raises OSError, aiohttp.ClientError, ValueError or TimeoutError."""
    if "exec" in hook:
        await exec_fn([str(a) for a in hook["exec"].get("command") or []], limit)
    elif "httpGet" in hook:
        get = hook["httpGet"]
        port = resolve_port(get.get("port"), container)
        url = f"{str(get.get('scheme', 'HTTP')).lower()}://{get.get('host') or pod_ip}:{port}{get.get('path', '/')}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as session, session.get(url):
            pass
    elif "sleep" in hook:
        await asyncio.sleep(float(hook["sleep"].get("seconds", 0)))


class Prober:
    """The probes of one container run (see the module docstring); `on_change()` after started/ready change."""

    def __init__(
        self,
        *,
        container: Obj,
        pod_ip: str,
        exec_fn: ExecFn,
        on_change: Callable[[], None],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.container = container
        self.pod_ip = pod_ip
        self._exec = exec_fn
        self._on_change = on_change
        self._clock = clock or asyncio.get_running_loop().time
        self._start = self._clock()
        self.started = False
        self.ready = False

    def _set(self, *, started: bool | None = None, ready: bool | None = None) -> None:
        changed = False
        if started is not None and started != self.started:
            self.started, changed = started, True
        if ready is not None and ready != self.ready:
            self.ready, changed = ready, True
        if changed:
            self._on_change()

    async def run(self) -> str:
        startup = self.container.get("startupProbe")
        if startup:
            failure = await self._loop(startup, until_success=True)
            if failure:
                return f"Startup probe failed: {failure}"
        self._set(started=True)
        readiness = self.container.get("readinessProbe")
        liveness = self.container.get("livenessProbe")
        tasks = []
        if readiness:
            tasks.append(asyncio.ensure_future(self._loop(readiness, readiness=True)))
        else:
            self._set(ready=True)
        try:
            if liveness:
                return f"Liveness probe failed: {await self._loop(liveness)}"
            await asyncio.Event().wait()
            return ""
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self, probe: Obj, *, until_success: bool = False, readiness: bool = False) -> str:
        """Probe every period; the failure message once failureThreshold is reached (not for readiness)."""
        delay = self._start + float(probe.get("initialDelaySeconds") or 0) - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        period = float(probe.get("periodSeconds") or 10)
        need_success = 1 if not readiness else int(probe.get("successThreshold") or 1)
        need_failure = int(probe.get("failureThreshold") or 3)
        successes = failures = 0
        while True:
            result = await run_probe(probe, container=self.container, pod_ip=self.pod_ip, exec_fn=self._exec)
            if result.success:
                successes, failures = successes + 1, 0
                if until_success:
                    return ""
                if readiness and successes >= need_success:
                    self._set(ready=True)
            else:
                successes, failures = 0, failures + 1
                if failures >= need_failure:
                    if readiness:
                        self._set(ready=False)
                    else:
                        return result.message or "probe failed"
            await asyncio.sleep(period)
