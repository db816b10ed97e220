"""kubesim's kube-controller-manager: the deployment, replicaset, statefulset, endpointslice and GC loops.

    controllers = Controllers(kubeconfig=path)
    await controllers.start()      # connects, discovers resources, starts informers and loops
    ...
    await controllers.stop()       # idempotent; nothing keeps running

Every loop is a client of the API server over HTTP(S), as the real ones are: informers list and
watch (resuming and relisting through `controlplane.kube.watching`), and writes go through the API
with resourceVersion or uid preconditions, so pods a ReplicaSet creates pass admission like any
other. What a real controller records as an Event is logged and kept in `events` (tests read it,
e.g. the `FailedCreate` of a pod refused by a webhook). Module by module: `ctl_deployment`,
`ctl_replicaset`, `ctl_statefulset`, `ctl_endpointslice`, `ctl_gc`; shared machinery in `ctl_base`.

Errors: `start()` raises `SettingsError` for an unusable kubeconfig and `KubeApiError` (or an
OSError) when the API server cannot be reached for discovery; after that, failures are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib

from controlplane.kube.client import KubeApi
from tests.kubesim.ctl_base import (
    DEPLOYMENTS,
    ENDPOINTSLICES,
    PODS,
    REPLICASETS,
    SERVICES,
    Event,
    EventLog,
    Informer,
    WorkQueue,
    log,
)
from tests.kubesim.ctl_deployment import DeploymentController
from tests.kubesim.ctl_endpointslice import EndpointSliceController
from tests.kubesim.ctl_gc import GarbageCollector, discover
from tests.kubesim.ctl_replicaset import ReplicaSetController
from tests.kubesim.ctl_statefulset import STATEFULSETS, StatefulSetController

__all__ = ["Controllers", "Event"]


class Controllers:
    """The controller manager for one API server (see the module docstring)."""

    def __init__(self, *, kubeconfig: pathlib.Path | str) -> None:
        self.kubeconfig = pathlib.Path(kubeconfig)
        self.event_log = EventLog()
        self._api: KubeApi | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._queues: list[WorkQueue] = []

    @property
    def events(self) -> list[Event]:
        return self.event_log.events

    async def start(self) -> None:
        if self._api is not None:
            return
        api = await KubeApi.connect(kubeconfig=self.kubeconfig)
        try:
            resources = await discover(api)
        except BaseException:
            await api.close()
            raise
        self._api = api
        for needed in (PODS, SERVICES, DEPLOYMENTS, REPLICASETS, STATEFULSETS, ENDPOINTSLICES):
            if needed not in resources:
                resources.append(needed)
        informers = {r: Informer(api, r) for r in resources}
        loops = [
            DeploymentController(
                api=api,
                deployments=informers[DEPLOYMENTS],
                replicasets=informers[REPLICASETS],
                pods=informers[PODS],
                events=self.event_log,
            ),
            ReplicaSetController(
                api=api, replicasets=informers[REPLICASETS], pods=informers[PODS], events=self.event_log
            ),
            StatefulSetController(
                api=api, statefulsets=informers[STATEFULSETS], pods=informers[PODS], events=self.event_log
            ),
            EndpointSliceController(
                api=api,
                services=informers[SERVICES],
                pods=informers[PODS],
                slices=informers[ENDPOINTSLICES],
                events=self.event_log,
            ),
            GarbageCollector(api=api, informers=list(informers.values()), events=self.event_log),
        ]
        loop = asyncio.get_running_loop()
        for resource, informer in informers.items():
            self._tasks.append(loop.create_task(informer.run(), name=f"informer {resource}"))
        for controller in loops:
            self._tasks.append(loop.create_task(controller.run(), name=controller.name))
        self._queues = [c.queue for c in loops]
        log.info("controllers started: %s; watching %d resources", ", ".join(c.name for c in loops), len(informers))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        queues, self._queues = self._queues, []
        for queue in queues:
            queue.close()
        if self._api is not None:
            api, self._api = self._api, None
            await api.close()
