"""What kubesim's controllers share: informers, a rate-limited work queue, expectations, events, helpers.

The controllers are clients of the API server like kube-controller-manager's: an `Informer` per
resource lists and watches it (through `controlplane.kube.watching`) into a cache and tells its
subscribers what changed; each controller turns changes into keys on its `WorkQueue` and syncs
one key at a time from the caches, writing through the API with resourceVersion preconditions.
A failed sync (a 409 from a stale cache, an admission webhook refusing a pod, ...) is retried with
per-key exponential backoff.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.watching import Backoff, Kept, Resource, Selection, infinite_watch

log = logging.getLogger("tests.kubesim.controllers")

Obj = dict[str, Any]
Key = tuple[str, str]  # namespace ("" if cluster-scoped), name
Listener = Callable[[Obj | None, Obj | None], None]  # (old, new): added, changed or deleted
RETRYABLE_WRITE = (KubeApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError)

PODS = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
SERVICES = Resource(group="", version="v1", plural="services", kind="Service", namespaced=True)
DEPLOYMENTS = Resource(group="apps", version="v1", plural="deployments", kind="Deployment", namespaced=True)
REPLICASETS = Resource(group="apps", version="v1", plural="replicasets", kind="ReplicaSet", namespaced=True)
ENDPOINTSLICES = Resource(
    group="discovery.k8s.io", version="v1", plural="endpointslices", kind="EndpointSlice", namespaced=True
)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def uid_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def object_path(resource: Resource, namespace: str, name: str, sub: str = "") -> str:
    """An object's URL path (or its subresource's), the name percent-escaped: some kinds' names (an RBAC
    object's) may hold any character but '/' and '%', such as '?', '#' or ' '."""
    path = f"{resource.path(namespace if resource.namespaced else None)}/{urllib.parse.quote(name, safe='')}"
    return f"{path}/{sub}" if sub else path


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference with `controller: true`, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def owner_key(obj: Mapping[str, Any] | None, kind: str) -> str | None:
    """`<namespace>/<name>` of the controller that owns `obj`, when it is a `kind`; else None."""
    ref = controller_ref(obj) if obj is not None else None
    if obj is None or ref is None or ref.get("kind") != kind:
        return None
    return f"{key_of(obj)[0]}/{ref['name']}"


def owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.get("uid") == uid_of(owner)


def new_controller_ref(owner: Mapping[str, Any], *, api_version: str, kind: str) -> Obj:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": uid_of(owner),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def pod_ready_since(pod: Mapping[str, Any]) -> datetime.datetime | None:
    """When the pod's Ready condition last became True (None: not ready)."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            if cond.get("status") != "True":
                return None
            text = cond.get("lastTransitionTime")
            return parse_stamp(text) if text else datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return None


def pod_active(pod: Mapping[str, Any]) -> bool:
    """Counts toward a ReplicaSet: not being deleted and not finished."""
    phase = (pod.get("status") or {}).get("phase")
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Event:
    """What a real controller would record as an Event: shown in the log, kept for tests."""

    kind: str
    namespace: str
    name: str
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class EventLog:
    events: list[Event] = field(default_factory=list)

    def record(self, obj: Mapping[str, Any], *, kind: str, type: str, reason: str, message: str) -> None:
        namespace, name = key_of(obj)
        event = Event(kind, namespace, name, type, reason, message)
        self.events.append(event)
        level = logging.WARNING if type == "Warning" else logging.INFO
        log.log(level, "Event %s %s/%s: type: '%s' reason: '%s' %s", kind, namespace, name, type, reason, message)


class Informer:
    """A cache of one resource in every namespace, kept by list + watch; subscribers hear every change.

    Listeners run synchronously inside the watch loop and must only enqueue work. `synced` is set
    once the first list is in.
    """

    def __init__(self, api: KubeApi, resource: Resource) -> None:
        self.api = api
        self.resource = resource
        self.objects: dict[Key, Obj] = {}
        self.listeners: list[Listener] = []
        self.synced = asyncio.Event()

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.objects.get((namespace, name))

    def list(self, namespace: str | None = None) -> list[Obj]:
        return [obj for (ns, _), obj in self.objects.items() if namespace is None or ns == namespace]

    # WatchHandler. `run` watches with the default `keep`, so what arrives is each object as listed: an Obj.
    async def on_list(self, objects: Sequence[Kept]) -> None:
        fresh = {key_of(obj): cast(Obj, obj) for obj in objects}
        for key, old in list(self.objects.items()):
            if key not in fresh:
                del self.objects[key]
                self._tell(old, None)
        for key, obj in fresh.items():
            previous = self.objects.get(key)
            self.objects[key] = obj
            rv = obj["metadata"].get("resourceVersion")
            if previous is None or previous.get("metadata", {}).get("resourceVersion") != rv:
                self._tell(previous, obj)
        self.synced.set()

    def on_event(self, event_type: str, obj: Kept) -> None:
        listed = cast(Obj, obj)
        key = key_of(listed)
        old = self.objects.get(key)
        if event_type == "DELETED":
            self.objects.pop(key, None)
            self._tell(old if old is not None else listed, None)
        else:
            self.objects[key] = listed
            self._tell(old, listed)

    def _tell(self, old: Obj | None, new: Obj | None) -> None:
        for listener in self.listeners:
            listener(old, new)

    async def run(self) -> None:
        await infinite_watch(self.api, self.resource, Selection(), self, backoff=Backoff(base=0.2, cap=5.0))


class WorkQueue:
    """Keys to sync: each key queued at most once, never synced twice at the same time.

    `retry(key)` re-adds it after an exponential backoff (`base` * 2**failures, at most `cap`
    seconds); `forget(key)` resets that after a successful sync.
    """

    def __init__(self, *, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: set[asyncio.TimerHandle] = set()

    def add(self, key: str) -> None:
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        def fire() -> None:
            self._timers.discard(timer)
            self.add(key)

        timer = asyncio.get_running_loop().call_later(max(0.0, delay), fire)
        self._timers.add(timer)

    def retry(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self.cap, self.base * 2.0**failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


@dataclass
class _Expected:
    adds: int
    deletes: set[str]
    deadline: float


class Expectations:
    """Pods a controller asked for and has not seen in its cache yet, so it does not ask twice.

    Expectations older than `ttl` seconds count as met (a lost event must not stall a ReplicaSet).
    """

    def __init__(self, *, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._by_key: dict[str, _Expected] = {}

    def expect(self, key: str, *, adds: int = 0, deletes: Iterable[str] = ()) -> None:
        deadline = asyncio.get_running_loop().time() + self.ttl
        self._by_key[key] = _Expected(adds, set(deletes), deadline)

    def created(self, key: str) -> None:
        if (expected := self._by_key.get(key)) is not None:
            expected.adds = max(0, expected.adds - 1)

    def deleted(self, key: str, pod: str) -> None:
        if (expected := self._by_key.get(key)) is not None:
            expected.deletes.discard(pod)

    def satisfied(self, key: str) -> bool:
        expected = self._by_key.get(key)
        if expected is None or (expected.adds <= 0 and not expected.deletes):
            return True
        return asyncio.get_running_loop().time() > expected.deadline

    def drop(self, key: str) -> None:
        self._by_key.pop(key, None)


class Controller:
    """One control loop: `sync(key)` for each queued key, after every informer it reads has listed.

    A sync that raises a transport or API error (including a 409 Conflict from a stale cache) is
    logged and retried with backoff; `sync` may also call `queue.add_after` to look again later.
    """

    name = "controller"

    def __init__(self, *, api: KubeApi, informers: Sequence[Informer], events: EventLog) -> None:
        self.api = api
        self.queue = WorkQueue()
        self.events = events
        self._informers = tuple(informers)

    async def sync(self, key: str) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        for informer in self._informers:
            await informer.synced.wait()
        while True:
            key = await self.queue.get()
            try:
                await self.sync(key)
            except RETRYABLE_WRITE as exc:
                delay = self.queue.retry(key)
                log.info("%s: sync of %s failed (%s); retrying in %.2fs", self.name, key, exc, delay)
            except Exception:  # a bug: say so loudly, but keep the loop (and the cluster) alive
                delay = self.queue.retry(key)
                log.exception("%s: sync of %s crashed; retrying in %.2fs", self.name, key, delay)
            else:
                self.queue.forget(key)
            finally:
                self.queue.done(key)
