"""A Namespace's deletion as a 1.32 API server and kube-controller-manager carry it out.

- The namespace REST's `Delete`: its preconditions, the `orphan` / `foregroundDeletion` finalizers its
  propagation options leave (`shouldHaveOrphanFinalizer`, `shouldHaveDeleteDependentsFinalizer`), a dry run
  that stores nothing, and the generic store's deletion once its spec's finalizers are gone.
- The delete handler's 202 for a deletion left pending that asked for `orphanDependents: false`.
- The namespace controller's conditions on a Terminating namespace (`status_condition_utils.go`): what is
  left, the finalizers holding it, a pod that outlived its grace period; when lastTransitionTime moves.
- The garbage collector working off a namespace's `orphan` and `foregroundDeletion` finalizers.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.kubesim.controllers import Controllers
from tests.kubesim.fixtures import eventually
from tests.kubesim.server import KubeSim

MERGE_PATCH = "application/merge-patch+json"


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def message(self) -> str:
        return str(self.body.get("message", "")) if isinstance(self.body, dict) else ""


async def call(
    sim: KubeSim, method: str, path: str, body: dict[str, Any] | None = None, *, content_type: str = "application/json"
) -> Answer:
    """One raw request: its status and decoded answer."""
    data = None if body is None else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=data, headers={"Content-Type": content_type}) as resp,
    ):
        text = await resp.text()
        return Answer(resp.status, json.loads(text) if text else None)


async def create(sim: KubeSim, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    answer = await call(sim, "POST", path, obj)
    assert answer.status == 201, answer.body
    created: dict[str, Any] = answer.body
    return created


def namespace(name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, **fields}


def configmap(name: str, *finalizers: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if finalizers:
        meta["finalizers"] = list(finalizers)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}


class StoppedClock:
    """A clock that stands still until moved on, so that the times the server writes can be told."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: int) -> str:
        self.now += datetime.timedelta(seconds=seconds)
        return self.stamp

    @property
    def stamp(self) -> str:
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, reason: str, message: str, when: str) -> dict[str, str]:
    return {"type": kind, "status": status, "lastTransitionTime": when, "reason": reason, "message": message}


def healthy(when: str) -> dict[str, dict[str, str]]:
    """The five conditions as the namespace controller writes them when nothing is wrong, by type."""
    return {
        c["type"]: c
        for c in [
            condition(
                "NamespaceDeletionDiscoveryFailure",
                "False",
                "ResourcesDiscovered",
                "All resources successfully discovered",
                when,
            ),
            condition(
                "NamespaceDeletionGroupVersionParsingFailure",
                "False",
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed",
                when,
            ),
            condition(
                "NamespaceDeletionContentFailure",
                "False",
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization",
                when,
            ),
            condition("NamespaceContentRemaining", "False", "ContentRemoved", "All content successfully removed", when),
            condition(
                "NamespaceFinalizersRemaining",
                "False",
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished",
                when,
            ),
        ]
    }


async def conditions_when(sim: KubeSim, name: str, kind: str, message_part: str) -> list[dict[str, str]]:
    """The namespace's conditions once condition `kind`'s message holds `message_part`."""

    async def shown() -> list[dict[str, str]] | None:
        ns = (await call(sim, "GET", f"/api/v1/namespaces/{name}")).body
        conditions: list[dict[str, str]] = ns.get("status", {}).get("conditions") or []
        found = [c for c in conditions if c["type"] == kind and message_part in c["message"]]
        return conditions if found else None

    found: list[dict[str, str]] = await eventually(shown, within=5, what=f"{kind}: {message_part}")
    return found


# -- the namespace REST's Delete -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "status", "finalizers"),
    [
        ({"propagationPolicy": "Orphan"}, 200, ["example.com/keep", "orphan"]),
        ({"propagationPolicy": "Foreground"}, 200, ["example.com/keep", "foregroundDeletion"]),
        ({"orphanDependents": True}, 200, ["example.com/keep", "orphan"]),
        ({"orphanDependents": False}, 202, ["example.com/keep", "foregroundDeletion"]),
    ],
)
async def test_a_namespace_delete_leaves_the_finalizer_its_propagation_options_ask_for(
    kubesim: KubeSim, options: dict[str, Any], status: int, finalizers: list[str]
) -> None:
    """orphanDependents false asks a namespace for foreground deletion (the generic store's asks for neither),
    and a deletion left pending that asked for it answers 202."""
    kubesim.namespace_deletion_delay = 60.0  # the namespace controller has not got to it yet
    await create(
        kubesim, "/api/v1/namespaces", namespace("prop", metadata={"name": "prop", "finalizers": ["example.com/keep"]})
    )
    deleted = await call(kubesim, "DELETE", "/api/v1/namespaces/prop", options)
    assert deleted.status == status and deleted.body["kind"] == "Namespace"
    assert sorted(deleted.body["metadata"]["finalizers"]) == finalizers
    assert deleted.body["status"] == {"phase": "Terminating"} and deleted.body["metadata"]["deletionTimestamp"]
    stored = kubesim.get_object("namespaces", "", "prop")
    assert stored is not None and sorted(stored["metadata"]["finalizers"]) == finalizers


async def test_background_takes_a_namespace_s_own_orphan_finalizer_out(kubesim: KubeSim) -> None:
    kubesim.namespace_deletion_delay = 60.0
    await create(kubesim, "/api/v1/namespaces", namespace("bg", metadata={"name": "bg", "finalizers": ["orphan"]}))
    deleted = await call(kubesim, "DELETE", "/api/v1/namespaces/bg", {"propagationPolicy": "Background"})
    assert deleted.status == 200 and "finalizers" not in deleted.body["metadata"]
    stored = kubesim.get_object("namespaces", "", "bg")
    assert stored is not None and "finalizers" not in stored["metadata"]


async def test_a_dry_run_namespace_delete_answers_it_terminating_and_changes_nothing(kubesim: KubeSim) -> None:
    created = await create(kubesim, "/api/v1/namespaces", namespace("dry"))
    await create(kubesim, "/api/v1/namespaces/dry/configmaps", configmap("inside"))
    rv = created["metadata"]["resourceVersion"]
    dry_run = {"propagationPolicy": "Orphan", "dryRun": ["All"]}
    answer = await call(kubesim, "DELETE", "/api/v1/namespaces/dry", dry_run)
    assert answer.status == 200 and answer.body["status"] == {"phase": "Terminating"}
    meta = answer.body["metadata"]
    assert meta["deletionTimestamp"] and meta["finalizers"] == ["orphan"] and meta["resourceVersion"] == rv
    await eventually(lambda: kubesim.get_object("configmaps", "dry", "inside"), what="the configmap left alone")
    stored = kubesim.get_object("namespaces", "", "dry")
    assert stored is not None and stored["metadata"]["resourceVersion"] == rv
    assert "deletionTimestamp" not in stored["metadata"] and "finalizers" not in stored["metadata"]
    assert stored["status"] == {"phase": "Active"}
    assert kubesim.get_object("configmaps", "dry", "inside") is not None


async def test_namespace_delete_preconditions_hold_whatever_their_value(kubesim: KubeSim) -> None:
    created = await create(kubesim, "/api/v1/namespaces", namespace("pre"))
    uid, rv = created["metadata"]["uid"], created["metadata"]["resourceVersion"]
    empty_uid = await call(kubesim, "DELETE", "/api/v1/namespaces/pre", {"preconditions": {"uid": ""}})
    assert (empty_uid.status, empty_uid.body.get("reason"), empty_uid.message) == (
        409,
        "Conflict",
        f'Operation cannot be fulfilled on namespaces "pre": Precondition failed: UID in precondition: , '
        f"UID in object meta: {uid}",
    )
    empty_rv = await call(kubesim, "DELETE", "/api/v1/namespaces/pre", {"preconditions": {"resourceVersion": ""}})
    assert (empty_rv.status, empty_rv.message) == (
        409,
        f'Operation cannot be fulfilled on namespaces "pre": Precondition failed: ResourceVersion in precondition: '
        f", ResourceVersion in object meta: {rv}",
    )
    stored = kubesim.get_object("namespaces", "", "pre")
    assert stored is not None and "deletionTimestamp" not in stored["metadata"]


async def test_a_finalized_namespace_held_by_its_metadata_finalizers_is_deleted_as_any_object(
    kubesim: KubeSim,
) -> None:
    """Once its spec's finalizers are gone a DELETE is the generic store's: its options change the metadata's
    finalizers, and with none left the namespace goes; a dry run of that answers it and leaves it."""
    kubesim.namespace_deletion_delay = 60.0
    await create(kubesim, "/api/v1/namespaces", namespace("held"))
    marked = await call(kubesim, "DELETE", "/api/v1/namespaces/held", {"propagationPolicy": "Orphan"})
    assert marked.body["metadata"]["finalizers"] == ["orphan"]
    finalized = await call(kubesim, "PUT", "/api/v1/namespaces/held/finalize", {**marked.body, "spec": {}})
    assert finalized.status == 200 and finalized.body["metadata"]["finalizers"] == ["orphan"]
    again = await call(kubesim, "DELETE", "/api/v1/namespaces/held")  # no options: the finalizer stands
    assert again.status == 200 and again.body["metadata"]["finalizers"] == ["orphan"]
    dry_run = {"propagationPolicy": "Background", "dryRun": ["All"]}
    dry = await call(kubesim, "DELETE", "/api/v1/namespaces/held", dry_run)
    assert dry.status == 200 and dry.body["kind"] == "Namespace"
    assert kubesim.get_object("namespaces", "", "held") is not None
    gone = await call(kubesim, "DELETE", "/api/v1/namespaces/held", {"propagationPolicy": "Background"})
    assert gone.status == 200 and gone.body["kind"] == "Namespace"
    assert kubesim.get_object("namespaces", "", "held") is None


# -- the generic store: 202 and dry runs ---------------------------------------------------------------------


async def test_a_pending_deletion_that_asked_not_to_orphan_answers_202(kubesim: KubeSim) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    await create(kubesim, path, configmap("held", "example.com/hold"))
    answer = await call(kubesim, "DELETE", f"{path}/held", {"orphanDependents": False})
    assert answer.status == 202 and answer.body["kind"] == "ConfigMap"
    assert answer.body["metadata"]["deletionTimestamp"] and answer.body["metadata"]["finalizers"] == [
        "example.com/hold"
    ]


async def test_a_dry_run_delete_of_a_held_object_answers_it_as_the_deletion_would_leave_it(kubesim: KubeSim) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    created = await create(kubesim, path, configmap("held", "example.com/hold"))
    answer = await call(kubesim, "DELETE", f"{path}/held", {"propagationPolicy": "Orphan", "dryRun": ["All"]})
    assert answer.status == 200 and answer.body["kind"] == "ConfigMap"
    meta = answer.body["metadata"]
    assert meta["deletionTimestamp"] and meta["deletionGracePeriodSeconds"] == 0
    assert meta["finalizers"] == ["example.com/hold", "orphan"]
    assert meta["resourceVersion"] == created["metadata"]["resourceVersion"]
    stored = kubesim.get_object("configmaps", "default", "held")
    assert stored == created


async def test_a_delete_with_a_body_reads_no_options_from_its_query(kubesim: KubeSim) -> None:
    """The body's DeleteOptions are the request's: a dryRun in the query beside them is not read."""
    path = "/api/v1/namespaces/default/configmaps"
    await create(kubesim, path, configmap("meant"))
    answer = await call(kubesim, "DELETE", f"{path}/meant?dryRun=All", {"propagationPolicy": "Background"})
    assert answer.status == 200 and answer.body["status"] == "Success"
    assert kubesim.get_object("configmaps", "default", "meant") is None


# -- the namespace controller's conditions -------------------------------------------------------------------


async def test_a_namespace_held_by_finalizers_shows_them_in_its_conditions(kubesim: KubeSim) -> None:
    """What `kubectl get ns -o yaml` shows while content with finalizers holds a namespace, and once it went.

    lastTransitionTime moves only when a condition's status does, not when its message does.
    """
    clock = StoppedClock()
    kubesim.clock = clock
    start = clock.stamp
    await create(kubesim, "/api/v1/namespaces", namespace("fin", spec={"finalizers": ["example.com/wait"]}))
    for name in ("a", "b"):
        await create(kubesim, "/api/v1/namespaces/fin/configmaps", configmap(name, "example.com/f"))
    assert (await call(kubesim, "DELETE", "/api/v1/namespaces/fin")).status == 200
    expected = healthy(start)
    expected["NamespaceContentRemaining"] = condition(
        "NamespaceContentRemaining",
        "True",
        "SomeResourcesRemain",
        "Some resources are remaining: configmaps. has 2 resource instances",
        start,
    )
    expected["NamespaceFinalizersRemaining"] = condition(
        "NamespaceFinalizersRemaining",
        "True",
        "SomeFinalizersRemain",
        "Some content in the namespace has finalizers remaining: example.com/f in 2 resource instances",
        start,
    )
    shown = await conditions_when(kubesim, "fin", "NamespaceContentRemaining", "has 2")
    assert shown == list(expected.values())

    clock.advance(10)
    unhold = {"metadata": {"finalizers": None}}
    await call(kubesim, "PATCH", "/api/v1/namespaces/fin/configmaps/a", unhold, content_type=MERGE_PATCH)
    shown = await conditions_when(kubesim, "fin", "NamespaceContentRemaining", "has 1")
    expected["NamespaceContentRemaining"]["message"] = (
        "Some resources are remaining: configmaps. has 1 resource instances"
    )
    expected["NamespaceFinalizersRemaining"]["message"] = (
        "Some content in the namespace has finalizers remaining: example.com/f in 1 resource instances"
    )
    assert shown == list(expected.values())  # same status: the same lastTransitionTime

    later = clock.advance(10)
    await call(kubesim, "PATCH", "/api/v1/namespaces/fin/configmaps/b", unhold, content_type=MERGE_PATCH)
    shown = await conditions_when(kubesim, "fin", "NamespaceContentRemaining", "successfully removed")
    expected = healthy(start)
    expected["NamespaceContentRemaining"]["lastTransitionTime"] = later
    expected["NamespaceFinalizersRemaining"]["lastTransitionTime"] = later
    assert shown == list(expected.values())
    finalized = (await call(kubesim, "GET", "/api/v1/namespaces/fin")).body
    assert finalized["spec"] == {"finalizers": ["example.com/wait"]}
    assert finalized["status"]["phase"] == "Terminating"


async def test_a_namespace_waiting_on_a_terminating_pod_reports_it_then_a_content_failure(kubesim: KubeSim) -> None:
    """A pod still terminating is content remaining; once the namespace has been Terminating longer than the
    pod's grace period, the controller counts it as content it failed to delete."""
    clock = StoppedClock()
    kubesim.clock = clock
    start = clock.stamp
    await create(kubesim, "/api/v1/namespaces", namespace("apps"))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bound"},
        "spec": {
            "nodeName": "node-a",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "app", "image": "redis:7"}],
        },
    }
    created = await create(kubesim, "/api/v1/namespaces/apps/pods", pod)
    assert (await call(kubesim, "DELETE", "/api/v1/namespaces/apps")).status == 200
    expected = healthy(start)
    expected["NamespaceContentRemaining"] = condition(
        "NamespaceContentRemaining",
        "True",
        "SomeResourcesRemain",
        "Some resources are remaining: pods. has 1 resource instances",
        start,
    )
    shown = await conditions_when(kubesim, "apps", "NamespaceContentRemaining", "pods. has 1")
    assert shown == list(expected.values())
    terminating = kubesim.get_object("pods", "apps", "bound")
    assert terminating is not None and terminating["metadata"]["deletionGracePeriodSeconds"] == 5

    overdue = clock.advance(6)
    shown = await conditions_when(kubesim, "apps", "NamespaceDeletionContentFailure", "unexpected items")
    expected["NamespaceDeletionContentFailure"] = condition(
        "NamespaceDeletionContentFailure",
        "True",
        "ContentDeletionFailed",
        "Failed to delete all resource types, 1 remaining: unexpected items still remain in namespace: apps for "
        "gvr: /v1, Resource=pods",
        overdue,
    )
    assert shown == list(expected.values())

    uid = created["metadata"]["uid"]
    gone = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
    assert (await call(kubesim, "DELETE", "/api/v1/namespaces/apps/pods/bound", gone)).status == 200
    await eventually(lambda: kubesim.get_object("namespaces", "", "apps") is None, what="the namespace removed")


# -- the garbage collector and a namespace's finalizers ------------------------------------------------------


def owned_clusterrole(name: str, owner: dict[str, Any], *, block: bool = False, hold: bool = False) -> dict[str, Any]:
    ref = {"apiVersion": "v1", "kind": "Namespace", "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
    if block:
        ref["blockOwnerDeletion"] = True
    meta: dict[str, Any] = {"name": name, "ownerReferences": [ref]}
    if hold:
        meta["finalizers"] = ["example.com/hold"]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta, "rules": []}


CLUSTERROLES = "/apis/rbac.authorization.k8s.io/v1/clusterroles"


async def collector_caught_up(kubesim: KubeSim) -> None:
    """Wait until the garbage collector has seen every ClusterRole created so far: one created now, owned by a
    Namespace that is not there, is collected only once the collector's ClusterRole informer has reached it.

    Deleting an owner in the foreground or with Orphan before the collector knows its dependent would let it
    find none and drop the owner's finalizer at once, as a real collector whose informer lags would."""
    gone = {"apiVersion": "v1", "kind": "Namespace", "name": "gone", "uid": "0000-no-such-namespace"}
    marker = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "rules": []}
    await create(kubesim, CLUSTERROLES, {**marker, "metadata": {"name": "marker", "ownerReferences": [gone]}})
    await eventually(
        lambda: kubesim.get_object("clusterroles", "", "marker", group="rbac.authorization.k8s.io") is None,
        what="the collector caught up with the ClusterRoles",
    )


async def test_a_namespace_deleted_with_orphan_leaves_its_dependents_behind(
    kubesim: KubeSim, controllers: Controllers
) -> None:
    owner = await create(kubesim, "/api/v1/namespaces", namespace("parent"))
    await create(kubesim, CLUSTERROLES, owned_clusterrole("child-of-parent", owner))
    await collector_caught_up(kubesim)
    deleted = await call(kubesim, "DELETE", "/api/v1/namespaces/parent", {"propagationPolicy": "Orphan"})
    assert deleted.status == 200 and deleted.body["metadata"]["finalizers"] == ["orphan"]

    def orphaned() -> bool:
        role = kubesim.get_object("clusterroles", "", "child-of-parent", group="rbac.authorization.k8s.io")
        return role is not None and "ownerReferences" not in role["metadata"]

    await eventually(orphaned, within=10, what="the clusterrole orphaned")
    await eventually(lambda: kubesim.get_object("namespaces", "", "parent") is None, what="the namespace removed")
    assert orphaned()


async def test_a_namespace_deleted_in_the_foreground_waits_for_its_blocking_dependents(
    kubesim: KubeSim, controllers: Controllers
) -> None:
    owner = await create(kubesim, "/api/v1/namespaces", namespace("front"))
    await create(kubesim, CLUSTERROLES, owned_clusterrole("child-of-front", owner, block=True, hold=True))
    await collector_caught_up(kubesim)
    deleted = await call(kubesim, "DELETE", "/api/v1/namespaces/front", {"propagationPolicy": "Foreground"})
    assert deleted.status == 200 and deleted.body["metadata"]["finalizers"] == ["foregroundDeletion"]

    def dependent_deleting() -> bool:
        role = kubesim.get_object("clusterroles", "", "child-of-front", group="rbac.authorization.k8s.io")
        return role is not None and bool(role["metadata"].get("deletionTimestamp"))

    await eventually(dependent_deleting, within=10, what="the clusterrole being deleted")
    emptied = await eventually(
        lambda: (ns := kubesim.get_object("namespaces", "", "front")) is not None and not ns.get("spec") and ns,
        what="the namespace finalized",
    )
    assert emptied["metadata"]["finalizers"] == ["foregroundDeletion"]  # its blocking dependent holds it
    unhold = {"metadata": {"finalizers": None}}
    await call(kubesim, "PATCH", f"{CLUSTERROLES}/child-of-front", unhold, content_type=MERGE_PATCH)
    await eventually(lambda: kubesim.get_object("namespaces", "", "front") is None, what="the namespace removed")
