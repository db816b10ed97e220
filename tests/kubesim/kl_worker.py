"""The pod worker: one pod's life on the node, from sandbox to teardown.

`run()`: the sandbox (network namespace, IP, /etc files), the volumes (retried while a source is missing,
the pod staying ContainerCreating), then the init containers in order - a regular one must exit 0 (a
failure restarts it with backoff, or fails the pod under restartPolicy Never); a native sidecar
(restartPolicy Always) is started and must be *started* (startup probe passed, else running) before the
next one - then every app container. Containers that exit are restarted per the pod's restartPolicy
(sidecars always) with the kubelet's crash-loop backoff: the first restart at once, then `base`, doubling
up to `cap` (CrashLoopBackOff while waiting). A failed startup or liveness probe kills the container and
restarts it the same way. When every app container has stopped for good the sidecars are stopped (in
reverse order) and the pod ends Succeeded or Failed.

`terminate(grace)`: preStop hooks (exec, httpGet), SIGTERM to the app containers, then to the sidecars in
reverse order, SIGKILL for whatever is left when the grace period ends. `teardown()` removes the network
namespace and the volumes. Status changes reach `NodeContext.write_status` (called with the whole status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import secrets
import shutil
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.kubesim import kl_env
from tests.kubesim.kl_probes import Prober, run_hook
from tests.kubesim.kl_process import LaunchSpec, Mount, Process, exec_in
from tests.kubesim.kl_sandbox import HostPaths, PodNetwork, Sandbox, SandboxError, hosts_file
from tests.kubesim.kl_status import APP, INIT, SIDECAR, ContainerRecord, StatusWriter, pod_status, stamp
from tests.kubesim.kl_volumes import PodVolumes, Token, VolumeError

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]
RETRY = 1.0  # seconds between attempts at a sandbox or volume that failed


@dataclass(frozen=True, kw_only=True)
class NodeContext:
    """What pod workers share: the node's network and paths, the kubelet's caches and API writes."""

    network: PodNetwork
    host_paths: HostPaths
    state_dir: pathlib.Path
    configmaps: kl_env.Lookup
    secrets: kl_env.Lookup
    services: Callable[[], Iterable[Obj]]
    tokens: Callable[[Obj, str, Sequence[str], int], Awaitable[Token]]
    write_status: Callable[[Obj, dict[str, Any]], Awaitable[None]]
    api_service: Callable[[], tuple[str, int]]
    backoff: tuple[float, float] = (10.0, 300.0)


class Backoff:
    """The kubelet's crash-loop backoff: 0 for the first restart, then base, doubling up to cap."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.count = base, cap, 0

    def next(self) -> float:
        delay = 0.0 if self.count == 0 else min(self.cap, self.base * 2 ** (self.count - 1))
        self.count += 1
        return delay


class PodWorker:
    """See the module docstring. `pod` is the latest version of the object the kubelet has seen."""

    def __init__(self, pod: Obj, ctx: NodeContext) -> None:
        self.pod = pod
        self.ctx = ctx
        meta, spec = pod["metadata"], pod.get("spec") or {}
        self.uid = str(meta["uid"])
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.sandbox = Sandbox(network=ctx.network, host_paths=ctx.host_paths)
        self.logs = ctx.state_dir / "logs" / f"{meta['namespace']}_{meta['name']}_{self.uid}"
        self.volumes: PodVolumes | None = None
        self.records: dict[str, ContainerRecord] = {}
        self.specs: dict[str, Obj] = {}
        for c in spec.get("initContainers") or []:
            kind = SIDECAR if c.get("restartPolicy") == "Always" else INIT
            self._add(c, kind)
        for c in spec.get("containers") or []:
            self._add(c, APP)
        self.processes: dict[str, Process] = {}
        self.start_time = stamp()
        self.initialized = False
        self.init_failed = False
        self.stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._events: dict[str, asyncio.Event] = {}  # container name -> set when its probes' verdict changes
        self._main: asyncio.Task[None] | None = None
        self.writer = StatusWriter(compute=self.status, write=lambda s: ctx.write_status(self.pod, s), name=self.key)

    def _add(self, container: Obj, kind: str) -> None:
        name = str(container["name"])
        self.specs[name] = container
        self.records[name] = ContainerRecord(name=name, image=str(container.get("image", "")), kind=kind)
        if kind == APP:
            self.records[name].waiting("ContainerCreating" if not self._init_names() else "PodInitializing")

    def _init_names(self) -> list[str]:
        return [str(c["name"]) for c in (self.pod.get("spec") or {}).get("initContainers") or []]

    @property
    def facts(self) -> kl_env.PodFacts:
        return kl_env.PodFacts(pod=self.pod, pod_ip=self.sandbox.ip, host_ip=self.ctx.network.host_ip)

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        init = [r for r in self.records.values() if r.kind != APP]
        apps = [r for r in self.records.values() if r.kind == APP]
        return pod_status(
            pod=self.pod,
            init=init,
            apps=apps,
            pod_ip=self.sandbox.ip,
            host_ip=self.ctx.network.host_ip,
            start_time=self.start_time,
            initialized=self.initialized or not self._init_names(),
            init_failed=self.init_failed,
        )

    def changed(self) -> None:
        self.writer.changed()

    def update(self, pod: Obj) -> None:
        """A newer version of the pod from the API (labels, annotations, deletion ...)."""
        self.pod = pod

    def refresh_hosts(self) -> None:
        meta = self.pod["metadata"]
        hostname = str((self.pod.get("spec") or {}).get("hostname") or meta["name"])
        self.sandbox.write_hosts(
            hosts_file(
                pod_ip=self.sandbox.ip,
                hostname=hostname,
                namespace=str(meta["namespace"]),
                services=self.ctx.services(),
            )
        )

    async def refresh_volumes(self) -> None:
        """Re-render configMap/secret/downwardAPI/projected volumes; renew tokens when due. Logs failures."""
        if self.volumes is not None and not self.stopping:
            try:
                await self.volumes.refresh(self.facts)
            except (VolumeError, OSError) as exc:
                log.warning("%s: %s", self.key, exc)

    # -- the life of the pod --------------------------------------------------------------------
    def start(self) -> None:
        self.writer.start()
        self._main = asyncio.ensure_future(self._run())
        self.changed()

    async def _run(self) -> None:
        await self._prepare()
        for name in self._init_names():
            if self.records[name].kind == SIDECAR:
                self._tasks.append(asyncio.ensure_future(self._keep_running(name)))
                while not self.records[name].started:
                    await self._wait_change(name)
            elif not await self._run_to_completion(name):
                self.init_failed = True
                self.changed()
                await self._stop_sidecars(grace=self.grace())
                return
        self.initialized = True
        for record in self.records.values():
            if record.kind == APP:
                record.waiting("ContainerCreating")
        self.changed()
        apps = [asyncio.ensure_future(self._keep_running(n)) for n, r in self.records.items() if r.kind == APP]
        self._tasks.extend(apps)
        await asyncio.gather(*apps)
        await self._stop_sidecars(grace=self.grace())
        self.changed()
        await self.sandbox.destroy()  # a finished pod keeps its IP in the status, not its network

    async def _wait_change(self, name: str) -> None:
        event = self._events.setdefault(name, asyncio.Event())
        await event.wait()
        event.clear()

    def _notify(self, name: str) -> None:
        self._events.setdefault(name, asyncio.Event()).set()
        self.changed()

    async def _prepare(self) -> None:
        while True:
            try:
                await self.sandbox.create(namespace=str(self.pod["metadata"]["namespace"]))
                break
            except (SandboxError, OSError) as exc:
                log.warning("%s: creating the pod sandbox failed: %s", self.key, exc)
                self.sandbox = Sandbox(network=self.ctx.network, host_paths=self.ctx.host_paths)
                await asyncio.sleep(RETRY)
        self.refresh_hosts()
        self.changed()
        self.volumes = PodVolumes(
            root=self.ctx.state_dir / "pods" / self.uid / "volumes",
            facts=self.facts,
            configmaps=self.ctx.configmaps,
            secrets=self.ctx.secrets,
            tokens=self._token,
        )
        reported = ""
        while True:
            try:
                await self.volumes.setup()
                return
            except (VolumeError, OSError) as exc:
                if str(exc) != reported:  # once per distinct reason, as an event would be
                    log.warning("%s: %s (retrying)", self.key, exc)
                    reported = str(exc)
                await asyncio.sleep(RETRY)

    async def _token(self, account: str, audiences: Sequence[str], seconds: int) -> Token:
        return await self.ctx.tokens(self.pod, account, audiences, seconds)

    def grace(self) -> float:
        """The pod's terminationGracePeriodSeconds."""
        return float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    # -- one container --------------------------------------------------------------------------
    def _launch_spec(self, name: str) -> tuple[LaunchSpec, dict[str, str]]:
        """What to run for container `name`; ConfigError when its env or user cannot be resolved."""
        container = self.specs[name]
        env = kl_env.container_env(
            container,
            self.facts,
            configmaps=self.ctx.configmaps,
            secrets=self.ctx.secrets,
            api_service=self.ctx.api_service(),
        )
        uid, gid, groups = kl_env.run_as(self.pod, container)
        assert self.volumes is not None
        mounts = []
        for mount in container.get("volumeMounts") or []:
            source = self.volumes.path(str(mount["name"]))
            if mount.get("subPath"):
                source = source / str(mount["subPath"])
            mounts.append(Mount(source=source, target=str(mount["mountPath"]), read_only=bool(mount.get("readOnly"))))
        workdir = str(container.get("workingDir") or "/")
        targets = [m.target for m in mounts]
        for path, is_dir in [*((m.target, m.source.is_dir()) for m in mounts), (workdir, True)]:
            if not any(path != t and path.startswith(t.rstrip("/") + "/") for t in targets):
                self.ctx.host_paths.ensure(pathlib.Path(path), directory=is_dir)
        record = self.records[name]
        spec = LaunchSpec(
            netns=self.sandbox.netns,
            argv=kl_env.command_line(container, env),
            env=env,
            mounts=mounts,
            workdir=workdir,
            hostname=env["HOSTNAME"],
            uid=uid,
            gid=gid,
            groups=groups,
            log_path=self.logs / name / f"{record.restart_count}.log",
        )
        return spec, env

    async def _start(self, name: str) -> Process | None:
        """Start container `name`, or record why it cannot start (None)."""
        record = self.records[name]
        try:
            spec, env = self._launch_spec(name)
        except kl_env.ConfigError as exc:
            record.waiting("CreateContainerConfigError", str(exc))
            self.changed()
            return None
        program = spec.argv[0] if spec.argv else ""
        if not shutil.which(program, path=env.get("PATH")):
            record.running("")
            record.terminated(
                128,
                reason="StartError",
                message=(f'failed to create containerd task: exec: "{program}": executable file not found in $PATH'),
            )
            self.changed()
            return None
        process = await Process.start(spec)
        self.processes[name] = process
        record.running(f"containerd://{secrets.token_hex(32)}")
        self.changed()
        return process

    async def _run_to_completion(self, name: str) -> bool:
        """A regular init container until it exits 0 (True), or fails under restartPolicy Never (False)."""
        record = self.records[name]
        backoff = Backoff(*self.ctx.backoff)
        while True:
            process = await self._start(name)
            if process is not None:
                record.terminated(await process.wait())
                self.changed()
            if record.exit_code == 0:
                return True
            if (self.pod.get("spec") or {}).get("restartPolicy") == "Never" or self.stopping:
                return False
            if process is None and "waiting" in record.state:
                await asyncio.sleep(RETRY)
                continue
            await self._back_off(name, backoff)

    async def _back_off(self, name: str, backoff: Backoff) -> None:
        record = self.records[name]
        delay = backoff.next()
        if delay > 0:
            record.last_state = dict(record.state)
            meta = self.pod["metadata"]
            record.waiting(
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={name} "
                f"pod={meta['name']}_{meta['namespace']}({self.uid})",
            )
            self.changed()
            await asyncio.sleep(delay)
        record.restarting()

    async def _keep_running(self, name: str) -> None:
        """A sidecar or app container: run, probe, restart per policy until it should stay stopped."""
        record = self.records[name]
        policy = "Always" if record.kind == SIDECAR else str((self.pod.get("spec") or {}).get("restartPolicy"))
        backoff = Backoff(*self.ctx.backoff)
        while not self.stopping:
            process = await self._start(name)
            if process is None and "waiting" in record.state:
                await asyncio.sleep(RETRY)
                continue
            if process is not None:
                exit_code, message = await self._supervise(name, process)
                record.terminated(exit_code, message=message)
                self.changed()
            code = record.exit_code
            if self.stopping or policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            await self._back_off(name, backoff)

    async def _supervise(self, name: str, process: Process) -> tuple[int, str]:
        """Wait for the process, probing it; (exit code, message). Kills it when a probe says so."""
        record = self.records[name]

        def on_probe() -> None:
            record.started, record.ready = prober.started, prober.ready
            self._notify(name)

        prober = Prober(
            container=self.specs[name],
            pod_ip=self.sandbox.ip,
            on_change=on_probe,
            exec_fn=lambda argv, timeout: self._exec(name, argv, timeout),
        )
        waiter = asyncio.ensure_future(process.wait())
        probing = asyncio.ensure_future(prober.run())
        try:
            await asyncio.wait({waiter, probing}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                return waiter.result(), ""
            message = probing.result()
            log.info("%s: container %s %s, will be restarted", self.key, name, message)
            return await process.terminate(self.grace()), message
        finally:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
            if not waiter.done():
                waiter.cancel()

    async def _exec(self, name: str, argv: Sequence[str], limit: float) -> tuple[int, bytes]:
        process = self.processes.get(name)
        if process is None or process.returncode is not None:
            return 1, b"container is not running"
        spec, env = self._launch_spec(name)
        return await exec_in(process.pid, argv, env=env, uid=spec.uid, gid=spec.gid, time_limit=limit)

    # -- the end --------------------------------------------------------------------------------
    async def _pre_stop(self, name: str) -> None:
        hook = ((self.specs[name].get("lifecycle") or {}).get("preStop")) or {}
        try:
            await run_hook(hook, container=self.specs[name], pod_ip=self.sandbox.ip, limit=self.grace(),
                           exec_fn=lambda argv, limit: self._exec(name, argv, limit))  # fmt: skip
        except (OSError, aiohttp.ClientError, ValueError, TimeoutError) as exc:
            log.warning("%s: preStop hook of %s failed: %s", self.key, name, exc)

    async def _stop_group(self, names: Sequence[str], deadline: float) -> None:
        running = [n for n in names if n in self.processes and self.processes[n].returncode is None]
        await asyncio.gather(*(self._stop_one(n, deadline) for n in running))

    async def _stop_one(self, name: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pre_stop(name), timeout=max(deadline - loop.time(), 0))
        code = await self.processes[name].terminate(deadline - loop.time())
        record = self.records[name]
        if "running" in record.state:
            record.terminated(code)
        self.changed()

    async def _stop_sidecars(self, *, grace: float) -> None:
        deadline = asyncio.get_running_loop().time() + grace
        self.stopping = True
        for name in reversed([n for n, r in self.records.items() if r.kind == SIDECAR]):
            await self._stop_group([name], deadline)

    async def terminate(self, grace: float) -> None:
        """Stop every container within `grace` seconds (see the module docstring); idempotent."""
        self.stopping = True
        main = self._main
        if main is not None and not main.done():
            main.cancel()
        for task in self._tasks:
            task.cancel()
        deadline = asyncio.get_running_loop().time() + grace
        order = [n for n, r in self.records.items() if r.kind != SIDECAR]
        await self._stop_group(order, deadline)
        await self._stop_sidecars(grace=max(deadline - asyncio.get_running_loop().time(), 0))
        for process in self.processes.values():
            process.signal(signal.SIGKILL)
            await process.wait()
        for task in [*self._tasks, *([main] if main else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.changed()

    async def teardown(self) -> None:
        """Remove the network namespace and the volumes (containers must be stopped)."""
        await self.sandbox.destroy()
        if self.volumes is not None:
            self.volumes.remove()
        with contextlib.suppress(OSError):
            (self.ctx.state_dir / "pods" / self.uid).rmdir()
