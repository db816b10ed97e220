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

This module holds the server itself: its lifecycle, authentication, fault injection and the
routing of a request to the part that answers it: `discovery` (discovery documents),
`listwatch` (list and watch), `decoding` (a body decoded into the kind's Go type, as the handlers
decode it first), `registry` (create, and the update and removal every write ends in), `update`
(PUT, PATCH, server-side apply; also a Namespace's `status` and `finalize`), `subresources` (status, scale,
pods/binding), `strictdecoding` (repeated and unknown fields, per `fieldValidation`),
`deletion` (DELETE, graceful deletion, finalizers, the namespace lifecycle), `tokenrequest`
(TokenRequest, TokenReview) and `allocators` (Service cluster IPs and node ports); what they
share about requests and answers is in `endpoints`.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from tests.kubesim import (
    admission,
    auth,
    customresources,
    decoding,
    discovery,
    openapi,
    resources,
    strictdecoding,
    tokens,
)
from tests.kubesim.allocators import ServiceAllocator
from tests.kubesim.deletion import Deleter
from tests.kubesim.endpoints import (
    APPLY_PATCH,
    Context,
    body_type,
    check_write_options,
    context,
    error_response,
    json_response,
    only_post,
    query_bool,
    read_body,
    render_object,
    request_warnings,
    with_warnings,
)
from tests.kubesim.kubeconfig import write_kubeconfig
from tests.kubesim.listwatch import ListWatch
from tests.kubesim.registry import Registry
from tests.kubesim.resources import ResourceType
from tests.kubesim.status import ApiError, check_name_parameter, not_found, page_not_found
from tests.kubesim.storage import Obj, Storage
from tests.kubesim.subresources import Subresources
from tests.kubesim.tokenrequest import TokenAPI
from tests.kubesim.update import Updater

log = logging.getLogger(__name__)

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass
class Fault:
    """Answer up to `count` requests matching (method, path prefix) with `status`."""

    status: int
    count: int
    method: str | None
    path_prefix: str
    watch: bool | None
    retry_after: int | str | None  # a number also goes into the Status's details; a text only into the header
    message: str

    def matches(self, request: web.Request) -> bool:
        if self.count <= 0:
            return False
        if self.method is not None and request.method != self.method:
            return False
        if not request.path.startswith(self.path_prefix):
            return False
        return self.watch is None or is_watch(request) == self.watch


def is_watch(request: web.Request) -> bool:
    """Whether a collection GET is answered with a watch: `watch` given with any value but "0" and "false"."""
    return bool(query_bool(request, "watch"))


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
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self.tokens = tokens.ServiceAccountTokens(clock=self.clock)
        self.requests: list[tuple[str, str]] = []
        self.authenticator = auth.Authenticator(service_accounts=self.tokens, lookup=self._object_uid)
        self.audit: list[auth.AuditRecord] = []  # with tls: every authenticated resource request, in order
        self.faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self.custom = customresources.CustomResources()
        self.admission = admission.Admission(storage=self.storage, resource=self.resource, served=self.served)
        # the parts that answer requests; each reads the time through `_now`, so a replaced `clock` reaches them
        self._allocator = ServiceAllocator()
        self._registry = Registry(
            storage=self.storage,
            resource=self.resource,
            custom=self.custom,
            admission=self.admission,
            allocator=self._allocator,
            clock=self._now,
        )
        self._listwatch = ListWatch(
            storage=self.storage, clock=self._now, bookmark_interval=bookmark_interval, watch_timeout=watch_timeout
        )
        self._updater = Updater(storage=self.storage, registry=self._registry, clock=self._now)
        self._subresources = Subresources(
            storage=self.storage,
            registry=self._registry,
            admission=self.admission,
            resource=self.resource,
            clock=self._now,
        )
        self._deleter = Deleter(
            storage=self.storage,
            resource=self.resource,
            served=self.served,
            registry=self._registry,
            admission=self.admission,
            lister=self._listwatch.page,
            clock=self._now,
            namespace_deletion_delay=namespace_deletion_delay,
        )
        self._token_api = TokenAPI(
            storage=self.storage,
            resource=self.resource,
            service_accounts=self.tokens,
            lookup=self._object_uid,
            clock=self._now,
        )
        self.host = "127.0.0.1"
        self.port = 0
        self.app = web.Application(middlewares=[self._middleware], client_max_size=3 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._bootstrap()

    def _now(self) -> datetime.datetime:
        return self.clock()

    # -- settings (held by the parts that use them; changing one takes effect at once) ---------
    @property
    def bookmark_interval(self) -> float:
        return self._listwatch.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float) -> None:
        self._listwatch.bookmark_interval = seconds

    @property
    def watch_timeout(self) -> float:
        return self._listwatch.watch_timeout

    @watch_timeout.setter
    def watch_timeout(self, seconds: float) -> None:
        self._listwatch.watch_timeout = seconds

    @property
    def namespace_deletion_delay(self) -> float:
        return self._deleter.namespace_deletion_delay

    @namespace_deletion_delay.setter
    def namespace_deletion_delay(self, seconds: float) -> None:
        self._deleter.namespace_deletion_delay = seconds

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
        self._deleter.stop()
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
        retry_after: int | str | None = None,
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
                return self._registry.create(r, ns, copy.deepcopy(obj), ctx=Context())
        raise KeyError(f"{api_version} {kind}")

    # -- bootstrap ----------------------------------------------------------------------------
    def _bootstrap(self) -> None:
        ns = self.resource("namespaces")
        for name in INITIAL_NAMESPACES:
            self._registry.create(
                ns, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, ctx=Context()
            )
        self._registry.create(
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
                return error_response(ApiError(401, "Unauthorized"))
        for fault in self.faults:
            if fault.matches(request):
                fault.count -= 1
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                error = ApiError(fault.status, fault.message, headers=headers, details={})
                if isinstance(fault.retry_after, int):
                    error.details = {"retryAfterSeconds": fault.retry_after}
                return error_response(error)
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc)
        # like the real server's warning recorder, the answer carries what the request gathered, failed or not
        return with_warnings(response, request_warnings(request))

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

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            document = discovery.document(parts, served=self.served(), address=f"{self.host}:{self.port}")
            if document is not None:
                return json_response(document)
        if request.method == "GET" and parts == [".well-known", "openid-configuration"]:
            return json_response(self.tokens.openid_configuration())
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
                return json_response(doc)
        if len(parts) >= 3 and parts[0] == "api" and parts[1] == "v1":
            return await self._resource_request(request, "", "v1", parts[2:])
        if len(parts) >= 4 and parts[0] == "apis":
            return await self._resource_request(request, parts[1], parts[2], parts[3:])
        raise page_not_found()

    async def _resource_request(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if (group, version) == ("", "v1") and len(rest) == 3 and rest[::2] == ["serviceaccounts", "token"]:
            if namespace is None:
                raise page_not_found()
            only_post(request)
            return await self._token_api.token_request(request, namespace, rest[1])
        if (group, version) == ("authentication.k8s.io", "v1") and rest == ["tokenreviews"] and namespace is None:
            only_post(request)
            return await self._token_api.token_review(request)
        if (
            (group, version, namespace is None) == ("", "v1", False)
            and len(rest) == 3
            and rest[::2] == ["pods", "binding"]
        ):
            only_post(request)
            return await self._subresources.bind_pod(request, str(namespace), rest[1])
        if (group, version) == ("", "v1") and namespace is not None and rest in (["status"], ["finalize"]):
            return await self._namespace_subresource(request, namespace, rest[0])
        if len(rest) == 3 and rest[2] in ("status", "scale"):
            sub_resource = resources.find(group, version, rest[0], served=self.served())
            if sub_resource is None or sub_resource.namespaced != (namespace is not None):
                raise page_not_found()
            return await self._subresources.status_or_scale(request, sub_resource, namespace or "", rest[1], rest[2])
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
                if is_watch(request):
                    return await self._listwatch.watch(request, resource, namespace)
                return self._listwatch.list_objects(request, resource, namespace)
            if method == "POST":
                if resource.namespaced and namespace is None:
                    raise ApiError(405, "the server does not allow this method on the requested resource")
                body = await read_body(request, options="CreateOptions")
                body, ctx = await self._decoded(request, resource, body)
                created = await self._registry.create_admitted(resource, namespace or "", body, ctx=ctx)
                return render_object(request, resource, created, clock=self._now, status=201)
            if method == "DELETE":
                return await self._deleter.delete_collection(request, resource, namespace)
            raise ApiError(405, "the server does not allow this method on the requested resource")
        ns = namespace or ""
        if method == "GET":
            check_name_parameter(name)
            obj = self.storage.get(resource, ns, name)
            if obj is None:
                raise not_found(resource, name)
            return render_object(request, resource, obj, clock=self._now)
        if method == "PUT":
            check_write_options(request, "UpdateOptions")
            body, ctx = await self._decoded(request, resource, await read_body(request))
            updated = await self._updater.update(resource, ns, name, body, ctx=ctx)
            return render_object(request, resource, updated, clock=self._now)
        if method == "PATCH":
            ctx = context(request)
            if request.content_type == APPLY_PATCH:
                applied, was_created = await self._updater.apply(request, resource, ns, name, ctx=ctx)
                return render_object(
                    request,
                    resource,
                    applied,
                    clock=self._now,
                    status=201 if was_created else 200,
                )
            patched = await self._updater.patch(request, resource, ns, name, ctx=ctx)
            return render_object(request, resource, patched, clock=self._now)
        if method == "DELETE":
            return await self._deleter.delete(request, resource, ns, name)
        raise ApiError(405, "the server does not allow this method on the requested resource")

    async def _decoded(self, request: web.Request, resource: ResourceType, body: Any) -> tuple[Any, Context]:
        """A create's or update's body decoded as the handlers decode it (400 for what does not decode into the
        kind), with the write context carrying what strict decoding found (`tests.kubesim.strictdecoding`)."""
        raw = await request.read()
        decoding.check_body(resource, body, raw, body_type(request))
        body, document = strictdecoding.decode_body(resource, body, raw, body_type(request))
        return body, replace(context(request), document=document)

    async def _namespace_subresource(self, request: web.Request, name: str, sub: str) -> web.StreamResponse:
        """`namespaces/<name>/status` (get, update, patch: the status and metadata change, not the spec) and
        `namespaces/<name>/finalize` (update only: the spec's finalizers and metadata change, not the status),
        as the namespace registry's `StatusREST` and `FinalizeREST` serve them; each write goes through UPDATE
        admission of `namespaces/<sub>`."""
        namespaces = self.resource("namespaces")
        method = request.method
        if method == "GET" and sub == "status":
            check_name_parameter(name)
            obj = self.storage.get(namespaces, "", name)
            if obj is None:
                raise not_found(namespaces, name)
            return render_object(request, namespaces, obj, clock=self._now)
        if method == "PUT":
            check_write_options(request, "UpdateOptions")
            body, ctx = await self._decoded(request, namespaces, await read_body(request))
            updated = await self._updater.update(namespaces, "", name, body, ctx=ctx, subresource=sub)
            return render_object(request, namespaces, updated, clock=self._now)
        if method == "PATCH" and sub == "status":
            ctx = context(request)
            if request.content_type == APPLY_PATCH:
                applied, _ = await self._updater.apply(request, namespaces, "", name, ctx=ctx, subresource=sub)
                return render_object(request, namespaces, applied, clock=self._now)
            patched = await self._updater.patch(request, namespaces, "", name, ctx=ctx, subresource=sub)
            return render_object(request, namespaces, patched, clock=self._now)
        raise ApiError(405, "the server does not allow this method on the requested resource")
