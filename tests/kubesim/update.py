"""Writes to an existing object: update (PUT), patch (PATCH) and server-side apply.

PUT replaces the object with the body. PATCH applies a JSON patch, a JSON merge patch or a
strategic merge patch (`tests.kubesim.patching`; custom resources have no strategic merge) to the
stored object. Server-side apply (`application/apply-patch+yaml`, `tests.kubesim.apply`) merges
the configuration of a field manager, answering 409 for fields another manager owns unless
`force=true`, and creates the object when there is none. Each ends in the registry's update (or
create) with admission; a `metadata.resourceVersion` the body carries is a precondition.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import yaml
from aiohttp import web

from tests.kubesim import apply, decoding, patching
from tests.kubesim.endpoints import (
    APPLY_PATCH,
    PATCH_TYPES,
    Clock,
    Context,
    check_write_options,
    now_stamp,
    query_bool,
    unsupported_media,
)
from tests.kubesim.registry import Registry, check_namespace, check_type, unknown_fields
from tests.kubesim.resources import ResourceType
from tests.kubesim.schemas import SCHEMAS, prune_unknown
from tests.kubesim.status import ApiError, bad_request, check_name_parameter, not_found
from tests.kubesim.storage import Obj, Storage


class Updater:
    """PUT, PATCH and apply of objects in `storage`, written through `registry`; `clock` stamps managedFields."""

    def __init__(self, *, storage: Storage, registry: Registry, clock: Clock) -> None:
        self._storage = storage
        self._registry = registry
        self._clock = clock

    async def update(self, resource: ResourceType, namespace: str, name: str, body: Any, *, ctx: Context) -> Obj:
        obj = check_type(resource, body)
        unknown_fields(resource, obj, ctx)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
        check_namespace(resource, namespace, obj)
        check_name_parameter(name)
        old = self._storage.get(resource, namespace, name)
        if old is None:
            raise not_found(resource, name)
        return await self._registry.replace_admitted(resource, old, obj, ctx=ctx)

    async def patch(
        self, request: web.Request, resource: ResourceType, namespace: str, name: str, *, ctx: Context
    ) -> Obj:
        ctype = request.content_type
        if ctype not in PATCH_TYPES:
            raise unsupported_media((*PATCH_TYPES, APPLY_PATCH))
        if resource.custom and ctype == "application/strategic-merge-patch+json":
            raise unsupported_media((*(t for t in PATCH_TYPES if t != ctype), APPLY_PATCH))
        check_write_options(request, "PatchOptions", patch_type=ctype)
        check_name_parameter(name)  # the update's key, before the patch is read
        raw = await request.read()
        try:
            patch = decoding.parse_literal(raw)  # numbers as written, for the decoder's messages
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from None
        old = self._storage.get(resource, namespace, name)
        if old is None:
            raise not_found(resource, name)
        try:
            if ctype == "application/json-patch+json":
                result = patching.json_patch(old, patch)
            elif ctype == "application/merge-patch+json":
                if not isinstance(patch, dict):
                    raise patching.PatchError(400, "merge patch must be a JSON object")
                result = patching.merge_patch(old, patch)
            else:
                result = patching.strategic_merge_patch(old, patch, resource.merge_keys)
        except patching.PatchError as exc:
            raise ApiError(exc.status, exc.message) from None
        strategic = ctype == "application/strategic-merge-patch+json"
        decoding.check_patched(resource, result, patch=patch, strategic=strategic)
        result = decoding.plain(result)
        if not isinstance(result, dict) or not isinstance(result.get("metadata"), dict):
            raise ApiError(422, "the patched object must keep its metadata")
        if result["metadata"].get("name") != name:
            raise bad_request(
                f"the name of the object ({result['metadata'].get('name')}) does not match the name on the URL ({name})"
            )
        if resource.namespaced and result["metadata"].get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        obj = check_type(resource, result)
        unknown_fields(resource, obj, ctx)
        if obj["metadata"].get("resourceVersion") == old["metadata"]["resourceVersion"]:
            obj["metadata"].pop("resourceVersion")  # unchanged by the patch: no precondition
        return await self._registry.replace_admitted(resource, old, obj, ctx=ctx)

    async def apply(
        self, request: web.Request, resource: ResourceType, namespace: str, name: str, *, ctx: Context
    ) -> tuple[Obj, bool]:
        """Server-side apply (`application/apply-patch+yaml`): (the object, whether it was created).

        `fieldManager` is required (422), `force=true` takes over conflicting fields; otherwise a field
        another manager owns and this apply changes is a 409 Conflict naming fields and managers. The
        configuration must be of the URL's kind and name, set no managedFields (400) and no field the
        kind does not have (500, as the real server's typed conversion fails). Admission runs as for
        a create or an update.
        """
        check_write_options(request, "PatchOptions", patch_type=APPLY_PATCH)
        manager = request.query["fieldManager"]
        force = bool(query_bool(request, "force"))  # any value but "0" and "false" is true, as for every bool
        check_name_parameter(name)  # the update's key, before the configuration is read
        try:
            config = yaml.safe_load(await request.read())
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise bad_request("error decoding YAML: the apply configuration must be an object")
        gvk = f"{resource.api_version if resource.group else '/' + resource.version}, Kind={resource.kind}"
        if config.get("apiVersion") != resource.api_version or config.get("kind") != resource.kind:
            raise bad_request(
                f"Incorrect version specified in apply patch. Specified patch version: {config.get('apiVersion')}, "
                f"Kind={config.get('kind')}, expected: {gvk}"
            )
        meta = config.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("managedFields") is not None:
            raise bad_request("metadata.managedFields must be nil")
        if meta.setdefault("name", name) != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        check_namespace(resource, namespace, config)
        schema = resource.schema if resource.schema is not None else SCHEMAS[resource.plural]
        unknown = prune_unknown(copy.deepcopy(config), schema)
        if unknown:
            raise ApiError(
                500,
                f"failed to create typed patch object ({namespace}/{name}; {gvk}): .{unknown[0]}: "
                "field not declared in schema",
            )
        live = self._storage.get(resource, namespace, name)
        try:
            obj = apply.apply(
                resource=resource,
                live=live,
                config=config,
                manager=manager,
                force=force,
                api_version=resource.api_version,
                now=now_stamp(self._clock()),
            )
        except apply.ApplyConflict as exc:
            raise ApiError(409, exc.message, reason="Conflict", details={"causes": exc.causes}) from None
        except apply.ApplyError as exc:
            raise ApiError(exc.status, exc.message) from None
        applied = replace(ctx, field_manager=None)  # apply computed the managedFields
        if live is None:
            return await self._registry.create_admitted(resource, namespace, obj, ctx=applied), True
        if obj["metadata"].get("resourceVersion") == live["metadata"]["resourceVersion"]:
            obj["metadata"].pop("resourceVersion")  # not set by the configuration: no precondition
        return await self._registry.replace_admitted(resource, live, obj, ctx=applied), False
