"""Watching one Kubernetes resource, as a stack of three loops.

1. `infinite_watch` never gives up: it runs `continuous_watch` again after every end, sleeping
   an exponential backoff with jitter after failures (a `Retry-After` of a 429 or 503 wins), and
   logging each failure. It keeps one `Cursor` across failures, so a broken stream or an API
   server that went away resumes the watch from the last resourceVersion seen, without a relist.
   An expired resourceVersion (`410 Gone`) relists at once; a resourceVersion the server has
   never reached (`ResourceVersionTooLarge`: it restarted with less history) relists after the
   backoff.
2. `continuous_watch` lists the resource (in pages) when the cursor is empty, hands the full set
   to the handler, then watches from the cursor, moving it with every event and bookmark and
   reconnecting from it whenever a stream ends. A `410 Gone` / Expired answer empties the cursor
   and ends it with `WatchExpired`, so the caller relists.
3. `watch_stream` is one HTTP watch request, yielding decoded events.

No event is lost or applied twice: the cursor moves only after the handler took the event, the
server sends only what came after the cursor, and a relist hands over the complete set, which the
handler diffs against what it holds (vanished objects deleted, unchanged ones left alone).

An *optional* resource (a CustomResourceDefinition that may not be installed) differs in one way:
a list answered `404` (`ResourceNotServed`) counts as a list with no objects, and the loop probes
again every `probe_interval` seconds instead of backing off with warnings. A `404` on its watch
relists at once, so a CRD deleted while watched empties the handler and probing resumes.

Objects stay plain dicts in the API's JSON. List items get `kind` and `apiVersion` filled in (the
API server leaves them out of list items).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from controlplane.kube.client import JsonObject, KubeApi, KubeApiError

log = logging.getLogger(__name__)

# Transport-level failures a watch loop retries (anything else is a bug and propagates).
RETRYABLE = (KubeApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError)
MIN_QUIET_STREAM = 1.0  # seconds: an empty watch stream shorter than this waits out the rest


@dataclass(frozen=True, kw_only=True)
class Resource:
    """A resource of the API: `group` is "" for the core group."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        """The collection URL path; `namespace` None means cluster-scoped or all namespaces."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None:
            if not self.namespaced:
                raise ValueError(f"{self.kind} is cluster-scoped; it has no namespace {namespace!r}")
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which objects of a resource: one namespace (None: all or cluster-scoped) and selectors."""

    namespace: str | None = None
    label_selector: str = ""
    field_selector: str = ""

    def query(self) -> list[tuple[str, str]]:
        query = []
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        if self.field_selector:
            query.append(("fieldSelector", self.field_selector))
        return query

    def __str__(self) -> str:
        parts = [f"namespace={self.namespace}" if self.namespace is not None else "all namespaces"]
        if self.label_selector:
            parts.append(f"labels={self.label_selector}")
        if self.field_selector:
            parts.append(f"fields={self.field_selector}")
        return ", ".join(parts)


@dataclass(frozen=True)
class WatchEvent:
    """One watch event. `object` is as the watch's `keep` made it; `resource_version` is the server's,
    read before `keep` ran (a kept Pod has none), so the resume point moves with every event."""

    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Kept
    resource_version: str

    @classmethod
    def of(cls, event_type: str, obj: JsonObject, keep: Keep) -> WatchEvent:
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        return cls(event_type, obj if event_type == "BOOKMARK" else keep(obj), rv)


class WatchExpired(Exception):
    """The resourceVersion the watch started from is no longer retained (410 Gone); relist."""


@dataclass
class Cursor:
    """Where a watch resumes: the resourceVersion of the last list, event or bookmark ("": list first)."""

    resource_version: str = ""


def too_large(exc: BaseException) -> bool:
    """The server has not reached the resourceVersion asked for (it lost history, e.g. a restart)."""
    if not isinstance(exc, KubeApiError):
        return False
    details = exc.body.get("details") if isinstance(exc.body, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    if isinstance(causes, list) and any(
        isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge" for c in causes
    ):
        return True
    return exc.status == 504 and "Too large resource version" in exc.message


class ResourceNotServed(KubeApiError):
    """A list answered 404: the API server does not serve the resource (e.g. its CRD is not installed).

    A collection in a namespace that does not exist lists empty, so a 404 on a list always means
    the resource itself is unknown to the server.
    """


class WatchHandler(Protocol):
    """Receives what one watched resource delivers, in order: no event before the list it follows is taken."""

    async def on_list(self, objects: Sequence[Kept]) -> None:
        """The complete current set (after a list or relist): replace what the handler holds.

        A list may hold tens of thousands of objects; a handler whose work grows with it yields to
        the event loop between steps, so the rest of the process keeps running meanwhile."""

    def on_event(self, event_type: str, obj: Kept) -> None:
        """One ADDED, MODIFIED or DELETED object. Synchronous: one object's work must be quick."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * factor**n)]."""

    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    rng: Callable[[], float] = random.random
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        return ceiling * self.rng()

    def reset(self) -> None:
        self.attempts = 0


Kept = Mapping[str, Any]
"""An object as a watch's `keep` made it: the object itself, a trimmed copy, or a packed one."""

Keep = Callable[[JsonObject], Kept]
"""What of each listed or watched object the handler gets: a caller that reads a few fields of a large
object keeps only those, before a list of tens of thousands of them is all in memory at once."""


def as_listed(obj: JsonObject) -> JsonObject:
    """The default `Keep`: the object whole."""
    return obj


def _complete(obj: JsonObject, resource: Resource) -> JsonObject:
    """A list item with the kind and apiVersion a built-in list leaves out, in the order the API server writes
    them in a watch event's object (its Go type's: `kind` first), so a relisted object that did not change
    is equal to the one held, key order included (`controlplane.model.packed`). A custom resource's items
    carry their own."""
    if "kind" not in obj or "apiVersion" not in obj:
        obj = {"kind": resource.kind, "apiVersion": resource.api_version, **obj}
    return obj


async def list_all(
    api: KubeApi, resource: Resource, selection: Selection, *, page_size: int = 500, keep: Keep = as_listed
) -> tuple[list[Kept], str]:
    """All objects of a selection (following `continue` pages), each as `keep` makes it as its page
    arrives (so what it drops is freed page by page), and the list's resourceVersion.

    Raises WatchExpired when a continue token expired mid-list, ResourceNotServed for a 404,
    KubeApiError for other errors.
    """
    items: list[Kept] = []
    token = ""
    while True:
        query = [*selection.query(), ("limit", str(page_size))]
        if token:
            query.append(("continue", token))
        try:
            page = await api.request("GET", resource.path(selection.namespace), query=query)
        except KubeApiError as exc:
            if exc.expired:
                raise WatchExpired(exc.message) from exc
            if exc.status == 404:
                raise ResourceNotServed(
                    status=exc.status, reason=exc.reason, message=exc.message, body=exc.body
                ) from exc
            raise
        raw_items = page.get("items")
        if not isinstance(raw_items, list):
            raise KubeApiError(status=200, reason="BadResponse", message=f"list of {resource} has no items")
        items.extend(keep(_complete(item, resource)) for item in raw_items if isinstance(item, dict))
        meta = page.get("metadata") or {}
        token = str(meta.get("continue") or "")
        if not token:
            return items, str(meta.get("resourceVersion") or "")


async def watch_stream(
    api: KubeApi,
    resource: Resource,
    selection: Selection,
    *,
    resource_version: str,
    timeout_seconds: int,
    keep: Keep = as_listed,
) -> AsyncIterator[WatchEvent]:
    """One watch request from `resource_version`; ends when the server closes the stream. Each event's
    object is as `keep` makes it (a bookmark's as it came).

    Raises WatchExpired for a 410 (as an HTTP status or an ERROR event), KubeApiError for other
    errors, ValueError for a line that is not a watch event.
    """
    query = [
        *selection.query(),
        ("watch", "1"),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", str(timeout_seconds)),
    ]
    try:
        async with api.stream(
            resource.path(selection.namespace), query=query, stream_timeout=timeout_seconds + 30
        ) as resp:
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise ValueError(f"watch of {resource}: not a watch event: {line[:200]!r}")
                event_type = str(event.get("type", ""))
                obj = event["object"]
                if event_type == "ERROR":
                    error = KubeApiError.from_status(obj)
                    if error.expired:
                        raise WatchExpired(error.message)
                    raise error
                if event_type not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    raise ValueError(f"watch of {resource}: unknown event type {event_type!r}")
                yield WatchEvent.of(event_type, obj if event_type == "BOOKMARK" else _complete(obj, resource), keep)
    except KubeApiError as exc:
        if exc.expired:
            raise WatchExpired(exc.message) from exc
        raise


async def continuous_watch(
    api: KubeApi,
    resource: Resource,
    selection: Selection,
    handler: WatchHandler,
    *,
    timeout_seconds: int = 300,
    on_healthy: Callable[[], None] = lambda: None,
    cursor: Cursor | None = None,
    keep: Keep = as_listed,
) -> None:
    """List (unless `cursor` holds a resourceVersion), then watch from the cursor, forever.

    Raises WatchExpired on 410 (the cursor is emptied, so the next call relists); any other error
    propagates with the cursor at the last event the handler took, so the next call resumes there.
    `on_healthy` is called whenever a watch stream delivered an event or ended cleanly, so the
    caller can reset its backoff.
    """
    cursor = cursor if cursor is not None else Cursor()
    if not cursor.resource_version:
        cursor.resource_version = await _list_into(handler, api, resource, selection, keep=keep)
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        delivered = False
        try:
            async for event in watch_stream(
                api,
                resource,
                selection,
                resource_version=cursor.resource_version,
                timeout_seconds=timeout_seconds,
                keep=keep,
            ):
                if event.type != "BOOKMARK":
                    handler.on_event(event.type, event.object)
                if event.resource_version:
                    cursor.resource_version = event.resource_version
                delivered = True
                on_healthy()
        except WatchExpired:
            cursor.resource_version = ""
            raise
        on_healthy()
        elapsed = loop.time() - started
        if not delivered and elapsed < MIN_QUIET_STREAM:
            # A server that closes empty streams at once must not make us spin.
            await asyncio.sleep(MIN_QUIET_STREAM - elapsed)


async def _list_into(
    handler: WatchHandler, api: KubeApi, resource: Resource, selection: Selection, *, keep: Keep
) -> str:
    """List, hand the objects to `handler`, and return the list's resourceVersion.

    The list ends here, not in the caller's frame: the watch that follows lasts as long as the
    process, and a large cluster's list held that long would be tens of thousands of objects kept
    twice in memory, and walked by every full pass of the garbage collector (a pause of the event
    loop: ~0.3 s for 30,000 Pods)."""
    objects, listed_at = await list_all(api, resource, selection, keep=keep)
    await handler.on_list(objects)
    log.debug("listed %s (%s): %d objects at %s", resource, selection, len(objects), listed_at)
    return listed_at


class _OptionalHandler:
    """Wraps the handler of an optional resource: tracks whether it is served and says when that changes."""

    def __init__(self, inner: WatchHandler, resource: Resource, selection: Selection) -> None:
        self.inner = inner
        self.resource = resource
        self.selection = selection
        self.absent: bool | None = None  # None until the first list or probe

    async def on_list(self, objects: Sequence[Kept]) -> None:
        if self.absent:
            log.info("%s is served now; listing and watching it (%s)", self.resource, self.selection)
        self.absent = False
        await self.inner.on_list(objects)

    def on_event(self, event_type: str, obj: Kept) -> None:
        self.inner.on_event(event_type, obj)

    async def not_served(self, probe_interval: float) -> None:
        """The resource answered 404: empty the handler once, and say so once per absence."""
        if self.absent:
            log.debug("%s is still not served", self.resource)
            return
        log.info(
            "%s is not served: its CustomResourceDefinition is not installed; meshplane will look again every %gs",
            self.resource,
            probe_interval,
            extra={"resource": str(self.resource)},
        )
        self.absent = True
        await self.inner.on_list([])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KubeApiError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def infinite_watch(
    api: KubeApi,
    resource: Resource,
    selection: Selection,
    handler: WatchHandler,
    *,
    backoff: Backoff | None = None,
    timeout_seconds: int | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
    optional: bool = False,
    probe_interval: float = 30.0,
    keep: Keep = as_listed,
) -> None:
    """Keep `handler` in step with the selection until cancelled; never returns otherwise.

    `timeout_seconds` is the server-side limit of each watch request (default: random in
    5-10 minutes, so many watchers do not reconnect in step). With `optional`, a resource the
    server does not serve is an empty list, probed again every `probe_interval` seconds (see the
    module docstring); without it, a 404 is retried with backoff like any other failure.
    """
    backoff = backoff or Backoff()
    cursor = Cursor()
    presence = _OptionalHandler(handler, resource, selection) if optional else None
    relisting_after_404 = False  # a watch 404 relists at once, but not twice in a row without a healthy stream

    def healthy() -> None:
        nonlocal relisting_after_404
        relisting_after_404 = False
        backoff.reset()

    while True:
        timeout = timeout_seconds or random.randint(300, 600)
        try:
            await continuous_watch(
                api,
                resource,
                selection,
                presence or handler,
                timeout_seconds=timeout,
                on_healthy=healthy,
                cursor=cursor,
                keep=keep,
            )
        except WatchExpired as exc:
            log.info("watch of %s (%s) expired (%s); relisting", resource, selection, exc)
            continue
        except ResourceNotServed as exc:
            cursor.resource_version = ""
            if presence is None:
                await _retry(exc, resource, selection, backoff, sleep)
                continue
            healthy()
            await presence.not_served(probe_interval)
            await sleep(probe_interval)
        except RETRYABLE as exc:
            if presence is not None and isinstance(exc, KubeApiError) and exc.status == 404 and not relisting_after_404:
                relisting_after_404 = True
                cursor.resource_version = ""
                log.info(
                    "watch of %s (%s) answered 404; relisting to see whether it is still served", resource, selection
                )
                continue
            if too_large(exc):
                log.info("%s (%s): the server lost history; relisting after the backoff", resource, selection)
                cursor.resource_version = ""
            await _retry(exc, resource, selection, backoff, sleep)


async def _retry(
    exc: BaseException, resource: Resource, selection: Selection, backoff: Backoff, sleep: Callable[[float], Any]
) -> None:
    delay = backoff.next_delay()
    if isinstance(exc, KubeApiError) and exc.retry_after is not None and exc.status in (429, 503):
        delay = exc.retry_after
    log.warning(
        "watch of %s (%s) failed: %s; retrying in %.1fs",
        resource,
        selection,
        _describe(exc),
        delay,
        extra={"resource": str(resource), "attempt": backoff.attempts},
    )
    await sleep(delay)
