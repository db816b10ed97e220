"""The registry: how an object is created, updated and finally removed (Kubernetes' generic registry Store).

A create decodes and checks the object against the URL (kind, apiVersion, namespace), prunes or
rejects unknown fields (fieldValidation), defaults it, runs the built-in ServiceAccount admission
of a pod, the mutating webhooks, name generation, allocation (Services, before validation, as the
Service registry allocates: held from then on, and given back if the create fails), validation and
the validating webhooks, then stamps uid, creationTimestamp and generation before the write. An
update keeps the system fields of the stored object, checks the resourceVersion precondition,
allocates and releases what a Service's change needs before validation (what it allocates held at
once and given back if the update fails, what it releases given back once it is written), bumps the
generation when the spec changed, and writes nothing when nothing changed. Removal is the last step
of a deletion: it releases a Service's allocations, and a CustomResourceDefinition takes its objects
and their watches with it. Request decoding and answers are the handlers' business, not the
registry's; but an object the registry is handed (an apply's result, a mutating webhook's patched
object, one the server makes) is held as its Go type would hold it, and what it writes and answers
is that type's encoding (`decoding.stored_form`), as the handlers' decoding leaves a request's body.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from tests.kubesim import admission, apply, decoding, strictdecoding
from tests.kubesim.admission import Admission
from tests.kubesim.allocators import Allocation, ServiceAllocator, drop_type_dependent_fields, keep_allocations
from tests.kubesim.customresources import CustomResources
from tests.kubesim.endpoints import Clock, Context, now_stamp
from tests.kubesim.resources import ResourceType, admit_default_toleration_seconds
from tests.kubesim.schemas import SCHEMAS, prune_unknown
from tests.kubesim.status import ApiError, already_exists, bad_request, conflict, forbidden, invalid, not_found
from tests.kubesim.storage import Obj, Storage
from tests.kubesim.validation import FieldErrors, check_metadata, invalid_cause

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"


def random_suffix(length: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(random.choice(alphabet) for _ in range(length))


MAX_GENERATED_PREFIX = 58  # bytes: with the suffix, at most 63 (`MaxGeneratedNameLength`)


def generate_name(prefix: str) -> str:
    """A name for `generateName: prefix` (`SimpleNameGenerator`): the prefix cut to its first 58 bytes, then a
    random suffix, whatever the prefix is; validation then checks both."""
    raw = prefix.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_GENERATED_PREFIX:
        prefix = raw[:MAX_GENERATED_PREFIX].decode("utf-8", "replace")
    return f"{prefix}{random_suffix()}"


# -- checks every write path shares ---------------------------------------------------------------
def check_type(resource: ResourceType, body: Any) -> Obj:
    """A create's or update's decoded body as the object the handler goes on with, checked against the URL.

    A body that is JSON `null` decodes, as `{}` does: `SimpleMetaFactory.Interpret` reads no apiVersion and
    kind from it (the URL's are taken) and encoding/json leaves the kind's struct as it was, empty; so a
    built-in kind's null body is an object with nothing set, which validation then refuses as it refuses `{}`
    (422, `metadata.name: Required value` among the rest), and a PUT's has no name (`checkName`, 400). A custom
    resource's is decoded into an Unstructured, which needs a kind in the body itself
    (`unstructuredJSONScheme.Decode`): 400, `Object 'Kind' is missing in 'null'`, worded as the strict decoder
    (fieldValidation Warn, the default, or Strict) words it (`transformDecodeError`, the kind it read being
    empty); under fieldValidation=Ignore the non-strict decoder's error names the URL's kind instead
    (`<Kind> in version "<version>" cannot be handled as a <Kind>: ...`), which is not modelled here. Any other body
    that is not an object is refused as `Interpret` refuses it (`couldn't get version/kind; json parse error:
    json: cannot unmarshal array into Go value of type struct {...}`, as `decoding.check_body` refuses a
    built-in kind's before), the body's start shown as kubesim writes its JSON again, not as it was sent."""
    if body is None:
        if resource.custom:
            raise decoding.unrecognized(resource.kind, decoding.MISSING_KIND.format("null"), b"null")
        body = {}
    if not isinstance(body, dict):
        problem = decoding.interpret_error(body)
        written = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        raise decoding.unrecognized(resource.kind, f"{decoding.FIND_KIND_ERROR}{problem}", written)
    # Like the real decoder, a body without kind/apiVersion takes them from the URL.
    body.setdefault("kind", resource.kind)
    body.setdefault("apiVersion", resource.api_version)
    if body.get("apiVersion") != resource.api_version:
        raise bad_request(
            f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version "
            f"({resource.api_version})"
        )
    if body.get("kind") != resource.kind:
        raise bad_request(
            f"the kind in the data ({body.get('kind')}) does not match the expected kind ({resource.kind})"
        )
    meta = body.get("metadata")
    if meta is None:
        body["metadata"] = {}
    elif not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    return body


def check_namespace(resource: ResourceType, namespace: str, body: Obj) -> None:
    meta = body["metadata"]
    if resource.namespaced:
        given = meta.get("namespace") or ""
        if given and given != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        meta["namespace"] = namespace
    elif meta.get("namespace"):
        meta.pop("namespace")


def check_object_name(obj: Obj, name: str) -> None:
    """`checkName`: the object's name must be the URL's; an object without one is refused as well."""
    given = (obj.get("metadata") or {}).get("name")
    if not given:
        raise bad_request(f"the name of the object ({name} based on URL) was undeterminable: name must be provided")
    if given != name:
        raise bad_request(f"the name of the object ({given}) does not match the name on the URL ({name})")


def pruned_fields(resource: ResourceType, obj: Any) -> list[str]:
    """Remove from `obj` (in place) the fields its kind does not have; their paths."""
    schema = resource.schema if resource.schema is not None else SCHEMAS[resource.plural]
    return prune_unknown(obj, schema)


def unknown_fields(resource: ResourceType, obj: Obj, ctx: Context) -> None:
    """A create's or update's body without the fields its kind does not have; those and the repeated fields strict
    decoding found (`ctx.document`) reported as `fieldValidation` asks (`strictdecoding.report_decode`)."""
    errors = ctx.document.errors(pruned_fields(resource, obj), custom=resource.custom)
    strictdecoding.report_decode(
        errors, kind=resource.kind, version=resource.version, mode=ctx.field_validation, warnings=ctx.warnings
    )


def validate(resource: ResourceType, obj: Obj, old: Obj | None, *, subresource: str = "") -> None:
    """The object's metadata (a new one's name also by the kind's `name_problems`) and `resource.validate`, on
    create then `resource.validate_create`; on update also the uid and `resource.validate_update`, after them
    or, for a kind whose server checks the update first (`update_checks_first`), before them; a write of the
    `status` subresource then `resource.validate_status`. A new object of a kind that leaves its metadata to
    the registry (`strategy_checks_metadata` false) has it checked last, and only when nothing else was wrong,
    as `BeforeCreate` does."""
    errors = FieldErrors()
    meta = obj["metadata"]
    name = str(meta.get("name") or "")
    first = resource.update_checks_first
    metadata_first = resource.strategy_checks_metadata or old is not None
    if old is not None and first:
        _validate_update(resource, obj, old, errors)
    if metadata_first:
        _check_metadata(resource, obj, old, errors)
    if resource.validate is not None:
        resource.validate(obj, errors)
    if old is None and resource.validate_create is not None:
        resource.validate_create(obj, errors)
    if old is not None and not first:
        _validate_update(resource, obj, old, errors)
    if old is not None and subresource == "status" and resource.validate_status is not None:
        resource.validate_status(obj, old, errors)
    if not metadata_first and not errors:
        _check_metadata(resource, obj, old, errors)
    if errors:
        raise invalid(resource, name, errors.causes)


def _check_metadata(resource: ResourceType, obj: Obj, old: Obj | None, errors: FieldErrors) -> None:
    """The metadata by the kind's name rule; a new object's name and generateName also by its `name_problems`. An
    update checks no generateName, unless the kind's update validation checks the metadata as a create does."""
    meta = obj["metadata"]
    as_new = old is None or resource.update_validates_object_meta
    check_metadata(
        errors,
        obj,
        name_rule=resource.name_rule,
        name_problems=_kind_name_problems(resource, obj, meta.get("name")) if old is None else (),
        generate_name_problems=_kind_name_problems(resource, obj, meta.get("generateName")) if as_new else None,
    )


def _kind_name_problems(resource: ResourceType, obj: Obj, name: Any) -> list[str]:
    """What the kind's name function adds for `name` (the name, or the generateName in prefix mode)."""
    if resource.name_problems is None or not isinstance(name, str) or not name:
        return []
    return resource.name_problems(obj, name)


def _validate_update(resource: ResourceType, obj: Obj, old: Obj, errors: FieldErrors) -> None:
    if obj["metadata"].get("uid") != old["metadata"].get("uid"):
        errors.invalid("metadata.uid", obj["metadata"].get("uid"), "field is immutable")
    if resource.validate_update is not None:
        resource.validate_update(obj, old, errors)


class Registry:
    """Create, update and remove objects in `storage`, with admission (`admission`) and Service allocation.

    `resource` looks a served resource type up by plural (and group); `custom` is told of every
    stored and removed CustomResourceDefinition; `clock` stamps creationTimestamps and managedFields.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        resource: Callable[..., ResourceType],
        custom: CustomResources,
        admission: Admission,
        allocator: ServiceAllocator,
        clock: Clock,
    ) -> None:
        self._storage = storage
        self._resource = resource
        self._custom = custom
        self._admission = admission
        self._allocator = allocator
        self._clock = clock

    # -- create -------------------------------------------------------------------------------
    def create(self, resource: ResourceType, namespace: str, body: Any, *, ctx: Context) -> Obj:
        """Create without calling admission webhooks (bootstrap, `create_object`, objects the server makes)."""
        obj = self._create_prepare(resource, namespace, body, ctx=ctx)
        allocation = self._create_validate(resource, obj, ctx=ctx)
        with self._given_back_on_failure(allocation):
            return self._create_store(resource, obj, ctx=ctx, allocation=allocation)

    async def create_admitted(self, resource: ResourceType, namespace: str, body: Any, *, ctx: Context) -> Obj:
        """Create as a POST does: mutating webhooks, validation, validating webhooks, then the write."""
        obj = self._create_prepare(resource, namespace, body, ctx=ctx)
        meta = obj["metadata"]
        attrs = admission.Attributes(
            resource=resource,
            operation="CREATE",
            namespace=meta["name"] if resource.key == "namespaces" else meta.get("namespace", ""),
            name=str(meta.get("name") or ""),
            obj=obj,
            dry_run=ctx.dry_run,
            options={"fieldValidation": ctx.field_validation} if ctx.field_validation != "Warn" else {},
            user=ctx.user,
        )
        mutated = await self._admission.mutate(attrs, warnings=ctx.warnings)
        obj = check_type(resource, mutated)
        decoding.typed_in_place(resource, obj)
        check_namespace(resource, namespace, obj)
        if resource.defaults is not None:
            resource.defaults(obj)
        allocation = self._create_validate(resource, obj, ctx=ctx)
        with self._given_back_on_failure(allocation):
            await self._admission.validate(attrs.with_object(obj), warnings=ctx.warnings)
            return self._create_store(resource, obj, ctx=ctx, allocation=allocation)

    def _create_prepare(self, resource: ResourceType, namespace: str, body: Any, *, ctx: Context) -> Obj:
        """Decode, check and default a new object, then the built-in admission (service account of a pod)."""
        obj = check_type(resource, body)
        decoding.typed_in_place(resource, obj)
        unknown_fields(resource, obj, ctx)
        check_namespace(resource, namespace, obj)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        name = str(meta.get("name") or "")
        if resource.namespaced:
            ns_obj = self._storage.get(self._resource("namespaces"), "", namespace)
            if ns_obj is None:
                raise not_found(self._resource("namespaces"), namespace)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    f'{resource.plural} "{name}" is forbidden: unable to create new content in namespace {namespace} '
                    "because it is being terminated",
                    details={"name": name, "kind": resource.plural},
                )
        for system in ("uid", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(system, None)
        meta["creationTimestamp"] = None  # a zero Time (so `null` to the webhooks) until the write stamps it
        if resource.defaults is not None:
            resource.defaults(obj)
        self._track_fields(resource, None, obj, ctx.field_manager)
        if resource.plural == "pods":
            admitted = copy.deepcopy(obj)
            try:
                self._admit_pod(admitted, resource)
            except (AttributeError, TypeError, KeyError):
                pass  # a malformed pod: validation names the field
            else:
                admit_default_toleration_seconds(admitted)
                obj = admitted
        return obj

    def _create_validate(self, resource: ResourceType, obj: Obj, *, ctx: Context) -> Allocation | None:
        """Name generation (after mutating admission, as in the registry), allocation, initial status, validation.

        A Service's cluster IP and ports are allocated before validation, as the Service registry's
        BeginCreate hook does: validation and the validating webhooks see them, and an allocation
        error comes before any validation error. What was allocated is held from now on (nothing for
        a dry run, which is given placeholders), and given back here when validation fails.
        """
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = generate_name(str(meta["generateName"]))
        allocation = None
        if resource.plural == "services":
            allocation = self._allocator.allocate(obj, resource, dry_run=ctx.dry_run)
        with self._given_back_on_failure(allocation):
            if resource.prepare_create is not None:
                resource.prepare_create(obj)
            if resource.initial_status is not None:
                obj["status"] = resource.initial_status(obj)
            validate(resource, obj, None)
        return allocation

    def _create_store(self, resource: ResourceType, obj: Obj, *, ctx: Context, allocation: Allocation | None) -> Obj:
        """Stamp and write a validated new object, committing what it allocated (409 when the name is taken)."""
        dry_run = ctx.dry_run
        meta = obj["metadata"]
        name = str(meta["name"])
        if self._storage.get(resource, meta.get("namespace", ""), name) is not None:
            raise already_exists(resource, name)
        if allocation is not None and not dry_run:
            self._allocator.commit(allocation)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_stamp(self._clock())
        if resource.generation_fields:
            meta["generation"] = 1
        obj = decoding.stored_form(resource, obj)
        if dry_run:
            return obj
        stored = self._storage.write(resource, obj, event_type="ADDED")
        if resource.key == CRD_KEY:
            self._custom.set(stored)
        if resource.plural == "namespaces":
            self.create(
                self._resource("serviceaccounts"),
                name,
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
                ctx=Context(),
            )
        return stored

    # -- admission (built-in plugins that run before storage) ---------------------------------
    def _admit_pod(self, obj: Obj, resource: ResourceType) -> None:
        """The ServiceAccount admission plugin: the pod's account must exist; mount its token unless opted out."""
        spec = obj["spec"]
        meta = obj["metadata"]
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = account
        spec["serviceAccount"] = account
        sa = self._storage.get(self._resource("serviceaccounts"), meta["namespace"], account)
        if sa is None:
            raise forbidden(
                resource,
                meta.get("name", ""),
                f'error looking up service account {meta["namespace"]}/{account}: serviceaccount "{account}" not found',
            )
        automount = spec.get("automountServiceAccountToken", sa.get("automountServiceAccountToken", True))
        if automount is False:
            return
        containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        if all(any(m.get("mountPath") == SA_MOUNT for m in c.get("volumeMounts") or []) for c in containers):
            return
        volume_name = f"kube-api-access-{random_suffix()}"
        spec.setdefault("volumes", []).append(
            {
                "name": volume_name,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ],
                },
            }
        )
        for container in containers:
            mounts = container.setdefault("volumeMounts", [])
            if not any(m.get("mountPath") == SA_MOUNT for m in mounts):
                mounts.append({"name": volume_name, "readOnly": True, "mountPath": SA_MOUNT})

    # -- update -------------------------------------------------------------------------------
    async def replace_admitted(
        self, resource: ResourceType, old: Obj, obj: Obj, *, ctx: Context, subresource: str = ""
    ) -> Obj:
        """Update `old` to `obj` as a PUT or PATCH does: mutating webhooks, `replace`'s checks, validating webhooks.

        Raises ApiError: a webhook's denial or failure, a validation error, and 409 when the stored
        object changed while the webhooks were being called (the client retries, as with any conflict).
        """
        old_meta = old["metadata"]
        name, namespace = str(old_meta["name"]), str(old_meta.get("namespace", ""))
        attrs = admission.Attributes(
            resource=resource,
            operation="UPDATE",
            namespace=name if resource.key == "namespaces" else namespace,
            name=name,
            obj=obj,
            old=old,
            subresource=subresource,
            dry_run=ctx.dry_run,
            user=ctx.user,
        )
        decoding.typed_in_place(resource, obj)
        if resource.defaults is not None:
            resource.defaults(obj)
        self._track_fields(resource, old, obj, ctx.field_manager)
        if resource.plural == "pods" and not subresource:
            admit_default_toleration_seconds(obj)  # a built-in plugin: before the mutating webhooks
        obj = check_type(resource, await self._admission.mutate(attrs, warnings=ctx.warnings))
        decoding.typed_in_place(resource, obj)
        if obj["metadata"].get("name") != name:
            raise invalid(
                resource, name, [invalid_cause("metadata.name", obj["metadata"].get("name"), "field is immutable")]
            )
        check_namespace(resource, namespace, obj)
        allocation = self._replace_prepare(resource, old, obj, dry_run=ctx.dry_run, subresource=subresource)
        with self._given_back_on_failure(allocation):
            await self._admission.validate(attrs.with_object(obj), warnings=ctx.warnings)
            self._check_unchanged(resource, old)
            return self._replace_store(resource, old, obj, dry_run=ctx.dry_run, allocation=allocation)

    async def replace(
        self,
        resource: ResourceType,
        old: Obj,
        obj: Obj,
        *,
        dry_run: bool,
        admit: Callable[[Obj], Awaitable[None]] | None = None,
    ) -> Obj:
        """An update a subresource writes: `replace_admitted`'s checks, then `admit`, then the write.

        `admit` (a subresource's validating admission) is called with the object as it is to be
        written; 409 when the stored object changed meanwhile.
        """
        allocation = self._replace_prepare(resource, old, obj, dry_run=dry_run)
        with self._given_back_on_failure(allocation):
            if admit is not None:
                await admit(obj)
                self._check_unchanged(resource, old)
            return self._replace_store(resource, old, obj, dry_run=dry_run, allocation=allocation)

    def _check_unchanged(self, resource: ResourceType, old: Obj) -> None:
        """404 when `old` is gone, 409 when it changed (while webhooks were being called)."""
        name, namespace = str(old["metadata"]["name"]), str(old["metadata"].get("namespace", ""))
        current = self._storage.get(resource, namespace, name)
        if current is None:
            raise not_found(resource, name)
        if current["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )

    def _replace_prepare(
        self, resource: ResourceType, old: Obj, obj: Obj, *, dry_run: bool, subresource: str = ""
    ) -> Allocation | None:
        """Preconditions, system fields kept from `old`, defaults, the kind's own preparation (`prepare_update`),
        allocation, validation and generation of an update.

        What the update strategy keeps from `old`: the status, unless `subresource` is `status`; a Namespace's
        spec (its finalizers), unless it is `finalize` (`namespaceStrategy`, `namespaceStatusStrategy` and
        `namespaceFinalizeStrategy`'s `PrepareForUpdate`).

        For a Service: what it allocates (held from now on unless a dry run; given back here when
        validation fails) and releases, to `commit` when the update is written.
        """
        meta = obj["metadata"]
        old_meta = old["metadata"]
        name = old_meta["name"]
        rv = meta.get("resourceVersion")
        if rv and rv != old_meta["resourceVersion"]:
            raise conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if not meta.get("uid"):
            meta["uid"] = old_meta["uid"]
        meta["creationTimestamp"] = old_meta["creationTimestamp"]
        for system in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            if system in old_meta:
                meta[system] = old_meta[system]
            else:
                meta.pop(system, None)
        if resource.generation_fields:
            meta["generation"] = old_meta.get("generation", 1)
        else:
            meta.pop("generation", None)
        if resource.status_subresource and subresource != "status":
            if "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
            else:
                obj.pop("status", None)
        if resource.key == "namespaces" and subresource != "finalize":
            obj["spec"] = copy.deepcopy(old.get("spec"))
        service = resource.key == "services"
        if service:
            keep_allocations(obj, old)
        if resource.defaults is not None:
            resource.defaults(obj)
        if resource.prepare_update is not None:
            resource.prepare_update(obj, old)
        allocation = self._allocator.allocate_update(obj, old, resource, dry_run=dry_run) if service else None
        with self._given_back_on_failure(allocation):
            if service:
                drop_type_dependent_fields(obj, old)
            validate(resource, obj, old, subresource=subresource)
        if resource.generation_fields and any(obj.get(f) != old.get(f) for f in resource.generation_fields):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return allocation

    def _replace_store(
        self, resource: ResourceType, old: Obj, obj: Obj, *, dry_run: bool, allocation: Allocation | None
    ) -> Obj:
        """Write a prepared update and commit what it allocated; a no-op update writes nothing, like the real server."""
        old_meta = old["metadata"]
        obj = decoding.stored_form(resource, obj)
        comparable = copy.deepcopy(obj)
        comparable["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if comparable == old or dry_run:
            if allocation is not None:
                self._allocator.revert(allocation)
            return comparable if dry_run else old  # a no-op update writes nothing, like the real server
        if allocation is not None:
            self._allocator.commit(allocation)
        stored = self._storage.write(resource, obj, event_type="MODIFIED")
        if resource.key == CRD_KEY:
            self._custom.set(stored)
        return self._remove_if_finalized(resource, stored)  # the last finalizer of a deleted object went

    @contextlib.contextmanager
    def _given_back_on_failure(self, allocation: Allocation | None) -> Iterator[None]:
        """Give back what `allocation` holds when the write it is for fails before committing it."""
        try:
            yield
        except BaseException:
            if allocation is not None:
                self._allocator.revert(allocation)
            raise

    def _track_fields(self, resource: ResourceType, old: Obj | None, obj: Obj, manager: str | None) -> None:
        """Record in `obj`'s managedFields what `manager` changed over `old`; None keeps what `obj` carries."""
        if manager is not None:
            now = now_stamp(self._clock())
            apply.track_update(
                resource=resource, old=old, new=obj, manager=manager, api_version=resource.api_version, now=now
            )

    # -- removal ------------------------------------------------------------------------------
    def _remove_if_finalized(self, resource: ResourceType, obj: Obj) -> Obj:
        """After an update: an object being deleted whose last finalizer went (and no grace is pending) is removed
        (`ShouldDeleteDuringUpdate`); a Namespace only once its spec's finalizers are gone too
        (`ShouldDeleteNamespaceDuringUpdate`)."""
        meta = obj["metadata"]
        pending = meta.get("finalizers") or int(meta.get("deletionGracePeriodSeconds") or 0)
        if not meta.get("deletionTimestamp") or pending:
            return obj
        if resource.key == "namespaces" and (obj.get("spec") or {}).get("finalizers"):
            return obj
        return self.remove(resource, meta.get("namespace", ""), meta["name"])

    def remove(self, resource: ResourceType, namespace: str, name: str) -> Obj:
        """Take the object out of storage for good (a DELETED event); a Service's allocations are released."""
        if resource.key == CRD_KEY:
            return self._remove_crd(resource, name)
        gone = self._storage.delete(resource, namespace, name)
        if resource.plural == "services":
            self._allocator.release(gone)
        return gone

    def _remove_crd(self, resource: ResourceType, name: str) -> Obj:
        """Like the CRD cleanup finalizer: delete every object of the CRD, then the CRD; end its watches.

        A CRD's name is `<plural>.<group>`, the storage key its objects share. Watchers see a DELETED
        event per object and then the end of their stream; a new request for the resource is a 404.
        """
        for rkey, ns, obj_name in [key for key in self._storage.objects if key[0] == name]:
            served = next((r for r in self._custom.all() if r.key == rkey), None)
            if served is not None:
                self._storage.delete(served, ns, obj_name)
            else:  # no version served: nothing watches it, so no event type is needed
                del self._storage.objects[(rkey, ns, obj_name)]
        gone = self._storage.delete(resource, "", name)
        self._custom.remove(name)
        for watcher in list(self._storage.watchers):
            if watcher.resource.key == name:
                watcher.close()
        return gone
