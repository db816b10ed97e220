"""kubesim's controllers and graceful deletion, through the real kubectl.

No kubelet runs here: where pods must become ready, the test plays the kubelet (it writes pod
status through the `status` subresource, as the kubelet does). Pods without `spec.nodeName` are
removed at once when deleted; a test that binds a pod deletes it again with grace 0 as the kubelet
would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.controllers import Controllers
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.server import KubeSim

PODS = "/api/v1/namespaces/default/pods"
RS = "/apis/apps/v1/namespaces/default/replicasets"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def items(api: KubeApi, path: str, **query: str) -> list[dict[str, Any]]:
    return list((await api.request("GET", path, query=list(query.items())))["items"])


async def mark_ready(api: KubeApi, pod: dict[str, Any], ip: str, *, ready: bool = True) -> None:
    """What the kubelet reports for a running pod (Ready as asked) with IP `ip`."""
    meta = pod["metadata"]
    containers = [c["name"] for c in pod["spec"]["containers"]]
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _stamp()}],
        "containerStatuses": [
            {
                "name": c,
                "ready": ready,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": _stamp()}},
            }
            for c in containers
        ],
    }
    await api.request(
        "PATCH",
        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
        body={"status": status},
        content_type="application/merge-patch+json",
    )


@contextlib.asynccontextmanager
async def kubelet(api: KubeApi) -> AsyncIterator[dict[str, int]]:
    """Marks every new pod Running and Ready; yields counters (`most`: most live pods seen at once)."""
    seen: dict[str, int] = {"most": 0}
    addresses = (f"10.244.{n // 250}.{n % 250 + 2}" for n in itertools.count())

    async def loop() -> None:
        while True:
            pods = await items(api, PODS)
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            seen["most"] = max(seen["most"], len(live))
            for pod in live:
                if not pod.get("status", {}).get("podIP"):
                    with contextlib.suppress(KubeApiError):
                        await mark_ready(api, pod, next(addresses))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def replicasets(api: KubeApi) -> list[dict[str, Any]]:
    return await items(api, RS)


async def live_pods(api: KubeApi, **query: str) -> list[dict[str, Any]]:
    return [p for p in await items(api, PODS, **query) if not p["metadata"].get("deletionTimestamp")]


# -- Deployment -> ReplicaSet -> Pods --------------------------------------------------------------


async def test_create_deployment_then_rollout_status_succeeds(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(_deployment("web", 2))
    pods = await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods")
    (rs,) = await replicasets(kube_api)
    pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{pod_hash}"
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Deployment", "web", True)
    for pod in pods:
        assert pod["metadata"]["name"].startswith(f"web-{pod_hash}-")
        assert pod["metadata"]["labels"]["pod-template-hash"] == pod_hash
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    waiting = await kubectl.run("rollout", "status", "deployment/web", "--timeout=1s", check=False)
    assert waiting.returncode != 0
    assert "0 of 2 updated replicas are available" in waiting.stdout
    async with kubelet(kube_api):
        done = await kubectl.run("rollout", "status", "deployment/web", "--timeout=30s")
    assert 'deployment "web" successfully rolled out' in done.stdout
    deployment = await kubectl.json("get", "deployment", "web")
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    status = deployment["status"]
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (2, 2, 2)
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons == {"Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}
    table = (await kubectl.run("get", "deployment", "web")).stdout.split("\n")[1].split()
    assert table[:4] == ["web", "2/2", "2", "2"]


async def _count(pods: Any, n: int) -> Any:
    found = await pods
    return found if len(found) == n else None


async def test_rollout_restart_replaces_every_pod_within_the_surge(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(_deployment("web", 4))
    async with kubelet(kube_api) as seen:
        await kubectl.run("rollout", "status", "deployment/web", "--timeout=30s")
        before = {p["metadata"]["name"] for p in await live_pods(kube_api)}
        seen["most"] = 0
        await kubectl.run("rollout", "restart", "deployment/web")
        done = await kubectl.run("rollout", "status", "deployment/web", "--timeout=30s")
    assert 'deployment "web" successfully rolled out' in done.stdout
    assert seen["most"] <= 5  # 4 replicas + maxSurge 25% (rounded up: 1)
    after = await live_pods(kube_api)
    assert len(after) == 4 and not before & {p["metadata"]["name"] for p in after}
    rss = {rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: rs for rs in await replicasets(kube_api)}
    assert rss["1"]["spec"]["replicas"] == 0 and rss["2"]["spec"]["replicas"] == 4
    template = rss["2"]["spec"]["template"]["metadata"]
    assert "kubectl.kubernetes.io/restartedAt" in template["annotations"]
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == rss["2"]["metadata"]["uid"] for p in after)
    deployment = await kubectl.json("get", "deployment", "web")
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"


async def test_scale_up_and_down(controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply(_deployment("web", 1))
    await eventually(lambda: _count(live_pods(kube_api), 1), what="1 pod")
    out = await kubectl.run("scale", "deployment/web", "--replicas=3")
    assert "deployment.apps/web scaled" in out.stdout
    await eventually(lambda: _count(live_pods(kube_api), 3), what="3 pods")
    await kubectl.run("scale", "deployment/web", "--replicas=1")
    await eventually(lambda: _count(live_pods(kube_api), 1), what="1 pod after scaling down")
    assert len(await replicasets(kube_api)) == 1
    scale = await kube_api.request("GET", f"{DEPLOY}/web/scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1


async def test_recreate_never_runs_old_and_new_pods_together(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    manifest = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  strategy: {type: Recreate}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: "nginx:1.25"}]}
"""
    await kubectl.apply(manifest)
    async with kubelet(kube_api) as seen:
        await kubectl.run("rollout", "status", "deployment/web", "--timeout=30s")
        seen["most"] = 0
        await kubectl.run("set", "image", "deployment/web", "app=nginx:1.26")
        await kubectl.run("rollout", "status", "deployment/web", "--timeout=30s")
    assert seen["most"] <= 2
    images = {p["spec"]["containers"][0]["image"] for p in await live_pods(kube_api)}
    assert images == {"nginx:1.26"}


async def test_revision_history_limit_deletes_the_oldest_replicasets(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(_deployment("web", 1))
    await kubectl.run("patch", "deployment", "web", "-p", '{"spec":{"revisionHistoryLimit":1}}')
    async with kubelet(kube_api):
        for image in ("nginx:1.26", "nginx:1.27", "nginx:1.28"):
            await kubectl.run("set", "image", "deployment/web", f"nginx={image}")
            await kubectl.run("rollout", "status", "deployment/web", "--timeout=30s")

        async def two_left() -> Any:
            revisions = {
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] for rs in await replicasets(kube_api)
            }
            return revisions == {"3", "4"}

        await eventually(two_left, what="revisions 3 and 4 only")


# -- ReplicaSet ------------------------------------------------------------------------------------


async def test_replicaset_replaces_a_deleted_pod(controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply(_replicaset("cache", 2))
    pods = await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods")
    assert all(p["metadata"]["generateName"] == "cache-" for p in pods)
    gone = pods[0]["metadata"]["name"]
    await kubectl.run("delete", "pod", gone)
    again = await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods again")
    assert gone not in {p["metadata"]["name"] for p in again}
    await kubectl.run("delete", "pod", "--all")
    await eventually(lambda: _count(live_pods(kube_api), 2), what="2 fresh pods after delete --all")
    rs = await kubectl.json("get", "rs", "cache")
    assert rs["status"]["replicas"] == 2 and rs["status"]["observedGeneration"] == 1


async def test_refused_pod_creation_is_retried_and_reported(
    kubesim: KubeSim, controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    kubesim.inject_faults(
        status=500, count=3, method="POST", path_prefix=PODS, message='failed calling webhook "x.y.z": down'
    )
    await kubectl.apply(_replicaset("cache", 2))
    await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods once the API accepts them")
    failed = [e for e in controllers.events if e.reason == "FailedCreate" and e.name == "cache"]
    assert failed and 'failed calling webhook "x.y.z": down' in failed[0].message

    async def condition_cleared() -> Any:
        rs = await kubectl.json("get", "rs", "cache")
        return not any(c["type"] == "ReplicaFailure" for c in rs["status"].get("conditions", []))

    await eventually(condition_cleared, what="ReplicaFailure condition gone")


def _replicaset(name: str, replicas: int) -> str:
    return f"""
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: app, image: "redis:7", ports: [{{name: http, containerPort: 8080}}]}}]}}
"""


def _deployment(name: str, replicas: int) -> str:
    """What `kubectl create deployment NAME --image=nginx:1.25 --replicas=N` creates (as YAML: kubectl sends that
    command's body as protobuf, which kubesim does not decode for Deployments)."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: nginx, image: "nginx:1.25"}}]}}
"""


# -- EndpointSlices --------------------------------------------------------------------------------

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: cache, labels: {tier: db}}
spec:
  selector: {app: cache}
  ports:
  - {name: web, port: 80, targetPort: http}
  - {name: admin, port: 9000, targetPort: 9901}
"""


async def _slices(api: KubeApi, service: str) -> list[dict[str, Any]]:
    return await items(api, SLICES, labelSelector=f"kubernetes.io/service-name={service}")


async def test_endpointslices_follow_the_selected_pods(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(SERVICE)
    service = await kubectl.json("get", "service", "cache")
    (empty,) = await eventually(lambda: _slices(kube_api, "cache"), what="a placeholder slice")
    # no endpoints: `null`, as an empty repeated field is read back from storage
    assert empty["endpoints"] is None and empty["metadata"]["name"].startswith("cache-")
    labels = empty["metadata"]["labels"]
    assert labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert labels["tier"] == "db"
    owner = empty["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Service", service["metadata"]["uid"], True)
    await kubectl.apply(_replicaset("cache", 2))
    first, second = await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods")
    await mark_ready(kube_api, first, "10.244.0.10")
    await mark_ready(kube_api, second, "10.244.0.11", ready=False)

    async def both_listed() -> Any:
        found = await _slices(kube_api, "cache")
        return found if len(found) == 1 and len(found[0]["endpoints"] or []) == 2 else None

    (piece,) = await eventually(both_listed, what="two endpoints")
    assert piece["metadata"]["uid"] == empty["metadata"]["uid"]  # the placeholder was reused
    assert piece["addressType"] == "IPv4"
    assert sorted((p["name"], p["port"]) for p in piece["ports"]) == [("admin", 9901), ("web", 8080)]
    by_ip = {e["addresses"][0]: e for e in piece["endpoints"]}
    assert by_ip["10.244.0.10"]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert by_ip["10.244.0.11"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    ref = by_ip["10.244.0.10"]["targetRef"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("Pod", first["metadata"]["name"], first["metadata"]["uid"])
    listed = (await kubectl.run("get", "endpointslices")).stdout
    assert "10.244.0.10,10.244.0.11" in listed and "8080" in listed


async def test_services_without_selector_get_no_slices(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply("apiVersion: v1\nkind: Service\nmetadata: {name: manual}\nspec: {ports: [{port: 80}]}\n")
    await kubectl.apply(SERVICE)
    await eventually(lambda: _slices(kube_api, "cache"), what="the selector service's slice")
    assert await _slices(kube_api, "manual") == []


async def test_a_terminating_pod_stays_as_terminating_endpoint(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(SERVICE)
    await kubectl.apply(_pod("bound", node="node-a"))
    pod = await kubectl.json("get", "pod", "bound")
    await mark_ready(kube_api, pod, "10.244.0.20")

    async def endpoint(terminating: bool) -> Any:
        for piece in await _slices(kube_api, "cache"):
            for e in piece["endpoints"] or []:
                if e["conditions"]["terminating"] == terminating:
                    return e
        return None

    ready = await eventually(lambda: endpoint(False), what="a ready endpoint")
    assert ready["nodeName"] == "node-a" and ready["conditions"]["ready"] is True
    await kubectl.run("delete", "pod", "bound", "--wait=false")
    leaving = await eventually(lambda: endpoint(True), what="a terminating endpoint")
    assert leaving["conditions"] == {"ready": False, "serving": True, "terminating": True}


def _pod(name: str, *, node: str = "", labels: str = "app: cache", grace: int = 30) -> str:
    node_line = f"  nodeName: {node}\n" if node else ""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
{node_line}  terminationGracePeriodSeconds: {grace}
  containers: [{{name: app, image: "redis:7", ports: [{{name: http, containerPort: 8080}}]}}]
"""


# -- garbage collection ----------------------------------------------------------------------------


async def test_deleting_a_deployment_removes_its_replicasets_and_pods(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(_deployment("web", 2))
    await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods")
    await kubectl.run("delete", "deployment", "web")
    await eventually(lambda: _none(replicasets(kube_api)), what="no ReplicaSet")
    await eventually(lambda: _none(items(kube_api, PODS)), what="no pod")


async def test_foreground_deletion_removes_the_owner_last(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(_deployment("web", 2))
    await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods")
    result = await kubectl.run("delete", "deployment", "web", "--cascade=foreground")
    assert 'deployment.apps "web" deleted' in result.stdout
    assert await items(kube_api, DEPLOY) == [] and await replicasets(kube_api) == []
    assert await items(kube_api, PODS) == []


async def test_orphan_deletion_keeps_the_dependents_without_owner(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(_deployment("web", 2))
    await eventually(lambda: _count(live_pods(kube_api), 2), what="2 pods")
    await kubectl.run("delete", "deployment", "web", "--cascade=orphan")
    (rs,) = await replicasets(kube_api)
    assert not rs["metadata"].get("ownerReferences")
    assert len(await live_pods(kube_api)) == 2


async def test_dependents_of_a_replaced_owner_are_collected(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owner}\n")
    owner = await kubectl.json("get", "configmap", "owner")
    refs = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "0000-not-the-owner"}]
    await kube_api.request(
        "POST", "/api/v1/namespaces/default/configmaps", body={"metadata": {"name": "stale", "ownerReferences": refs}}
    )
    refs = [{**refs[0], "uid": owner["metadata"]["uid"]}]
    await kube_api.request(
        "POST", "/api/v1/namespaces/default/configmaps", body={"metadata": {"name": "kept", "ownerReferences": refs}}
    )

    async def names() -> set[str]:
        return {c["metadata"]["name"] for c in await items(kube_api, "/api/v1/namespaces/default/configmaps")}

    await eventually(lambda: _not_in("stale", names()), what="the ConfigMap with a stale owner gone")
    assert "kept" in await names()


async def test_a_dependent_whose_name_needs_escaping_in_a_url_is_collected(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    """An RBAC object's name may hold '?', '#' and spaces (`ValidateRBACName`): the collector escapes it in the
    URL of its DELETE, as client-go does, so the dependent of a deleted owner goes."""
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owner}\n")
    owner = await kubectl.json("get", "configmap", "owner")
    refs = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]
    roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles"
    await kube_api.request("POST", roles, body={"metadata": {"name": "reader? #1", "ownerReferences": refs}})
    await kubectl.run("delete", "configmap", "owner")

    async def names() -> set[str]:
        return {r["metadata"]["name"] for r in await items(kube_api, roles)}

    await eventually(lambda: _not_in("reader? #1", names()), what="the Role of the deleted owner gone")


async def _none(found: Any) -> bool:
    return not await found


async def _not_in(name: str, names: Any) -> bool:
    return name not in await names


# -- graceful deletion and finalizers in the API server ----------------------------------------------


async def test_a_bound_pod_is_deleted_gracefully(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply(_pod("bound", node="node-a"))
    await kubectl.apply(_pod("unbound", labels="app: other"))
    path = f"{PODS}/bound"
    since = (await kube_api.request("GET", path))["metadata"]["resourceVersion"]
    watch = asyncio.create_task(_event_types(kube_api, "bound", since))
    await kubectl.run("delete", "pod", "unbound")  # unbound: gone at once
    await kubectl.run("delete", "pod", "bound", "--wait=false")
    pod = await kube_api.request("GET", path)
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 30 and pod["metadata"]["deletionTimestamp"]
    status = (await kubectl.run("get", "pod", "bound")).stdout
    assert "Terminating" in status
    await kubectl.run("delete", "pod", "bound", "--wait=false", "--grace-period=5")
    assert (await kube_api.request("GET", path))["metadata"]["deletionGracePeriodSeconds"] == 5
    await kubectl.run("delete", "pod", "bound", "--wait=false", "--grace-period=20")  # longer: no change
    assert (await kube_api.request("GET", path))["metadata"]["deletionGracePeriodSeconds"] == 5
    with pytest.raises(KubeApiError) as refused:  # the kubelet's final delete carries the uid
        await kube_api.request("DELETE", path, body={"gracePeriodSeconds": 0, "preconditions": {"uid": "other"}})
    assert refused.value.status == 409
    await kube_api.request(
        "DELETE", path, body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}}
    )
    with pytest.raises(KubeApiError):
        await kube_api.request("GET", path)
    assert await watch == ["MODIFIED", "MODIFIED", "DELETED"]  # marked, shortened, removed


async def _event_types(api: KubeApi, name: str, since: str) -> list[str]:
    """The watch events of one pod after resourceVersion `since`, until it is deleted."""
    query = [("watch", "1"), ("fieldSelector", f"metadata.name={name}"), ("resourceVersion", since)]
    query.append(("timeoutSeconds", "30"))
    seen = []
    async with api.stream(PODS, query=query, stream_timeout=40) as response:
        async for line in response.content:
            event = json.loads(line)
            seen.append(event["type"])
            if event["type"] == "DELETED":
                break
    return seen


async def test_delete_collection_is_graceful_for_bound_pods(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply(_pod("bound", node="node-a"))
    await kubectl.apply(_pod("unbound"))
    await kube_api.request("DELETE", PODS, body={"gracePeriodSeconds": 10})
    (left,) = await items(kube_api, PODS)
    assert left["metadata"]["name"] == "bound" and left["metadata"]["deletionGracePeriodSeconds"] == 10


async def test_delete_collection_answers_the_objects_as_listed_before_their_deletion(
    kubectl: Kubectl, kube_api: KubeApi
) -> None:
    await kubectl.apply(_pod("bound", node="node-a"))
    await kubectl.apply(_pod("unbound"))
    before = await kube_api.request("GET", PODS)
    out = await kube_api.request("DELETE", PODS, body={"gracePeriodSeconds": 10})
    assert out["kind"] == "PodList"
    assert out["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert out["items"] == before["items"]  # no deletionTimestamp: the objects as they were listed
    (left,) = await items(kube_api, PODS)
    assert left["metadata"]["deletionTimestamp"]


async def test_delete_collection_checks_the_preconditions_on_each_object_in_turn(
    kubectl: Kubectl, kube_api: KubeApi
) -> None:
    for name in ("a", "b"):
        await kubectl.run("create", "configmap", name)
        await kubectl.run("label", "configmap", name, "batch=1")
    cms = "/api/v1/namespaces/default/configmaps"
    uids = {c["metadata"]["name"]: c["metadata"]["uid"] for c in await items(kube_api, cms, labelSelector="batch=1")}
    with pytest.raises(KubeApiError) as refused:
        await kube_api.request(
            "DELETE", cms, query=[("labelSelector", "batch=1")], body={"preconditions": {"uid": uids["b"]}}
        )
    assert refused.value.status == 409
    assert refused.value.message == (  # each object's deletion checks them as `BeforeDelete` does
        f'Operation cannot be fulfilled on ConfigMap "a": the UID in the precondition ({uids["b"]}) does not match '
        f"the UID in record ({uids['a']}). The object might have been deleted and then recreated"
    )
    assert len(await items(kube_api, cms, labelSelector="batch=1")) == 2  # "a" comes first: nothing was deleted
    with pytest.raises(KubeApiError) as refused:
        await kube_api.request(
            "DELETE", cms, query=[("labelSelector", "batch=1")], body={"preconditions": {"uid": uids["a"]}}
        )
    assert refused.value.status == 409 and 'ConfigMap "b"' in refused.value.message
    assert [c["metadata"]["name"] for c in await items(kube_api, cms, labelSelector="batch=1")] == ["b"]


@pytest.mark.parametrize("dry_run", [True, False])
async def test_namespaces_cannot_be_deleted_as_a_collection(kubectl: Kubectl, kube_api: KubeApi, dry_run: bool) -> None:
    core = await kube_api.request("GET", "/api/v1")
    namespaces = next(r for r in core["resources"] if r["name"] == "namespaces")
    assert namespaces["verbs"] == ["create", "delete", "get", "list", "patch", "update", "watch"]
    await kubectl.run("create", "namespace", "apps")
    with pytest.raises(KubeApiError) as refused:
        await kube_api.request("DELETE", "/api/v1/namespaces", query=[("dryRun", "All")] if dry_run else [])
    assert (refused.value.status, refused.value.reason) == (405, "MethodNotAllowed")
    listed = await items(kube_api, "/api/v1/namespaces")
    assert all("deletionTimestamp" not in ns["metadata"] for ns in listed)
    assert {"apps", "default", "kube-system", "kube-public"} <= {ns["metadata"]["name"] for ns in listed}


async def test_namespace_deletion_waits_for_graceful_pods(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.run("create", "namespace", "apps")
    await kubectl.apply(_pod("bound", node="node-a"), "-n", "apps")
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", "-n", "apps")
    await kubectl.run("delete", "namespace", "apps", "--wait=false")
    path = "/api/v1/namespaces/apps/pods/bound"
    pod = await eventually(lambda: _deleting(kube_api, path), what="the pod being deleted")
    assert (await kubectl.json("get", "namespace", "apps"))["status"]["phase"] == "Terminating"
    await kube_api.request(
        "DELETE", path, body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}}
    )
    await kubectl.run("wait", "--for=delete", "namespace/apps", "--timeout=20s")


async def _deleting(api: KubeApi, path: str) -> Any:
    pod = await api.request("GET", path)
    return pod if pod["metadata"].get("deletionTimestamp") else None


async def test_finalizers_hold_a_deleted_object_until_removed(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\n")
    await kubectl.run("delete", "configmap", "held", "--wait=false")
    held = await kubectl.json("get", "configmap", "held")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["example.com/hold"]
    await kubectl.run("patch", "configmap", "held", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    assert (await kubectl.run("get", "configmap", "held", check=False)).returncode != 0


async def test_an_unknown_propagation_policy_is_refused(kubectl: Kubectl, kube_api: KubeApi) -> None:
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    with pytest.raises(KubeApiError) as refused:
        await kube_api.request("DELETE", "/api/v1/namespaces/default/configmaps/c", body={"propagationPolicy": "Later"})
    assert refused.value.status == 422
    assert 'propagationPolicy: Unsupported value: "Later": supported values: "Foreground", "Background"' in str(
        refused.value
    )


async def test_a_bad_dry_run_on_a_delete_is_an_invalid_delete_options(kubectl: Kubectl, kube_api: KubeApi) -> None:
    """As `ValidateDeleteOptions` reports it (a 400 "Invalid dry run value" before), from the query or the body;
    the object stays."""
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    path = "/api/v1/namespaces/default/configmaps/c"
    for how in ({"query": [("dryRun", "x")]}, {"body": {"dryRun": ["All", "x"]}}):
        with pytest.raises(KubeApiError) as refused:
            await kube_api.request("DELETE", path, **how)
        assert refused.value.status == 422
        assert str(refused.value).endswith(
            'DeleteOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{'
            + ('"x"' if "query" in how else '"All", "x"')
            + '}: supported values: "All"'
        )
    assert (await kubectl.json("get", "configmap", "c"))["metadata"]["name"] == "c"
