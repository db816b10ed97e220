"""kubesim's kubelet: runs the pods of one node for real, as processes in network namespaces.

    kubelet = Kubelet(kubeconfig=path, network=node_network)   # node "kubesim-node"
    await kubelet.start()
    ...
    await kubelet.stop()

A client of the API server like the real kubelet: it lists and watches pods, Services, ConfigMaps and
Secrets; binds pods that have no node yet to its own (`pods/binding`, standing in for the scheduler);
runs every pod bound to it through a pod worker (`tests.kubesim.kl_worker`: sandbox, volumes, init
containers, native sidecars, app containers, probes, restarts); writes what happened through
`pods/status`; keeps each pod's hosts file current as Services change and its configMap, secret,
downwardAPI and projected volumes current as their sources change (tokens renewed when due, checked every
`sync_period` seconds). A pod marked for deletion is stopped gracefully (preStop, SIGTERM, the grace
period, SIGKILL), its network namespace and volumes removed, and then deleted with gracePeriodSeconds=0
and a uid precondition. A pod deleted outright is stopped at once.

`stop()` stops every pod the same way without touching the API objects (grace capped at
`shutdown_grace` seconds) and leaves no process, network namespace or veth; it also removes the
directories made on the node for mount points, and the state directory when the kubelet made it. The
state directory (`state_dir`) holds container logs `logs/<ns>_<pod>_<uid>/<container>/<restart>.log`
and the pods' volumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.watching import Resource, Selection, infinite_watch
from tests.kubesim.kl_env import API_SERVICE_IP
from tests.kubesim.kl_sandbox import HostPaths, PodNetwork
from tests.kubesim.kl_volumes import Token
from tests.kubesim.kl_worker import NodeContext, PodWorker

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]

PODS = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
SERVICES = Resource(group="", version="v1", plural="services", kind="Service", namespaced=True)
CONFIGMAPS = Resource(group="", version="v1", plural="configmaps", kind="ConfigMap", namespaced=True)
SECRETS = Resource(group="", version="v1", plural="secrets", kind="Secret", namespaced=True)
TERMINAL = ("Succeeded", "Failed")


class _Cache:
    """The objects of one watched resource by (namespace, name); `on_change(obj)` after each change."""

    def __init__(self, on_change: Callable[[Obj], None]) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.synced = asyncio.Event()
        self._on_change = on_change

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str]:
        return str(obj["metadata"].get("namespace", "")), str(obj["metadata"]["name"])

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.objects.get((namespace, name))

    async def on_list(self, objects: Sequence[Obj]) -> None:
        fresh = {self._key(o): o for o in objects}
        gone = [o for k, o in self.objects.items() if k not in fresh]
        self.objects = fresh
        self.synced.set()
        for obj in [*gone, *objects]:
            self._on_change(obj)

    def on_event(self, event_type: str, obj: Obj) -> None:
        if event_type == "DELETED":
            self.objects.pop(self._key(obj), None)
        else:
            self.objects[self._key(obj)] = obj
        self._on_change(obj)


class _PodHandler:
    def __init__(self, kubelet: Kubelet) -> None:
        self.kubelet = kubelet
        self.synced = asyncio.Event()

    async def on_list(self, objects: Sequence[Obj]) -> None:
        present = {str(o["metadata"]["uid"]) for o in objects}
        for uid in list(self.kubelet.workers):
            if uid not in present:
                self.kubelet._gone(uid)
        for obj in objects:
            self.kubelet._sync(obj)
        self.synced.set()

    def on_event(self, event_type: str, obj: Obj) -> None:
        if event_type == "DELETED":
            self.kubelet._gone(str(obj["metadata"]["uid"]))
        else:
            self.kubelet._sync(obj)


class Kubelet:
    """See the module docstring."""

    def __init__(
        self,
        *,
        kubeconfig: pathlib.Path,
        network: PodNetwork,
        node_name: str = "kubesim-node",
        state_dir: pathlib.Path | None = None,
        restart_backoff: tuple[float, float] = (10.0, 300.0),
        sync_period: float = 10.0,
        shutdown_grace: float = 5.0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.network = network
        self.node_name = node_name
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or pathlib.Path(tempfile.mkdtemp(prefix="kubesim-kubelet-"))
        self.restart_backoff = restart_backoff
        self.sync_period = sync_period
        self.shutdown_grace = shutdown_grace
        self.workers: dict[str, PodWorker] = {}
        self.host_paths = HostPaths()
        self._api: KubeApi | None = None
        self._services = _Cache(lambda _: self._refresh_hosts())
        self._configmaps = _Cache(self._refresh_volumes)
        self._secrets = _Cache(self._refresh_volumes)
        self._pods = _PodHandler(self)
        self._tasks: list[asyncio.Task[Any]] = []
        self._work: set[asyncio.Task[Any]] = set()
        self._binding: set[str] = set()  # uids of pods being bound
        self._finishing: set[str] = set()  # uids of pods being deleted gracefully
        self._running = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, fill the caches, then start watching pods; SettingsError for an unusable kubeconfig."""
        if self._running:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._api = await KubeApi.connect(kubeconfig=self.kubeconfig)
        self._running = True
        for resource, handler in ((SERVICES, self._services), (CONFIGMAPS, self._configmaps), (SECRETS, self._secrets)):
            self._tasks.append(asyncio.ensure_future(infinite_watch(self._api, resource, Selection(), handler)))
        await asyncio.gather(self._services.synced.wait(), self._configmaps.synced.wait(), self._secrets.synced.wait())
        self._tasks.append(asyncio.ensure_future(infinite_watch(self._api, PODS, Selection(), self._pods)))
        self._tasks.append(asyncio.ensure_future(self._resync()))
        log.info("kubelet %s up (state in %s)", self.node_name, self.state_dir)

    async def stop(self) -> None:
        """Stop every pod (API objects untouched) and clean up the node; safe to call twice."""
        if not self._running:
            return
        self._running = False
        for task in self._tasks:
            task.cancel()
        for task in [*self._tasks, *self._work]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        workers, self.workers = list(self.workers.values()), {}
        await asyncio.gather(*(self._shut_down(w) for w in workers))
        self.host_paths.cleanup()
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def _shut_down(self, worker: PodWorker) -> None:
        try:
            await worker.writer.close(flush=False)
            grace = float(worker.pod["metadata"].get("deletionGracePeriodSeconds") or worker.grace())
            await worker.terminate(min(grace, self.shutdown_grace))
        finally:
            await worker.teardown()

    # -- pods -----------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def _sync(self, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = str(meta["uid"])
        node = spec.get("nodeName")
        if not node:
            ours = spec.get("schedulerName", "default-scheduler") == "default-scheduler"
            if ours and uid not in self._binding and not meta.get("deletionTimestamp"):
                self._binding.add(uid)
                self._spawn(self._bind(pod))
            return
        if node != self.node_name:
            return
        worker = self.workers.get(uid)
        if worker is None:
            if meta.get("deletionTimestamp"):
                self._spawn(self._delete(pod))
            elif (pod.get("status") or {}).get("phase") not in TERMINAL:
                worker = PodWorker(pod, self._context())
                self.workers[uid] = worker
                worker.start()
            return
        worker.update(pod)
        worker.refresh_hosts()
        self._spawn(worker.refresh_volumes())
        if meta.get("deletionTimestamp") and uid not in self._finishing:
            self._finishing.add(uid)
            self._spawn(self._finish(worker, float(meta.get("deletionGracePeriodSeconds") or 0)))

    def _gone(self, uid: str) -> None:
        """The pod object is gone: stop its containers at once and remove what it had on the node."""
        worker = self.workers.pop(uid, None)
        if worker is not None:
            self._spawn(self._remove(worker))

    async def _remove(self, worker: PodWorker) -> None:
        try:
            await worker.writer.close(flush=False)
            await worker.terminate(0)
        finally:
            await worker.teardown()

    async def _bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            await self._request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body)
        except KubeApiError as exc:
            if exc.status != 409:  # 409: bound meanwhile (or being deleted)
                log.warning("binding pod %s/%s failed: %s", meta["namespace"], meta["name"], exc)
        finally:
            self._binding.discard(str(meta["uid"]))

    async def _finish(self, worker: PodWorker, grace: float) -> None:
        """Graceful deletion: stop the containers, report, tear down, then remove the object."""
        try:
            await worker.terminate(grace)
            await worker.writer.close(flush=True)
        finally:
            await worker.teardown()
            self.workers.pop(worker.uid, None)
            self._finishing.discard(worker.uid)
        await self._delete(worker.pod)

    async def _delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        with contextlib.suppress(KubeApiError):  # 404/409: already gone, or a new pod of that name
            await self._request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)

    # -- what workers need ----------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: Any, content_type: str = "application/json") -> Obj:
        if self._api is None:
            raise KubeApiError(status=503, reason="ServiceUnavailable", message="the kubelet is stopped")
        return await self._api.request(method, path, body=body, content_type=content_type)

    def _context(self) -> NodeContext:
        return NodeContext(
            network=self.network,
            host_paths=self.host_paths,
            state_dir=self.state_dir,
            configmaps=self._configmaps.get,
            secrets=self._secrets.get,
            services=lambda: list(self._services.objects.values()),
            tokens=self._token,
            write_status=self._write_status,
            api_service=self._api_service,
            backoff=self.restart_backoff,
        )

    def _api_service(self) -> tuple[str, int]:
        svc = self._services.get("default", "kubernetes")
        ip = str((svc or {}).get("spec", {}).get("clusterIP") or API_SERVICE_IP)
        return ip, 443

    async def _token(self, pod: Obj, account: str, audiences: Sequence[str], seconds: int) -> Token:
        meta = pod["metadata"]
        spec: dict[str, Any] = {
            "expirationSeconds": seconds,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]},
        }
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        answer = await self._request("POST", path, body)
        now = datetime.datetime.now(datetime.UTC)
        expires = datetime.datetime.strptime(answer["status"]["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
        return Token(token=answer["status"]["token"], issued=now, expires=expires.replace(tzinfo=datetime.UTC))

    async def _write_status(self, pod: Obj, status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        current = pod.get("status") or {}
        patch: dict[str, Any] = {key: None for key in current if key not in status}
        patch.update(status)
        body = {"metadata": {"uid": meta["uid"]}, "status": patch}
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        await self._request("PATCH", path, body, content_type="application/merge-patch+json")

    def _refresh_hosts(self) -> None:
        for worker in self.workers.values():
            worker.refresh_hosts()

    def _refresh_volumes(self, obj: Obj) -> None:
        namespace = str(obj["metadata"].get("namespace", ""))
        for worker in self._workers_in(namespace):
            self._spawn(worker.refresh_volumes())

    def netns(self, namespace: str, name: str) -> str:
        """The network namespace of a running pod (tests exec into it with `ip netns exec`); KeyError if none."""
        for worker in self._workers_in(namespace):
            if worker.pod["metadata"]["name"] == name:
                return worker.sandbox.netns
        raise KeyError(f"pod {namespace}/{name} does not run on this node")

    def _workers_in(self, namespace: str) -> Iterable[PodWorker]:
        return [w for w in self.workers.values() if w.pod["metadata"]["namespace"] == namespace]

    async def _resync(self) -> None:
        """Every `sync_period` seconds: renew tokens that are due and re-render volumes."""
        while True:
            await asyncio.sleep(self.sync_period)
            for worker in list(self.workers.values()):
                await worker.refresh_volumes()
