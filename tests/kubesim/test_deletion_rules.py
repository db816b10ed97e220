"""Deletion as a 1.32 API server and garbage collector carry it out, where kubesim once differed.

- A failed precondition of a generic DELETE is worded as `BeforeDelete` words it (the Namespace REST keeps its
  own words: `test_namespace_lifecycle`), in a DELETE and in a deletecollection alike.
- A DELETE body that is not JSON is answered as the delete handler answers its decoder's error, a body of
  whitespace included; a `null` body is empty DeleteOptions.
- A pending graceful deletion (`BeforeDelete`'s gracefulPending) is answered as it is: its finalizers are not
  changed through DeleteOptions and admission is not consulted (`Store.Delete`).
- The garbage collector leaves a cluster-scoped dependent of a namespaced owner alone and reports an owner in
  another namespace than its dependent (`OwnerRefInvalidNamespace`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from controlplane.kube.client import KubeApi
from tests.kubesim.controllers import Controllers
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.server import KubeSim
from tests.kubesim.test_admission import (  # noqa: F401  (the webhook fixture)
    Webhook,
    configuration,
    hook,
    url_client,
    webhook_fixture,
)

CMS = "/api/v1/namespaces/default/configmaps"
PODS = "/api/v1/namespaces/default/pods"
CLUSTER_ROLES = "/apis/rbac.authorization.k8s.io/v1/clusterroles"


async def call(sim: KubeSim, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """One raw request with a JSON body as given: its status and decoded answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


def encoded(body: Any) -> bytes:
    return json.dumps(body).encode()


def configmap(name: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}}


def bound_pod(name: str, grace: int = 30) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "node-a",
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "app", "image": "app"}],
        },
    }


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "app"}]}},
        },
    }


# -- precondition failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "qualified", "details"),
    [
        (CMS, "ConfigMap", {"kind": "ConfigMap"}),
        ("/apis/apps/v1/namespaces/default/deployments", "Deployment.apps", {"group": "apps", "kind": "Deployment"}),
    ],
)
async def test_a_failed_uid_precondition_is_worded_by_before_delete_with_the_kind(
    kubesim: KubeSim, path: str, qualified: str, details: dict[str, str]
) -> None:
    created = kubesim.create_object(configmap("b") if "configmaps" in path else deployment("b"))
    uid = created["metadata"]["uid"]
    status, body = await call(kubesim, "DELETE", f"{path}/b", encoded({"preconditions": {"uid": "not-its-uid"}}))
    assert (status, body["reason"], body["details"]) == (409, "Conflict", {"name": "b", **details})
    assert body["message"] == (
        f'Operation cannot be fulfilled on {qualified} "b": the UID in the precondition (not-its-uid) does not match '
        f"the UID in record ({uid}). The object might have been deleted and then recreated"
    )
    assert kubesim.get_object(created["kind"].lower() + "s", "default", "b", group=details.get("group", ""))


async def test_a_failed_resource_version_precondition_says_the_object_might_have_been_modified(
    kubesim: KubeSim,
) -> None:
    rv = kubesim.create_object(configmap("b"))["metadata"]["resourceVersion"]
    status, body = await call(kubesim, "DELETE", f"{CMS}/b", encoded({"preconditions": {"resourceVersion": "1"}}))
    assert status == 409
    assert body["message"] == (
        'Operation cannot be fulfilled on ConfigMap "b": the ResourceVersion in the precondition (1) does not match '
        f"the ResourceVersion in record ({rv}). The object might have been modified"
    )


async def test_a_pending_graceful_deletion_still_checks_the_preconditions_first(kubesim: KubeSim) -> None:
    status, _ = await call(kubesim, "POST", PODS, encoded(bound_pod("p")))
    assert status == 201
    assert (await call(kubesim, "DELETE", f"{PODS}/p"))[0] == 200  # pending for 30 s
    status, body = await call(kubesim, "DELETE", f"{PODS}/p", encoded({"preconditions": {"uid": "x"}}))
    assert status == 409 and body["message"].startswith(
        'Operation cannot be fulfilled on Pod "p": the UID in the precondition (x) does not match'
    )


# -- DELETE bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", "unexpected end of JSON input"),
        (b"not json", "invalid character 'o' in literal null (expecting 'u')"),
        (b" \n\t", "unexpected end of JSON input"),
        (b'{"gracePeriodSeconds": 0,}', "invalid character '}' looking for beginning of object key string"),
    ],
)
async def test_a_delete_body_that_is_not_json_is_a_500_with_the_decoders_error(
    kubesim: KubeSim, body: bytes, error: str
) -> None:
    kubesim.create_object(configmap("kept"))
    for path in (f"{CMS}/kept", CMS):  # a DELETE and a deletecollection decode their bodies alike
        status, answer = await call(kubesim, "DELETE", path, body)
        assert (status, answer.get("reason")) == (500, None)
        assert answer["message"] == f"couldn't get version/kind; json parse error: {error}"
    assert kubesim.get_object("configmaps", "default", "kept") is not None


async def test_a_null_delete_body_is_empty_delete_options(kubesim: KubeSim) -> None:
    kubesim.create_object(configmap("gone"))
    status, answer = await call(kubesim, "DELETE", f"{CMS}/gone", b"null")
    assert (status, answer["status"]) == (200, "Success")
    assert kubesim.get_object("configmaps", "default", "gone") is None


# -- a pending graceful deletion ---------------------------------------------------------------------


async def test_a_pending_graceful_deletion_keeps_its_finalizers_and_grace_period(kubesim: KubeSim) -> None:
    assert (await call(kubesim, "POST", PODS, encoded(bound_pod("p"))))[0] == 201
    status, first = await call(kubesim, "DELETE", f"{PODS}/p", encoded({"gracePeriodSeconds": 60}))
    assert status == 200 and first["metadata"]["deletionGracePeriodSeconds"] == 60
    for options in ({"propagationPolicy": "Orphan"}, {}, {"gracePeriodSeconds": 90, "propagationPolicy": "Foreground"}):
        status, answer = await call(kubesim, "DELETE", f"{PODS}/p", encoded(options))
        assert status == 200 and answer["metadata"] == first["metadata"]  # answered as it is, nothing stored
    status, answer = await call(kubesim, "DELETE", f"{PODS}/p", encoded({"orphanDependents": True}))
    assert status == 200 and "finalizers" not in answer["metadata"]
    stored = kubesim.get_object("pods", "default", "p")
    assert stored is not None and stored["metadata"] == first["metadata"]
    status, shortened = await call(
        kubesim, "DELETE", f"{PODS}/p", encoded({"gracePeriodSeconds": 10, "propagationPolicy": "Orphan"})
    )
    assert status == 200  # a shorter grace period is a graceful deletion again, its finalizers as asked
    assert shortened["metadata"]["deletionGracePeriodSeconds"] == 10
    assert shortened["metadata"]["finalizers"] == ["orphan"]


async def test_a_deletion_held_by_finalizers_is_a_new_generation_and_a_pod_counts_none(kubesim: KubeSim) -> None:
    """The first deletionTimestamp bumps a positive generation (`BeforeDelete`, `markAsDeleting`), so a
    controller sees the object is going; a 1.32 server keeps no generation for a Pod, spec changes or not."""
    deployments = "/apis/apps/v1/namespaces/default/deployments"
    assert (await call(kubesim, "POST", deployments, encoded(deployment("web"))))[0] == 201
    status, going = await call(kubesim, "DELETE", f"{deployments}/web", encoded({"propagationPolicy": "Foreground"}))
    assert status == 200 and going["metadata"]["deletionTimestamp"]
    assert going["metadata"]["generation"] == 2
    status, created = await call(kubesim, "POST", PODS, encoded(bound_pod("p")))
    assert status == 201 and "generation" not in created["metadata"]
    image = [{"op": "replace", "path": "/spec/containers/0/image", "value": "app:2"}]
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            f"{kubesim.url}{PODS}/p", data=encoded(image), headers={"Content-Type": "application/json-patch+json"}
        ) as resp,
    ):
        patched = await resp.json()
    assert resp.status == 200 and patched["spec"]["containers"][0]["image"] == "app:2"
    assert "generation" not in patched["metadata"]
    status, deleted = await call(kubesim, "DELETE", f"{PODS}/p", encoded({"gracePeriodSeconds": 30}))
    assert status == 200 and deleted["metadata"]["deletionTimestamp"] and "generation" not in deleted["metadata"]


async def test_a_pending_graceful_deletion_is_answered_without_admission(kubesim: KubeSim, webhook: Webhook) -> None:
    assert (await call(kubesim, "POST", PODS, encoded(bound_pod("p"))))[0] == 201
    status, first = await call(kubesim, "DELETE", f"{PODS}/p")
    assert status == 200
    webhook.answers["/deny"] = lambda r: {"allowed": False, "status": {"code": 403, "message": "no deletes"}}
    kubesim.create_object(
        configuration("ValidatingWebhookConfiguration", "deny", hook("deny.example.com", url_client(webhook, "/deny")))
    )
    status, answer = await call(kubesim, "DELETE", f"{PODS}/p", encoded({"orphanDependents": False}))
    assert status == 202 and answer["metadata"] == first["metadata"]
    assert webhook.requests("/deny") == []
    status, answer = await call(kubesim, "DELETE", f"{PODS}/p", encoded({"gracePeriodSeconds": 5}))
    assert (status, answer["message"]) == (403, 'admission webhook "deny.example.com" denied the request: no deletes')


# -- the garbage collector -----------------------------------------------------------------------------


async def _gone(api: KubeApi, path: str) -> bool:
    listed = await api.request("GET", path.rpartition("/")[0])
    return path.rpartition("/")[2] not in {o["metadata"]["name"] for o in listed["items"]}


async def _caught_up(api: KubeApi) -> None:
    """Wait until the collector has seen every ConfigMap created so far: one created now whose owner is not
    there is collected only once its informer has reached it."""
    missing = {"apiVersion": "v1", "kind": "ConfigMap", "name": "nobody", "uid": "0000-no-such-configmap"}
    await api.request("POST", CMS, body=configmap("marker", ownerReferences=[missing]))
    await eventually(lambda: _gone(api, f"{CMS}/marker"), what="the collector caught up with the ConfigMaps")


def _reported(controllers: Controllers, name: str) -> list[tuple[str, str, str, str, str]]:
    return [
        (e.kind, e.namespace, e.type, e.reason, e.message)
        for e in controllers.events
        if e.name == name and e.reason == "OwnerRefInvalidNamespace"
    ]


async def test_a_cluster_scoped_dependent_of_a_namespaced_kind_is_left_alone(
    controllers: Controllers, kube_api: KubeApi
) -> None:
    """Its owner cannot be looked up without a namespace: the collector gives up on it rather than deleting it."""
    missing = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "0000-no-such-configmap"}
    await kube_api.request("POST", CLUSTER_ROLES, body={"metadata": {"name": "held", "ownerReferences": [missing]}})
    gone_namespace = {"apiVersion": "v1", "kind": "Namespace", "name": "gone", "uid": "0000-no-such-namespace"}
    await kube_api.request(
        "POST", CLUSTER_ROLES, body={"metadata": {"name": "control", "ownerReferences": [gone_namespace]}}
    )
    await eventually(lambda: _gone(kube_api, f"{CLUSTER_ROLES}/control"), what="the ClusterRole of a gone Namespace")
    await asyncio.sleep(0.3)
    assert not await _gone(kube_api, f"{CLUSTER_ROLES}/held")
    assert _reported(controllers, "held") == []  # an owner never seen is not reported


async def test_a_cluster_scoped_dependent_of_a_seen_namespaced_owner_is_reported_and_outlives_it(
    controllers: Controllers, kube_api: KubeApi
) -> None:
    owner = await kube_api.request("POST", CMS, body=configmap("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    await kube_api.request("POST", CLUSTER_ROLES, body={"metadata": {"name": "held", "ownerReferences": [ref]}})
    await kube_api.request("POST", CMS, body=configmap("control", ownerReferences=[ref]))
    expected = (
        "ClusterRole",
        "",
        "Warning",
        "OwnerRefInvalidNamespace",
        f'ownerRef [v1/ConfigMap, namespace: , name: owner, uid: {ref["uid"]}] does not exist in namespace ""',
    )
    await eventually(lambda: _reported(controllers, "held") == [expected], what="the OwnerRefInvalidNamespace event")
    await kube_api.request("DELETE", f"{CMS}/owner")
    await eventually(lambda: _gone(kube_api, f"{CMS}/control"), what="the owner's ConfigMap dependent gone")
    await asyncio.sleep(0.3)
    assert not await _gone(kube_api, f"{CLUSTER_ROLES}/held")


async def test_a_dependent_in_another_namespace_than_its_owner_is_reported_and_collected(
    controllers: Controllers, kubectl: Kubectl, kube_api: KubeApi
) -> None:
    """The collector looks the owner up in its dependent's namespace, where it is not."""
    owner = await kube_api.request("POST", CMS, body=configmap("owner"))
    await _caught_up(kube_api)  # the owner seen before its dependent, as a long-lived owner is
    await kubectl.run("create", "namespace", "other")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    path = "/api/v1/namespaces/other/configmaps"
    await kube_api.request("POST", path, body=configmap("stray", ownerReferences=[ref]))
    await eventually(lambda: _gone(kube_api, f"{path}/stray"), what="the dependent in another namespace gone")
    assert _reported(controllers, "stray") == [
        (
            "ConfigMap",
            "other",
            "Warning",
            "OwnerRefInvalidNamespace",
            f"ownerRef [v1/ConfigMap, namespace: other, name: owner, uid: {ref['uid']}] does not exist in namespace "
            '"other"',
        )
    ]
    assert not await _gone(kube_api, f"{CMS}/owner")
