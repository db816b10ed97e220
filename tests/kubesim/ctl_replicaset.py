"""The ReplicaSet controller: keeps `spec.replicas` pods of the template, and reports their status.

Pods are created through the API (so admission webhooks see them) with `generateName: <rs>-` and
a controller ownerReference; pods being deleted or finished do not count. A create the API server
refuses (a webhook with `failurePolicy: Fail` that is down, say) is recorded as a `FailedCreate`
event and retried with backoff, and the ReplicaSet carries a `ReplicaFailure` condition until a
sync succeeds. Status: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (ready for
`minReadySeconds`), observedGeneration.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.ctl_base import (
    PODS,
    REPLICASETS,
    Controller,
    EventLog,
    Expectations,
    Informer,
    Obj,
    key_of,
    new_controller_ref,
    now,
    object_path,
    owned_by,
    owner_key,
    pod_active,
    pod_ready_since,
    stamp,
)

BURST_REPLICAS = 500  # at most this many creations or deletions per sync, as upstream


def _delete_rank(pod: Mapping[str, Any]) -> tuple[int, int, int, str]:
    """Which pods go first on scale-down: unbound, then pending, then not ready, then the newest."""
    status = pod.get("status") or {}
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(str(status.get("phase")), 0)
    created = str((pod.get("metadata") or {}).get("creationTimestamp") or "")
    newest_first = "".join(chr(0x10FFFF - ord(c)) for c in created)
    return (
        1 if (pod.get("spec") or {}).get("nodeName") else 0,
        phase_rank,
        int(pod_ready_since(pod) is not None),
        newest_first,
    )


class ReplicaSetController(Controller):
    name = "replicaset-controller"

    def __init__(self, *, api: KubeApi, replicasets: Informer, pods: Informer, events: EventLog) -> None:
        super().__init__(api=api, informers=(replicasets, pods), events=events)
        self.replicasets = replicasets
        self.pods = pods
        self.expectations = Expectations()
        replicasets.subscribe(self._on_replicaset)
        pods.subscribe(self._on_pod)

    def _on_replicaset(self, old: Obj | None, new: Obj | None) -> None:
        ns, name = key_of(new if new is not None else old or {})
        self.queue.add(f"{ns}/{name}")

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        pod = new if new is not None else old
        key = owner_key(pod, "ReplicaSet")
        if pod is None or key is None:
            return
        name = key_of(pod)[1]
        if old is None:
            self.expectations.created(key)
        elif new is None or (new["metadata"].get("deletionTimestamp") and not old["metadata"].get("deletionTimestamp")):
            self.expectations.deleted(key, name)
        self.queue.add(key)

    async def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        rs = self.replicasets.get(namespace, name)
        if rs is None:
            self.expectations.drop(key)
            return
        pods = [p for p in self.pods.list(namespace) if owned_by(p, rs)]
        active = [p for p in pods if pod_active(p)]
        error: KubeApiError | None = None
        if not rs["metadata"].get("deletionTimestamp") and self.expectations.satisfied(key):
            try:
                await self._manage(key, rs, active)
            except KubeApiError as exc:
                error = exc
        await self._write_status(rs, active, error)
        if error is not None:
            raise error

    async def _manage(self, key: str, rs: Obj, active: list[Obj]) -> None:
        diff = len(active) - int(rs["spec"].get("replicas", 1))
        if diff < 0:
            wanted = min(-diff, BURST_REPLICAS)
            self.expectations.expect(key, adds=wanted)
            created = 0
            batch = 1
            while created < wanted:  # slow start: 1, 2, 4, ... at a time, stopping at the first failure
                size = min(batch, wanted - created)
                results = await asyncio.gather(*(self._create_pod(rs) for _ in range(size)), return_exceptions=True)
                failures = [r for r in results if isinstance(r, BaseException)]
                created += size
                if failures:
                    for _ in range(wanted - created + len(failures)):
                        self.expectations.created(key)  # never coming
                    raise failures[0]
                batch *= 2
        elif diff > 0:
            doomed = sorted(active, key=_delete_rank)[: min(diff, BURST_REPLICAS)]
            self.expectations.expect(key, deletes=[p["metadata"]["name"] for p in doomed])
            for pod in doomed:
                try:
                    await self.api.request(
                        "DELETE", object_path(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
                    )
                except KubeApiError as exc:
                    self.expectations.deleted(key, pod["metadata"]["name"])
                    if exc.status != 404:
                        raise
                self.events.record(
                    rs,
                    kind="ReplicaSet",
                    type="Normal",
                    reason="SuccessfulDelete",
                    message=f"Deleted pod: {pod['metadata']['name']}",
                )

    async def _create_pod(self, rs: Obj) -> None:
        template = rs["spec"].get("template") or {}
        tmeta = template.get("metadata") or {}
        meta: Obj = {
            "generateName": f"{rs['metadata']['name']}-",
            "namespace": rs["metadata"]["namespace"],
            "ownerReferences": [new_controller_ref(rs, api_version="apps/v1", kind="ReplicaSet")],
        }
        for field in ("labels", "annotations", "finalizers"):
            if tmeta.get(field):
                meta[field] = copy.deepcopy(tmeta[field])
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}
        try:
            pod = await self.api.request("POST", PODS.path(rs["metadata"]["namespace"]), body=body)
        except KubeApiError as exc:
            self.events.record(
                rs, kind="ReplicaSet", type="Warning", reason="FailedCreate", message=f"Error creating: {exc.message}"
            )
            raise
        self.events.record(
            rs,
            kind="ReplicaSet",
            type="Normal",
            reason="SuccessfulCreate",
            message=f"Created pod: {pod['metadata']['name']}",
        )

    async def _write_status(self, rs: Obj, active: list[Obj], error: KubeApiError | None) -> None:
        spec = rs["spec"]
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        current = now()
        ready = available = labelled = 0
        next_check: float | None = None
        for pod in active:
            labels = pod["metadata"].get("labels") or {}
            labelled += all(labels.get(k) == v for k, v in template_labels.items())
            since = pod_ready_since(pod)
            if since is None:
                continue
            ready += 1
            waited = (current - since).total_seconds()
            if waited >= min_ready:
                available += 1
            else:
                remaining = min_ready - waited
                next_check = remaining if next_check is None else min(next_check, remaining)
        old_status = rs.get("status") or {}
        status: Obj = {"replicas": len(active)}
        for field, value in (
            ("fullyLabeledReplicas", labelled),
            ("readyReplicas", ready),
            ("availableReplicas", available),
        ):
            if value:
                status[field] = value
        status["observedGeneration"] = rs["metadata"].get("generation", 1)
        conditions = [c for c in old_status.get("conditions") or [] if c.get("type") != "ReplicaFailure"]
        if error is not None:
            diff = len(active) - int(spec.get("replicas", 1))
            previous = next((c for c in old_status.get("conditions") or [] if c.get("type") == "ReplicaFailure"), None)
            conditions.append(
                previous
                or {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "lastTransitionTime": stamp(current),
                    "reason": "FailedCreate" if diff < 0 else "FailedDelete",
                    "message": error.message,
                }
            )
        if conditions:
            status["conditions"] = conditions
        if next_check is not None:
            self.queue.add_after(f"{rs['metadata']['namespace']}/{rs['metadata']['name']}", next_check + 0.05)
        if status == old_status:
            return
        body = {**rs, "status": status}
        path = object_path(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"], "status")
        try:
            await self.api.request("PUT", path, body=body)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
