"""Pod status as the kubelet reports it, computed from what its containers did.

`ContainerRecord` is the kubelet's live view of one container (mutable: the pod worker updates it as
the container is created, runs, exits and restarts). `pod_status()` turns the records into the pod's
`status`: phase (the kubelet's rules: Pending while initialising or while any app container waits for
its first start, Running while any runs or will be restarted, Succeeded/Failed once all stopped for
good), podIP(s), hostIP(s), startTime, the conditions PodReadyToStartContainers, Initialized, Ready,
ContainersReady and PodScheduled (lastTransitionTime kept while a condition's status is unchanged;
readiness gates honoured) and containerStatuses/initContainerStatuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]
INIT, SIDECAR, APP = "init", "sidecar", "app"
CONDITION_ORDER = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")


def stamp(moment: datetime.datetime | None = None) -> str:
    return (moment or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRecord:
    """The live state of one container (mutable by design: it is the pod worker's bookkeeping)."""

    name: str
    image: str
    kind: str  # INIT, SIDECAR (an init container with restartPolicy Always) or APP
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""

    def waiting(self, reason: str, message: str = "") -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        self.ready = self.started = False

    def running(self, container_id: str) -> None:
        self.container_id = container_id
        self.state = {"running": {"startedAt": stamp()}}

    def terminated(self, code: int, *, reason: str = "", message: str = "") -> None:
        started = (self.state.get("running") or {}).get("startedAt", stamp())
        detail: dict[str, Any] = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": started,
            "finishedAt": stamp(),
        }
        if message:
            detail["message"] = message
        if self.container_id:
            detail["containerID"] = self.container_id
        self.state = {"terminated": detail}
        self.ready = self.started = False

    def restarting(self) -> None:
        """The terminated state becomes the last state; the restart count goes up."""
        if "terminated" in self.state:
            self.last_state = dict(self.state)
        self.restart_count += 1

    @property
    def exit_code(self) -> int | None:
        terminated = self.state.get("terminated")
        return None if terminated is None else int(terminated["exitCode"])

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": f"{self.image.split(':')[0]}@sha256:{hashlib.sha256(self.image.encode()).hexdigest()}",
            "started": self.started,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def phase(
    *,
    restart_policy: str,
    init: Sequence[ContainerRecord],
    apps: Sequence[ContainerRecord],
    initialized: bool,
    init_failed: bool,
) -> str:
    """The pod phase by the kubelet's rules (see the module docstring)."""
    if init_failed:
        return "Failed"
    if not initialized:
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for record in apps:
        if "running" in record.state:
            running += 1
        elif "terminated" in record.state:
            stopped += 1
            succeeded += record.exit_code == 0
        elif record.last_state.get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if not stopped or restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


def _condition(kind: str, ok: bool, previous: Mapping[str, Obj], *, reason: str = "", message: str = "") -> Obj:
    status = "True" if ok else "False"
    old = previous.get(kind)
    when = old.get("lastTransitionTime") if old and old.get("status") == status else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": when or stamp(),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def pod_status(
    *,
    pod: Obj,
    init: Sequence[ContainerRecord],
    apps: Sequence[ContainerRecord],
    pod_ip: str,
    host_ip: str,
    start_time: str,
    initialized: bool,
    init_failed: bool = False,
) -> dict[str, Any]:
    """The pod's whole `status` (see the module docstring)."""
    spec = pod.get("spec") or {}
    current = pod.get("status") or {}
    previous = {str(c.get("type")): c for c in current.get("conditions") or []}
    pod_phase = phase(
        restart_policy=str(spec.get("restartPolicy", "Always")),
        init=init,
        apps=apps,
        initialized=initialized,
        init_failed=init_failed,
    )
    terminal = pod_phase in ("Succeeded", "Failed")
    unready = [r.name for r in [*(r for r in init if r.kind == SIDECAR), *apps] if not r.ready]
    incomplete = [r.name for r in init if not (r.exit_code == 0 or (r.kind == SIDECAR and r.started))]
    message = f"containers with unready status: [{' '.join(unready)}]" if unready else ""
    gates = [str(g.get("conditionType")) for g in spec.get("readinessGates") or []]
    missing_gates = [g for g in gates if (previous.get(g) or {}).get("status") != "True"]
    conditions = [
        _condition("PodReadyToStartContainers", bool(pod_ip) and not terminal, previous),
        _condition(
            "Initialized",
            initialized or pod_phase == "Succeeded",
            previous,
            reason="PodCompleted" if pod_phase == "Succeeded" else ("" if initialized else "ContainersNotInitialized"),
            message="" if initialized else f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
    ]
    containers_ready = not unready and initialized and not terminal
    ready_reason = "PodCompleted" if terminal else ("" if containers_ready else "ContainersNotReady")
    ready = containers_ready and not missing_gates
    ready_message = message
    if containers_ready and missing_gates:
        ready_reason = "ReadinessGatesNotReady"
        ready_message = f'corresponding condition of pod readiness gate "{missing_gates[0]}" does not exist.'
    conditions.append(_condition("Ready", ready, previous, reason=ready_reason, message=ready_message))
    conditions.append(
        _condition(
            "ContainersReady",
            containers_ready,
            previous,
            reason="PodCompleted" if terminal else ("" if containers_ready else "ContainersNotReady"),
            message="" if containers_ready or terminal else message,
        )
    )
    scheduled = previous.get("PodScheduled") or _condition("PodScheduled", True, previous)
    conditions.append(scheduled)
    others = [c for kind, c in previous.items() if kind not in CONDITION_ORDER]
    status: dict[str, Any] = {
        "phase": pod_phase,
        "conditions": [*conditions, *others],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": [r.status() for r in apps],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if init:
        status["initContainerStatuses"] = [r.status() for r in init]
    if current.get("qosClass"):
        status["qosClass"] = current["qosClass"]
    return status


class StatusWriter:
    """Writes a pod's status each time it changed: `changed()` wakes it, `close()` stops it.

    A failed write (API unreachable, pod gone) is logged and retried after `retry` seconds.
    """

    def __init__(
        self,
        *,
        compute: Callable[[], dict[str, Any]],
        write: Callable[[dict[str, Any]], Awaitable[None]],
        name: str,
        retry: float = 1.0,
    ) -> None:
        self._compute, self._write, self._name, self._retry = compute, write, name, retry
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())
        self._changed.set()

    def changed(self) -> None:
        self._changed.set()

    async def _loop(self) -> None:
        last: dict[str, Any] | None = None
        while True:
            await self._changed.wait()
            self._changed.clear()
            status = self._compute()
            if status == last:
                continue
            try:
                await self._write(status)
                last = status
            except Exception as exc:  # any API failure: retry on the next change or after a pause
                log.warning("%s: writing status failed: %s", self._name, exc)
                await asyncio.sleep(self._retry)
                self._changed.set()

    async def close(self, *, flush: bool) -> None:
        """Stop; with `flush`, write the current status once more (errors logged). Idempotent."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if flush:
            try:
                await self._write(self._compute())
            except Exception as exc:
                log.warning("%s: writing the final status failed: %s", self._name, exc)
