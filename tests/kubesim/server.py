"""KubeSim: an in-process Kubernetes API server emulator over plain HTTP (aiohttp).

It serves discovery, create/get/list/watch/update/patch/delete(collection) for the resources in
`tests.kubesim.resources`, with the API server's semantics where meshplane depends on them:
one global resourceVersion, watch events and bookmarks, `410 Gone` after compaction, label and
field selectors, three patch formats, optimistic concurrency, validation errors naming the
field, namespace lifecycle, and the Table form kubectl prints. CustomResourceDefinitions make
their resources served while they exist (`tests.kubesim.customresources`); deleting one deletes its
objects, ends the watches on them, and the resource answers 404 again.

    sim = KubeSim(window=1000)
    await sim.start()            # 127.0.0.1, a free port
    sim.write_kubeconfig(path)   # for kubectl and kubernetes-asyncio
    ...
    await sim.stop()

Test hooks: `compact()` (forget history: old resourceVersions answer 410), `close_watches()`
(end every open watch stream, like a server-side timeout), `inject_faults(...)` (answer the next
matching requests with an error status), and `requests` (what was asked, in order).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import datetime
import ipaddress
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from aiohttp import web

from tests.kubesim import (
    admission,
    apply,
    auth,
    customresources,
    openapi,
    patching,
    protobuf,
    resources,
    tables,
    tokens,
)
from tests.kubesim.kubeconfig import write_kubeconfig
from tests.kubesim.resources import ResourceType
from tests.kubesim.schemas import SCHEMAS, prune_unknown
from tests.kubesim.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    format_label_selector,
    parse_field_selector,
    parse_label_selector,
)
from tests.kubesim.status import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    expired,
    forbidden,
    invalid,
    not_found,
    page_not_found,
)
from tests.kubesim.storage import Obj, Storage, Watcher
from tests.kubesim.validation import FieldErrors, check_metadata

log = logging.getLogger(__name__)

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubesim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

PROTOBUF = "application/vnd.kubernetes.protobuf"
BODY_TYPES = ("application/json", "application/yaml", PROTOBUF)
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
APPLY_PATCH = "application/apply-patch+yaml"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = ("default", "kube-system", "kube-public")
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODE_PORTS = range(30000, 32768)
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"
PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")
ORPHAN_FINALIZER = "orphan"
FOREGROUND_FINALIZER = "foregroundDeletion"
NAMESPACE_POLL = 0.1  # seconds between the namespace controller's looks at what is left


@dataclass
class Context:
    """Per-request options that reach the write path: dry run, field validation, warnings to send."""

    dry_run: bool = False
    field_validation: str = "Warn"
    warnings: list[str] = field(default_factory=list)
    user: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(admission.ADMIN_USER))  # admission's userInfo
    # who writes, recorded in managedFields (operation Update); None: keep the managedFields the object
    # carries (an apply computed them, or kubesim itself writes)
    field_manager: str | None = None


@dataclass
class Fault:
    """Answer up to `count` requests matching (method, path prefix) with `status`."""

    status: int
    count: int
    method: str | None
    path_prefix: str
    watch: bool | None
    retry_after: int | None
    message: str

    def matches(self, request: web.Request) -> bool:
        if self.count <= 0:
            return False
        if self.method is not None and request.method != self.method:
            return False
        if not request.path.startswith(self.path_prefix):
            return False
        if self.watch is not None:
            is_watch = request.query.get("watch", "") in ("1", "true")
            if is_watch != self.watch:
                return False
        return True


def _unsupported_media(allowed: tuple[str, ...]) -> ApiError:
    listed = ", ".join(allowed)
    return ApiError(415, f"the body of the request was in an unknown format - accepted media types include: {listed}")


def _patch_options_invalid(field_path: str, reason: str, detail: str) -> ApiError:
    """422 for bad PatchOptions (query parameters), worded as the API server words it."""
    cause = {"reason": reason, "message": detail, "field": field_path}
    return ApiError(
        422,
        f'PatchOptions.meta.k8s.io "" is invalid: {field_path}: {detail}',
        details={"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [cause]},
    )


def _now_stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _random_suffix(length: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(random.choice(alphabet) for _ in range(length))


class KubeSim:
    """The emulator. Construct, `await start()`, use `url`, `await stop()`.

    `window`: how many events are retained for watch resumption and paginated lists (older
    resourceVersions answer 410 Expired). `bookmark_interval`: seconds between BOOKMARK events on
    watches that allow them. `watch_timeout`: the server-side limit of a watch without
    `timeoutSeconds`. `namespace_deletion_delay`: seconds a deleted namespace stays Terminating
    before its objects and itself are removed. `clock`: the time source for creationTimestamp and ages.
    """

    def __init__(
        self,
        *,
        window: int = 1000,
        bookmark_interval: float = 1.0,
        watch_timeout: float = 1800.0,
        namespace_deletion_delay: float = 0.0,
        clock: Callable[[], datetime.datetime] | None = None,
        tls: bool = False,
    ) -> None:
        self.storage = Storage(window=window)
        self.tls = tls
        self.certs: auth.ServingCerts | None = None
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.namespace_deletion_delay = namespace_deletion_delay
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self.tokens = tokens.ServiceAccountTokens(clock=self.clock)
        self.requests: list[tuple[str, str]] = []
        self.authenticator = auth.Authenticator(service_accounts=self.tokens, lookup=self._object_uid)
        self.audit: list[auth.AuditRecord] = []  # with tls: every authenticated resource request, in order
        self.faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._allocated_ips: set[ipaddress.IPv4Address] = set()
        self._allocated_node_ports: set[int] = set()
        self.custom = customresources.CustomResources()
        self.admission = admission.Admission(storage=self.storage, resource=self.resource, served=self.served)
        self.host = "127.0.0.1"
        self.port = 0
        self.app = web.Application(middlewares=[self._middleware], client_max_size=3 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._bootstrap()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, *, host: str = "127.0.0.1", port: int = 0, extra_hosts: tuple[str, ...] = ()) -> None:
        """Listen on `host` (`port` 0: a free one) and on `extra_hosts` at the same port; OSError if one is taken.

        With `tls`, a new CA and serving certificate (SANs: the API server's names, 10.96.0.1 and every
        host listened on) are made first; `ca_pem` and the kubeconfig carry the CA.
        """
        context = None
        if self.tls:
            self.certs = auth.ServingCerts.generate(hosts=(host, *extra_hosts))
            context = self.certs.ssl_context()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port, ssl_context=context).start()
            self.host = host
            self.port = int(self._runner.addresses[0][1])
            for extra in extra_hosts:
                await web.TCPSite(self._runner, extra, self.port, ssl_context=context).start()
        except OSError:
            await self.stop()
            raise

    async def stop(self) -> None:
        self.storage.close_watches()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        """The CA of the serving certificate (PEM); RuntimeError before `start()` or without tls."""
        if self.certs is None:
            raise RuntimeError("kubesim serves no certificate: construct it with tls=True and start it")
        return self.certs.ca_pem

    @property
    def admin_token(self) -> str:
        """The bearer token of the cluster admin (what `write_kubeconfig` puts in)."""
        return self.authenticator.admin_token

    def write_kubeconfig(self, path: Any, *, namespace: str = "default", server: str | None = None) -> Any:
        """A kubeconfig for `server` (default `url`) with the admin token and, with tls, the CA."""
        return write_kubeconfig(
            path,
            server=server or self.url,
            namespace=namespace,
            token=self.admin_token,
            ca_pem=self.certs.ca_pem if self.certs is not None else None,
        )

    # -- test hooks ---------------------------------------------------------------------------
    def compact(self) -> None:
        """Forget history: every resourceVersion before now answers 410 Expired."""
        self.storage.compact()

    def close_watches(self) -> None:
        """End every open watch stream (as a server-side timeout would)."""
        self.storage.close_watches()

    def inject_faults(
        self,
        *,
        status: int,
        count: int = 1,
        method: str | None = None,
        path_prefix: str = "/",
        watch: bool | None = None,
        retry_after: int | None = None,
        message: str = "injected fault",
    ) -> Fault:
        fault = Fault(status, count, method, path_prefix, watch, retry_after, message)
        self.faults.append(fault)
        return fault

    @property
    def watch_count(self) -> int:
        return len(self.storage.watchers)

    # -- direct access (for tests and controllers of later cuts) ------------------------------
    def served(self) -> tuple[ResourceType, ...]:
        """Every resource type served now: the built-in ones, then those of stored CRDs."""
        return (*resources.RESOURCES, *self.custom.all())

    def resource(self, plural: str, group: str = "") -> ResourceType:
        for r in self.served():
            if r.plural == plural and r.group == group:
                return r
        raise KeyError(f"{plural}.{group}")

    def get_object(self, plural: str, namespace: str, name: str, *, group: str = "") -> Obj | None:
        obj = self.storage.get(self.resource(plural, group), namespace, name)
        return copy.deepcopy(obj) if obj is not None else None

    def create_object(self, obj: Obj) -> Obj:
        """Create through the same path as POST (defaults, validation); raises ApiError."""
        api_version = str(obj.get("apiVersion", ""))
        group, _, version = api_version.rpartition("/")
        kind = obj.get("kind")
        for r in self.served():
            if r.group == group and r.version == version and r.kind == kind:
                ns = (obj.get("metadata") or {}).get("namespace", "default") if r.namespaced else ""
                return self._create(r, ns, copy.deepcopy(obj), ctx=Context())
        raise KeyError(f"{api_version} {kind}")

    # -- bootstrap ----------------------------------------------------------------------------
    def _bootstrap(self) -> None:
        ns = self.resource("namespaces")
        for name in INITIAL_NAMESPACES:
            self._create(ns, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, ctx=Context())
        self._allocated_ips.add(ipaddress.IPv4Address("10.96.0.1"))
        self._create(
            self.resource("services"),
            "default",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "clusterIP": "10.96.0.1",
                    "ports": [{"name": "https", "port": 443, "targetPort": 6443}],
                },
            },
            ctx=Context(),
            preallocated=True,
        )

    # -- HTTP plumbing ------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if self.tls:
            try:
                self._authenticate(request)
            except auth.Unauthenticated:
                return self._error(ApiError(401, "Unauthorized"))
        for fault in self.faults:
            if fault.matches(request):
                fault.count -= 1
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                error = ApiError(fault.status, fault.message, headers=headers, details={})
                if fault.retry_after is not None:
                    error.details = {"retryAfterSeconds": fault.retry_after}
                return self._error(error)
        try:
            return await handler(request)
        except ApiError as exc:
            return self._error(exc)

    def _authenticate(self, request: web.Request) -> None:
        """Who asks (left for admission at `admission.USER_KEY`), recorded in `audit`; raises Unauthenticated."""
        if request.path in auth.ANONYMOUS_PATHS and "Authorization" not in request.headers:
            return
        user = self.authenticator.authenticate(request.headers)
        request[admission.USER_KEY] = {"username": user.username, "groups": list(user.groups)}
        info = auth.request_info(request.method, request.path, request.query)
        if info is not None:
            self.audit.append(
                auth.AuditRecord(
                    username=user.username,
                    verb=info.verb,
                    api_group=info.api_group,
                    resource=info.resource,
                    subresource=info.subresource,
                    namespace=info.namespace,
                )
            )

    def _object_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The uid of a ServiceAccount, Pod or Secret (what tokens are bound to); None when it does not exist."""
        plural = {"ServiceAccount": "serviceaccounts", "Pod": "pods", "Secret": "secrets"}[kind]
        obj = self.storage.get(self.resource(plural), namespace, name)
        return None if obj is None else str(obj["metadata"]["uid"])

    @staticmethod
    def _json(data: Any, *, status: int = 200, content_type: str = "application/json") -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps(data, separators=(",", ":")).encode(),
            headers={"Content-Type": content_type},
        )

    def _error(self, exc: ApiError) -> web.Response:
        response = self._json(exc.status(), status=exc.code)
        response.headers.update(exc.headers)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            discovery = self._discovery(parts)
            if discovery is not None:
                return self._json(discovery)
        if request.method == "GET" and parts == [".well-known", "openid-configuration"]:
            return self._json(self.tokens.openid_configuration())
        if request.method == "GET" and parts == ["openid", "v1", "jwks"]:
            return web.Response(text=json.dumps(self.tokens.jwks()), content_type="application/jwk-set+json")
        if parts and parts[0] in ("healthz", "readyz", "livez") and len(parts) == 1:
            return web.Response(text="ok")
        if request.method == "GET" and parts == ["openapi", "v2"]:
            # An empty OpenAPI v2 document (zero protobuf bytes decode as one): kubectl's client-side
            # validation then knows no schema, so a kind no server resource serves fails at mapping
            # ("no matches for kind ..."), as against a real server.
            return web.Response(body=b"", content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
        if request.method == "GET" and parts[:2] == ["openapi", "v3"]:
            served = self.served()
            doc = openapi.index(served) if len(parts) == 2 else openapi.group_version("/".join(parts[2:]), served)
            if doc is not None:
                return self._json(doc)
        if len(parts) >= 3 and parts[0] == "api" and parts[1] == "v1":
            return await self._resource_request(request, "", "v1", parts[2:])
        if len(parts) >= 4 and parts[0] == "apis":
            return await self._resource_request(request, parts[1], parts[2], parts[3:])
        raise page_not_found()

    def _discovery(self, parts: list[str]) -> Any:
        groups = resources.group_versions(self.served())
        if parts == ["version"]:
            return VERSION
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": groups.get("", []),
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group_doc(g, vs) for g, vs in groups.items() if g],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups and parts[1]:
            doc = self._group_doc(parts[1], groups[parts[1]])
            return {"kind": "APIGroup", "apiVersion": "v1", **doc}
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1")
        if len(parts) == 3 and parts[0] == "apis" and parts[1] and parts[2] in groups.get(parts[1], []):
            return self._resource_list(parts[1], parts[2])
        return None

    @staticmethod
    def _group_doc(group: str, versions: list[str]) -> dict[str, Any]:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": listed, "preferredVersion": listed[0]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [
                *(r.discovery() for r in self.served() if r.group == group and r.version == version),
                *(
                    e
                    for r in self.served()
                    if r.group == group and r.version == version
                    for e in r.subresource_discovery()
                ),
                *resources.CREATE_ONLY.get((group, version), ()),
            ],
        }

    async def _resource_request(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if (group, version) == ("", "v1") and len(rest) == 3 and rest[::2] == ["serviceaccounts", "token"]:
            if namespace is None:
                raise page_not_found()
            self._only_post(request)
            return await self._token_request(request, namespace, rest[1])
        if (group, version) == ("authentication.k8s.io", "v1") and rest == ["tokenreviews"] and namespace is None:
            self._only_post(request)
            return await self._token_review(request)
        if (
            (group, version, namespace is None) == ("", "v1", False)
            and len(rest) == 3
            and rest[::2] == ["pods", "binding"]
        ):
            self._only_post(request)
            return await self._bind_pod(request, str(namespace), rest[1])
        if len(rest) == 3 and namespace is not None and rest[2] in ("status", "scale"):
            sub_resource = resources.find(group, version, rest[0], served=self.served())
            if sub_resource is None or not sub_resource.namespaced:
                raise page_not_found()
            return await self._subresource(request, sub_resource, namespace, rest[1], rest[2])
        if not rest or len(rest) > 2:
            raise page_not_found()
        resource = resources.find(group, version, rest[0], served=self.served())
        if resource is None:
            raise page_not_found()
        if namespace is not None and not resource.namespaced:
            raise page_not_found()
        name = rest[1] if len(rest) == 2 else None
        if name is not None and resource.namespaced and namespace is None:
            raise page_not_found()
        method = request.method
        if name is None:
            if method == "GET":
                if request.query.get("watch", "").lower() in ("1", "true"):
                    return await self._watch(request, resource, namespace)
                return self._list(request, resource, namespace)
            if method == "POST":
                if resource.namespaced and namespace is None:
                    raise ApiError(405, "the server does not allow this method on the requested resource")
                body = await self._body(request)
                ctx = self._context(request)
                created = await self._create_admitted(resource, namespace or "", body, ctx=ctx)
                return self._render_object(request, resource, created, status=201, warnings=ctx.warnings)
            if method == "DELETE":
                return await self._delete_collection(request, resource, namespace)
            raise ApiError(405, "the server does not allow this method on the requested resource")
        ns = namespace or ""
        if method == "GET":
            obj = self.storage.get(resource, ns, name)
            if obj is None:
                raise not_found(resource, name)
            return self._render_object(request, resource, obj)
        if method == "PUT":
            body = await self._body(request)
            ctx = self._context(request)
            updated = await self._update(resource, ns, name, body, ctx=ctx)
            return self._render_object(request, resource, updated, warnings=ctx.warnings)
        if method == "PATCH":
            ctx = self._context(request)
            if request.content_type == APPLY_PATCH:
                applied, was_created = await self._apply_patch(request, resource, ns, name, ctx=ctx)
                return self._render_object(
                    request, resource, applied, status=201 if was_created else 200, warnings=ctx.warnings
                )
            patched = await self._patch(request, resource, ns, name, ctx=ctx)
            return self._render_object(request, resource, patched, warnings=ctx.warnings)
        if method == "DELETE":
            return await self._delete(request, resource, ns, name)
        raise ApiError(405, "the server does not allow this method on the requested resource")

    # -- service-account tokens (TokenRequest, TokenReview) -----------------------------------
    @staticmethod
    def _only_post(request: web.Request) -> None:
        if request.method != "POST":
            raise ApiError(405, "the server does not allow this method on the requested resource")

    @staticmethod
    def _auth_body(body: Any, kind: str) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the object provided is unrecognized (must be a JSON object)")
        api_version = body.get("apiVersion", tokens.API_VERSION)
        if api_version != tokens.API_VERSION or body.get("kind", kind) != kind:
            raise bad_request(
                f"the object provided is unrecognized: {api_version}/{body.get('kind')} "
                f"(want {tokens.API_VERSION}/{kind})"
            )
        spec = body.get("spec")
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise bad_request("spec must be an object")
        return spec

    def _service_account_uid(self, namespace: str, name: str) -> str | None:
        return self._object_uid("ServiceAccount", namespace, name)

    def _bound_object(self, ref: Any, namespace: str, account: str) -> tokens.Bound | None:
        """The Pod or Secret a TokenRequest's boundObjectRef names (400 other kinds, 404 absent, 409 other uid)."""
        if not ref:
            return None
        if not isinstance(ref, dict) or not ref.get("name"):
            raise bad_request("spec.boundObjectRef must be an object with kind, apiVersion and name")
        kind, api_version, name = ref.get("kind"), ref.get("apiVersion", "v1"), str(ref["name"])
        if kind not in tokens.BOUND_KINDS or api_version != "v1":
            raise bad_request(f"cannot bind token to object of type {api_version}, Kind={kind}")
        resource = self.resource("pods" if kind == "Pod" else "secrets")
        obj = self.storage.get(resource, namespace, name)
        if obj is None:
            raise not_found(resource, name)
        if kind == "Pod" and (obj.get("spec") or {}).get("serviceAccountName") != account:
            raise bad_request(
                f'cannot bind token for serviceaccount "{account}" to pod running with different serviceaccount name.'
            )
        uid = str(obj["metadata"]["uid"])
        if ref.get("uid") and ref["uid"] != uid:
            raise conflict(
                resource,
                name,
                f"the UID in the bound object reference ({ref['uid']}) does not match the UID in record. "
                "The object might have been deleted and then recreated",
            )
        return tokens.Bound(kind=str(kind), name=name, uid=uid)

    async def _token_request(self, request: web.Request, namespace: str, name: str) -> web.Response:
        """POST .../serviceaccounts/{name}/token: a TokenRequest answered with a signed token (201)."""
        spec = self._auth_body(await self._body(request), "TokenRequest")
        errors = FieldErrors()
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            errors.invalid("spec.audiences", audiences, "must be a list of non-empty strings")
        seconds = spec.get("expirationSeconds", tokens.DEFAULT_EXPIRATION)
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            errors.invalid("spec.expirationSeconds", seconds, "must be an integer")
        elif seconds < tokens.MIN_EXPIRATION:
            errors.invalid("spec.expirationSeconds", seconds, "may not specify a duration less than 10 minutes")
        elif seconds > tokens.MAX_EXPIRATION:
            errors.invalid("spec.expirationSeconds", seconds, "may not specify a duration larger than 2^32 seconds")
        token_requests = tokens.TOKEN_REQUESTS
        if errors.causes:
            raise invalid(token_requests, name, errors.causes)
        sa_resource = self.resource("serviceaccounts")
        if self.storage.get(self.resource("namespaces"), "", namespace) is None:
            raise not_found(self.resource("namespaces"), namespace)
        uid = self._service_account_uid(namespace, name)
        if uid is None:
            raise not_found(sa_resource, name)
        bound = self._bound_object(spec.get("boundObjectRef"), namespace, name)
        wanted = list(audiences) or list(tokens.API_AUDIENCES)
        issued = self.tokens.issue(
            tokens.Account(namespace=namespace, name=name, uid=uid, bound=bound),
            audiences=wanted,
            expiration_seconds=seconds,
        )
        answer = {
            "kind": "TokenRequest",
            "apiVersion": tokens.API_VERSION,
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": _now_stamp(self.clock())},
            "spec": {"audiences": wanted, "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")},
            "status": {"token": issued.token, "expirationTimestamp": _now_stamp(issued.expires)},
        }
        return self._json(answer, status=201)

    async def _token_review(self, request: web.Request) -> web.Response:
        """POST /apis/authentication.k8s.io/v1/tokenreviews: the verdict on a token, always 201."""
        body = await self._body(request, allowed=("application/json", "application/yaml"))
        spec = self._auth_body(body, "TokenReview")
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("token is required for TokenReview in authentication")
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise bad_request("spec.audiences must be a list of strings")
        status: dict[str, Any]
        try:
            claims, granted = self.tokens.review(token, audiences=audiences, lookup=self._object_uid)
        except tokens.TokenInvalid as exc:
            status = {"user": {}, "error": str(exc)}
        else:
            private = claims["kubernetes.io"]
            namespace = private["namespace"]
            status = {
                "authenticated": True,
                "user": {
                    "username": claims["sub"],
                    "uid": private["serviceaccount"]["uid"],
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"]},
                },
                "audiences": granted,
            }
        answer = {
            "kind": "TokenReview",
            "apiVersion": tokens.API_VERSION,
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return self._json(answer, status=201)

    # -- request pieces -----------------------------------------------------------------------
    def _context(self, request: web.Request) -> Context:
        mode = request.query.get("fieldValidation", "Warn") or "Warn"
        if mode not in ("Ignore", "Warn", "Strict"):
            raise bad_request(
                f'fieldValidation: Unsupported value: "{mode}": supported values: "Ignore", "Strict", "Warn"'
            )
        user = request.get(admission.USER_KEY) or admission.ADMIN_USER
        manager = request.query.get("fieldManager") or request.headers.get("User-Agent", "").split("/", 1)[0]
        return Context(
            dry_run=self._dry_run(request),
            field_validation=mode,
            user=copy.deepcopy(user),
            field_manager=manager[:128],
        )

    @staticmethod
    def _dry_run(request: web.Request) -> bool:
        values = request.query.getall("dryRun", [])
        for value in values:
            if value != "All":
                raise bad_request(f'Invalid dry run value: "{value}": supported values: "All"')
        return bool(values)

    @staticmethod
    async def _body(request: web.Request, *, allowed: tuple[str, ...] = BODY_TYPES) -> Any:
        ctype = request.content_type
        if ctype not in allowed:
            raise _unsupported_media(allowed)
        raw = await request.read()
        if ctype == PROTOBUF:
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufError as exc:
                raise ApiError(415, f"kubesim cannot decode this protobuf body: {exc}; send JSON instead") from None
        try:
            if ctype == "application/yaml":
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"the object provided is unrecognized (body is not {ctype}): {exc}") from None

    def _negotiate(self, request: web.Request) -> tuple[str, str]:
        """("json" | "table" | "partial", meta version) from the Accept header; 406 when none fits."""
        accept = request.headers.get("Accept", "")
        if not accept.strip():
            return "json", ""
        for option in accept.split(","):
            media, *raw_params = (p.strip() for p in option.split(";"))
            params = dict(p.split("=", 1) for p in raw_params if "=" in p)
            if media not in ("application/json", "application/*", "*/*"):
                continue
            form = params.get("as")
            if form is None:
                return "json", ""
            if params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
                if form == "Table":
                    return "table", params["v"]
                if form in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                    return "partial", params["v"]
        raise ApiError(406, f"only the following media types are accepted: application/json (asked for {accept!r})")

    def _render_object(
        self,
        request: web.Request,
        resource: ResourceType,
        obj: Obj,
        *,
        status: int = 200,
        warnings: list[str] | None = None,
    ) -> web.Response:
        response = self._render(request, resource, obj, status=status)
        for warning in warnings or []:
            response.headers.add("Warning", f"299 - {json.dumps(warning)}")
        return response

    def _render(self, request: web.Request, resource: ResourceType, obj: Obj, *, status: int) -> web.Response:
        form, version = self._negotiate(request)
        if form == "table":
            body = tables.table(
                self._table_key(resource),
                [obj],
                resource_version=obj["metadata"].get("resourceVersion", ""),
                include_object=request.query.get("includeObject", "Metadata"),
                now=self.clock(),
            )
            body["apiVersion"] = f"meta.k8s.io/{version}"
            return self._json(body, status=status, content_type=f"application/json;as=Table;v={version};g=meta.k8s.io")
        if form == "partial":
            body = tables.partial_metadata(obj)
            body["apiVersion"] = f"meta.k8s.io/{version}"
            return self._json(body, status=status)
        return self._json(obj, status=status)

    def _selectors(self, request: web.Request, resource: ResourceType) -> tuple[LabelSelector, FieldSelector]:
        try:
            labels = parse_label_selector(request.query.get("labelSelector", ""))
            fields = parse_field_selector(request.query.get("fieldSelector", ""), resource.field_getters())
        except SelectorError as exc:
            raise bad_request(str(exc)) from None
        return labels, fields

    @staticmethod
    def _parse_rv(text: str, *, param: str = "resourceVersion") -> int:
        try:
            value = int(text)
        except ValueError:
            raise bad_request(f'{param}: Invalid value: "{text}": must be a non-negative integer') from None
        if value < 0:
            raise bad_request(f'{param}: Invalid value: "{text}": must be a non-negative integer')
        return value

    # -- list ---------------------------------------------------------------------------------
    def _list(self, request: web.Request, resource: ResourceType, namespace: str | None) -> web.Response:
        labels, fields = self._selectors(request, resource)
        query = request.query
        limit_text = query.get("limit", "")
        limit = self._parse_rv(limit_text, param="limit") if limit_text else 0
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
            if at_rv < self.storage.compacted_rv:
                raise expired(
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter."
                )
            objects = self.storage.snapshot(resource, namespace, at_rv)
        elif match == "Exact":
            at_rv = self._parse_rv(rv_text)
            if at_rv > self.storage.rv:
                raise self._too_large(at_rv)
            objects = self.storage.snapshot(resource, namespace, at_rv)
        elif match not in ("", "NotOlderThan"):
            raise bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        else:
            if match and not rv_text:
                raise bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
            if rv_text and self._parse_rv(rv_text) > self.storage.rv:
                raise self._too_large(self._parse_rv(rv_text))
            at_rv = self.storage.rv
            objects = self.storage.items(resource, namespace)
        selected = [
            obj
            for obj in objects
            if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj, resource.field_getters())
        ]
        if start_after:
            selected = [o for o in selected if self._list_key(o) > start_after]
        next_token = ""
        if limit and len(selected) > limit:
            selected = selected[:limit]
            last = self._list_key(selected[-1])
            next_token = base64.urlsafe_b64encode(json.dumps({"rv": at_rv, "start": last}).encode()).decode()
        form, version = self._negotiate(request)
        if form == "table":
            body = tables.table(
                self._table_key(resource),
                selected,
                resource_version=str(at_rv),
                include_object=query.get("includeObject", "Metadata"),
                now=self.clock(),
                continue_token=next_token,
            )
            body["apiVersion"] = f"meta.k8s.io/{version}"
            return self._json(body, content_type=f"application/json;as=Table;v={version};g=meta.k8s.io")
        meta: dict[str, Any] = {"resourceVersion": str(at_rv)}
        if next_token:
            meta["continue"] = next_token
        if form == "partial":
            items = [{"metadata": copy.deepcopy(o["metadata"])} for o in selected]
            return self._json(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": f"meta.k8s.io/{version}",
                    "metadata": meta,
                    "items": items,
                }
            )
        # The real server leaves kind and apiVersion out of the items of a built-in list.
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in selected]
        return self._json(
            {"kind": resource.list_kind, "apiVersion": resource.api_version, "metadata": meta, "items": items}
        )

    @staticmethod
    def _list_key(obj: Obj) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"

    def _too_large(self, rv: int) -> ApiError:
        return ApiError(
            504,
            f"Too large resource version: {rv}, current: {self.storage.rv}",
            reason="Timeout",
            details={
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            },
        )

    # -- watch --------------------------------------------------------------------------------
    async def _watch(self, request: web.Request, resource: ResourceType, namespace: str | None) -> web.StreamResponse:
        labels, fields = self._selectors(request, resource)
        query = request.query
        if query.get("sendInitialEvents"):
            raise bad_request("sendInitialEvents is not supported by this server")
        form, version = self._negotiate(request)
        rv_text = query.get("resourceVersion", "")
        since = None if rv_text in ("", "0") else self._parse_rv(rv_text)
        if since is not None and since > self.storage.rv:
            raise self._too_large(since)
        timeout = self.watch_timeout
        if query.get("timeoutSeconds"):
            timeout = float(self._parse_rv(query["timeoutSeconds"], param="timeoutSeconds"))
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
        content_type = "application/json"
        if form == "table":
            content_type = f"application/json;as=Table;v={version};g=meta.k8s.io"
        response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        watcher = Watcher(resource, namespace, labels, fields)
        error: ApiError | None = None
        try:
            self.storage.watch(watcher, since=since)
        except ApiError as exc:
            error = exc  # like the real server: 200, then an ERROR event
        await response.prepare(request)
        if error is not None:
            await self._send(response, {"type": "ERROR", "object": error.status()})
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
                        await self._send(response, self._bookmark(resource))
                    continue
                item, getting = getting.result(), None
                if item is None:
                    break
                event_type, obj = item
                if form == "table":
                    payload: Any = tables.table(
                        self._table_key(resource),
                        [obj],
                        resource_version=obj["metadata"]["resourceVersion"],
                        include_object=query.get("includeObject", "Metadata"),
                        now=self.clock(),
                        with_columns=first_table,
                    )
                    payload["apiVersion"] = f"meta.k8s.io/{version}"
                    first_table = False
                elif form == "partial":
                    payload = tables.partial_metadata(obj)
                else:
                    payload = obj
                await self._send(response, {"type": event_type, "object": payload})
        except ConnectionResetError:
            pass  # the client went away
        finally:
            if getting is not None:
                getting.cancel()
            self.storage.unwatch(watcher)
        return response

    def _bookmark(self, resource: ResourceType) -> dict[str, Any]:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self.storage.rv), "creationTimestamp": None},
            },
        }

    @staticmethod
    async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
        await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    # -- create -------------------------------------------------------------------------------
    def _check_type(self, resource: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the object provided is unrecognized (must be a JSON object)")
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

    def _check_namespace(self, resource: ResourceType, namespace: str, body: Obj) -> None:
        meta = body["metadata"]
        if resource.namespaced:
            given = meta.get("namespace") or ""
            if given and given != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        elif meta.get("namespace"):
            meta.pop("namespace")

    def _unknown_fields(self, resource: ResourceType, obj: Obj, ctx: Context) -> None:
        schema = resource.schema if resource.schema is not None else SCHEMAS[resource.plural]
        unknown = prune_unknown(obj, schema)
        if not unknown:
            return
        if ctx.field_validation == "Strict":
            listed = ", ".join(f'unknown field "{path}"' for path in unknown)
            raise bad_request(f"strict decoding error: {listed}")
        if ctx.field_validation == "Warn":
            ctx.warnings.extend(f'unknown field "{path}"' for path in unknown)

    def _create(
        self, resource: ResourceType, namespace: str, body: Any, *, ctx: Context, preallocated: bool = False
    ) -> Obj:
        """Create without calling admission webhooks (bootstrap, `create_object`, objects the server makes)."""
        obj = self._create_prepare(resource, namespace, body, ctx=ctx)
        self._create_validate(resource, obj)
        return self._create_store(resource, obj, ctx=ctx, preallocated=preallocated)

    async def _create_admitted(self, resource: ResourceType, namespace: str, body: Any, *, ctx: Context) -> Obj:
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
        mutated = await self.admission.mutate(attrs, warnings=ctx.warnings)
        obj = self._check_type(resource, mutated)
        self._check_namespace(resource, namespace, obj)
        if resource.defaults is not None:
            resource.defaults(obj)
        self._create_validate(resource, obj)
        await self.admission.validate(attrs.with_object(obj), warnings=ctx.warnings)
        return self._create_store(resource, obj, ctx=ctx)

    def _create_prepare(self, resource: ResourceType, namespace: str, body: Any, *, ctx: Context) -> Obj:
        """Decode, check and default a new object, then the built-in admission (service account of a pod)."""
        obj = self._check_type(resource, body)
        self._unknown_fields(resource, obj, ctx)
        self._check_namespace(resource, namespace, obj)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        name = str(meta.get("name") or "")
        if resource.namespaced:
            ns_obj = self.storage.get(self.resource("namespaces"), "", namespace)
            if ns_obj is None:
                raise not_found(self.resource("namespaces"), namespace)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    f'{resource.plural} "{name}" is forbidden: unable to create new content in namespace {namespace} '
                    "because it is being terminated",
                    details={"name": name, "kind": resource.plural},
                )
        for system in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(system, None)
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
                obj = admitted
        return obj

    def _create_validate(self, resource: ResourceType, obj: Obj) -> None:
        """Name generation (after mutating admission, as in the registry), initial status, validation."""
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{_random_suffix()}"
        if resource.initial_status is not None:
            obj["status"] = resource.initial_status(obj)
        self._validate(resource, obj, None)

    def _create_store(self, resource: ResourceType, obj: Obj, *, ctx: Context, preallocated: bool = False) -> Obj:
        """Allocate, stamp and write a validated new object (409 when the name is taken)."""
        dry_run = ctx.dry_run
        meta = obj["metadata"]
        name = str(meta["name"])
        if self.storage.get(resource, meta.get("namespace", ""), name) is not None:
            raise already_exists(resource, name)
        if resource.plural == "services":
            self._allocate_service(obj, resource, dry_run=dry_run or preallocated)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now_stamp(self.clock())
        if resource.generation_fields:
            meta["generation"] = 1
        if dry_run:
            return obj
        stored = self.storage.write(resource, obj, event_type="ADDED")
        if resource.key == CRD_KEY:
            self.custom.set(stored)
        if resource.plural == "namespaces":
            self._create(
                self.resource("serviceaccounts"),
                name,
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
                ctx=Context(),
            )
        return stored

    def _validate(self, resource: ResourceType, obj: Obj, old: Obj | None) -> None:
        errors = FieldErrors()
        meta = obj["metadata"]
        name = str(meta.get("name") or "")
        check_metadata(errors, obj, name_rule=resource.name_rule)
        if resource.validate is not None:
            resource.validate(obj, errors)
        if old is not None:
            if meta.get("uid") != old["metadata"].get("uid"):
                errors.invalid("metadata.uid", meta.get("uid"), "field is immutable")
            if resource.validate_update is not None:
                resource.validate_update(obj, old, errors)
        if errors:
            raise invalid(resource, name, errors.causes)

    # -- admission (built-in plugins that run before storage) ---------------------------------
    def _admit_pod(self, obj: Obj, resource: ResourceType) -> None:
        spec = obj["spec"]
        meta = obj["metadata"]
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = account
        spec["serviceAccount"] = account
        sa = self.storage.get(self.resource("serviceaccounts"), meta["namespace"], account)
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
        volume_name = f"kube-api-access-{_random_suffix()}"
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

    def _allocate_service(self, obj: Obj, resource: ResourceType, *, dry_run: bool) -> None:
        spec = obj["spec"]
        name = obj["metadata"]["name"]
        if spec.get("type") == "ExternalName":
            return
        requested = spec.get("clusterIP")
        if requested == "None":
            spec["clusterIPs"] = ["None"]
        else:
            if requested:
                try:
                    ip = ipaddress.IPv4Address(requested)
                except ValueError:
                    raise invalid(
                        resource, name, [self._cause("spec.clusterIPs[0]", requested, "must be a valid IP address")]
                    ) from None
                if ip not in SERVICE_CIDR:
                    raise invalid(
                        resource,
                        name,
                        [
                            self._cause(
                                "spec.clusterIPs",
                                [requested],
                                f"failed to allocate IP {requested}: the provided IP ({requested}) is not in the "
                                f"valid range. The range of valid IPs is {SERVICE_CIDR}",
                            )
                        ],
                    )
                if ip in self._allocated_ips and not dry_run:
                    raise invalid(
                        resource,
                        name,
                        [
                            self._cause(
                                "spec.clusterIPs",
                                [requested],
                                f"failed to allocate IP {requested}: provided IP is already allocated",
                            )
                        ],
                    )
            else:
                ip = next(
                    h for h in SERVICE_CIDR.hosts() if int(h) >= int(SERVICE_CIDR[10]) and h not in self._allocated_ips
                )
            if not dry_run:
                self._allocated_ips.add(ip)
            spec["clusterIP"] = str(ip)
            spec["clusterIPs"] = [str(ip)]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            for port in spec.get("ports") or []:
                if not port.get("nodePort"):
                    free = next(p for p in NODE_PORTS if p not in self._allocated_node_ports)
                    port["nodePort"] = free
                if not dry_run:
                    self._allocated_node_ports.add(int(port["nodePort"]))

    @staticmethod
    def _cause(field: str, value: Any, detail: str) -> Any:
        errors = FieldErrors()
        errors.invalid(field, value, detail)
        return errors.causes[0]

    def _release_service(self, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        for ip in spec.get("clusterIPs") or []:
            if ip != "None":
                self._allocated_ips.discard(ipaddress.IPv4Address(ip))
        for port in spec.get("ports") or []:
            self._allocated_node_ports.discard(int(port.get("nodePort") or 0))

    # -- update and patch ---------------------------------------------------------------------
    async def _update(self, resource: ResourceType, namespace: str, name: str, body: Any, *, ctx: Context) -> Obj:
        obj = self._check_type(resource, body)
        self._unknown_fields(resource, obj, ctx)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
        self._check_namespace(resource, namespace, obj)
        old = self.storage.get(resource, namespace, name)
        if old is None:
            raise not_found(resource, name)
        return await self._replace_admitted(resource, old, obj, ctx=ctx)

    async def _replace_admitted(
        self, resource: ResourceType, old: Obj, obj: Obj, *, ctx: Context, subresource: str = ""
    ) -> Obj:
        """Update `old` to `obj` as a PUT or PATCH does: mutating webhooks, `_replace`'s checks, validating webhooks.

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
        if resource.defaults is not None:
            resource.defaults(obj)
        self._track_fields(resource, old, obj, ctx.field_manager)
        obj = self._check_type(resource, await self.admission.mutate(attrs, warnings=ctx.warnings))
        if obj["metadata"].get("name") != name:
            raise invalid(
                resource, name, [self._cause("metadata.name", obj["metadata"].get("name"), "field is immutable")]
            )
        self._check_namespace(resource, namespace, obj)
        self._replace_prepare(resource, old, obj)
        await self.admission.validate(attrs.with_object(obj), warnings=ctx.warnings)
        current = self.storage.get(resource, namespace, name)
        if current is None:
            raise not_found(resource, name)
        if current["metadata"]["resourceVersion"] != old_meta["resourceVersion"]:
            raise conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        return self._replace_store(resource, old, obj, dry_run=ctx.dry_run)

    def _replace(self, resource: ResourceType, old: Obj, obj: Obj, *, dry_run: bool) -> Obj:
        """The shared tail of update and patch without admission webhooks: checks, then the write."""
        self._replace_prepare(resource, old, obj)
        return self._replace_store(resource, old, obj, dry_run=dry_run)

    def _replace_prepare(self, resource: ResourceType, old: Obj, obj: Obj) -> None:
        """Preconditions, system fields kept from `old`, defaults, validation and generation of an update."""
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
        if resource.status_subresource:
            if "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
            else:
                obj.pop("status", None)
        if resource.plural == "namespaces":
            obj["spec"] = copy.deepcopy(old.get("spec"))
        if resource.plural == "services":
            self._keep_allocations(obj, old)
        if resource.defaults is not None:
            resource.defaults(obj)
        self._validate(resource, obj, old)
        if resource.generation_fields and any(obj.get(f) != old.get(f) for f in resource.generation_fields):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1

    def _replace_store(self, resource: ResourceType, old: Obj, obj: Obj, *, dry_run: bool) -> Obj:
        """Write a prepared update; a no-op update writes nothing, like the real server."""
        old_meta = old["metadata"]
        comparable = copy.deepcopy(obj)
        comparable["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if comparable == old or dry_run:
            return comparable if dry_run else old  # a no-op update writes nothing, like the real server
        stored = self.storage.write(resource, obj, event_type="MODIFIED")
        if resource.key == CRD_KEY:
            self.custom.set(stored)
        return self._remove_if_finalized(resource, stored)  # the last finalizer of a deleted object went

    def _track_fields(self, resource: ResourceType, old: Obj | None, obj: Obj, manager: str | None) -> None:
        """Record in `obj`'s managedFields what `manager` changed over `old`; None keeps what `obj` carries."""
        if manager is not None:
            now = _now_stamp(self.clock())
            apply.track_update(
                resource=resource, old=old, new=obj, manager=manager, api_version=resource.api_version, now=now
            )

    @staticmethod
    def _keep_allocations(obj: Obj, old: Obj) -> None:
        spec = obj.setdefault("spec", {})
        old_spec = old.get("spec") or {}
        if isinstance(spec, dict):
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if not spec.get(key) and old_spec.get(key):
                    spec[key] = copy.deepcopy(old_spec[key])
            old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or []}
            for port in spec.get("ports") or []:
                prior = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
                if prior is not None and prior.get("nodePort") and not port.get("nodePort"):
                    port["nodePort"] = prior["nodePort"]

    async def _patch(
        self, request: web.Request, resource: ResourceType, namespace: str, name: str, *, ctx: Context
    ) -> Obj:
        ctype = request.content_type
        if ctype not in PATCH_TYPES:
            raise _unsupported_media((*PATCH_TYPES, APPLY_PATCH))
        if resource.custom and ctype == "application/strategic-merge-patch+json":
            raise _unsupported_media((*(t for t in PATCH_TYPES if t != ctype), APPLY_PATCH))
        if "force" in request.query:
            raise _patch_options_invalid(
                "force", "FieldValueForbidden", "Forbidden: may not be specified for non-apply patch"
            )
        raw = await request.read()
        try:
            patch = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from None
        old = self.storage.get(resource, namespace, name)
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
        if not isinstance(result, dict) or not isinstance(result.get("metadata"), dict):
            raise ApiError(422, "the patched object must keep its metadata")
        if result["metadata"].get("name") != name:
            raise bad_request(
                f"the name of the object ({result['metadata'].get('name')}) does not match the name on the URL ({name})"
            )
        if resource.namespaced and result["metadata"].get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        obj = self._check_type(resource, result)
        self._unknown_fields(resource, obj, ctx)
        if obj["metadata"].get("resourceVersion") == old["metadata"]["resourceVersion"]:
            obj["metadata"].pop("resourceVersion")  # unchanged by the patch: no precondition
        return await self._replace_admitted(resource, old, obj, ctx=ctx)

    # -- pods/binding (what the scheduler posts) ----------------------------------------------
    async def _bind_pod(self, request: web.Request, namespace: str, name: str) -> web.Response:
        """POST pods/<name>/binding: set spec.nodeName and the PodScheduled condition, as the registry does.

        400 when the Binding names another pod, 422 without a target Node name, 404 for an unknown pod,
        409 when the pod is being deleted or already assigned to a node. Answers a Success Status (201).
        """
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the object provided is unrecognized (must be a JSON object)")
        if (body.get("metadata") or {}).get("name", name) != name:
            raise bad_request("name in URL does not match name in Binding object")
        target = body.get("target") if isinstance(body.get("target"), dict) else {}
        bindings = ResourceType("", "v1", "bindings", "binding", "Binding", namespaced=True)
        errors = FieldErrors()
        if target.get("kind", "Node") not in ("", "Node"):
            errors.invalid("target.kind", target.get("kind"), "must be empty or 'Node'")
        if not target.get("name"):
            errors.required("target.name")
        if errors.causes:
            raise invalid(bindings, name, errors.causes)
        pods = self.resource("pods")
        old = self.storage.get(pods, namespace, name)
        if old is None:
            raise not_found(pods, name)
        if old["metadata"].get("deletionTimestamp"):
            raise conflict(pods, name, f"pod {name} is being deleted, cannot be assigned to a host")
        if (old.get("spec") or {}).get("nodeName"):
            raise conflict(pods, name, f'pod {name} is already assigned to node "{old["spec"]["nodeName"]}"')
        pod = copy.deepcopy(old)
        pod["spec"]["nodeName"] = str(target["name"])
        pod["metadata"].setdefault("annotations", {}).update((body.get("metadata") or {}).get("annotations") or {})
        if not pod["metadata"]["annotations"]:
            pod["metadata"].pop("annotations")
        status = pod.setdefault("status", {})
        scheduled = {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": _now_stamp(self.clock()),
        }
        others = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        status["conditions"] = [*others, scheduled]
        if not self._dry_run(request):
            self.storage.write(pods, pod, event_type="MODIFIED")
        return self._json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, status=201
        )

    async def _apply_patch(
        self, request: web.Request, resource: ResourceType, namespace: str, name: str, *, ctx: Context
    ) -> tuple[Obj, bool]:
        """Server-side apply (`application/apply-patch+yaml`): (the object, whether it was created).

        `fieldManager` is required (422), `force=true` takes over conflicting fields; otherwise a field
        another manager owns and this apply changes is a 409 Conflict naming fields and managers. The
        configuration must be of the URL's kind and name, set no managedFields (400) and no field the
        kind does not have (500, as the real server's typed conversion fails). Admission runs as for
        a create or an update.
        """
        manager = request.query.get("fieldManager", "")
        if not manager:
            raise _patch_options_invalid(
                "fieldManager", "FieldValueRequired", "Required value: is required for apply patch"
            )
        force = request.query.get("force", "false").lower()
        if force not in ("true", "false"):
            raise bad_request(f'force: invalid value "{request.query["force"]}": want true or false')
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
        self._check_namespace(resource, namespace, config)
        schema = resource.schema if resource.schema is not None else SCHEMAS[resource.plural]
        unknown = prune_unknown(copy.deepcopy(config), schema)
        if unknown:
            raise ApiError(
                500,
                f"failed to create typed patch object ({namespace}/{name}; {gvk}): .{unknown[0]}: "
                "field not declared in schema",
            )
        live = self.storage.get(resource, namespace, name)
        try:
            obj = apply.apply(
                resource=resource,
                live=live,
                config=config,
                manager=manager,
                force=force == "true",
                api_version=resource.api_version,
                now=_now_stamp(self.clock()),
            )
        except apply.ApplyConflict as exc:
            raise ApiError(409, exc.message, reason="Conflict", details={"causes": exc.causes}) from None
        except apply.ApplyError as exc:
            raise ApiError(exc.status, exc.message) from None
        applied = replace(ctx, field_manager=None)  # apply computed the managedFields
        if live is None:
            return await self._create_admitted(resource, namespace, obj, ctx=applied), True
        if obj["metadata"].get("resourceVersion") == live["metadata"]["resourceVersion"]:
            obj["metadata"].pop("resourceVersion")  # not set by the configuration: no precondition
        return await self._replace_admitted(resource, live, obj, ctx=applied), False

    # -- subresources: status and scale ------------------------------------------------------
    async def _subresource(
        self, request: web.Request, resource: ResourceType, namespace: str, name: str, sub: str
    ) -> web.Response:
        """GET, PUT and PATCH of `<name>/status` and `<name>/scale`; 404 for a subresource the kind lacks.

        `status` writes change only the status (what controllers and the kubelet report); `scale`
        reads and writes `spec.replicas` as an autoscaling/v1 Scale (what `kubectl scale` sends).
        A `metadata.resourceVersion` in the body is a precondition (409 when stale).
        """
        if not (sub == "status" and resource.status_subresource) and not (
            sub == "scale" and resource.scale_subresource
        ):
            raise page_not_found()
        if request.method not in ("GET", "PUT", "PATCH"):
            raise ApiError(405, "the server does not allow this method on the requested resource")
        old = self.storage.get(resource, namespace, name)
        if old is None:
            raise not_found(resource, name)
        view = self._scale_of(old) if sub == "scale" else old
        if request.method == "GET":
            return self._json(view) if sub == "scale" else self._render_object(request, resource, old)
        if request.method == "PUT":
            body = await self._body(request)
            if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
                raise bad_request("the object provided is unrecognized (must be a JSON object)")
            wanted = body
        else:
            wanted = await self._patched(request, resource, view, scale=sub == "scale")
        rv = (wanted.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        dry_run = self._dry_run(request)
        if sub == "scale":
            replicas = (wanted.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                errors = FieldErrors()
                errors.invalid("spec.replicas", replicas, "must be greater than or equal to 0")
                raise ApiError(422, f'Scale.autoscaling "{name}" is invalid: {errors.causes[0]}')
            updated = copy.deepcopy(old)
            updated["spec"]["replicas"] = replicas
            updated["metadata"].pop("resourceVersion")
            return self._json(self._scale_of(self._replace(resource, old, updated, dry_run=dry_run)))
        updated = copy.deepcopy(old)
        updated["status"] = copy.deepcopy(wanted.get("status"))
        if updated["status"] is None:
            updated.pop("status")
        updated = await self._admit_status(request, resource, old, updated, dry_run=dry_run)
        if updated == old or dry_run:
            return self._render_object(request, resource, updated)
        return self._render_object(request, resource, self.storage.write(resource, updated, event_type="MODIFIED"))

    async def _patched(self, request: web.Request, resource: ResourceType, target: Obj, *, scale: bool) -> Obj:
        """`target` with the request's JSON, merge or strategic merge patch applied; 4xx for a bad patch."""
        ctype = request.content_type
        if ctype not in PATCH_TYPES:
            raise _unsupported_media(PATCH_TYPES)
        try:
            patch = json.loads(await request.read())
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from None
        try:
            if ctype == "application/json-patch+json":
                result = patching.json_patch(target, patch)
            elif not isinstance(patch, dict):
                raise patching.PatchError(400, "merge patch must be a JSON object")
            elif ctype == "application/merge-patch+json" or scale:
                result = patching.merge_patch(target, patch)
            else:
                result = patching.strategic_merge_patch(target, patch, resource.merge_keys)
        except patching.PatchError as exc:
            raise ApiError(exc.status, exc.message) from None
        if not isinstance(result, dict):
            raise ApiError(422, "the patched object must stay an object")
        return result

    @staticmethod
    def _scale_of(obj: Obj) -> Obj:
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

    # -- delete -------------------------------------------------------------------------------
    async def _delete_options(self, request: web.Request) -> Obj:
        """DeleteOptions from the body, else from the query string; 400 when undecodable, 422 when invalid."""
        options: Obj = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    if request.content_type == PROTOBUF:
                        options = {k: v for k, v in protobuf.decode(raw).items() if k not in ("apiVersion", "kind")}
                    else:
                        options = json.loads(raw)
                except ValueError as exc:
                    raise bad_request(f"error decoding DeleteOptions: {exc}") from None
                if not isinstance(options, dict):
                    raise bad_request("DeleteOptions must be an object")
        query = request.query
        if "gracePeriodSeconds" in query and "gracePeriodSeconds" not in options:
            try:
                options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
            except ValueError:
                raise bad_request(f'gracePeriodSeconds: invalid value "{query["gracePeriodSeconds"]}"') from None
        if "propagationPolicy" in query:
            options.setdefault("propagationPolicy", query["propagationPolicy"])
        if "orphanDependents" in query:
            options.setdefault("orphanDependents", query["orphanDependents"].lower() == "true")
        self._check_delete_options(options)
        return options

    @staticmethod
    def _check_delete_options(options: Obj) -> None:
        errors = FieldErrors()
        grace = options.get("gracePeriodSeconds")
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
            errors.invalid("gracePeriodSeconds", grace, "must be an integer")
        policy = options.get("propagationPolicy")
        if policy is not None and options.get("orphanDependents") is not None:
            errors.invalid("propagationPolicy", policy, "orphanDependents and deletionPropagation cannot be both set")
        if policy is not None and policy not in PROPAGATION_POLICIES:
            errors.not_supported("propagationPolicy", policy, [*PROPAGATION_POLICIES, "nil"])
        if errors:
            causes = errors.causes
            listed = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(str(c) for c in causes) + "]"
            details = {"group": "meta.k8s.io", "kind": "DeleteOptions", "causes": [c.to_json() for c in causes]}
            raise ApiError(422, f'DeleteOptions.meta.k8s.io "" is invalid: {listed}', details=details)

    async def _delete(self, request: web.Request, resource: ResourceType, namespace: str, name: str) -> web.Response:
        options = await self._delete_options(request)
        dry_run = self._dry_run(request) or bool(options.get("dryRun"))
        obj = self.storage.get(resource, namespace, name)
        if obj is None:
            raise not_found(resource, name)
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise conflict(
                resource,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {obj['metadata']['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise conflict(
                resource,
                name,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {obj['metadata']['resourceVersion']}",
            )
        if resource.plural == "namespaces" and name in UNDELETABLE_NAMESPACES:
            raise forbidden(resource, name, "this namespace may not be deleted")
        obj = await self._admit_delete(request, resource, obj, options=options, dry_run=dry_run)
        if dry_run:
            return self._deleted_answer(request, resource, obj)
        if resource.plural == "namespaces":
            return self._render_object(request, resource, self._terminate_namespace(obj))
        result, removed = self._delete_object(resource, obj, options)
        if removed:
            return self._deleted_answer(request, resource, result)
        return self._render_object(request, resource, result)  # deletion pending: the object, as it is now

    async def _admit_status(
        self, request: web.Request, resource: ResourceType, old: Obj, updated: Obj, *, dry_run: bool
    ) -> Obj:
        """UPDATE admission of `<name>/status` (rules must name the subresource); `updated` with the admitted status.

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
            user=self._context(request).user,
        )
        warnings: list[str] = []
        mutated = await self.admission.mutate(attrs, warnings=warnings) or updated
        admitted = copy.deepcopy(updated)
        admitted["status"] = copy.deepcopy(mutated.get("status"))
        if admitted["status"] is None:
            admitted.pop("status")
        await self.admission.validate(attrs.with_object(admitted), warnings=warnings)
        current = self.storage.get(resource, str(meta.get("namespace", "")), str(meta["name"]))
        if current is None or current["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise conflict(
                resource,
                str(meta["name"]),
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        return admitted

    async def _admit_delete(
        self, request: web.Request, resource: ResourceType, obj: Obj, *, options: Obj, dry_run: bool
    ) -> Obj:
        """DELETE admission (mutating, then validating webhooks, with `oldObject`); the object as stored after it.

        Raises ApiError for a denial or failure, and 404 when the object went while webhooks were called.
        """
        meta = obj["metadata"]
        name, namespace = str(meta["name"]), str(meta.get("namespace", ""))
        attrs = admission.Attributes(
            resource=resource,
            operation="DELETE",
            namespace=name if resource.key == "namespaces" else namespace,
            name=name,
            obj=None,
            old=obj,
            dry_run=dry_run,
            options={k: v for k, v in options.items() if k not in ("kind", "apiVersion")},
            user=self._context(request).user,
        )
        warnings: list[str] = []
        await self.admission.mutate(attrs, warnings=warnings)
        await self.admission.validate(attrs, warnings=warnings)
        current = self.storage.get(resource, namespace, name)
        if current is None:
            raise not_found(resource, name)
        return current

    def _delete_object(self, resource: ResourceType, obj: Obj, options: Obj) -> tuple[Obj, bool]:
        """Delete `obj` as the registry does; (the object, True) when removed, (as stored now, False) when pending.

        A pod bound to a node is deleted gracefully: deletionTimestamp = now + grace period (the
        request's `gracePeriodSeconds`, else `spec.terminationGracePeriodSeconds`), and the kubelet's
        later delete with grace 0 removes it; a shorter grace shortens a pending deletion. Unbound or
        finished pods, and every other kind, go at once unless finalizers hold them. `propagationPolicy`
        Orphan/Foreground add the `orphan`/`foregroundDeletion` finalizer the garbage collector works
        off; Background (the default) removes both.
        """
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        finalizers = self._deletion_finalizers(list(meta.get("finalizers") or []), options)
        if finalizers:
            meta["finalizers"] = finalizers
        else:
            meta.pop("finalizers", None)
        grace = self._grace_period(resource, obj, options)
        now = self.clock()
        if meta.get("deletionTimestamp"):
            current = int(meta.get("deletionGracePeriodSeconds") or 0)
            if grace < current:
                started = tables.parse_time(meta["deletionTimestamp"]) - datetime.timedelta(seconds=current)
                meta["deletionTimestamp"] = _now_stamp(started + datetime.timedelta(seconds=grace))
                meta["deletionGracePeriodSeconds"] = grace
        elif grace > 0 or finalizers:
            meta["deletionTimestamp"] = _now_stamp(now + datetime.timedelta(seconds=grace))
            meta["deletionGracePeriodSeconds"] = grace
        ns, name = meta.get("namespace", ""), meta["name"]
        if not finalizers and not int(meta.get("deletionGracePeriodSeconds") or 0):
            return self._remove(resource, ns, name), True
        if new == obj:
            return obj, False
        return self.storage.write(resource, new, event_type="MODIFIED"), False

    @staticmethod
    def _deletion_finalizers(finalizers: list[str], options: Obj) -> list[str]:
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

    @staticmethod
    def _grace_period(resource: ResourceType, obj: Obj, options: Obj) -> int:
        """Seconds a deletion waits for the kubelet: only bound, unfinished pods have one."""
        if resource.plural != "pods":
            return 0
        spec = obj.get("spec") or {}
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        if not spec.get("nodeName") or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        return 1 if int(grace) < 0 else int(grace)

    def _remove_if_finalized(self, resource: ResourceType, obj: Obj) -> Obj:
        """After an update: an object being deleted whose last finalizer went (and no grace is pending) is removed."""
        meta = obj["metadata"]
        pending = meta.get("finalizers") or int(meta.get("deletionGracePeriodSeconds") or 0)
        if not meta.get("deletionTimestamp") or pending:
            return obj
        if resource.plural == "namespaces":
            return obj  # the namespace lifecycle removes it
        return self._remove(resource, meta.get("namespace", ""), meta["name"])

    def _deleted_answer(self, request: web.Request, resource: ResourceType, obj: Obj) -> web.Response:
        if resource.return_deleted_object:
            return self._render_object(request, resource, obj)
        details: dict[str, Any] = {"name": obj["metadata"]["name"]}
        if resource.group:
            details["group"] = resource.group
        details["kind"] = resource.plural
        details["uid"] = obj["metadata"]["uid"]
        return self._json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        )

    def _remove(self, resource: ResourceType, namespace: str, name: str) -> Obj:
        if resource.key == CRD_KEY:
            return self._remove_crd(resource, name)
        gone = self.storage.delete(resource, namespace, name)
        if resource.plural == "services":
            self._release_service(gone)
        return gone

    def _remove_crd(self, resource: ResourceType, name: str) -> Obj:
        """Like the CRD cleanup finalizer: delete every object of the CRD, then the CRD; end its watches.

        A CRD's name is `<plural>.<group>`, the storage key its objects share. Watchers see a DELETED
        event per object and then the end of their stream; a new request for the resource is a 404.
        """
        for rkey, ns, obj_name in [key for key in self.storage.objects if key[0] == name]:
            served = next((r for r in self.custom.all() if r.key == rkey), None)
            if served is not None:
                self.storage.delete(served, ns, obj_name)
            else:  # no version served: nothing watches it, so no event type is needed
                del self.storage.objects[(rkey, ns, obj_name)]
        gone = self.storage.delete(resource, "", name)
        self.custom.remove(name)
        for watcher in list(self.storage.watchers):
            if watcher.resource.key == name:
                watcher.close()
        return gone

    def _table_key(self, resource: ResourceType) -> str:
        """The column set of `tests.kubesim.tables` for a resource (a custom one never takes a built-in's)."""
        return resource.key if resource.custom else resource.plural

    def _terminate_namespace(self, obj: Obj) -> Obj:
        """Mark the namespace Terminating now; its content and then itself go away right after."""
        name = obj["metadata"]["name"]
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        marked = copy.deepcopy(obj)
        marked["metadata"]["deletionTimestamp"] = _now_stamp(self.clock())
        marked["metadata"]["deletionGracePeriodSeconds"] = 0
        marked["status"] = {"phase": "Terminating"}
        stored = self.storage.write(self.resource("namespaces"), marked, event_type="MODIFIED")
        task = asyncio.get_running_loop().create_task(self._finalize_namespace(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stored

    async def _finalize_namespace(self, name: str) -> None:
        """The namespace controller: delete its content (pods gracefully), wait until it is gone, then the namespace.

        Objects held by finalizers or by a pending graceful deletion keep the namespace Terminating,
        as in a real cluster, until whoever owns them (the kubelet, a controller) lets go.
        """
        await asyncio.sleep(self.namespace_deletion_delay)
        while keys := list(self.storage.namespaced_keys(name)):
            by_key = {r.key: r for r in self.served()}
            for rkey, ns, obj_name in keys:
                obj = self.storage.objects.get((rkey, ns, obj_name))
                if obj is None or obj["metadata"].get("deletionTimestamp"):
                    continue
                served = by_key.get(rkey)
                if served is None:  # a custom resource no longer served: nothing can watch or finalize it
                    del self.storage.objects[(rkey, ns, obj_name)]
                else:
                    self._delete_object(served, obj, {})
            if list(self.storage.namespaced_keys(name)):
                await asyncio.sleep(NAMESPACE_POLL)
        namespaces = self.resource("namespaces")
        if self.storage.get(namespaces, "", name) is not None:
            self._remove(namespaces, "", name)

    async def _delete_collection(
        self, request: web.Request, resource: ResourceType, namespace: str | None
    ) -> web.Response:
        labels, fields = self._selectors(request, resource)
        options = await self._delete_options(request)
        dry_run = self._dry_run(request) or bool(options.get("dryRun"))
        deleted = []
        for obj in self.storage.items(resource, namespace):
            if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj, resource.field_getters()):
                if dry_run:
                    deleted.append(obj)
                elif resource.plural == "namespaces":
                    if obj["metadata"]["name"] not in UNDELETABLE_NAMESPACES:
                        deleted.append(self._terminate_namespace(obj))
                else:
                    deleted.append(self._delete_object(resource, obj, options)[0])
        return self._json(
            {
                "kind": resource.list_kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self.storage.rv)},
                "items": deleted,
            }
        )
