"""List and watch: the collection GETs of every resource.

A list is answered from the current objects, or, with `resourceVersionMatch=Exact` or a
`continue` token, from the storage's window at a past resourceVersion (410 Expired once it is
compacted, 504 "Too large resource version" for one not reached yet); `limit` pages it. A watch
streams ADDED/MODIFIED/DELETED events from a resourceVersion (or from now), BOOKMARK events when
asked (`allowWatchBookmarks`), and ends at `timeoutSeconds` or the server's own limit. Both filter
by label and field selectors and answer as objects, a Table or PartialObjectMetadata.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
from typing import Any

from aiohttp import web

from tests.kubesim import tables
from tests.kubesim.endpoints import Clock, json_response, negotiate, parse_rv, selectors, table_key
from tests.kubesim.resources import ResourceType
from tests.kubesim.status import ApiError, bad_request, expired
from tests.kubesim.storage import Obj, Storage, Watcher


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
    def list_objects(self, request: web.Request, resource: ResourceType, namespace: str | None) -> web.Response:
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
        elif match not in ("", "NotOlderThan"):
            raise bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        else:
            if match and not rv_text:
                raise bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
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
        if limit and len(selected) > limit:
            selected = selected[:limit]
            last = _list_key(selected[-1])
            next_token = base64.urlsafe_b64encode(json.dumps({"rv": at_rv, "start": last}).encode()).decode()
        form, version = negotiate(request)
        if form == "table":
            body = tables.table(
                table_key(resource),
                selected,
                resource_version=str(at_rv),
                include_object=query.get("includeObject", "Metadata"),
                now=self._clock(),
                continue_token=next_token,
            )
            body["apiVersion"] = f"meta.k8s.io/{version}"
            return json_response(body, content_type=f"application/json;as=Table;v={version};g=meta.k8s.io")
        meta: dict[str, Any] = {"resourceVersion": str(at_rv)}
        if next_token:
            meta["continue"] = next_token
        if form == "partial":
            items = [{"metadata": copy.deepcopy(o["metadata"])} for o in selected]
            return json_response(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": f"meta.k8s.io/{version}",
                    "metadata": meta,
                    "items": items,
                }
            )
        # The real server leaves kind and apiVersion out of the items of a built-in list.
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in selected]
        return json_response(
            {"kind": resource.list_kind, "apiVersion": resource.api_version, "metadata": meta, "items": items}
        )

    # -- watch --------------------------------------------------------------------------------
    async def watch(self, request: web.Request, resource: ResourceType, namespace: str | None) -> web.StreamResponse:
        labels, fields = selectors(request, resource)
        query = request.query
        if query.get("sendInitialEvents"):
            raise bad_request("sendInitialEvents is not supported by this server")
        form, version = negotiate(request)
        rv_text = query.get("resourceVersion", "")
        since = None if rv_text in ("", "0") else parse_rv(rv_text)
        if since is not None and since > self._storage.rv:
            raise too_large(since, self._storage.rv)
        timeout = self.watch_timeout
        if query.get("timeoutSeconds"):
            timeout = float(parse_rv(query["timeoutSeconds"], param="timeoutSeconds"))
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
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
