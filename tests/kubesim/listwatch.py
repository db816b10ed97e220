"""List and watch: the collection GETs of every resource.

A list is answered from the current objects, or, with `resourceVersionMatch=Exact` or a
`continue` token, from the storage's window at a past resourceVersion (410 Expired once it is
compacted, 504 "Too large resource version" for one not reached yet); `limit` pages it, and a page
with more to come says how many items follow it (`remainingItemCount`) unless a label or field
selector chose them, as the real server counts only without one. A watch streams
ADDED/MODIFIED/DELETED events from a resourceVersion (or from now), BOOKMARK events when asked
(`allowWatchBookmarks`), and ends at `timeoutSeconds` or the server's own limit. Both filter by
label and field selectors and answer as objects, a Table or PartialObjectMetadata; a custom
resource's list items keep their kind and apiVersion, a built-in list's have none.

Boolean parameters (`watch`, `allowWatchBookmarks`, `sendInitialEvents`) are read as the real
server reads them: present with any value but "0" or "false" is true, `?watch=` included. The
ListOptions the server refuses are a 422 naming them, all at once (`ListOptions.meta.k8s.io "" is
invalid`); this server has the WatchList feature off, so `sendInitialEvents` is always refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.kubesim import tables
from tests.kubesim.endpoints import Clock, json_response, negotiate, parse_rv, query_bool, selectors, table_key
from tests.kubesim.resources import ResourceType
from tests.kubesim.status import ApiError, bad_request, expired
from tests.kubesim.storage import Obj, Storage, Watcher
from tests.kubesim.validation import Cause, FieldErrors


def too_large(rv: int, current: int) -> ApiError:
    """504 for a resourceVersion the storage has not reached (`current`), with a retry hint."""
    return ApiError(
        504,
        f"Too large resource version: {rv}, current: {current}",
        reason="Timeout",
        details={
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


@dataclass
class Page:
    """What a list request selected: the objects (as stored), at which resourceVersion, where the next page starts.

    `remaining_item_count`: how many items the pages after this one hold, when known.
    """

    objects: list[Obj]
    resource_version: int
    continue_token: str = ""
    remaining_item_count: int | None = None

    def list_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self.resource_version)}
        if self.continue_token:
            meta["continue"] = self.continue_token
        if self.remaining_item_count is not None:
            meta["remainingItemCount"] = self.remaining_item_count
        return meta


def list_body(resource: ResourceType, page: Page) -> dict[str, Any]:
    """A `<Kind>List` of the page's objects.

    A custom resource's items keep their kind and apiVersion: the server handles them as
    unstructured objects, each carrying its own. A built-in list's items have neither (the typed
    list is encoded once, with the list's kind and apiVersion only).
    """
    if resource.custom:
        items = [copy.deepcopy(o) for o in page.objects]
    else:
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page.objects]
    meta = page.list_meta()
    if resource.custom:  # an unstructured list is a Go map, written with sorted keys (its items are already)
        meta = {key: meta[key] for key in sorted(meta)}
        return {"apiVersion": resource.api_version, "items": items, "kind": resource.list_kind, "metadata": meta}
    return {"kind": resource.list_kind, "apiVersion": resource.api_version, "metadata": meta, "items": items}


def list_options_causes(request: web.Request) -> list[Cause]:
    """What the server refuses in a list's (or deletecollection's) ListOptions, all at once.

    `resourceVersionMatch` needs a `resourceVersion`, goes without `continue`, is Exact or
    NotOlderThan, and Exact is not for resourceVersion "0"; `sendInitialEvents` is for watches only.
    """
    errors = FieldErrors()
    query = request.query
    match = query.get("resourceVersionMatch", "")
    if match:
        if not query.get("resourceVersion"):
            errors.forbidden(
                "resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is provided"
            )
        if query.get("continue"):
            errors.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
        if match not in ("Exact", "NotOlderThan"):
            errors.not_supported("resourceVersionMatch", match, ["Exact", "NotOlderThan", ""])
        if match == "Exact" and query.get("resourceVersion") == "0":
            errors.forbidden(
                "resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'
            )
    if query_bool(request, "sendInitialEvents") is not None:
        errors.forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")
    return errors.causes


def list_options_invalid(causes: list[Cause]) -> ApiError:
    """422 for ListOptions the server refuses, as `ListOptions.meta.k8s.io "" is invalid: ...`."""
    listed = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(str(c) for c in causes) + "]"
    details = {"group": "meta.k8s.io", "kind": "ListOptions", "causes": [c.to_json() for c in causes]}
    return ApiError(422, f'ListOptions.meta.k8s.io "" is invalid: {listed}', details=details)


def watch_options_causes(request: web.Request) -> list[Cause]:
    """What the server refuses in a watch's ListOptions: `sendInitialEvents` and `resourceVersionMatch`.

    This server is one with the WatchList feature off (its default since Kubernetes 1.33), so a
    watch that asks for initial events (with any value, false included: only its presence counts)
    is refused, and `resourceVersionMatch` only goes with `sendInitialEvents`.
    """
    errors = FieldErrors()
    send = query_bool(request, "sendInitialEvents")
    match = request.query.get("resourceVersionMatch", "")
    if send is not None:
        if match != "NotOlderThan":
            errors.forbidden(
                "resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
            )
        errors.forbidden(
            "sendInitialEvents", "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
        )
    if match:
        if send is None:
            errors.forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )
        if match != "NotOlderThan":
            errors.not_supported("resourceVersionMatch", match, ["NotOlderThan"])
        if request.query.get("continue"):
            errors.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
    return errors.causes


def _list_key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")


class ListWatch:
    """Lists and watches over `storage`.

    `bookmark_interval`: seconds between BOOKMARK events on watches that allow them.
    `watch_timeout`: the limit of a watch without `timeoutSeconds`. `clock` gives the ages in Tables.
    """

    def __init__(self, *, storage: Storage, clock: Clock, bookmark_interval: float, watch_timeout: float) -> None:
        self._storage = storage
        self._clock = clock
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout

    # -- list ---------------------------------------------------------------------------------
    def page(self, request: web.Request, resource: ResourceType, namespace: str | None) -> Page:
        """The objects a list request selects: one page of `limit` (all without it), from its `continue` token.

        A page with more to come counts the items after it, unless a selector chose them. Shared by
        list and deletecollection, which lists the same way before deleting.
        """
        refused = list_options_causes(request)
        if refused:
            raise list_options_invalid(refused)
        labels, fields = selectors(request, resource)
        query = request.query
        limit_text = query.get("limit", "")
        limit = parse_rv(limit_text, param="limit") if limit_text else 0
        token = query.get("continue", "")
        rv_text = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        start_after = ""
        if token:
            if rv_text:
                raise bad_request("specifying resource version is not allowed when using continue")
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                at_rv, start_after = int(decoded["rv"]), str(decoded["start"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise bad_request("continue key is not valid: incorrect encoded start resourceVersion") from None
            if at_rv < self._storage.compacted_rv:
                raise expired(
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter."
                )
            objects = self._storage.snapshot(resource, namespace, at_rv)
        elif match == "Exact":
            at_rv = parse_rv(rv_text)
            if at_rv > self._storage.rv:
                raise too_large(at_rv, self._storage.rv)
            objects = self._storage.snapshot(resource, namespace, at_rv)
        else:
            if rv_text and parse_rv(rv_text) > self._storage.rv:
                raise too_large(parse_rv(rv_text), self._storage.rv)
            at_rv = self._storage.rv
            objects = self._storage.items(resource, namespace)
        selected = [
            obj
            for obj in objects
            if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj, resource.field_getters())
        ]
        if start_after:
            selected = [o for o in selected if _list_key(o) > start_after]
        next_token = ""
        remaining = None
        if limit and len(selected) > limit:
            if labels.empty and not fields.requirements:
                remaining = len(selected) - limit
            selected = selected[:limit]
            last = _list_key(selected[-1])
            next_token = base64.urlsafe_b64encode(json.dumps({"rv": at_rv, "start": last}).encode()).decode()
        return Page(objects=selected, resource_version=at_rv, continue_token=next_token, remaining_item_count=remaining)

    def list_objects(self, request: web.Request, resource: ResourceType, namespace: str | None) -> web.Response:
        query = request.query
        page = self.page(request, resource, namespace)
        form, version = negotiate(request)
        if form == "table":
            body = tables.table(
                table_key(resource),
                page.objects,
                resource_version=str(page.resource_version),
                include_object=query.get("includeObject", "Metadata"),
                now=self._clock(),
                continue_token=page.continue_token,
                remaining_item_count=page.remaining_item_count,
            )
            body["apiVersion"] = f"meta.k8s.io/{version}"
            return json_response(body, content_type=f"application/json;as=Table;v={version};g=meta.k8s.io")
        if form == "partial":
            items = [{"metadata": copy.deepcopy(o["metadata"])} for o in page.objects]
            return json_response(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": f"meta.k8s.io/{version}",
                    "metadata": page.list_meta(),
                    "items": items,
                }
            )
        return json_response(list_body(resource, page))

    # -- watch --------------------------------------------------------------------------------
    async def watch(self, request: web.Request, resource: ResourceType, namespace: str | None) -> web.StreamResponse:
        labels, fields = selectors(request, resource)
        query = request.query
        refused = watch_options_causes(request)
        if refused:
            raise list_options_invalid(refused)
        form, version = negotiate(request)
        rv_text = query.get("resourceVersion", "")
        since = None if rv_text in ("", "0") else parse_rv(rv_text)
        if since is not None and since > self._storage.rv:
            raise too_large(since, self._storage.rv)
        timeout = self.watch_timeout
        if query.get("timeoutSeconds"):
            timeout = float(parse_rv(query["timeoutSeconds"], param="timeoutSeconds"))
        bookmarks = bool(query_bool(request, "allowWatchBookmarks"))
        content_type = "application/json"
        if form == "table":
            content_type = f"application/json;as=Table;v={version};g=meta.k8s.io"
        response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        watcher = Watcher(resource, namespace, labels, fields)
        error: ApiError | None = None
        try:
            self._storage.watch(watcher, since=since)
        except ApiError as exc:
            error = exc  # like the real server: 200, then an ERROR event
        await response.prepare(request)
        if error is not None:
            await _send(response, {"type": "ERROR", "object": error.status()})
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        first_table = True
        # one get() outlives the timeouts: cancelling it (as wait_for does) can drop an event that arrived
        # at the same moment, and a bookmark sent after it would tell the client to skip that event
        getting: asyncio.Future[Any] | None = None
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                if getting is None:
                    getting = asyncio.ensure_future(watcher.queue.get())
                done, _ = await asyncio.wait({getting}, timeout=wait)
                if not done:
                    if bookmarks and loop.time() >= next_bookmark and watcher.queue.empty():
                        next_bookmark = loop.time() + self.bookmark_interval
                        await _send(response, self._bookmark(resource))
                    continue
                item, getting = getting.result(), None
                if item is None:
                    break
                event_type, obj = item
                if form == "table":
                    payload: Any = tables.table(
                        table_key(resource),
                        [obj],
                        resource_version=obj["metadata"]["resourceVersion"],
                        include_object=query.get("includeObject", "Metadata"),
                        now=self._clock(),
                        with_columns=first_table,
                    )
                    payload["apiVersion"] = f"meta.k8s.io/{version}"
                    first_table = False
                elif form == "partial":
                    payload = tables.partial_metadata(obj)
                else:
                    payload = obj
                await _send(response, {"type": event_type, "object": payload})
        except ConnectionResetError:
            pass  # the client went away
        finally:
            if getting is not None:
                getting.cancel()
            self._storage.unwatch(watcher)
        return response

    def _bookmark(self, resource: ResourceType) -> dict[str, Any]:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self._storage.rv), "creationTimestamp": None},
            },
        }
