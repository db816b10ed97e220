"""Writes to an existing object: update (PUT), patch (PATCH) and server-side apply.

PUT replaces the object with the body. PATCH applies a JSON patch, a JSON merge patch or a
strategic merge patch (`tests.kubesim.patching`; custom resources have no strategic merge) to the
stored object. Server-side apply (`application/apply-patch+yaml`, `tests.kubesim.apply`) merges
the configuration of a field manager, answering 409 for fields another manager owns unless
`force=true`, and creates the object when there is none. Each ends in the registry's update (or
create) with admission; a `metadata.resourceVersion` the body carries is a precondition. Each can
write a subresource instead (a Namespace's `status` and `finalize`), whose strategy decides what the
update may change; a subresource is never created.

The order is the handlers' (`update.go`, `patch.go`): a PUT's body is decoded, and checked against the
URL (its namespace, then its name: `checkName`), before the object is looked up; a PATCH looks the
object up first (the store's update answers 404 before the patch is read), then reads the patch; an
apply of an object that is not there creates it, so its body is read either way. Repeated and unknown
fields are reported per `fieldValidation` (`tests.kubesim.strictdecoding`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import yaml
from aiohttp import web

from controlplane.model.yamltext import YamlLoader
from tests.kubesim import apply, decoding, patching, strictdecoding
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
from tests.kubesim.registry import (
    Registry,
    check_namespace,
    check_object_name,
    check_type,
    pruned_fields,
    unknown_fields,
)
from tests.kubesim.resources import ResourceType
from tests.kubesim.schemas import SCHEMAS, prune_unknown
from tests.kubesim.status import ApiError, bad_request, check_name_parameter, not_found
from tests.kubesim.storage import Obj, Storage
from tests.kubesim.validation import go_string


class Updater:
    """PUT, PATCH and apply of objects in `storage`, written through `registry`; `clock` stamps managedFields."""

    def __init__(self, *, storage: Storage, registry: Registry, clock: Clock) -> None:
        self._storage = storage
        self._registry = registry
        self._clock = clock

    async def update(
        self, resource: ResourceType, namespace: str, name: str, body: Any, *, ctx: Context, subresource: str = ""
    ) -> Obj:
        """PUT of the decoded `body`: its kind, its strict errors, then its namespace and name against the URL
        (`EnsureObjectNamespaceMatchesRequestNamespace`, `checkName`: a body without a name is refused too), all
        before the object is looked up."""
        obj = check_type(resource, body)
        unknown_fields(resource, obj, ctx)
        check_namespace(resource, namespace, obj)
        check_object_name(obj, name)
        check_name_parameter(name)
        old = self._storage.get(resource, namespace, name)
        if old is None:
            raise not_found(resource, name)
        return await self._registry.replace_admitted(resource, old, obj, ctx=ctx, subresource=subresource)

    async def patch(
        self,
        request: web.Request,
        resource: ResourceType,
        namespace: str,
        name: str,
        *,
        ctx: Context,
        subresource: str = "",
    ) -> Obj:
        """PATCH: the object looked up (404) before the patch is read (400 for a body that is not the patch type),
        applied (422 when it cannot be), decoded (422), its strict errors reported, then checked against the URL."""
        ctype = request.content_type
        if ctype not in PATCH_TYPES:
            raise unsupported_media((*PATCH_TYPES, APPLY_PATCH))
        if resource.custom and ctype == "application/strategic-merge-patch+json":
            raise unsupported_media((*(t for t in PATCH_TYPES if t != ctype), APPLY_PATCH))
        check_write_options(request, "PatchOptions", patch_type=ctype)
        check_name_parameter(name)  # the update's key, before the object is read
        raw = await request.read()
        old = self._storage.get(resource, namespace, name)
        if old is None:
            raise not_found(resource, name)
        try:
            patch, strict_errors = patching.decode_patch(ctype, raw, ctx.field_validation)
            if ctype == "application/json-patch+json":
                result = patching.json_patch(old, patch)
            elif ctype == "application/merge-patch+json":
                result = patching.merge_patch(old, patch)
            else:
                result = patching.strategic_merge_patch(old, patch, resource.merge_keys)
        except patching.PatchError as exc:
            raise ApiError(exc.status, exc.message) from None
        strategic = ctype == "application/strategic-merge-patch+json"
        decoding.check_patched(resource, result, patch=patch, strategic=strategic)
        result = decoding.plain(result)
        shown = decoding.go_format(patch) if strategic else decoding.go_json(result)
        if isinstance(result, dict):
            strict_errors += strictdecoding.patched_unknown(resource, result, strategic=strategic)
            strict_errors += [f"unknown field {go_string(path)}" for path in pruned_fields(resource, result)]
        strictdecoding.report_patch(strict_errors, value=shown, mode=ctx.field_validation, warnings=ctx.warnings)
        if not isinstance(result, dict) or not isinstance(result.get("metadata"), dict):
            raise ApiError(422, "the patched object must keep its metadata")
        if resource.namespaced and (result["metadata"].get("namespace") or namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        check_object_name(result, name)
        obj = check_type(resource, result)
        if obj["metadata"].get("resourceVersion") == old["metadata"]["resourceVersion"]:
            obj["metadata"].pop("resourceVersion")  # unchanged by the patch: no precondition
        return await self._registry.replace_admitted(resource, old, obj, ctx=ctx, subresource=subresource)

    async def apply(
        self,
        request: web.Request,
        resource: ResourceType,
        namespace: str,
        name: str,
        *,
        ctx: Context,
        subresource: str = "",
    ) -> tuple[Obj, bool]:
        """Server-side apply (`application/apply-patch+yaml`): (the object, whether it was created).

        `fieldManager` is required (422), `force=true` takes over conflicting fields; otherwise a field
        another manager owns and this apply changes is a 409 Conflict naming fields and managers. The
        configuration must be of the URL's kind and name, set no managedFields (400) and no field the
        kind does not have (500, as the real server's typed conversion fails). Admission runs as for
        a create or an update. Once the apply is computed the configuration is parsed again strictly, its
        repeated keys reported per `fieldValidation`. A subresource is never created: its object must be there
        before the configuration is read.
        """
        check_write_options(request, "PatchOptions", patch_type=APPLY_PATCH)
        manager = request.query["fieldManager"]
        force = bool(query_bool(request, "force"))  # any value but "0" and "false" is true, as for every bool
        check_name_parameter(name)  # the update's key, before the configuration is read
        if subresource and self._storage.get(resource, namespace, name) is None:
            raise not_found(resource, name)
        raw = await request.read()
        try:
            config = yaml.load(raw, Loader=YamlLoader)  # sigs.k8s.io/yaml's reading
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if isinstance(config, list | str | int | float):  # sigs.k8s.io/yaml's JSON decode into the map
            kind = "array" if isinstance(config, list) else "string" if isinstance(config, str) else "number"
            kind = "bool" if isinstance(config, bool) else kind
            raise bad_request(
                "error decoding YAML: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
                f"{kind} into Go value of type map[string]interface {{}}"
            )
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
        strictdecoding.report_apply(raw, mode=ctx.field_validation, warnings=ctx.warnings)
        applied = replace(ctx, field_manager=None)  # apply computed the managedFields
        if live is None:
            if subresource:
                raise not_found(resource, name)
            return await self._registry.create_admitted(resource, namespace, obj, ctx=applied), True
        if obj["metadata"].get("resourceVersion") == live["metadata"]["resourceVersion"]:
            obj["metadata"].pop("resourceVersion")  # not set by the configuration: no precondition
        return await self._registry.replace_admitted(resource, live, obj, ctx=applied, subresource=subresource), False
