"""The Kubernetes config source and its watch stack, against kubesim over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import pathlib
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from controlplane.kube.client import JsonObject, KubeApi, KubeApiError
from controlplane.kube.source import (
    CONFIGMAPS,
    LIST_STEP,
    NAMESPACES,
    PODS,
    SERVICES,
    KubeSource,
    Scope,
    WatchedKind,
    storable,
)
from controlplane.kube.watching import Backoff, Resource, Selection, infinite_watch, list_all, watch_stream
from controlplane.model.packed import PackedObject
from controlplane.model.store import ConfigEvent, ConfigStore, ObjectKey
from controlplane.settings import SettingsError
from tests.helpers.storesteps import StoreSteps
from tests.kubesim.fixtures import (  # noqa: F401
    eventually,
    kube_api_fixture,
    kubeconfig_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

CP_NS = "istio-system"


def configmap(name: str, namespace: str = CP_NS, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def cm_key(name: str, ns: str = CP_NS) -> ObjectKey:
    return ObjectKey("ConfigMap", ns, name)


def ns_key(name: str) -> ObjectKey:
    return ObjectKey("Namespace", "", name)


def requests_to(sim: KubeSim, path: str, *, watch: bool) -> list[dict[str, list[str]]]:
    """Query parameters of the GETs of `path` that were (or were not) watches, in order."""
    found = []
    for method, path_qs in sim.requests:
        url = urlsplit(path_qs)
        query = parse_qs(url.query)
        if method == "GET" and url.path == path and (query.get("watch") == ["1"]) == watch:
            found.append(query)
    return found


@pytest.fixture
async def source(kubesim: KubeSim, kube_api: KubeApi) -> AsyncIterator[tuple[KubeSource, ConfigStore]]:
    kubesim.create_object(namespace(CP_NS))
    store = ConfigStore()
    src = KubeSource(kube_api, store, namespace=CP_NS, backoff=lambda: Backoff(base=0.01, cap=0.05), timeout_seconds=30)
    task = asyncio.create_task(src.run())
    try:
        await eventually(lambda: store.synced, what="first sync")
        yield src, store
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_store_is_synced_with_every_namespace_and_control_plane_configmap(
    source: tuple[KubeSource, ConfigStore],
) -> None:
    src, store = source
    assert src.synced
    names = {obj["metadata"]["name"] for obj in store.list("Namespace")}
    assert {"default", "kube-system", CP_NS} <= names
    ns = store.get(ns_key(CP_NS))
    assert ns is not None and ns["kind"] == "Namespace" and ns["apiVersion"] == "v1"


async def test_store_follows_configmap_create_update_delete(
    source: tuple[KubeSource, ConfigStore], kube_api: KubeApi
) -> None:
    _, store = source
    path = CONFIGMAPS.path(CP_NS)
    await kube_api.request("POST", path, body=configmap("istio-sidecar-injector", values='{"a": 1}'))
    created = await eventually(lambda: store.get(cm_key("istio-sidecar-injector")), what="configmap added")
    assert created["data"] == {"values": '{"a": 1}'}

    await kube_api.request(
        "PATCH",
        f"{path}/istio-sidecar-injector",
        body={"data": {"values": '{"a": 2}'}},
        content_type="application/merge-patch+json",
    )
    await eventually(
        lambda: (store.get(cm_key("istio-sidecar-injector")) or {}).get("data") == {"values": '{"a": 2}'},
        what="configmap modified",
    )

    await kube_api.request("DELETE", f"{path}/istio-sidecar-injector")
    await eventually(lambda: store.get(cm_key("istio-sidecar-injector")) is None, what="configmap deleted")


async def test_configmaps_of_other_namespaces_stay_out_of_the_store(
    source: tuple[KubeSource, ConfigStore], kube_api: KubeApi
) -> None:
    _, store = source
    await kube_api.request("POST", CONFIGMAPS.path("default"), body=configmap("elsewhere", "default"))
    await kube_api.request("POST", CONFIGMAPS.path(CP_NS), body=configmap("marker"))
    await eventually(lambda: store.get(cm_key("marker")), what="marker configmap")
    assert store.get(cm_key("elsewhere", "default")) is None


async def test_namespace_labels_and_deletion_reach_the_store(
    source: tuple[KubeSource, ConfigStore], kube_api: KubeApi
) -> None:
    _, store = source
    await kube_api.request("POST", NAMESPACES.path(), body=namespace("apps", team="a"))
    await eventually(lambda: store.get(ns_key("apps")), what="namespace added")
    await kube_api.request(
        "PATCH",
        f"{NAMESPACES.path()}/apps",
        body={"metadata": {"labels": {"istio-injection": "enabled", "istio.io/rev": "canary"}}},
        content_type="application/strategic-merge-patch+json",
    )
    labels = await eventually(
        lambda: (store.get(ns_key("apps")) or {}).get("metadata", {}).get("labels", {}).get("istio.io/rev"),
        what="namespace relabelled",
    )
    assert labels == "canary"
    await kube_api.request("DELETE", f"{NAMESPACES.path()}/apps")
    await eventually(lambda: store.get(ns_key("apps")) is None, what="namespace deleted")


async def test_relists_after_expired_watch_and_drops_what_was_deleted_meanwhile(
    source: tuple[KubeSource, ConfigStore], kubesim: KubeSim
) -> None:
    _, store = source
    kubesim.create_object(configmap("doomed"))
    await eventually(lambda: store.get(cm_key("doomed")), what="configmap added")
    lists_before = len(requests_to(kubesim, CONFIGMAPS.path(CP_NS), watch=False))
    # While the watch is down, the configmap goes and the history that recorded it is compacted:
    # only a relist can tell the source. Nothing here awaits, so no watch reconnects in between.
    kubesim.close_watches()
    kubesim.storage.delete(kubesim.resource("configmaps"), CP_NS, "doomed")
    kubesim.compact()
    await eventually(lambda: store.get(cm_key("doomed")) is None, what="relist dropped the configmap")
    assert len(requests_to(kubesim, CONFIGMAPS.path(CP_NS), watch=False)) > lists_before


async def configmaps_added(store: ConfigStore, kubesim: KubeSim, count: int) -> None:
    for i in range(count):
        kubesim.create_object(configmap(f"relisted-{i}"))
    await eventually(lambda: store.get(cm_key(f"relisted-{count - 1}")), what="configmaps added")


async def relisted(src: KubeSource, kubesim: KubeSim, *, written_while_down: str) -> None:
    """The control plane's ConfigMaps relisted (their watch expired), one written meanwhile."""
    entry = next(name for name in src.describe() if name.startswith("configmaps@control-plane"))
    lists_before = src.describe()[entry]["lists"]
    # Nothing here awaits, so no watch reconnects before the history it would resume from is gone.
    kubesim.close_watches()
    kubesim.create_object(configmap(written_while_down))
    kubesim.compact()
    await eventually(lambda: src.describe()[entry]["lists"] > lists_before, what="relist")


async def test_a_relist_of_unchanged_objects_leaves_one_copy_of_each_in_memory(
    source: tuple[KubeSource, ConfigStore], kubesim: KubeSim
) -> None:
    """A relist brings a new copy of every object; where nothing changed, the store must let go of
    its old copy (40,000 pods would otherwise be held twice after every relist)."""
    src, store = source
    count = 50
    await configmaps_added(store, kubesim, count)
    await relisted(src, kubesim, written_while_down="written-while-down")
    gc.collect()
    copies = [
        o
        for o in gc.get_objects()
        if isinstance(o, PackedObject) and str(o["metadata"].get("name", "")).startswith("relisted-")
    ]
    assert len(copies) == count


async def test_a_relist_of_unchanged_objects_gives_the_garbage_collector_nothing_new_to_walk(
    source: tuple[KubeSource, ConfigStore], kubesim: KubeSim
) -> None:
    """The store's first complete view is frozen out of the collector's full passes; a relist (after a
    watch expired) brings every object again. Kept as the new copies, 30,000 unchanged Pods were
    60,000 objects (a copy and its key each) back in every full pass: ~50 ms pauses of the event loop.
    Only what changed may be new."""
    src, store = source
    await configmaps_added(store, kubesim, 50)
    gc.collect()
    gc.freeze()
    try:
        await relisted(src, kubesim, written_while_down="relisted-while-down")
        gc.collect()
        new = [o for o in gc.get_objects() if isinstance(o, (PackedObject, ObjectKey))]
    finally:
        gc.unfreeze()
    assert store.get(cm_key("relisted-while-down")) is not None
    assert sorted(str(o) for o in new if isinstance(o, ObjectKey) and o.name.startswith("relisted-")) == [
        str(cm_key("relisted-while-down"))
    ]
    assert [o["metadata"]["name"] for o in new if isinstance(o, PackedObject) and o["kind"] == "ConfigMap"] == [
        "relisted-while-down"
    ]


async def test_a_large_relist_goes_into_the_store_in_steps_with_the_event_loop_turning_between(
    source: tuple[KubeSource, ConfigStore], kubesim: KubeSim
) -> None:
    """A relist of thousands of objects must not hold the event loop (and with it the webhook, the
    CA, xDS and /ready) until all are in: the store gets them LIST_STEP at a time, other tasks run
    between the steps, and in the end every change is there."""
    _, store = source
    count = 4 * LIST_STEP + 7
    for i in range(count):
        kubesim.create_object(configmap(f"bulk-{i}", v="1"))
    await eventually(lambda: store.get(cm_key(f"bulk-{count - 1}")), what="configmaps added")
    steps = StoreSteps(store, "ConfigMap")
    # While the watch is down every configmap changes and the history is compacted: only a relist
    # brings the changes, all of them in one list.
    kubesim.close_watches()
    resource = kubesim.resource("configmaps")
    for i in range(count):
        stored = kubesim.storage.get(resource, CP_NS, f"bulk-{i}")
        assert stored is not None
        kubesim.storage.write(resource, {**stored, "data": {"v": "2"}}, event_type="MODIFIED")
    kubesim.compact()
    async with running(steps.tick()):
        await eventually(
            lambda: all((store.get(cm_key(f"bulk-{i}")) or {}).get("data") == {"v": "2"} for i in range(count)),
            what="the relist's changes in the store",
        )
    assert sum(steps.sizes()) == count
    assert len(steps.sizes()) == 5 and max(steps.sizes()) == LIST_STEP, steps.batches
    assert steps.turned_between(), steps.batches


def service(name: str, ns: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"v": version}},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }


async def test_a_namespace_leaving_the_discovery_scope_during_a_relist_keeps_none_of_its_objects(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    """A relist goes into the store in steps; a discovery scope that changes between two steps holds
    for the steps after it too: a namespace deselected halfway keeps none of its objects."""
    kubesim.create_object(namespace(CP_NS))
    for ns in ("early", "late"):
        kubesim.create_object(namespace(ns, mesh="on"))
        for i in range(LIST_STEP):
            kubesim.create_object(service(f"svc-{i}", ns, "1"))
    selectors = 'discoverySelectors:\n- matchLabels:\n    mesh: "on"\n'
    kubesim.create_object(configmap("istio", mesh=selectors))
    store = ConfigStore()
    src = KubeSource(kube_api, store, namespace=CP_NS, backoff=lambda: Backoff(base=0.01, cap=0.05), timeout_seconds=30)
    namespaces, services = (src._mirrors[name] for name in (f"{NAMESPACES}@cluster", f"{SERVICES}@all-namespaces"))
    late_off = namespace("late", mesh="off")

    def deselect_late_after_the_first_step(events: Sequence[ConfigEvent]) -> None:
        # Between the relist's steps, `late` leaves the selection (what its watch event would do).
        relisted = any(e.key.kind == "Service" and e.new and e.new["metadata"]["labels"]["v"] == "2" for e in events)
        if relisted and src.scope.includes("late"):
            kubesim.storage.write(kubesim.resource("namespaces"), late_off, event_type="MODIFIED")
            namespaces.on_event("MODIFIED", late_off)

    async with running(src.run()):
        await eventually(lambda: store.synced and len(store.list("Service")) >= 2 * LIST_STEP, what="first sync")
        store.subscribe(deselect_late_after_the_first_step)
        # Every service changes while the watches are down, and the services' watch answers 410:
        # one relist brings them all (the other watches resume where they were).
        kubesim.close_watches()
        resource = kubesim.resource("services")
        for ns in ("early", "late"):
            for i in range(LIST_STEP):
                stored = kubesim.storage.get(resource, ns, f"svc-{i}")
                assert stored is not None
                kubesim.storage.write(resource, {**stored, **service(f"svc-{i}", ns, "2")}, event_type="MODIFIED")
        kubesim.inject_faults(status=410, count=1, method="GET", path_prefix=SERVICES.path(), watch=True)
        await eventually(
            lambda: all(
                (store.get(ObjectKey("Service", "early", f"svc-{i}")) or {}).get("metadata", {}).get("labels")
                == {"v": "2"}
                for i in range(LIST_STEP)
            ),
            what="early's services relisted",
        )
        await eventually(lambda: services.lists == 2, what="the relist done")
        assert not src.scope.includes("late")
        assert [o["metadata"]["name"] for o in store.list("Service") if o["metadata"]["namespace"] == "late"] == []


async def test_a_namespace_relabelled_into_the_discovery_scope_arrives_in_steps(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    """A namespace of thousands of objects selected at once must not hold the event loop until all are
    in the store: after the first LIST_STEP they follow in steps, with other tasks running between."""
    kubesim.create_object(namespace(CP_NS))
    kubesim.create_object(namespace("bulk", mesh="off"))
    count = 2 * LIST_STEP + 9
    for i in range(count):
        kubesim.create_object(service(f"svc-{i}", "bulk", "1"))
    kubesim.create_object(configmap("istio", mesh='discoverySelectors:\n- matchLabels:\n    mesh: "on"\n'))
    store = ConfigStore()
    src = KubeSource(kube_api, store, namespace=CP_NS, backoff=lambda: Backoff(base=0.01, cap=0.05), timeout_seconds=30)
    steps = StoreSteps(store, "Service")
    async with running(src.run()), running(steps.tick()):
        await eventually(lambda: store.synced, what="first sync")
        assert not store.list("Service")
        kubesim.storage.write(kubesim.resource("namespaces"), namespace("bulk", mesh="on"), event_type="MODIFIED")
        await eventually(lambda: len(store.list("Service")) == count, what="the namespace's services in the store")
    assert steps.sizes() == [LIST_STEP, LIST_STEP, 9], steps.batches
    assert steps.turned_between(), steps.batches


async def test_pods_are_kept_as_the_model_reads_them_so_status_noise_changes_nothing(
    source: tuple[KubeSource, ConfigStore], kubesim: KubeSim
) -> None:
    """Of a Pod the store keeps what the model reads: a kubelet's status update (conditions, container
    statuses) is no change at all, while a label change is one."""
    _, store = source
    kubesim.create_object(namespace("shop"))
    kubesim.create_object(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "shop"}}
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        },
    }
    kubesim.create_object(pod)
    key = ObjectKey("Pod", "shop", "web-1")
    await eventually(lambda: store.get(key), what="pod in the store")
    assert isinstance(store.get(key), PackedObject)  # one object to the garbage collector
    assert store.get(key) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {"phase": "Pending"},
    }
    changes: list[ConfigEvent] = []
    store.subscribe(lambda events: changes.extend(e for e in events if e.key == key))
    resource = kubesim.resource("pods")
    stored = kubesim.storage.get(resource, "shop", "web-1")
    assert stored is not None
    for ready in ("False", "True", "False"):
        status = {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": ready}],
            "containerStatuses": [{"name": "app"}],
        }
        stored = kubesim.storage.write(resource, {**stored, "status": status}, event_type="MODIFIED")
    labels = {"app": "web", "version": "2"}
    kubesim.storage.write(
        resource, {**stored, "metadata": {**stored["metadata"], "labels": labels}}, event_type="MODIFIED"
    )
    await eventually(lambda: changes, what="the label change")
    assert [(e.type.name, e.new and e.new["metadata"]["labels"]) for e in changes] == [("MODIFIED", labels)]


async def test_resumes_watch_without_relisting_when_a_stream_ends(
    source: tuple[KubeSource, ConfigStore], kubesim: KubeSim
) -> None:
    _, store = source
    path = CONFIGMAPS.path(CP_NS)
    watches_before = len(requests_to(kubesim, path, watch=True))
    lists_before = len(requests_to(kubesim, path, watch=False))
    kubesim.close_watches()
    await eventually(lambda: len(requests_to(kubesim, path, watch=True)) > watches_before, what="rewatch")
    kubesim.create_object(configmap("after-resume"))
    await eventually(lambda: store.get(cm_key("after-resume")), what="event after resume")
    assert len(requests_to(kubesim, path, watch=False)) == lists_before


async def test_bookmarks_move_the_resume_point(source: tuple[KubeSource, ConfigStore], kubesim: KubeSim) -> None:
    path = NAMESPACES.path()
    # Writes to another kind advance the global resourceVersion without any namespace event.
    for i in range(3):
        kubesim.create_object(configmap(f"noise-{i}", "default"))
    advanced = kubesim.storage.rv
    await asyncio.sleep(0)  # let the write land before bookmarks are counted

    async def resumed_at_or_after_advance() -> bool:
        kubesim.close_watches()
        await asyncio.sleep(0.3)
        last = requests_to(kubesim, path, watch=True)[-1]
        return int(last["resourceVersion"][0]) >= advanced

    await eventually(resumed_at_or_after_advance, what="a watch resumed from a bookmark's resourceVersion")


async def test_list_follows_continue_pages(kubesim: KubeSim, kube_api: KubeApi) -> None:
    kubesim.create_object(namespace(CP_NS))
    for i in range(7):
        kubesim.create_object(configmap(f"cm-{i}"))
    objects, rv = await list_all(kube_api, CONFIGMAPS, Selection(namespace=CP_NS), page_size=3)
    assert [o["metadata"]["name"] for o in objects] == [f"cm-{i}" for i in range(7)]
    assert all(o["kind"] == "ConfigMap" and o["apiVersion"] == "v1" for o in objects)
    assert int(rv) == kubesim.storage.rv
    assert len(requests_to(kubesim, CONFIGMAPS.path(CP_NS), watch=False)) == 3


async def test_list_keeps_what_it_is_told_of_each_object_as_its_page_arrives(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    """A list of tens of thousands of large objects must not be all in memory whole: `keep` trims each
    as its page comes in, before the next page is asked for."""
    kubesim.create_object(namespace(CP_NS))
    for i in range(7):
        kubesim.create_object(configmap(f"cm-{i}", blob="x" * 1000))
    path = CONFIGMAPS.path(CP_NS)
    pages_asked: list[int] = []

    def keep(obj: JsonObject) -> JsonObject:
        pages_asked.append(len(requests_to(kubesim, path, watch=False)))
        return {"kind": obj["kind"], "metadata": {"name": obj["metadata"]["name"]}}

    objects, _ = await list_all(kube_api, CONFIGMAPS, Selection(namespace=CP_NS), page_size=3, keep=keep)
    assert objects == [{"kind": "ConfigMap", "metadata": {"name": f"cm-{i}"}} for i in range(7)]
    assert pages_asked == [1, 1, 1, 2, 2, 2, 3]


async def test_a_watch_resumes_after_the_last_event_even_when_keep_drops_its_resource_version(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    """The kube source keeps no resourceVersion of a Pod; the watch must still resume after the last
    Pod event it took, not at the last bookmark (a replay of everything since, or a relist after 410)."""
    kubesim.create_object(namespace(CP_NS))
    _, listed_at = await list_all(kube_api, CONFIGMAPS, Selection(namespace=CP_NS))
    for i in range(3):
        kubesim.create_object(configmap(f"cm-{i}"))

    def keep(obj: JsonObject) -> JsonObject:
        return {"kind": obj["kind"], "metadata": {"name": obj["metadata"]["name"]}}

    seen: list[tuple[str, str]] = []
    stream = watch_stream(
        kube_api, CONFIGMAPS, Selection(namespace=CP_NS), resource_version=listed_at, timeout_seconds=5, keep=keep
    )
    async for event in stream:
        if event.type != "BOOKMARK":
            seen.append((event.object["metadata"]["name"], event.resource_version))
        if len(seen) == 3:
            break
    await stream.aclose()
    stored = [kubesim.storage.get(kubesim.resource("configmaps"), CP_NS, f"cm-{i}") for i in range(3)]
    assert seen == [(f"cm-{i}", obj["metadata"]["resourceVersion"]) for i, obj in enumerate(stored) if obj]


async def test_a_list_of_pods_is_one_object_per_pod_to_the_garbage_collector_as_its_pages_arrive(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    """Until the source has taken a relist, the listed objects are all in memory; held as parsed JSON,
    30,000 Pods were ~300,000 objects for every full garbage collection to walk (0.3-0.5 s pauses of
    the event loop, each, while the relist went on). Packed as their page arrives: one each."""
    kubesim.create_object(namespace("shop"))
    count = 700  # two pages
    for i in range(count):
        kubesim.create_object(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"web-{i}", "namespace": "shop", "labels": {"app": "web", "version": f"v{i}"}},
                "spec": {"containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "b"}] * 5}]},
            }
        )
    gc.collect()
    before = len(gc.get_objects())
    objects, _ = await list_all(kube_api, PODS, Selection(), keep=storable)
    gc.collect()
    assert len(objects) == count
    assert len(gc.get_objects()) - before < count * 2  # as parsed JSON, ~4 per Pod here
    assert objects[0]["metadata"]["labels"] == {"app": "web", "version": "v0"}


class Listed(dict[str, Any]):
    """A kept object that can be watched for its end (plain dicts take no weak references)."""


async def test_a_watch_holds_no_listed_object_once_the_handler_took_the_list(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    """The watch that follows a list lasts as long as the process; the list must not: 30,000 listed Pods
    held in it were ~300,000 objects in memory twice, walked by every full garbage collection (a
    ~0.3 s pause of the event loop each)."""
    kubesim.create_object(namespace(CP_NS))
    for i in range(5):
        kubesim.create_object(configmap(f"cm-{i}"))
    listed: list[weakref.ref[Listed]] = []

    def keep(obj: JsonObject) -> JsonObject:
        kept = Listed(obj)
        listed.append(weakref.ref(kept))
        return kept

    recorder = Recorder()
    selection = Selection(namespace=CP_NS)
    async with running(infinite_watch(kube_api, CONFIGMAPS, selection, recorder, timeout_seconds=30, keep=keep)):
        await eventually(lambda: recorder.lists, what="the list")
        kubesim.create_object(configmap("after"))
        await eventually(lambda: recorder.events, what="a watch event")  # the watch is streaming
        gc.collect()
        assert len(listed) >= 5
        assert [ref() for ref in listed[:5]] == [None] * 5


class Recorder:
    def __init__(self) -> None:
        self.lists: list[list[str]] = []
        self.events: list[tuple[str, str]] = []

    async def on_list(self, objects: Sequence[JsonObject]) -> None:
        self.lists.append(sorted(o["metadata"]["name"] for o in objects))

    def on_event(self, event_type: str, obj: JsonObject) -> None:
        self.events.append((event_type, obj["metadata"]["name"]))


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_server_errors_back_off_exponentially_then_recover(kubesim: KubeSim, kube_api: KubeApi) -> None:
    kubesim.inject_faults(status=500, count=3, method="GET", path_prefix=NAMESPACES.path())
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    recorder = Recorder()
    backoff = Backoff(base=1.0, cap=3.0, rng=lambda: 1.0)
    watch = infinite_watch(
        kube_api, NAMESPACES, Selection(), recorder, backoff=backoff, timeout_seconds=30, sleep=record
    )
    async with running(watch):
        await eventually(lambda: recorder.lists, what="a successful list after the errors")
    assert delays == [1.0, 2.0, 3.0]  # doubling, capped
    assert "default" in recorder.lists[0]


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (7, 7.0),
        (3600, 60.0),  # at most MAX_RETRY_AFTER: a server asking for an hour must not stop the watch that long
        (10**30, 60.0),
        ("inf", 0.5),  # not delay-seconds (RFC 9110: digits only): the backoff's first delay
        ("nan", 0.5),
        ("\u0667", 0.5),  # an Arabic-Indic 7, which float() reads
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.5),
    ],
)
async def test_too_many_requests_waits_as_long_as_retry_after_says(
    kubesim: KubeSim, kube_api: KubeApi, retry_after: int | str, expected: float
) -> None:
    kubesim.inject_faults(status=429, count=1, method="GET", path_prefix=NAMESPACES.path(), retry_after=retry_after)
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    recorder = Recorder()
    backoff = Backoff(base=0.5, rng=lambda: 1.0)
    watch = infinite_watch(
        kube_api, NAMESPACES, Selection(), recorder, backoff=backoff, timeout_seconds=30, sleep=record
    )
    async with running(watch):
        await eventually(lambda: recorder.lists, what="a successful list after the 429")
    assert delays == [expected]


async def test_http_410_on_watch_relists_at_once(kubesim: KubeSim, kube_api: KubeApi) -> None:
    recorder = Recorder()
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    kubesim.inject_faults(status=410, count=1, method="GET", path_prefix=NAMESPACES.path(), watch=True)
    watch = infinite_watch(kube_api, NAMESPACES, Selection(), recorder, timeout_seconds=30, sleep=record)
    async with running(watch):
        await eventually(lambda: len(recorder.lists) >= 2, what="a relist after the 410")
    assert delays == []


async def test_label_selected_watch_sees_objects_leave_and_enter_the_selection(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    kubesim.create_object(namespace("apps"))
    recorder = Recorder()
    selection = Selection(namespace="apps", label_selector="istio.io/config=true")
    watch = infinite_watch(kube_api, CONFIGMAPS, selection, recorder, timeout_seconds=30)
    path = CONFIGMAPS.path("apps")
    async with running(watch):
        await eventually(lambda: recorder.lists, what="first list")
        body = configmap("mesh", "apps")
        body["metadata"]["labels"] = {"istio.io/config": "true"}
        await kube_api.request("POST", path, body=body)
        await eventually(lambda: ("ADDED", "mesh") in recorder.events, what="ADDED")
        await kube_api.request(
            "PATCH",
            f"{path}/mesh",
            body={"metadata": {"labels": {"istio.io/config": "false"}}},
            content_type="application/merge-patch+json",
        )
        await eventually(lambda: ("DELETED", "mesh") in recorder.events, what="DELETED on leaving the selection")
    assert recorder.lists == [[]]


async def test_cluster_scope_rejects_a_namespaced_resource() -> None:
    with pytest.raises(ValueError, match="namespaced"):
        WatchedKind(resource=CONFIGMAPS, scope=Scope.CLUSTER).selection(control_plane_namespace=CP_NS)
    with pytest.raises(ValueError, match="cluster-scoped"):
        Resource(group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False).path("x")


async def test_api_errors_carry_the_status_reason(kubesim: KubeSim, kube_api: KubeApi) -> None:
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("GET", f"{CONFIGMAPS.path('default')}/missing")
    assert info.value.status == 404
    assert info.value.reason == "NotFound"
    assert 'configmaps "missing" not found' in info.value.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("clusters: [", "not valid YAML at line"),
        ("- a list", "not a kubeconfig"),
        ("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n", "has no clusters"),
        (
            "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
            "contexts: [{name: x, context: {cluster: c, user: u}}]\nusers: []\n",
            "has no current-context",
        ),
        (
            "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
            "contexts: [{name: x, context: {cluster: c, user: u}}]\nusers: []\ncurrent-context: nope\n",
            "nope",
        ),
    ],
    ids=["missing", "broken-yaml", "not-a-mapping", "no-clusters", "no-current-context", "unknown-context"],
)
async def test_bad_kubeconfig_is_a_settings_error_naming_the_file(
    tmp_path: pathlib.Path, content: str | None, message: str
) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError, match=message) as info:
        await KubeApi.connect(kubeconfig=path)
    assert str(path) in str(info.value)


async def test_no_kubeconfig_outside_a_cluster_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SettingsError, match="--kubeconfig FILE"):
        await KubeApi.connect(kubeconfig=None)
