"""Deletion: DELETE of one object and of a collection, graceful deletion, finalizers, the namespace lifecycle.

DeleteOptions come from the body or, for a request without one, the query string (gracePeriodSeconds,
propagationPolicy, orphanDependents, preconditions, dryRun), never from both. A pod bound to a node is deleted
gracefully (the kubelet removes it); an object with finalizers gets a deletionTimestamp (and, when it counts
generations, a new generation) and stays until the last one goes (`Registry`'s update path then removes it);
everything else goes at once. `propagationPolicy` Orphan and Foreground become the `orphan` and
`foregroundDeletion` finalizers the garbage collector works off. A pod whose graceful deletion is pending is
answered as it is by a DELETE that does not shorten its grace period (`BeforeDelete`, `Store.Delete`): its
finalizers stay as they are whatever the options ask, and admission is not consulted. A deletion left pending
answers 202 rather than 200 when it asked for `orphanDependents: false` (the delete handler's rule). A dry run
changes nothing and answers what the deletion would have answered: the object as the deletion would leave it,
when it would stay. A failed precondition is a 409 in `BeforeDelete`'s words, on the object's kind (`Operation
cannot be fulfilled on ConfigMap "b": the UID in the precondition (...) does not match the UID in record
(...). ...`); a body that is not JSON, a 500 with the decoder's error.

Deleting a Namespace (its REST `Delete`) checks the preconditions, then marks it Terminating: a
deletionTimestamp, the phase, and the `orphan` / `foregroundDeletion` finalizers as the request's
orphanDependents or propagationPolicy asks (orphanDependents false means foreground here, unlike
the generic store). A later DELETE answers it as it is, admission not consulted, while its spec's
finalizers hold it, and once they are gone deletes it as the generic store deletes any object. The
namespace controller then deletes what it holds (propagationPolicy Background), writes the five
deletion conditions on the namespace's status after each pass, and once nothing is left takes the
`kubernetes` finalizer out of its spec (as its `finalize` subresource does), which removes it
unless other finalizers of its spec or metadata still hold it.

A deletecollection is the generic registry's: the objects a list request with the same query
would list are deleted one by one, in key order, each as a DELETE with the request's options
(preconditions included) and its own DELETE admission (the review names the request's namespace and
no name, as the collection request does); the first failure ends the request, leaving the objects
deleted before it deleted. `limit` makes it one page: only that page's objects are deleted and the
answer carries the page's `continue` token, so a client deletes a large collection page by page.
On success it answers the list it worked from: the objects as they were listed, before their
deletion. Namespaces have no deletecollection (405).

Not modelled: a kind the real server registers in more than one internal group (Ingress and
NetworkPolicy also in `extensions`) may have its precondition failures qualified by the other group
there, as its scheme lists it first; a precondition that fails only once admission has run (the object
changed meanwhile) is a storage error worded otherwise; a DELETE body's media type is not checked, and a
protobuf one that does not decode is a 400; the order of a namespace's finalizers after its first DELETE
changed them (the real server builds them from a map, so in no set order: here the kept ones, then the
added one); the namespace controller's discovery never fails, so its discovery and group-version
conditions are always False, and it deletes through storage, without admission; it stops once the
namespace is finalized.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from tests.kubesim import admission, decoding, protobuf, tables
from tests.kubesim.admission import Admission
from tests.kubesim.endpoints import (
    PROTOBUF,
    Clock,
    context,
    json_response,
    now_stamp,
    query_bool,
    render_object,
    request_warnings,
)
from tests.kubesim.listwatch import Page, list_body
from tests.kubesim.registry import Registry
from tests.kubesim.resources import NAMESPACE_FINALIZER, ResourceType, group_versions
from tests.kubesim.status import (
    ApiError,
    bad_request,
    check_name_parameter,
    conflict,
    forbidden,
    not_found,
    options_invalid,
)
from tests.kubesim.storage import Obj, Storage
from tests.kubesim.validation import FieldErrors, go_string_slice

UNDELETABLE_NAMESPACES = ("default", "kube-system", "kube-public")
PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")
ORPHAN_FINALIZER = "orphan"
FOREGROUND_FINALIZER = "foregroundDeletion"
NAMESPACE_POLL = 0.1  # seconds between the namespace controller's looks at what is left
BACKGROUND: Obj = {"propagationPolicy": "Background"}  # the namespace controller's DeleteOptions for its content
# The conditions the namespace controller keeps on a Terminating namespace, in the order it first writes them,
# each with its reason and message while it does not hold (`status_condition_utils.go`: `conditionTypes`,
# `okReasons`, `okMessages`).
NAMESPACE_CONDITIONS: dict[str, tuple[str, str]] = {
    "NamespaceDeletionDiscoveryFailure": ("ResourcesDiscovered", "All resources successfully discovered"),
    "NamespaceDeletionGroupVersionParsingFailure": ("ParsedGroupVersions", "All legacy kube types successfully parsed"),
    "NamespaceDeletionContentFailure": (
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    "NamespaceContentRemaining": ("ContentRemoved", "All content successfully removed"),
    "NamespaceFinalizersRemaining": ("ContentHasNoFinalizers", "All content-preserving finalizers finished"),
}


# -- DeleteOptions --------------------------------------------------------------------------------
async def delete_options(request: web.Request) -> Obj:
    """DeleteOptions from the body, else from the query string; 500 when undecodable, 422 when invalid.

    A request with a body, however short, takes its options from the body alone: its query's options are not
    read at all (`DeleteResource`, `DeleteCollection`: any body of one byte or more is decoded). A JSON body the
    decoder refuses is answered with its error as it is: a 500 without a reason, `couldn't get version/kind;
    json parse error: ...` for one that is not JSON (whitespace alone is `unexpected end of JSON input`).
    """
    options: Obj = {}
    from_body = False
    if request.can_read_body:
        raw = await request.read()
        if raw:  # any body at all is decoded, one of whitespace too
            from_body = True
            try:
                if request.content_type == PROTOBUF:
                    options = {k: v for k, v in protobuf.decode(raw).items() if k not in ("apiVersion", "kind")}
                else:
                    options = decoding.parse_literal(raw)  # numbers as written, for the decoder's messages
            except decoding.JSONSyntaxError as exc:
                # not JSON: the codec fails where it first reads the body's apiVersion and kind (`Interpret`),
                # and the handler answers that error as it is, a 500 without a reason
                raise ApiError(500, f"{decoding.FIND_KIND_ERROR}{exc}", reason="") from None
            except ValueError as exc:
                raise bad_request(f"error decoding DeleteOptions: {exc}") from None
            if options is None:
                options = {}  # `null` decodes into the options as nothing
            if request.content_type != PROTOBUF:
                # the delete handler answers a decoding error as it is: a 500 without a reason
                api_version = str(options.get("apiVersion") or "meta.k8s.io/v1") if isinstance(options, dict) else ""
                problem = decoding.decode_error(options, kind="DeleteOptions", api_version=api_version)
                if problem is not None:
                    raise ApiError(500, problem, reason="")
                options = decoding.plain(options)
            if not isinstance(options, dict):
                raise bad_request("DeleteOptions must be an object")
    query = request.query
    if not from_body and "gracePeriodSeconds" in query:
        try:
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        except ValueError:
            raise bad_request(f'gracePeriodSeconds: invalid value "{query["gracePeriodSeconds"]}"') from None
    if not from_body and "propagationPolicy" in query:
        options["propagationPolicy"] = query["propagationPolicy"]
    if not from_body and "orphanDependents" in query:
        options["orphanDependents"] = query_bool(request, "orphanDependents")
    if not from_body and "dryRun" in query:
        options["dryRun"] = query.getall("dryRun")
    check_delete_options(options)
    return options


def check_delete_options(options: Obj) -> None:
    errors = FieldErrors()
    grace = options.get("gracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        errors.invalid("gracePeriodSeconds", grace, "must be an integer")
    policy = options.get("propagationPolicy")
    if policy is not None and options.get("orphanDependents") is not None:
        errors.invalid("propagationPolicy", policy, "orphanDependents and deletionPropagation cannot be both set")
    if policy is not None and policy not in PROPAGATION_POLICIES:
        errors.not_supported("propagationPolicy", policy, [*PROPAGATION_POLICIES, "nil"])
    dry = options.get("dryRun")
    if dry is not None and (not isinstance(dry, list) or any(value != "All" for value in dry)):
        errors.not_supported("dryRun", go_string_slice(dry), ["All"])
    if errors:
        raise options_invalid("DeleteOptions", errors.causes)


def deletion_finalizers(finalizers: list[str], options: Obj) -> list[str]:
    """The finalizers a deletion with `options` leaves on the object (propagationPolicy, orphanDependents)."""
    orphan = options.get("orphanDependents")
    policy = options.get("propagationPolicy")
    if orphan is not None:
        policy = "Orphan" if orphan else "Background"
    if policy is None:
        return finalizers  # the object's own choice, if any, stands
    kept = [f for f in finalizers if f not in (ORPHAN_FINALIZER, FOREGROUND_FINALIZER)]
    if policy == "Orphan":
        kept.append(ORPHAN_FINALIZER)
    elif policy == "Foreground":
        kept.append(FOREGROUND_FINALIZER)
    return kept


def namespace_deletion_finalizers(finalizers: list[str], options: Obj) -> list[str]:
    """The metadata finalizers a Namespace's first DELETE leaves on it (the namespace REST's
    `shouldHaveOrphanFinalizer` and `shouldHaveDeleteDependentsFinalizer`).

    orphanDependents true asks for `orphan` and false for `foregroundDeletion` (where the generic store's false
    asks for neither); else propagationPolicy Orphan or Foreground asks for the one it names and Background for
    neither; with neither option the namespace's own finalizers stand. When nothing changes they stay as they
    are; otherwise each is kept once, the one added last.
    """
    orphan_dependents = options.get("orphanDependents")
    policy = options.get("propagationPolicy")
    wanted: dict[str, bool] = {}
    for finalizer, named_by in ((ORPHAN_FINALIZER, "Orphan"), (FOREGROUND_FINALIZER, "Foreground")):
        if orphan_dependents is not None:
            wanted[finalizer] = bool(orphan_dependents) == (finalizer == ORPHAN_FINALIZER)
        elif policy is not None:
            wanted[finalizer] = policy == named_by
        else:
            wanted[finalizer] = finalizer in finalizers
    if all((finalizer in finalizers) == should for finalizer, should in wanted.items()):
        return finalizers
    kept = list(dict.fromkeys(f for f in finalizers if wanted.get(f, True)))
    kept.extend(f for f, should in wanted.items() if should and f not in kept)
    return kept


def pending_status(options: Obj) -> int:
    """The status of a DELETE's answer when the object stays: 202 if the request set orphanDependents false,
    else 200 (`DeleteResource`)."""
    return 202 if options.get("orphanDependents") is False else 200


def check_preconditions(resource: ResourceType, obj: Obj, options: Obj) -> None:
    """409 when the DeleteOptions' `preconditions` (uid, then resourceVersion) do not hold for `obj`.

    A precondition given is checked whatever its value: an empty uid or resourceVersion is one no object has.
    A Namespace's REST words the failure its own way (`Precondition failed: UID in precondition: ...`, on
    `namespaces`); every other kind's is `BeforeDelete`'s, on the object's kind qualified by its group
    (`ConfigMap`, `Deployment.apps`), which the details name too.
    """
    pre = options.get("preconditions") or {}
    meta = obj["metadata"]
    uid, rv = pre.get("uid"), pre.get("resourceVersion")
    if resource.key == "namespaces":
        if uid is not None and uid != meta["uid"]:
            raise conflict(
                resource,
                meta["name"],
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {meta['uid']}",
            )
        if rv is not None and rv != meta["resourceVersion"]:
            raise conflict(
                resource,
                meta["name"],
                f"Precondition failed: ResourceVersion in precondition: {rv}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        return
    if uid is not None and uid != meta["uid"]:
        raise kind_conflict(
            resource,
            meta["name"],
            f"the UID in the precondition ({uid}) does not match the UID in record ({meta['uid']}). "
            "The object might have been deleted and then recreated",
        )
    if rv is not None and rv != meta["resourceVersion"]:
        raise kind_conflict(
            resource,
            meta["name"],
            f"the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record "
            f"({meta['resourceVersion']}). The object might have been modified",
        )


def kind_conflict(resource: ResourceType, name: str, detail: str) -> ApiError:
    """`NewConflict` on the group and kind of the object (`BeforeDelete` names its kind where other conflicts
    name the resource): `Operation cannot be fulfilled on Deployment.apps "web": ...`."""
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.kind
    qualified = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
    return ApiError(409, f'Operation cannot be fulfilled on {qualified} "{name}": {detail}', details=details)


def deleted_gracefully(resource: ResourceType) -> bool:
    """Whether the kind's strategy deletes gracefully (`RESTGracefulDeleteStrategy`): Pods alone."""
    return resource.group == "" and resource.plural == "pods"


def requested_grace(options: Obj) -> int | None:
    """The options' gracePeriodSeconds, a negative one as 1 (`BeforeDelete`); None when not given."""
    grace = options.get("gracePeriodSeconds")
    if grace is None:
        return None
    return 1 if int(grace) < 0 else int(grace)


def deletion_pending(resource: ResourceType, obj: Obj, options: Obj) -> bool:
    """Whether a DELETE finds the object's graceful deletion pending (`BeforeDelete`'s gracefulPending): it is
    being deleted with a grace period, and the request asks for none or for one no shorter.

    The store then answers the object as it is (`Store.Delete`): nothing is written, so its finalizers are not
    changed through the options, and admission is not consulted.
    """
    meta = obj["metadata"]
    current = int(meta.get("deletionGracePeriodSeconds") or 0)
    if not deleted_gracefully(resource) or not meta.get("deletionTimestamp") or not current:
        return False
    grace = requested_grace(options)
    return grace is None or grace >= current


def grace_period(resource: ResourceType, obj: Obj, options: Obj) -> int:
    """Seconds a first deletion waits for the kubelet (`CheckGracefulDelete`): only bound, unfinished pods
    have one."""
    if not deleted_gracefully(resource):
        return 0
    spec = obj.get("spec") or {}
    grace = options.get("gracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", 30)
    if not spec.get("nodeName") or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    return 1 if int(grace) < 0 else int(grace)


class Deleter:
    """DELETE and deletecollection, and the namespace controller's work after a Namespace is deleted.

    `registry` removes objects for good; `resource` and `served` are the server's resource lookups;
    `lister` selects what a deletecollection deletes as a list request would (one page of it);
    `namespace_deletion_delay` is how long a deleted Namespace stays Terminating before its content goes.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        resource: Callable[..., ResourceType],
        served: Callable[[], Sequence[ResourceType]],
        registry: Registry,
        admission: Admission,
        lister: Callable[[web.Request, ResourceType, str | None], Page],
        clock: Clock,
        namespace_deletion_delay: float,
    ) -> None:
        self._storage = storage
        self._lister = lister
        self._resource = resource
        self._served = served
        self._registry = registry
        self._admission = admission
        self._clock = clock
        self.namespace_deletion_delay = namespace_deletion_delay
        self._tasks: set[asyncio.Task[Any]] = set()

    def stop(self) -> None:
        """Cancel the namespace controller's work in progress."""
        for task in list(self._tasks):
            task.cancel()

    async def delete(self, request: web.Request, resource: ResourceType, namespace: str, name: str) -> web.Response:
        options = await delete_options(request)
        dry = bool(options.get("dryRun"))
        check_name_parameter(name)
        obj = self._storage.get(resource, namespace, name)
        if obj is None:
            raise not_found(resource, name)
        check_preconditions(resource, obj, options)
        if resource.key == "namespaces":
            return await self._delete_namespace(request, resource, obj, options)
        if deletion_pending(resource, obj, options):
            return render_object(request, resource, obj, clock=self._clock, status=pending_status(options))
        admitted = await self._admit_delete(request, resource, obj, options=options, dry_run=dry)
        if admitted is None:
            raise not_found(resource, name)
        result, removed = self._delete_object(resource, admitted, options, dry_run=dry)
        if removed:
            return self._deleted_answer(request, resource, result)
        # deletion pending: the object, as it is now
        return render_object(request, resource, result, clock=self._clock, status=pending_status(options))

    async def delete_collection(
        self, request: web.Request, resource: ResourceType, namespace: str | None
    ) -> web.Response:
        """DELETE of a collection: each listed object deleted in turn, as a DELETE of it would be.

        The objects are listed as a list request with the same query would list them: with `limit`,
        one page (from `continue`, if given) is deleted and the answer is that page, with its
        `continue` token for the next one; without it, everything from `continue` (or the start) on.
        Answers the listed objects as they were listed (at the list's resourceVersion), not as their
        deletion left them. 409 for the first object whose preconditions fail, a webhook's denial for
        the first object it denies; an object that went meanwhile is skipped (and still listed), and so
        is, without admission, one whose graceful deletion is pending (`deletion_pending`). 405 for a
        resource without the verb.
        """
        if not resource.delete_collection:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        page = self._lister(request, resource, namespace)
        listed = Page(
            objects=[copy.deepcopy(o) for o in page.objects],
            resource_version=page.resource_version,
            continue_token=page.continue_token if request.query.get("limit") else "",
            remaining_item_count=page.remaining_item_count,
        )
        options = await delete_options(request)
        dry = bool(options.get("dryRun"))
        for obj_listed in listed.objects:
            meta = obj_listed["metadata"]
            obj = self._storage.get(resource, meta.get("namespace", ""), meta["name"])
            if obj is None:
                continue
            check_preconditions(resource, obj, options)
            if deletion_pending(resource, obj, options):
                continue
            admitted = await self._admit_delete(
                request, resource, obj, options=options, dry_run=dry, collection_namespace=namespace or ""
            )
            if admitted is not None and not dry:
                self._delete_object(resource, admitted, options)
        return json_response(list_body(resource, listed))

    async def _admit_delete(
        self,
        request: web.Request,
        resource: ResourceType,
        obj: Obj,
        *,
        options: Obj,
        dry_run: bool,
        collection_namespace: str | None = None,
    ) -> Obj | None:
        """DELETE admission (mutating, then validating webhooks, with `oldObject`); the object as stored after it.

        The review names the object, or for a deletecollection (`collection_namespace`: the request's
        namespace, "" for all) that namespace and no name. Raises ApiError for a denial or failure;
        None when the object went while webhooks were called.
        """
        meta = obj["metadata"]
        name, namespace = str(meta["name"]), str(meta.get("namespace", ""))
        if collection_namespace is not None:
            request_namespace, request_name = collection_namespace, ""
        else:
            request_namespace, request_name = (name if resource.key == "namespaces" else namespace), name
        attrs = admission.Attributes(
            resource=resource,
            operation="DELETE",
            namespace=request_namespace,
            name=request_name,
            obj=None,
            old=obj,
            dry_run=dry_run,
            options={k: v for k, v in options.items() if k not in ("kind", "apiVersion")},
            user=context(request).user,
        )
        warnings = request_warnings(request)
        await self._admission.mutate(attrs, warnings=warnings)
        await self._admission.validate(attrs, warnings=warnings)
        return self._storage.get(resource, namespace, name)

    def _delete_object(
        self, resource: ResourceType, obj: Obj, options: Obj, *, dry_run: bool = False
    ) -> tuple[Obj, bool]:
        """Delete `obj` as the registry does; (the object, True) when removed, (as stored now, False) when pending.

        A pod bound to a node is deleted gracefully: deletionTimestamp = now + grace period (the
        request's `gracePeriodSeconds`, else `spec.terminationGracePeriodSeconds`), and the kubelet's
        later delete with grace 0 removes it; a shorter grace shortens a pending deletion. Unbound or
        finished pods, and every other kind, go at once unless finalizers hold them. `propagationPolicy`
        Orphan/Foreground add the `orphan`/`foregroundDeletion` finalizer the garbage collector works
        off; Background (the default) removes both. A pending graceful deletion (`deletion_pending`) is left as
        it is, its finalizers too. A dry run stores nothing: it answers what would have been.
        """
        if deletion_pending(resource, obj, options):
            return obj, False
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        finalizers = deletion_finalizers(list(meta.get("finalizers") or []), options)
        if finalizers:
            meta["finalizers"] = finalizers
        else:
            meta.pop("finalizers", None)
        now = self._clock()
        if meta.get("deletionTimestamp"):
            # not pending: a graceful deletion the request shortens, or one without a grace period left
            current = int(meta.get("deletionGracePeriodSeconds") or 0)
            shorter = requested_grace(options)
            if deleted_gracefully(resource) and current and shorter is not None and shorter < current:
                started = tables.parse_time(meta["deletionTimestamp"]) - datetime.timedelta(seconds=current)
                meta["deletionTimestamp"] = now_stamp(started + datetime.timedelta(seconds=shorter))
                meta["deletionGracePeriodSeconds"] = shorter
        elif (grace := grace_period(resource, obj, options)) > 0 or finalizers:
            meta["deletionTimestamp"] = now_stamp(now + datetime.timedelta(seconds=grace))
            meta["deletionGracePeriodSeconds"] = grace
            if int(meta.get("generation") or 0) > 0:  # BeforeDelete, or markAsDeleting for finalizers: controllers
                meta["generation"] = int(meta["generation"]) + 1  # see that the object is going, as a new generation
        ns, name = meta.get("namespace", ""), meta["name"]
        if not finalizers and not int(meta.get("deletionGracePeriodSeconds") or 0):
            return (obj, True) if dry_run else (self._registry.remove(resource, ns, name), True)
        if new == obj:
            return obj, False
        if dry_run:
            return new, False
        return self._storage.write(resource, new, event_type="MODIFIED"), False

    def _deleted_answer(self, request: web.Request, resource: ResourceType, obj: Obj) -> web.Response:
        if resource.return_deleted_object:
            return render_object(request, resource, obj, clock=self._clock)
        details: dict[str, Any] = {"name": obj["metadata"]["name"]}
        if resource.group:
            details["group"] = resource.group
        details["kind"] = resource.plural
        details["uid"] = obj["metadata"]["uid"]
        return json_response(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        )

    # -- the namespace lifecycle --------------------------------------------------------------
    async def _delete_namespace(
        self, request: web.Request, resource: ResourceType, obj: Obj, options: Obj
    ) -> web.Response:
        """DELETE of a Namespace (its REST `Delete`), its preconditions checked.

        The first marks it Terminating and answers it so (`_marked_terminating`). A later one answers it as it
        is, admission not consulted, while its spec's finalizers hold it; once they are gone it is deleted as
        the generic store deletes any object: its metadata's finalizers, which the request's propagation options
        may change, still hold it. A dry run stores nothing and answers what the deletion would have.
        """
        name = str(obj["metadata"]["name"])
        status = pending_status(options)
        if obj["metadata"].get("deletionTimestamp") and (obj.get("spec") or {}).get("finalizers"):
            return render_object(request, resource, obj, clock=self._clock, status=status)
        if name in UNDELETABLE_NAMESPACES:  # the NamespaceLifecycle admission plugin
            raise forbidden(resource, name, "this namespace may not be deleted")
        dry = bool(options.get("dryRun"))
        admitted = await self._admit_delete(request, resource, obj, options=options, dry_run=dry)
        if admitted is None:
            raise not_found(resource, name)
        if not admitted["metadata"].get("deletionTimestamp"):
            marked = self._marked_terminating(admitted, options)
            answer = marked if dry else self._terminate_namespace(marked)
            return render_object(request, resource, answer, clock=self._clock, status=status)
        if (admitted.get("spec") or {}).get("finalizers"):
            return render_object(request, resource, admitted, clock=self._clock, status=status)
        result, removed = self._delete_object(resource, admitted, options, dry_run=dry)
        if removed:
            return self._deleted_answer(request, resource, result)
        return render_object(request, resource, result, clock=self._clock, status=status)

    def _marked_terminating(self, obj: Obj, options: Obj) -> Obj:
        """The namespace as its first DELETE leaves it: a deletionTimestamp (now, no grace period), the phase
        Terminating, and the `orphan` / `foregroundDeletion` finalizers the options ask for
        (`namespace_deletion_finalizers`). Not stored."""
        marked = copy.deepcopy(obj)
        meta = marked["metadata"]
        meta["deletionTimestamp"] = now_stamp(self._clock())
        marked["status"] = {**(obj.get("status") or {}), "phase": "Terminating"}
        finalizers = namespace_deletion_finalizers(list(meta.get("finalizers") or []), options)
        if finalizers:
            meta["finalizers"] = finalizers
        else:
            meta.pop("finalizers", None)
        return marked

    def _terminate_namespace(self, marked: Obj) -> Obj:
        """Store the namespace marked Terminating; the namespace controller then empties it and takes its
        `kubernetes` finalizer out."""
        stored = self._storage.write(self._resource("namespaces"), marked, event_type="MODIFIED")
        meta = stored["metadata"]
        task = asyncio.get_running_loop().create_task(self._finalize_namespace(str(meta["name"]), str(meta["uid"])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stored

    async def _finalize_namespace(self, name: str, uid: str) -> None:
        """The namespace controller (`namespacedResourcesDeleter.Delete`): delete what the namespace holds (pods
        gracefully) and write what is left as the namespace's conditions, pass after pass, until nothing is
        left; then finalize it: `kubernetes` out of its spec's finalizers, which removes it unless other
        finalizers hold it.

        Objects held by finalizers or by a pending graceful deletion keep the namespace Terminating, as in a
        real cluster, until whoever owns them (the kubelet, a controller) lets go. The controller stops once the
        namespace is gone or finalized (its `kubernetes` finalizer taken out through the `finalize`
        subresource): what it still holds then stays where it is.
        """
        await asyncio.sleep(self.namespace_deletion_delay)
        while (namespace := self._terminating(name, uid)) is not None:
            if self._delete_content(namespace):
                emptied = self._terminating(name, uid)
                if emptied is not None:
                    self._finalize(emptied)
                return
            await asyncio.sleep(NAMESPACE_POLL)

    def _delete_content(self, namespace: Obj) -> bool:
        """One pass of the controller's `deleteAllContent`; True when the namespace holds nothing any more.

        Everything the namespace holds is deleted with propagationPolicy Background, what is being deleted
        already included (which drops its `orphan` / `foregroundDeletion` finalizers, but for a pod whose
        graceful deletion is pending, which stays as it is); a custom resource no longer served is dropped, as
        nothing can watch or finalize it. What is left then becomes the namespace's conditions
        (`_content_conditions`, `_write_conditions`).
        """
        name = str(namespace["metadata"]["name"])
        kinds = self._content_resources()
        deleted_at = tables.parse_time(str(namespace["metadata"]["deletionTimestamp"]))
        pods_estimate = self._pods_estimate(name, (self._clock() - deleted_at).total_seconds())
        for key in list(self._storage.namespaced_keys(name)):
            obj = self._storage.objects.get(key)
            if obj is None:
                continue
            served = kinds.get(key[0])
            if served is None:
                del self._storage.objects[key]
            else:
                self._delete_object(served, obj, BACKGROUND)
        left: dict[str, list[Obj]] = {}
        for key in self._storage.namespaced_keys(name):
            left.setdefault(key[0], []).append(self._storage.objects[key])
        self._write_conditions(namespace, self._content_conditions(name, left, kinds, pods_estimate))
        return not left

    def _content_resources(self) -> dict[str, ResourceType]:
        """Each served resource by its storage key, at the version discovery prefers for it (its group's first
        version serving it), as the controller's `ServerPreferredNamespacedResources` finds it."""
        served = self._served()
        order = group_versions(served)
        chosen: dict[str, ResourceType] = {}
        for resource in sorted(served, key=lambda r: order[r.group].index(r.version)):
            chosen.setdefault(resource.key, resource)
        return chosen

    def _pods_estimate(self, namespace: str, elapsed: float) -> int:
        """`estimateGracefulTerminationForPods`: the longest terminationGracePeriodSeconds of the namespace's pods
        that have not Succeeded or Failed; 0 once the namespace has been Terminating that long
        (`estimateGracefulTermination`)."""
        estimate = 0
        for key in self._storage.namespaced_keys(namespace):
            pod = self._storage.objects[key]
            if key[0] != "pods" or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
            if grace is not None and int(grace) > estimate:
                estimate = int(grace)
        return 0 if elapsed >= estimate else estimate

    @staticmethod
    def _content_conditions(
        namespace: str, left: dict[str, list[Obj]], kinds: dict[str, ResourceType], pods_estimate: int
    ) -> dict[str, tuple[str, str, str]]:
        """The conditions that hold after a pass, type -> (status, reason, message) (`ProcessContentTotals`,
        `makeDeleteContentCondition`).

        NamespaceContentRemaining counts what is left by resource ("pods. has 1 resource instances", resource
        and group), NamespaceFinalizersRemaining by finalizer ("example.com/f in 1 resource instances"), each
        list sorted. A resource whose objects are left with no finalizer among them and no graceful
        termination to wait for (only pods have one: `_pods_estimate`) is a failure to delete it, which
        NamespaceDeletionContentFailure reports by group, version and resource.
        """
        found: dict[str, tuple[str, str, str]] = {}
        counts: list[str] = []
        by_finalizer: dict[str, int] = {}
        failures: list[str] = []
        for rkey, objs in left.items():
            served = kinds[rkey]
            counts.append(f"{served.plural}.{served.group} has {len(objs)} resource instances")
            own: dict[str, int] = {}
            for obj in objs:
                for finalizer in obj["metadata"].get("finalizers") or []:
                    own[finalizer] = own.get(finalizer, 0) + 1
            for finalizer, count in own.items():
                by_finalizer[finalizer] = by_finalizer.get(finalizer, 0) + count
            if not own and not (pods_estimate if rkey == "pods" else 0):
                gvr = f"{served.group}/{served.version}, Resource={served.plural}"
                failures.append(f"unexpected items still remain in namespace: {namespace} for gvr: {gvr}")
        if counts:
            found["NamespaceContentRemaining"] = (
                "True",
                "SomeResourcesRemain",
                f"Some resources are remaining: {', '.join(sorted(counts))}",
            )
        if by_finalizer:
            remaining = sorted(
                f"{finalizer} in {count} resource instances" for finalizer, count in by_finalizer.items()
            )
            found["NamespaceFinalizersRemaining"] = (
                "True",
                "SomeFinalizersRemain",
                f"Some content in the namespace has finalizers remaining: {', '.join(remaining)}",
            )
        if failures:
            found["NamespaceDeletionContentFailure"] = (
                "True",
                "ContentDeletionFailed",
                f"Failed to delete all resource types, {len(failures)} remaining: {', '.join(sorted(failures))}",
            )
        return found

    def _write_conditions(self, namespace: Obj, found: dict[str, tuple[str, str, str]]) -> None:
        """Set the five deletion conditions on the namespace's status (`updateConditions`), writing it only when
        one changed, as the controller's `UpdateStatus` follows.

        Each is `found`'s, else False with its reason and message for that (`NAMESPACE_CONDITIONS`). A condition
        not there yet is added (in that order, after any others) with lastTransitionTime now; one whose status,
        reason or message changed takes the new ones, and a new lastTransitionTime only if its status changed.
        """
        now = now_stamp(self._clock())
        updated = copy.deepcopy(namespace)
        status = updated.setdefault("status", {})
        conditions: list[Obj] = list(status.get("conditions") or [])
        changed = False
        for kind, (ok_reason, ok_message) in NAMESPACE_CONDITIONS.items():
            state, reason, message = found.get(kind, ("False", ok_reason, ok_message))
            old = next((c for c in conditions if c.get("type") == kind), None)
            if old is None:
                conditions.append(
                    {"type": kind, "status": state, "lastTransitionTime": now, "reason": reason, "message": message}
                )
                changed = True
            elif (old.get("status", ""), old.get("reason", ""), old.get("message", "")) != (state, reason, message):
                if old.get("status", "") != state:
                    old["lastTransitionTime"] = now
                old.update(status=state, reason=reason, message=message)
                changed = True
        if changed:
            status["conditions"] = conditions
            self._storage.write(self._resource("namespaces"), updated, event_type="MODIFIED")

    def _terminating(self, name: str, uid: str) -> Obj | None:
        """The namespace the controller works on, while it is still there and not finalized."""
        namespace = self._storage.get(self._resource("namespaces"), "", name)
        if namespace is None or namespace["metadata"].get("uid") != uid:
            return None
        return namespace if NAMESPACE_FINALIZER in ((namespace.get("spec") or {}).get("finalizers") or []) else None

    def _finalize(self, namespace: Obj) -> None:
        """The controller's `finalize` of an emptied namespace (`finalizeNamespace`): its spec's other finalizers,
        as a sorted set. With no finalizer left it is removed (`ShouldDeleteNamespaceDuringUpdate`), else written
        and left Terminating."""
        namespaces = self._resource("namespaces")
        left = sorted({f for f in (namespace.get("spec") or {}).get("finalizers") or [] if f != NAMESPACE_FINALIZER})
        if not left and not namespace["metadata"].get("finalizers"):
            self._registry.remove(namespaces, "", str(namespace["metadata"]["name"]))
            return
        finalized = copy.deepcopy(namespace)
        finalized["spec"] = {**(namespace.get("spec") or {}), "finalizers": left}
        self._storage.write(namespaces, finalized, event_type="MODIFIED")
