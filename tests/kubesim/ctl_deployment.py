"""The Deployment controller: ReplicaSets `<deployment>-<pod-template-hash>`, rollouts and status.

As upstream's `pkg/controller/deployment`: the new ReplicaSet is the one whose template equals the
Deployment's (ignoring the hash label); RollingUpdate scales it up within `replicas + maxSurge`
pods and old ones down while `replicas - maxUnavailable` stay *available*; Recreate scales the old
ones to 0 and waits for their pods to be gone before scaling the new one up. A scale change of a
settled Deployment resizes the active ReplicaSet(s) at once; old ReplicaSets scaled to 0 beyond
`revisionHistoryLimit` are deleted. Revisions live in `deployment.kubernetes.io/revision`, and
the status (counts, Available and Progressing conditions) is what `kubectl rollout status` reads.
"""

from __future__ import annotations

import copy
from typing import Any

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim import ctl_rollout as ro
from tests.kubesim.ctl_base import (
    DEPLOYMENTS,
    REPLICASETS,
    Controller,
    EventLog,
    Informer,
    Obj,
    controller_ref,
    key_of,
    new_controller_ref,
    now,
    object_path,
    owned_by,
    owner_key,
)


def _created(rs: Obj) -> tuple[str, str]:
    return str(rs["metadata"].get("creationTimestamp") or ""), str(rs["metadata"]["name"])


class DeploymentController(Controller):
    name = "deployment-controller"

    def __init__(
        self, *, api: KubeApi, deployments: Informer, replicasets: Informer, pods: Informer, events: EventLog
    ) -> None:
        super().__init__(api=api, informers=(deployments, replicasets, pods), events=events)
        self.deployments = deployments
        self.replicasets = replicasets
        self.pods = pods
        deployments.subscribe(lambda old, new: self._enqueue(new if new is not None else old))
        replicasets.subscribe(self._on_replicaset)
        pods.subscribe(self._on_pod)

    def _enqueue(self, deployment: Obj | None) -> None:
        if deployment is not None:
            namespace, name = key_of(deployment)
            self.queue.add(f"{namespace}/{name}")

    def _on_replicaset(self, old: Obj | None, new: Obj | None) -> None:
        owner = owner_key(new if new is not None else old, "Deployment")
        if owner is not None:
            self.queue.add(owner)

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        if new is not None:
            return  # a Recreate rollout waits for old pods to be *gone*
        ref = controller_ref(old) if old is not None else None
        if old is None or ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.replicasets.get(key_of(old)[0], str(ref["name"]))
        if rs is not None:
            self._on_replicaset(None, rs)

    # -- the sync -----------------------------------------------------------------------------
    async def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        cached = self.deployments.get(namespace, name)
        if cached is None:
            return
        d = copy.deepcopy(cached)
        rss = sorted((rs for rs in self.replicasets.list(namespace) if owned_by(rs, d)), key=_created)
        new_rs, old_rss = self._split(d, rss)
        if d["metadata"].get("deletionTimestamp") or d["spec"].get("paused"):
            await self._sync_status(d, [*old_rss, *([new_rs] if new_rs else [])], new_rs)
            return
        if self._scaling_event(d, new_rs, old_rss):
            await self._scale(d, new_rs, old_rss)
        elif d["spec"]["strategy"].get("type") == "Recreate":
            await self._recreate(d, new_rs, old_rss)
        else:
            await self._rolling(d, new_rs, old_rss)

    @staticmethod
    def _split(d: Obj, rss: list[Obj]) -> tuple[Obj | None, list[Obj]]:
        """(the ReplicaSet of the current template, the others), oldest first."""
        template = ro.without_hash(d["spec"]["template"])
        new_rs = next((rs for rs in rss if ro.without_hash(rs["spec"]["template"]) == template), None)
        return new_rs, [rs for rs in rss if rs is not new_rs]

    def _scaling_event(self, d: Obj, new_rs: Obj | None, old_rss: list[Obj]) -> bool:
        active = [rs for rs in [new_rs, *old_rss] if rs is not None and ro.replicas(rs) > 0]
        desired = str(d["spec"].get("replicas", 1))
        annotations = [(rs["metadata"].get("annotations") or {}).get(ro.DESIRED_REPLICAS) for rs in active]
        return new_rs is not None and any(a is not None and a != desired for a in annotations)

    async def _new_replicaset(self, d: Obj, new_rs: Obj | None, old_rss: list[Obj], *, size: int) -> Obj:
        """The new ReplicaSet, created (with `size` replicas) when missing; its revision brought up to date."""
        next_revision = max((ro.revision(rs) for rs in old_rss), default=0) + 1
        if new_rs is not None:
            if ro.revision(new_rs) < next_revision or new_rs["spec"].get("minReadySeconds", 0) != d["spec"].get(
                "minReadySeconds", 0
            ):
                updated = copy.deepcopy(new_rs)
                updated["metadata"].setdefault("annotations", {}).update(ro.copied_annotations(d))
                updated["metadata"]["annotations"][ro.REVISION] = str(max(next_revision, ro.revision(new_rs)))
                updated["spec"]["minReadySeconds"] = d["spec"].get("minReadySeconds", 0)
                new_rs = await self._write_rs(updated)
            await self._note_revision(
                d, new_rs, ro.FOUND_NEW_RS, f'Found new replica set "{new_rs["metadata"]["name"]}"'
            )
            return new_rs
        collisions = int((d.get("status") or {}).get("collisionCount") or 0)
        pod_hash = ro.template_hash(d["spec"]["template"], collisions)
        template = copy.deepcopy(d["spec"]["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[ro.HASH_LABEL] = pod_hash
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[ro.HASH_LABEL] = pod_hash
        surge, _ = ro.fenceposts(d)
        desired = int(d["spec"].get("replicas", 1))
        annotations = {
            **ro.copied_annotations(d),
            ro.REVISION: str(next_revision),
            ro.DESIRED_REPLICAS: str(desired),
            ro.MAX_REPLICAS: str(desired + surge),
        }
        body = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{d['metadata']['name']}-{pod_hash}",
                "namespace": d["metadata"]["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [new_controller_ref(d, api_version="apps/v1", kind="Deployment")],
            },
            "spec": {
                "replicas": size,
                "minReadySeconds": d["spec"].get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        try:
            created = await self.api.request("POST", REPLICASETS.path(d["metadata"]["namespace"]), body=body)
        except KubeApiError as exc:
            if exc.status == 409 and exc.reason == "AlreadyExists":
                await self._collision(d)
            raise
        self.events.record(
            d,
            kind="Deployment",
            type="Normal",
            reason="ScalingReplicaSet",
            message=f"Scaled up replica set {created['metadata']['name']} from 0 to {size}",
        )
        await self._note_revision(
            d, created, ro.NEW_RS_CREATED, f'Created new replica set "{created["metadata"]["name"]}"'
        )
        return created

    async def _collision(self, d: Obj) -> None:
        """A ReplicaSet of that name exists but is not ours (or has another template): bump collisionCount."""
        status = copy.deepcopy(d.get("status") or {})
        status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
        await self._put_status(d, status)

    async def _note_revision(self, d: Obj, rs: Obj, reason: str, message: str) -> None:
        """The Deployment's revision annotation follows its new ReplicaSet; a first Progressing condition."""
        wanted = (rs["metadata"].get("annotations") or {}).get(ro.REVISION)
        if wanted and (d["metadata"].get("annotations") or {}).get(ro.REVISION) != wanted:
            patch = {
                "metadata": {"resourceVersion": d["metadata"]["resourceVersion"], "annotations": {ro.REVISION: wanted}}
            }
            path = object_path(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"])
            patched = await self.api.request("PATCH", path, body=patch, content_type="application/merge-patch+json")
            d["metadata"] = patched["metadata"]
        status = d.get("status") or {}
        if d["spec"].get("progressDeadlineSeconds") is not None and ro.condition(status, "Progressing") is None:
            status = copy.deepcopy(status)
            ro.set_condition(status, ro.new_condition("Progressing", "True", reason, message, now()))
            await self._put_status(d, status)

    async def _scale_rs(self, d: Obj, rs: Obj, size: int) -> Obj:
        surge, _ = ro.fenceposts(d)
        desired = int(d["spec"].get("replicas", 1))
        annotations = {ro.DESIRED_REPLICAS: str(desired), ro.MAX_REPLICAS: str(desired + surge)}
        current = rs["metadata"].get("annotations") or {}
        if ro.replicas(rs) == size and all(current.get(k) == v for k, v in annotations.items()):
            return rs
        updated = copy.deepcopy(rs)
        updated["spec"]["replicas"] = size
        updated["metadata"].setdefault("annotations", {}).update(annotations)
        stored = await self._write_rs(updated)
        if ro.replicas(rs) != size:
            verb = "up" if size > ro.replicas(rs) else "down"
            self.events.record(
                d,
                kind="Deployment",
                type="Normal",
                reason="ScalingReplicaSet",
                message=f"Scaled {verb} replica set {rs['metadata']['name']} from {ro.replicas(rs)} to {size}",
            )
        return stored

    async def _write_rs(self, rs: Obj) -> Obj:
        path = object_path(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])
        stored: Obj = await self.api.request("PUT", path, body=rs)  # carries resourceVersion: 409 when stale
        return stored

    # -- strategies ---------------------------------------------------------------------------
    async def _scale(self, d: Obj, new_rs: Obj | None, old_rss: list[Obj]) -> None:
        """A settled Deployment's replicas changed: resize the active ReplicaSets (proportionally if several)."""
        desired = int(d["spec"].get("replicas", 1))
        everything = [rs for rs in [new_rs, *old_rss] if rs is not None]
        active = [rs for rs in everything if ro.replicas(rs) > 0]
        if len(active) <= 1:
            target = active[0] if active else new_rs
            if target is not None:
                scaled = await self._scale_rs(d, target, desired)
                new_rs = scaled if target is new_rs else new_rs
        else:
            surge, _ = ro.fenceposts(d)
            allowed = desired + surge if d["spec"]["strategy"].get("type") == "RollingUpdate" else desired
            total = sum(ro.replicas(rs) for rs in active)
            change = allowed - total
            sizes = {rs["metadata"]["name"]: ro.replicas(rs) + (change * ro.replicas(rs)) // total for rs in active}
            leftover = allowed - sum(sizes.values())
            biggest = max(active, key=lambda rs: (ro.replicas(rs), _created(rs)))
            sizes[biggest["metadata"]["name"]] += leftover
            for rs in active:
                await self._scale_rs(d, rs, max(0, sizes[rs["metadata"]["name"]]))
        await self._sync_status(d, everything, new_rs)

    async def _rolling(self, d: Obj, new_rs: Obj | None, old_rss: list[Obj]) -> None:
        desired = int(d["spec"].get("replicas", 1))
        surge, unavailable = ro.fenceposts(d)
        if new_rs is None:
            total = sum(ro.replicas(rs) for rs in old_rss)
            size = max(0, min(desired + surge - total, desired))
            new_rs = await self._new_replicaset(d, None, old_rss, size=size)
        else:
            new_rs = await self._new_replicaset(d, new_rs, old_rss, size=0)
            if ro.replicas(new_rs) > desired:
                new_rs = await self._scale_rs(d, new_rs, desired)
            elif ro.replicas(new_rs) < desired:
                total = sum(ro.replicas(rs) for rs in [new_rs, *old_rss])
                grow = min(max(0, desired + surge - total), desired - ro.replicas(new_rs))
                if grow:
                    new_rs = await self._scale_rs(d, new_rs, ro.replicas(new_rs) + grow)
                    return await self._sync_status(d, [*old_rss, new_rs], new_rs)
        if any(ro.replicas(rs) for rs in old_rss) and await self._rolling_down(d, new_rs, old_rss, unavailable):
            return await self._sync_status(d, [*old_rss, new_rs], new_rs)
        await self._finish(d, new_rs, old_rss)

    async def _rolling_down(self, d: Obj, new_rs: Obj, old_rss: list[Obj], unavailable: int) -> bool:
        """Scale old ReplicaSets down, unhealthy pods first, keeping `replicas - maxUnavailable` available."""
        desired = int(d["spec"].get("replicas", 1))
        min_available = desired - unavailable
        every = [new_rs, *old_rss]
        new_unavailable = ro.replicas(new_rs) - ro.status_count(new_rs, "availableReplicas")
        budget = sum(ro.replicas(rs) for rs in every) - min_available - new_unavailable
        if budget <= 0:
            return False
        scaled = 0
        for i, rs in enumerate(old_rss):  # unhealthy replicas cost no availability
            unhealthy = ro.replicas(rs) - ro.status_count(rs, "availableReplicas")
            if scaled >= budget:
                break
            if ro.replicas(rs) == 0 or unhealthy <= 0:
                continue
            step = min(budget - scaled, unhealthy)
            old_rss[i] = await self._scale_rs(d, rs, ro.replicas(rs) - step)
            scaled += step
        available = sum(ro.status_count(rs, "availableReplicas") for rs in [new_rs, *old_rss])
        room = available - min_available
        taken = 0
        for i, rs in enumerate(old_rss):
            if taken >= room:
                break
            if ro.replicas(rs) == 0:
                continue
            step = min(ro.replicas(rs), room - taken)
            old_rss[i] = await self._scale_rs(d, rs, ro.replicas(rs) - step)
            taken += step
        return scaled + taken > 0

    async def _recreate(self, d: Obj, new_rs: Obj | None, old_rss: list[Obj]) -> None:
        for i, rs in enumerate(old_rss):
            if ro.replicas(rs) > 0:
                old_rss[i] = await self._scale_rs(d, rs, 0)
        old_uids = {rs["metadata"]["uid"] for rs in old_rss}
        pods_left = [
            p for p in self.pods.list(d["metadata"]["namespace"]) if (controller_ref(p) or {}).get("uid") in old_uids
        ]
        if any(ro.status_count(rs, "replicas") for rs in old_rss) or any(
            (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for p in pods_left
        ):
            await self._sync_status(d, [*old_rss, *([new_rs] if new_rs else [])], new_rs)
            return
        desired = int(d["spec"].get("replicas", 1))
        new_rs = await self._new_replicaset(d, new_rs, old_rss, size=desired)
        new_rs = await self._scale_rs(d, new_rs, desired)
        await self._finish(d, new_rs, old_rss)

    async def _finish(self, d: Obj, new_rs: Obj, old_rss: list[Obj]) -> None:
        every = [*old_rss, new_rs]
        status = ro.calculate_status(d, every, new_rs, now())
        if ro.complete(d, status):
            await self._cleanup(d, old_rss)
        await self._sync_status(d, every, new_rs)

    async def _cleanup(self, d: Obj, old_rss: list[Obj]) -> None:
        """Delete the oldest revisions of ReplicaSets scaled to 0 beyond revisionHistoryLimit."""
        limit = d["spec"].get("revisionHistoryLimit")
        alive = [rs for rs in old_rss if not rs["metadata"].get("deletionTimestamp")]
        if limit is None or len(alive) <= int(limit):
            return
        for rs in sorted(alive, key=ro.revision)[: len(alive) - int(limit)]:
            settled = ro.status_count(rs, "observedGeneration") >= rs["metadata"].get("generation", 1)
            if ro.replicas(rs) or ro.status_count(rs, "replicas") or not settled:
                continue
            path = object_path(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])
            body = {"preconditions": {"uid": rs["metadata"]["uid"]}}
            try:
                await self.api.request("DELETE", path, body=body)
            except KubeApiError as exc:
                if exc.status not in (404, 409):
                    raise

    # -- status -------------------------------------------------------------------------------
    async def _sync_status(self, d: Obj, every: list[Obj], new_rs: Obj | None) -> None:
        when = now()
        fresh = [self._latest(rs) for rs in every]
        fresh_new = self._latest(new_rs) if new_rs is not None else None
        status = ro.calculate_status(d, fresh, fresh_new, when)
        left = ro.deadline_left(d, status, when)
        if left is not None and left > 0 and not ro.complete(d, status):
            self.queue.add_after(f"{d['metadata']['namespace']}/{d['metadata']['name']}", left + 1)
        if status != (d.get("status") or {}):
            await self._put_status(d, status)

    def _latest(self, rs: Obj) -> Obj:
        """The newer of a ReplicaSet as this sync last wrote it and as the cache holds it."""
        cached = self.replicasets.get(*key_of(rs))
        if cached is None or int(cached["metadata"]["resourceVersion"]) < int(rs["metadata"]["resourceVersion"]):
            return rs
        return cached

    async def _put_status(self, d: Obj, status: Any) -> None:
        path = object_path(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"], "status")
        try:
            stored = await self.api.request("PUT", path, body={**d, "status": status})
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            return
        d["metadata"], d["status"] = stored["metadata"], stored.get("status") or {}
