"""The StatefulSet controller: pods `<set>-<ordinal>` with stable names, in order, and rolling updates.

As upstream's `pkg/controller/statefulset` (`stateful_set_control.go`, `stateful_set_utils.go`):

- Pods are named `<set>-<ordinal>` for ordinals `[start, start + replicas)` (`spec.ordinals.start`,
  default 0), carry the template's labels plus `controller-revision-hash` (the revision name,
  `<set>-<hash of the template>`), `statefulset.kubernetes.io/pod-name` and
  `apps.kubernetes.io/pod-index`, a controller ownerReference, `hostname` = the pod's name and
  `subdomain` = `spec.serviceName`. They are created through the API, so admission webhooks see them.
- `OrderedReady` (the default) creates one pod at a time, the next only when every lower ordinal is
  Running and Ready (and available for `minReadySeconds`), and removes surplus pods one at a time from
  the highest ordinal; `Parallel` creates and removes them all at once.
- A pod that failed or succeeded is deleted and created again; a pod being deleted is waited for
  (its name is reused only once the old object is gone).
- `RollingUpdate` replaces, one pod at a time from the highest ordinal down to `partition`, every pod
  whose `controller-revision-hash` is not the update revision, waiting for each to be Ready again.
  `OnDelete` leaves existing pods alone; pods created again get the update revision.
- Status as upstream computes it: replicas (pods created), readyReplicas, availableReplicas,
  currentReplicas, updatedReplicas, currentRevision, updateRevision, observedGeneration; once every
  pod is updated and ready, currentRevision becomes updateRevision. `kubectl rollout status` reads it.

Not modelled: ControllerRevision objects (the revision lives only in the pods' label and the status;
so `kubectl rollout history/undo statefulset` have nothing to read, and a pod below a non-zero
`partition` that must be created again gets the update revision rather than the current one),
PersistentVolumeClaims (`volumeClaimTemplates` give pods no volumes, so mounts of them fail
validation and show as `FailedCreate`), adoption of orphans and `maxUnavailable`.

A create the API server refuses is recorded as a `FailedCreate` event and retried with backoff.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.watching import Resource
from tests.kubesim import ctl_rollout as ro
from tests.kubesim.ctl_base import (
    PODS,
    Controller,
    EventLog,
    Informer,
    Obj,
    key_of,
    new_controller_ref,
    now,
    object_path,
    owned_by,
    owner_key,
    pod_ready_since,
)

STATEFULSETS = Resource(group="apps", version="v1", plural="statefulsets", kind="StatefulSet", namespaced=True)
REVISION_LABEL = "controller-revision-hash"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
CREATED_TTL = 10.0  # seconds a pod we created counts as present before the cache shows it


def ordinal_of(pod: Mapping[str, Any], set_name: str) -> int | None:
    """The ordinal in `<set>-<ordinal>`, None for a name of another shape."""
    name = str((pod.get("metadata") or {}).get("name") or "")
    prefix, _, tail = name.rpartition("-")
    if prefix != set_name or not tail.isdigit() or (tail != "0" and tail.startswith("0")):
        return None
    return int(tail)


def update_revision(sts: Mapping[str, Any]) -> str:
    """The name of the revision of the current template: `<set>-<hash>` (changes with any template field)."""
    collisions = int((sts.get("status") or {}).get("collisionCount") or 0)
    return f"{sts['metadata']['name']}-{ro.template_hash(sts['spec']['template'], collisions)}"


def terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def running_and_ready(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and pod_ready_since(pod) is not None


def available_in(pod: Mapping[str, Any], min_ready: int) -> float | None:
    """Seconds until a running, ready pod counts as available (<= 0: it is); None if not ready."""
    since = pod_ready_since(pod)
    if (pod.get("status") or {}).get("phase") != "Running" or since is None:
        return None
    return min_ready - (now() - since).total_seconds()


def healthy(pod: Mapping[str, Any], min_ready: int) -> bool:
    """Upstream's isHealthy for ordered progress: running, ready, available, not being deleted."""
    left = available_in(pod, min_ready)
    return left is not None and left <= 0 and not terminating(pod)


class StatefulSetController(Controller):
    name = "statefulset-controller"

    def __init__(self, *, api: KubeApi, statefulsets: Informer, pods: Informer, events: EventLog) -> None:
        super().__init__(api=api, informers=(statefulsets, pods), events=events)
        self.statefulsets = statefulsets
        self.pods = pods
        self._created: dict[str, float] = {}  # "<ns>/<pod>" -> until when it counts as present
        statefulsets.subscribe(self._on_statefulset)
        pods.subscribe(self._on_pod)

    def _on_statefulset(self, old: Obj | None, new: Obj | None) -> None:
        namespace, name = key_of(new if new is not None else old or {})
        self.queue.add(f"{namespace}/{name}")

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        pod = new if new is not None else old
        owner = owner_key(pod, "StatefulSet")
        if pod is None or owner is None:
            return
        if new is not None:
            namespace, name = key_of(pod)
            self._created.pop(f"{namespace}/{name}", None)
        self.queue.add(owner)

    # -- the sync -----------------------------------------------------------------------------
    async def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        cached = self.statefulsets.get(namespace, name)
        if cached is None:
            return
        sts = copy.deepcopy(cached)
        pods = [p for p in self.pods.list(namespace) if owned_by(p, sts)]
        revision = update_revision(sts)
        error: KubeApiError | None = None
        if not sts["metadata"].get("deletionTimestamp"):
            try:
                await self._manage(sts, pods, revision)
            except KubeApiError as exc:
                error = exc
        await self._write_status(sts, pods, revision)
        if error is not None:
            raise error

    def _slots(self, sts: Obj, pods: list[Obj]) -> tuple[dict[int, Obj | None], list[Obj]]:
        """(ordinal -> its pod, None when missing) for the wanted ordinals, and the surplus pods, highest first."""
        name = sts["metadata"]["name"]
        start = int((sts["spec"].get("ordinals") or {}).get("start") or 0)
        wanted = range(start, start + int(sts["spec"].get("replicas", 1)))
        slots: dict[int, Obj | None] = dict.fromkeys(wanted)
        surplus: list[tuple[int, Obj]] = []
        for pod in pods:
            ordinal = ordinal_of(pod, name)
            if ordinal is None:
                continue
            if ordinal in slots:
                slots[ordinal] = pod
            else:
                surplus.append((ordinal, pod))
        clock = now().timestamp()
        for ordinal, slot in slots.items():  # created by us, not in the cache yet: present, not ready
            pending = f"{sts['metadata']['namespace']}/{name}-{ordinal}"
            if slot is None and self._created.get(pending, 0.0) > clock:
                slots[ordinal] = {"metadata": {"name": f"{name}-{ordinal}"}, "status": {}}
        return slots, [pod for _, pod in sorted(surplus, key=lambda item: -item[0])]

    async def _manage(self, sts: Obj, pods: list[Obj], revision: str) -> None:
        spec = sts["spec"]
        ordered = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
        min_ready = int(spec.get("minReadySeconds") or 0)
        slots, surplus = self._slots(sts, pods)
        for ordinal, pod in slots.items():
            if pod is None:
                await self._create_pod(sts, ordinal, revision)
                if ordered:
                    return
                continue
            if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded") and not terminating(pod):
                await self._delete_pod(sts, pod)
                if ordered:
                    return
                continue
            if ordered and not healthy(pod, min_ready):
                self._look_again_when_available(sts, pod, min_ready)
                return
        for pod in surplus:
            if terminating(pod):
                if ordered:
                    return
                continue
            await self._delete_pod(sts, pod)
            if ordered:
                return
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return
        start = min(slots, default=0)
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        for ordinal in sorted(slots, reverse=True):
            if ordinal - start < partition:
                break
            pod = slots[ordinal]
            if pod is None:
                return
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if labels.get(REVISION_LABEL) != revision and not terminating(pod):
                await self._delete_pod(sts, pod)
                return
            if not healthy(pod, min_ready):
                self._look_again_when_available(sts, pod, min_ready)
                return

    def _look_again_when_available(self, sts: Obj, pod: Obj, min_ready: int) -> None:
        left = available_in(pod, min_ready)
        if left is not None and left > 0 and not terminating(pod):
            self.queue.add_after(f"{sts['metadata']['namespace']}/{sts['metadata']['name']}", left + 0.05)

    async def _create_pod(self, sts: Obj, ordinal: int, revision: str) -> None:
        set_name, namespace = sts["metadata"]["name"], sts["metadata"]["namespace"]
        template = sts["spec"].get("template") or {}
        tmeta = template.get("metadata") or {}
        name = f"{set_name}-{ordinal}"
        labels = {
            **(tmeta.get("labels") or {}),
            REVISION_LABEL: revision,
            POD_NAME_LABEL: name,
            POD_INDEX_LABEL: str(ordinal),
        }
        meta: Obj = {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [new_controller_ref(sts, api_version="apps/v1", kind="StatefulSet")],
        }
        for field in ("annotations", "finalizers"):
            if tmeta.get(field):
                meta[field] = copy.deepcopy(tmeta[field])
        pod_spec = copy.deepcopy(template.get("spec") or {})
        pod_spec["hostname"] = name
        if sts["spec"].get("serviceName"):
            pod_spec["subdomain"] = sts["spec"]["serviceName"]
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
        try:
            await self.api.request("POST", PODS.path(namespace), body=body)
        except KubeApiError as exc:
            if exc.status == 409 and exc.reason == "AlreadyExists":
                raise  # the cache is behind (or the old pod is still being removed): look again later
            message = f"create Pod {name} in StatefulSet {set_name} failed error: {exc.message}"
            self.events.record(sts, kind="StatefulSet", type="Warning", reason="FailedCreate", message=message)
            raise
        self._created[f"{namespace}/{name}"] = now().timestamp() + CREATED_TTL
        message = f"create Pod {name} in StatefulSet {set_name} successful"
        self.events.record(sts, kind="StatefulSet", type="Normal", reason="SuccessfulCreate", message=message)

    async def _delete_pod(self, sts: Obj, pod: Obj) -> None:
        namespace, name = key_of(pod)
        try:
            await self.api.request("DELETE", object_path(PODS, namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return
            message = f"delete Pod {name} in StatefulSet {sts['metadata']['name']} failed error: {exc.message}"
            self.events.record(sts, kind="StatefulSet", type="Warning", reason="FailedDelete", message=message)
            raise
        message = f"delete Pod {name} in StatefulSet {sts['metadata']['name']} successful"
        self.events.record(sts, kind="StatefulSet", type="Normal", reason="SuccessfulDelete", message=message)

    # -- status -------------------------------------------------------------------------------
    async def _write_status(self, sts: Obj, pods: list[Obj], revision: str) -> None:
        old = sts.get("status") or {}
        current_revision = str(old.get("currentRevision") or revision)
        min_ready = int(sts["spec"].get("minReadySeconds") or 0)
        counts = dict.fromkeys(("replicas", "readyReplicas", "availableReplicas", "currentReplicas"), 0)
        counts["updatedReplicas"] = 0
        for pod in pods:
            created = bool((pod.get("status") or {}).get("phase"))
            counts["replicas"] += created
            if running_and_ready(pod):
                counts["readyReplicas"] += 1
                left = available_in(pod, min_ready)
                counts["availableReplicas"] += left is not None and left <= 0
                self._look_again_when_available(sts, pod, min_ready)
            if created and not terminating(pod):
                pod_revision = ((pod.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL)
                counts["currentReplicas"] += pod_revision == current_revision
                counts["updatedReplicas"] += pod_revision == revision
        rolling = (sts["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
        if rolling and counts["updatedReplicas"] == counts["replicas"] == counts["readyReplicas"]:
            counts["currentReplicas"] = counts["updatedReplicas"]
            current_revision = revision
        status: Obj = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": counts["replicas"],
            "availableReplicas": counts["availableReplicas"],
            "currentRevision": current_revision,
            "updateRevision": revision,
            "collisionCount": int(old.get("collisionCount") or 0),
        }
        status.update({k: v for k, v in counts.items() if v and k not in status})
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if status == old:
            return
        path = object_path(STATEFULSETS, sts["metadata"]["namespace"], sts["metadata"]["name"], "status")
        try:
            await self.api.request("PUT", path, body={**sts, "status": status})
        except KubeApiError as exc:
            if exc.status != 404:
                raise
