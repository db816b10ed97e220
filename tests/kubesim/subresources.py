"""The subresources: `<name>/status`, `<name>/scale` and `pods/<name>/binding`.

`status` writes change only the status (what controllers and the kubelet report); `scale` reads
and writes `spec.replicas` as an autoscaling/v1 Scale (what `kubectl scale` sends); `binding` is
what the scheduler posts to put a pod on a node. Each write goes through admission as the
subresource: UPDATE of `<resource>/status` with the object, UPDATE of `<resource>/scale` with Scale
objects, CREATE of `pods/binding` with the Binding.

A PUT's body is decoded, its strict errors reported (`tests.kubesim.strictdecoding`) and its namespace
and name checked against the URL before the object is looked up (`update.go`); a PATCH finds the
object first and reads the patch after (`patch.go`). A Namespace's `status` and `finalize` are served
by the update path (`tests.kubesim.update`), their strategies by the registry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from aiohttp import web

from tests.kubesim import admission, decoding, patching, strictdecoding
from tests.kubesim.admission import Admission
from tests.kubesim.endpoints import (
    PATCH_TYPES,
    Clock,
    body_type,
    check_write_options,
    context,
    dry_run,
    json_response,
    now_stamp,
    read_body,
    render_object,
    request_warnings,
    unsupported_media,
)
from tests.kubesim.registry import Registry, check_object_name, pruned_fields
from tests.kubesim.resources import ResourceType
from tests.kubesim.selectors import format_label_selector
from tests.kubesim.status import (
    ApiError,
    bad_request,
    check_name_parameter,
    conflict,
    invalid,
    not_found,
    page_not_found,
)
from tests.kubesim.storage import Obj, Storage
from tests.kubesim.validation import FieldErrors, go_string
from tests.kubesim.warning import Recorder

SCALE_KIND: Obj = {"group": "autoscaling", "version": "v1", "kind": "Scale"}
BINDING_KIND: Obj = {"group": "", "version": "v1", "kind": "Binding"}


def scale_of(obj: Obj) -> Obj:
    """The autoscaling/v1 Scale of an object with `spec.replicas` and a selector."""
    meta = obj["metadata"]
    kept = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
    selector = format_label_selector((obj.get("spec") or {}).get("selector"))
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in kept if k in meta},
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": "" if selector == "<none>" else selector,
        },
    }


async def patched(request: web.Request, resource: ResourceType, target: Obj, *, scale: bool) -> Obj:
    """`target` with the request's JSON, merge or strategic merge patch applied (read once the object was found,
    `patching.decode_patch`); 4xx for a bad patch; its strict errors reported per `fieldValidation` (the fields a
    status write's object does not have among them)."""
    ctype = request.content_type
    if ctype not in PATCH_TYPES:
        raise unsupported_media(PATCH_TYPES)
    check_write_options(request, "PatchOptions", patch_type=ctype)
    ctx = context(request)
    try:
        patch, strict_errors = patching.decode_patch(ctype, await request.read(), ctx.field_validation)
        if ctype == "application/json-patch+json":
            result = patching.json_patch(target, patch)
        elif ctype == "application/merge-patch+json" or scale:
            result = patching.merge_patch(target, patch)
        else:
            result = patching.strategic_merge_patch(target, patch, resource.merge_keys)
    except patching.PatchError as exc:
        raise ApiError(exc.status, exc.message) from None
    strategic = ctype == "application/strategic-merge-patch+json"
    decoding.check_patched(resource, result, patch=patch, strategic=strategic, scale=scale)
    result = decoding.plain(result)
    if isinstance(result, dict) and not scale:
        strict_errors += strictdecoding.patched_unknown(resource, result, strategic=strategic)
        strict_errors += [f"unknown field {go_string(path)}" for path in pruned_fields(resource, copy.deepcopy(result))]
    shown = decoding.go_format(patch) if strategic and not scale else decoding.go_json(result)
    strictdecoding.report_patch(strict_errors, value=shown, mode=ctx.field_validation, warnings=ctx.warnings)
    if not isinstance(result, dict):
        raise ApiError(422, "the patched object must stay an object")
    return result


class Subresources:
    """status, scale and binding of objects in `storage`; a scale change goes through `registry`'s update.

    `resource` is the server's resource lookup; `clock` stamps the PodScheduled condition.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        registry: Registry,
        admission: Admission,
        resource: Callable[..., ResourceType],
        clock: Clock,
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._admission = admission
        self._resource = resource
        self._clock = clock

    # -- status and scale ---------------------------------------------------------------------
    async def status_or_scale(
        self, request: web.Request, resource: ResourceType, namespace: str, name: str, sub: str
    ) -> web.Response:
        """GET, PUT and PATCH of `<name>/status` and `<name>/scale`; 404 for a subresource the kind lacks.

        A `metadata.resourceVersion` in the body is a precondition (409 when stale).
        """
        if not (sub == "status" and resource.status_subresource) and not (
            sub == "scale" and resource.scale_subresource
        ):
            raise page_not_found()
        if request.method not in ("GET", "PUT", "PATCH"):
            raise ApiError(405, "the server does not allow this method on the requested resource")
        body = None
        if request.method == "PUT":  # decoded and checked against the URL before the object is looked up
            body = await self._decoded_put(request, resource, namespace, name, sub)
        check_name_parameter(name)
        old = self._storage.get(resource, namespace, name)
        if old is None:
            raise not_found(resource, name)
        view = scale_of(old) if sub == "scale" else old
        if request.method == "GET":
            return json_response(view) if sub == "scale" else render_object(request, resource, old, clock=self._clock)
        if request.method == "PUT":
            assert isinstance(body, dict)
            wanted = body
        else:
            wanted = await patched(request, resource, view, scale=sub == "scale")
        rv = (wanted.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        dry = dry_run(request)
        warnings = request_warnings(request)  # the webhooks', answered as `Warning` headers
        if sub == "scale":
            scale = await self._write_scale(request, resource, old, wanted, dry_run=dry, warnings=warnings)
            return json_response(scale)
        updated = copy.deepcopy(old)
        updated["status"] = copy.deepcopy(wanted.get("status"))
        if updated["status"] is None:
            updated.pop("status")
        updated = await self._admit_status(request, resource, old, updated, dry_run=dry, warnings=warnings)
        if updated == old or dry:
            return render_object(request, resource, updated, clock=self._clock)
        stored = self._storage.write(resource, updated, event_type="MODIFIED")
        return render_object(request, resource, stored, clock=self._clock)

    async def _decoded_put(
        self, request: web.Request, resource: ResourceType, namespace: str, name: str, sub: str
    ) -> Obj:
        """A status or scale PUT's body as `update.go` takes it: decoded (400), its strict errors reported per
        `fieldValidation` (the fields a status write's object does not have among them), its namespace and its
        name checked against the URL (`EnsureObjectNamespaceMatchesRequestNamespace`, `checkName`)."""
        check_write_options(request, "UpdateOptions")
        body: Obj = await read_body(request)
        raw, ctype = await request.read(), body_type(request)
        scale = sub == "scale"
        kind, api_version = ("Scale", "autoscaling/v1") if scale else (resource.kind, resource.api_version)
        if scale:
            decoding.check_object(body, raw, ctype, kind=kind, api_version=api_version)
        else:
            decoding.check_body(resource, body, raw, ctype)
        if not isinstance(body, dict) or not isinstance(body.get("metadata") or {}, dict):
            raise bad_request("the object provided is unrecognized (must be a JSON object)")
        typed = resource if not scale else ResourceType("autoscaling", "v1", "scale", "", "Scale", namespaced=True)
        body, document = strictdecoding.decode_body(typed, body, raw, ctype)
        unknown = [] if scale else pruned_fields(resource, copy.deepcopy(body))
        ctx = context(request)
        errors = document.errors(unknown, custom=resource.custom and not scale)
        version = api_version.rpartition("/")[2]
        mode, warnings = ctx.field_validation, ctx.warnings
        strictdecoding.report_decode(errors, kind=kind, version=version, mode=mode, warnings=warnings)
        given = (body.get("metadata") or {}).get("namespace")
        if resource.namespaced and given and given != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        check_object_name(body, name)
        return body

    async def _write_scale(
        self,
        request: web.Request,
        resource: ResourceType,
        old: Obj,
        wanted: Obj,
        *,
        dry_run: bool,
        warnings: Recorder,
    ) -> Obj:
        """`spec.replicas` of `old` set from the Scale `wanted`, with UPDATE admission of `<resource>/scale`; the Scale.

        Mutating webhooks get (and may patch) the requested Scale, validating webhooks the Scale of
        the object as it is to be written; both with the Scale of the stored object as `oldObject`.
        The webhooks' warnings are added to `warnings`.
        Raises ApiError: 422 for a negative or non-integer replica count, a webhook's denial or
        failure, and 409 when the object changed while the validating webhooks were called.
        """
        meta = old["metadata"]
        name = str(meta["name"])
        requested = copy.deepcopy(wanted)
        requested.setdefault("apiVersion", "autoscaling/v1")
        requested.setdefault("kind", "Scale")
        attrs = admission.Attributes(
            resource=resource,
            operation="UPDATE",
            namespace=str(meta.get("namespace", "")),
            name=name,
            obj=requested,
            old=scale_of(old),
            subresource="scale",
            dry_run=dry_run,
            user=context(request).user,
            kind=SCALE_KIND,
        )
        scale = await self._admission.mutate(attrs, warnings=warnings) or requested
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            errors = FieldErrors()
            errors.invalid("spec.replicas", replicas, "must be greater than or equal to 0")
            raise ApiError(422, f'Scale.autoscaling "{name}" is invalid: {errors.causes[0]}')
        updated = copy.deepcopy(old)
        updated["spec"]["replicas"] = replicas
        updated["metadata"].pop("resourceVersion")

        async def admit(prepared: Obj) -> None:
            written = scale_of(prepared)
            written["metadata"]["resourceVersion"] = meta["resourceVersion"]  # the version the update is made to
            await self._admission.validate(attrs.with_object(written), warnings=warnings)

        return scale_of(await self._registry.replace(resource, old, updated, dry_run=dry_run, admit=admit))

    async def _admit_status(
        self,
        request: web.Request,
        resource: ResourceType,
        old: Obj,
        updated: Obj,
        *,
        dry_run: bool,
        warnings: Recorder,
    ) -> Obj:
        """UPDATE admission of `<name>/status` (rules must name the subresource); `updated` with the admitted status.

        The webhooks' warnings are added to `warnings`.

        Raises ApiError for a denial or failure, and 409 when the object changed while webhooks were called.
        """
        meta = old["metadata"]
        attrs = admission.Attributes(
            resource=resource,
            operation="UPDATE",
            namespace=str(meta.get("namespace", "")),
            name=str(meta["name"]),
            obj=updated,
            old=old,
            subresource="status",
            dry_run=dry_run,
            user=context(request).user,
        )
        mutated = await self._admission.mutate(attrs, warnings=warnings) or updated
        admitted = copy.deepcopy(updated)
        admitted["status"] = copy.deepcopy(mutated.get("status"))
        if admitted["status"] is None:
            admitted.pop("status")
        await self._admission.validate(attrs.with_object(admitted), warnings=warnings)
        current = self._storage.get(resource, str(meta.get("namespace", "")), str(meta["name"]))
        if current is None or current["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise conflict(
                resource,
                str(meta["name"]),
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        return admitted

    # -- pods/binding (what the scheduler posts) ----------------------------------------------
    async def bind_pod(self, request: web.Request, namespace: str, name: str) -> web.Response:
        """POST pods/<name>/binding: set spec.nodeName and the PodScheduled condition, as the registry does.

        The Binding goes through CREATE admission of `pods/binding` (mutating webhooks first, validating
        webhooks once it is checked). 400 when the Binding names another pod or none, 422 without a
        target Node name, 404 for an unknown pod, 409 when the pod is being deleted or already assigned
        to a node. Answers a Success Status (201); the webhooks' warnings go to the request's recorder.
        """
        body = await read_body(request, options="CreateOptions")
        decoding.check_object(body, await request.read(), body_type(request), kind="Binding", api_version="v1")
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the object provided is unrecognized (must be a JSON object)")
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Binding")
        pods = self._resource("pods")
        dry = dry_run(request)
        attrs = admission.Attributes(
            resource=pods,
            operation="CREATE",
            namespace=namespace,
            name=name,
            obj=body,
            subresource="binding",
            dry_run=dry,
            user=context(request).user,
            kind=BINDING_KIND,
        )
        warnings = request_warnings(request)
        binding = await self._admission.mutate(attrs, warnings=warnings) or body
        if (binding.get("metadata") or {}).get("name") != name:  # a Binding without a name does not match either
            raise bad_request("name in URL does not match name in Binding object")
        given = binding.get("target")
        target: Obj = given if isinstance(given, dict) else {}
        bindings = ResourceType("", "v1", "bindings", "binding", "Binding", namespaced=True)
        errors = FieldErrors()
        if target.get("kind", "Node") not in ("", "Node"):
            errors.invalid("target.kind", target.get("kind"), "must be empty or 'Node'")
        if not target.get("name"):
            errors.required("target.name")
        if errors.causes:
            raise invalid(bindings, name, errors.causes)
        await self._admission.validate(attrs.with_object(binding), warnings=warnings)
        check_name_parameter(name)  # the pod's key, read to be assigned
        old = self._storage.get(pods, namespace, name)
        if old is None:
            raise not_found(pods, name)
        if old["metadata"].get("deletionTimestamp"):
            raise conflict(pods, name, f"pod {name} is being deleted, cannot be assigned to a host")
        if (old.get("spec") or {}).get("nodeName"):
            raise conflict(pods, name, f'pod {name} is already assigned to node "{old["spec"]["nodeName"]}"')
        pod = copy.deepcopy(old)
        pod["spec"]["nodeName"] = str(target["name"])
        pod["metadata"].setdefault("annotations", {}).update((binding.get("metadata") or {}).get("annotations") or {})
        if not pod["metadata"]["annotations"]:
            pod["metadata"].pop("annotations")
        status = pod.setdefault("status", {})
        scheduled = {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": now_stamp(self._clock()),
        }
        others = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        status["conditions"] = [*others, scheduled]
        if not dry:
            self._storage.write(pods, pod, event_type="MODIFIED")
        success = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
        return json_response(success, status=201)
