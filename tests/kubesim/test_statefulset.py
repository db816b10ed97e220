"""kubesim's StatefulSet controller through the real kubectl, and the protobuf workloads kubectl sends.

No kubelet runs here: the test plays it (`FakeKubelet` marks pods Running and Ready through the
status subresource when told to); unbound pods are removed at once when deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.controllers import Controllers
from tests.kubesim.fixtures import Kubectl, KubectlError, eventually
from tests.kubesim.test_controllers import items, mark_ready

PODS = "/api/v1/namespaces/default/pods"
STS = "/apis/apps/v1/namespaces/default/statefulsets"


def statefulset(name: str, replicas: int, *, policy: str = "OrderedReady") -> str:
    return f"""
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  serviceName: {name}
  podManagementPolicy: {policy}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: db, image: example.com/db:1.0, ports: [{{containerPort: 5432}}]}}]
"""


@dataclass
class FakeKubelet:
    """Marks pods ready (all, or none while `paused`); records each pod as first seen."""

    api: KubeApi
    paused: bool = False
    created: list[str] = field(default_factory=list)  # pod names in the order they appeared
    unready_at_create: dict[str, list[str]] = field(default_factory=dict)  # other pods not ready then
    _uids: dict[str, str] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            pods = await items(self.api, PODS)
            names = {p["metadata"]["name"]: p for p in pods}
            for name, uid in list(self._uids.items()):
                if names.get(name, {}).get("metadata", {}).get("uid") != uid:
                    del self._uids[name]
            for pod in pods:
                name = pod["metadata"]["name"]
                if name not in self._uids:
                    self._uids[name] = pod["metadata"]["uid"]
                    self.created.append(name)
                    self.unready_at_create[name] = [
                        p["metadata"]["name"] for p in pods if p is not pod and not pod_ready(p)
                    ]
                if not self.paused and not pod_ready(pod):
                    with contextlib.suppress(KubeApiError):
                        await mark_ready(self.api, pod, f"10.244.0.{len(self.created) % 250 + 2}")
            await asyncio.sleep(0.05)


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )


@pytest.fixture(name="kubelet")
async def kubelet_fixture(kube_api: KubeApi) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(kube_api)
    task = asyncio.create_task(fake.run())
    try:
        yield fake
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def deletions(controllers: Controllers) -> list[str]:
    """The pods the StatefulSet controller deleted, in order (from its SuccessfulDelete events)."""
    return [
        e.message.split()[2] for e in controllers.events if e.kind == "StatefulSet" and e.reason == "SuccessfulDelete"
    ]


async def pod_names(api: KubeApi) -> list[str]:
    return sorted(p["metadata"]["name"] for p in await items(api, PODS))


async def sts_status(api: KubeApi, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (await api.request("GET", f"{STS}/{name}")).get("status") or {}
    return status


async def test_ordered_ready_creates_pods_one_at_a_time_with_stable_identities(
    controllers: Controllers, kubelet: FakeKubelet, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(statefulset("db", 3))
    done = await kubectl.run("rollout", "status", "statefulset/db", "--timeout=60s")
    assert "partitioned roll out complete: 3 new pods have been updated..." in done.stdout
    assert kubelet.created == ["db-0", "db-1", "db-2"]
    assert all(not others for others in kubelet.unready_at_create.values()), kubelet.unready_at_create
    status = await sts_status(kube_api, "db")
    assert status["replicas"] == status["readyReplicas"] == status["updatedReplicas"] == 3
    assert status["currentRevision"] == status["updateRevision"] and status["observedGeneration"] == 1
    sts = await kube_api.request("GET", f"{STS}/db")
    for ordinal, pod in enumerate(sorted(await items(kube_api, PODS), key=lambda p: p["metadata"]["name"])):
        labels = pod["metadata"]["labels"]
        assert labels["controller-revision-hash"] == status["updateRevision"]
        assert labels["statefulset.kubernetes.io/pod-name"] == f"db-{ordinal}"
        assert labels["apps.kubernetes.io/pod-index"] == str(ordinal)
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"db-{ordinal}", "db")
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("StatefulSet", sts["metadata"]["uid"], True)
    table = (await kubectl.run("get", "statefulsets")).stdout.split()
    assert table[:6] == ["NAME", "READY", "AGE", "db", "3/3", table[5]]


async def test_ordered_ready_waits_for_each_pod_to_be_ready(
    controllers: Controllers, kubelet: FakeKubelet, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    kubelet.paused = True
    await kubectl.apply(statefulset("db", 3))
    await eventually(lambda: _equal(pod_names(kube_api), ["db-0"]), what="db-0 alone")
    await asyncio.sleep(0.5)  # no progress while db-0 is not ready
    assert await pod_names(kube_api) == ["db-0"]
    kubelet.paused = False
    await eventually(lambda: _equal(pod_names(kube_api), ["db-0", "db-1", "db-2"]), what="all three")


async def test_parallel_creates_every_pod_at_once(
    controllers: Controllers, kubelet: FakeKubelet, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    kubelet.paused = True
    await kubectl.apply(statefulset("db", 3, policy="Parallel"))
    await eventually(lambda: _equal(pod_names(kube_api), ["db-0", "db-1", "db-2"]), what="all three, none ready")


async def test_rollout_restart_replaces_pods_from_the_highest_ordinal_one_at_a_time(
    controllers: Controllers, kubelet: FakeKubelet, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(statefulset("db", 3))
    await kubectl.run("rollout", "status", "statefulset/db", "--timeout=60s")
    before = await sts_status(kube_api, "db")
    kubelet.created.clear()
    kubelet.unready_at_create.clear()
    await kubectl.run("rollout", "restart", "statefulset/db")
    done = await kubectl.run("rollout", "status", "statefulset/db", "--timeout=60s")
    assert "partitioned roll out complete: 3 new pods have been updated..." in done.stdout
    assert deletions(controllers) == ["db-2", "db-1", "db-0"]
    assert kubelet.created == ["db-2", "db-1", "db-0"]
    assert all(not others for others in kubelet.unready_at_create.values()), kubelet.unready_at_create
    after = await eventually(
        lambda: _settled(sts_status(kube_api, "db")), what="currentRevision to follow the update revision"
    )
    assert after["updateRevision"] != before["updateRevision"]
    assert after["currentReplicas"] == after["updatedReplicas"] == 3 and after["observedGeneration"] == 2
    for pod in await items(kube_api, PODS):
        assert pod["metadata"]["labels"]["controller-revision-hash"] == after["updateRevision"]
        assert "kubectl.kubernetes.io/restartedAt" in pod["metadata"]["annotations"]


async def test_scaling_adds_the_next_ordinals_and_removes_the_highest_first(
    controllers: Controllers, kubelet: FakeKubelet, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(statefulset("db", 2))
    await kubectl.run("rollout", "status", "statefulset/db", "--timeout=60s")
    await kubectl.run("scale", "statefulset/db", "--replicas=4")
    await eventually(lambda: _equal(pod_names(kube_api), ["db-0", "db-1", "db-2", "db-3"]), what="4 pods")
    await kubectl.run("scale", "statefulset/db", "--replicas=1")
    await eventually(lambda: _equal(pod_names(kube_api), ["db-0"]), what="1 pod")
    assert deletions(controllers) == ["db-3", "db-2", "db-1"]
    await eventually(lambda: _field(sts_status(kube_api, "db"), "replicas", 1), what="status.replicas 1")


async def test_a_deleted_pod_comes_back_under_its_name(
    controllers: Controllers, kubelet: FakeKubelet, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(statefulset("db", 2))
    await kubectl.run("rollout", "status", "statefulset/db", "--timeout=60s")
    old = (await kube_api.request("GET", f"{PODS}/db-1"))["metadata"]["uid"]
    await kubectl.run("delete", "pod", "db-1")
    fresh = await eventually(lambda: _uid_other_than(kube_api, "db-1", old), what="db-1 created again")
    assert fresh != old


async def test_deleting_the_statefulset_removes_its_pods(
    controllers: Controllers, kubelet: FakeKubelet, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(statefulset("db", 2))
    await kubectl.run("rollout", "status", "statefulset/db", "--timeout=60s")
    await kubectl.run("delete", "statefulset", "db")
    await eventually(lambda: _equal(pod_names(kube_api), []), what="pods collected")


async def test_bad_statefulsets_are_refused_naming_the_field(kubectl: Kubectl) -> None:
    bad = statefulset("db", 1).replace("podManagementPolicy: OrderedReady", "podManagementPolicy: Sometimes")
    with pytest.raises(KubectlError, match=r'spec.podManagementPolicy: Unsupported value: "Sometimes"'):
        await kubectl.apply(bad)
    await kubectl.apply(statefulset("db", 1))
    with pytest.raises(KubectlError, match=r"spec: Forbidden: updates to statefulset spec for fields other than"):
        await kubectl.apply(statefulset("db", 1).replace("serviceName: db", "serviceName: other"))


async def test_kubectl_create_deployment_is_decoded_from_protobuf(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.run(
        "create", "deployment", "web", "--image=example.com/web:1.0", "--replicas=0", "--port=8080", "--", "serve"
    )
    deployment = await kube_api.request("GET", "/apis/apps/v1/namespaces/default/deployments/web")
    spec = deployment["spec"]
    assert spec["replicas"] == 0
    assert spec["selector"] == {"matchLabels": {"app": "web"}}
    assert spec["template"]["metadata"]["labels"] == {"app": "web"}
    (container,) = spec["template"]["spec"]["containers"]
    assert (container["name"], container["image"], container["command"]) == ("web", "example.com/web:1.0", ["serve"])
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}


async def _equal(names: Any, expected: list[str]) -> bool:
    return bool(await names == expected)


async def _field(status: Any, name: str, value: int) -> bool:
    return bool((await status).get(name) == value)


async def _settled(status: Any) -> dict[str, Any] | None:
    current: dict[str, Any] = await status
    return current if current.get("currentRevision") == current.get("updateRevision") else None


async def _uid_other_than(api: KubeApi, name: str, uid: str) -> str | None:
    with contextlib.suppress(KubeApiError):
        pod = await api.request("GET", f"{PODS}/{name}")
        if pod["metadata"]["uid"] != uid:
            return str(pod["metadata"]["uid"])
    return None
