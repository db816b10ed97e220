"""Admission webhooks, called the way the API server calls them.

The server asks `Admission.mutate` (after defaulting, before validation) and `Admission.validate`
(after validation, before the write) on every CREATE, UPDATE and DELETE. What is modelled:

- Which webhook is called: MutatingWebhookConfigurations in order of name, then their webhooks in
  order; a webhook matches when its namespaceSelector matches the labels of the object's namespace
  (a Namespace is matched by its own labels, other cluster-scoped objects always match), its
  objectSelector matches the new or the old object's labels, and one of its rules names the
  operation, group, version, resource (`pods`, `*`, `pods/status`, `pods/*`, `*/*`) and scope.
  A write to a subresource is matched as `<resource>/<subresource>` only: `status` and `scale`
  updates, and the `binding` a scheduler creates; the review's `kind` is that of the object the
  subresource takes (an autoscaling/v1 Scale for `scale`, a v1 Binding for `binding`).
  `matchPolicy: Equivalent` also matches a rule through another served version of the same
  resource (a multi-version CRD); the review then names the matched version. `matchConditions` are
  not evaluated.
- The call: an `admission.k8s.io/v1` AdmissionReview POSTed over HTTPS to `clientConfig.url`, or to
  a ready endpoint of `clientConfig.service` (resolved through the Service's EndpointSlices, TLS
  server name `<service>.<namespace>.svc`), verified with `clientConfig.caBundle`, bounded by
  `timeoutSeconds` and announced in the URL as `?timeout=<n>s`; the URL's or the service's path is
  the Go client's, cleaned and without a trailing slash (`tests.kubesim.weburl`).
- The answers: a denial fails the request with the webhook's status; a call failure fails it with
  500 under `failurePolicy: Fail` and is ignored under `Ignore`; JSONPatch responses are applied;
  `reinvocationPolicy: IfNeeded` webhooks are called once more when a later webhook changed the
  object; `warnings` go to the request's recorder, which sends them on its answer even when the
  request then fails. Validating webhooks run concurrently.
- dryRun requests reach only webhooks with `sideEffects: None` or `NoneOnDryRun`.

Webhook calls are awaited on the server's event loop, so a webhook may call the API server back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import errno
import json
import logging
import random
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import jsonpatch
import jsonpointer
import yarl
from aiohttp import web

from tests.kubesim import decoding, weburl
from tests.kubesim.resources import ResourceType
from tests.kubesim.selectors import SelectorError, selector_from_label_selector
from tests.kubesim.status import ApiError
from tests.kubesim.storage import Obj, Storage
from tests.kubesim.validation import strict_json
from tests.kubesim.warning import Recorder

log = logging.getLogger(__name__)

# where authentication leaves the caller's userInfo on the aiohttp request
USER_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("kubesim.user", dict)
ADMIN_USER: Obj = {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}
REVIEW_API_VERSION = "admission.k8s.io/v1"
_OPTIONS_KIND = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}
_DRY_RUN_SAFE = ("None", "NoneOnDryRun")


@dataclass(frozen=True)
class Attributes:
    """What one request asks (the API server's admission attributes).

    `namespace` is the object's namespace; for a Namespace it is the Namespace's own name, as in
    the real server. `name` is empty for a create by generateName. `obj` is None for DELETE.
    `kind` is the group/version/kind of `obj` and `old` when a subresource takes an object of its
    own kind (Scale, Binding): they are sent as they are; None: objects of `resource`'s kind.
    """

    resource: ResourceType
    operation: str
    namespace: str
    name: str
    obj: Obj | None
    old: Obj | None = None
    subresource: str = ""
    dry_run: bool = False
    options: Obj = field(default_factory=dict)
    user: Obj = field(default_factory=lambda: copy.deepcopy(ADMIN_USER))
    kind: Obj | None = None

    def with_object(self, obj: Obj | None) -> Attributes:
        return replace(self, obj=obj)

    @property
    def is_namespace(self) -> bool:
        return self.resource.group == "" and self.resource.plural == "namespaces"


@dataclass(frozen=True)
class Hook:
    """One webhook of one configuration, as stored (defaults applied)."""

    configuration: str
    spec: Obj

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def uid(self) -> tuple[str, str]:
        return (self.configuration, self.name)

    @property
    def ignores_failures(self) -> bool:
        return self.spec.get("failurePolicy") == "Ignore"


@dataclass(frozen=True)
class Invocation:
    """A webhook to call, and the resource (version) it matched through."""

    hook: Hook
    resource: ResourceType


class CallFailure(Exception):
    """The webhook could not be called, or its answer made no sense; `failurePolicy` decides."""


# -- matching -----------------------------------------------------------------------------------


def rule_matches(rule: Mapping[str, Any], attrs: Attributes, resource: ResourceType) -> bool:
    """One `rules[]` entry against a request, with `resource` standing for the requested one."""
    scope = rule.get("scope", "*")
    cluster_scoped = attrs.is_namespace or not attrs.namespace
    if (scope == "Namespaced" and cluster_scoped) or (scope == "Cluster" and not cluster_scoped):
        return False
    operations = rule.get("operations") or []
    if "*" not in operations and attrs.operation not in operations:
        return False
    for key, value in (("apiGroups", resource.group), ("apiVersions", resource.version)):
        allowed = rule.get(key) or []
        if "*" not in allowed and value not in allowed:
            return False
    for entry in rule.get("resources") or []:
        res, _, sub = str(entry).partition("/")
        if res in ("*", resource.plural) and sub in ("*", attrs.subresource):
            return True
    return False


def _labels(obj: Obj | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def _selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    try:
        return selector_from_label_selector(selector).matches(labels)
    except SelectorError:
        return False  # stored configurations are validated; an unparsable selector matches nothing


def match(
    hook: Hook, attrs: Attributes, *, namespace_labels: Mapping[str, str] | None, equivalents: Sequence[ResourceType]
) -> Invocation | None:
    """The invocation of `hook` for `attrs`, or None when it does not apply.

    `namespace_labels` is None for a cluster-scoped object (the namespaceSelector is not consulted);
    `equivalents` are the other served versions of the requested resource.
    """
    if namespace_labels is not None and not _selector_matches(hook.spec.get("namespaceSelector"), namespace_labels):
        return None
    object_selector = hook.spec.get("objectSelector")
    if object_selector and not any(
        o is not None and _selector_matches(object_selector, _labels(o)) for o in (attrs.obj, attrs.old)
    ):
        return None
    rules = hook.spec.get("rules") or []
    if any(rule_matches(rule, attrs, attrs.resource) for rule in rules):
        return Invocation(hook, attrs.resource)
    if hook.spec.get("matchPolicy", "Equivalent") == "Equivalent":
        for rule in rules:
            for other in equivalents:
                if rule_matches(rule, attrs, other):
                    return Invocation(hook, other)
    return None


# -- the AdmissionReview ------------------------------------------------------------------------


def _gvk(resource: ResourceType) -> Obj:
    return {"group": resource.group, "version": resource.version, "kind": resource.kind}


def _gvr(resource: ResourceType) -> Obj:
    return {"group": resource.group, "version": resource.version, "resource": resource.plural}


def _as_version(obj: Obj | None, resource: ResourceType, attrs: Attributes) -> Obj | None:
    """`obj` as `resource`'s version would serve it (versions of one resource differ only by apiVersion here).

    A subresource's own kind (`attrs.kind`) is the same whichever version of the resource is matched.
    """
    if obj is None or attrs.kind is not None:
        return obj
    converted = copy.deepcopy(obj)
    converted["apiVersion"] = resource.api_version
    return converted


def review_request(invocation: Invocation, attrs: Attributes, *, uid: str) -> Obj:
    """The AdmissionReview v1 the API server sends for this invocation."""
    kind = attrs.kind if attrs.kind is not None else _gvk(invocation.resource)
    request: Obj = {"uid": uid, "kind": kind, "resource": _gvr(invocation.resource)}
    if attrs.subresource:
        request["subResource"] = attrs.subresource
    request["requestKind"] = attrs.kind if attrs.kind is not None else _gvk(attrs.resource)
    request["requestResource"] = _gvr(attrs.resource)
    if attrs.subresource:
        request["requestSubResource"] = attrs.subresource
    if attrs.name:
        request["name"] = attrs.name
    if attrs.namespace:
        request["namespace"] = attrs.namespace
    request["operation"] = attrs.operation
    request["userInfo"] = attrs.user
    request["object"] = _as_version(attrs.obj, invocation.resource, attrs)
    request["oldObject"] = _as_version(attrs.old, invocation.resource, attrs)
    request["dryRun"] = attrs.dry_run
    request["options"] = {"kind": _OPTIONS_KIND[attrs.operation], "apiVersion": "meta.k8s.io/v1", **attrs.options}
    return {"kind": "AdmissionReview", "apiVersion": REVIEW_API_VERSION, "request": request}


def verify_response(review: Any, *, uid: str) -> Obj:
    """The `response` of a webhook's answer; CallFailure when the answer is not a matching AdmissionReview."""
    if not isinstance(review, dict) or not isinstance(review.get("response"), dict):
        raise CallFailure("received invalid webhook response: webhook response was absent")
    response: Obj = review["response"]
    if response.get("uid") != uid:
        raise CallFailure(
            f'received invalid webhook response: expected response.uid="{uid}", got "{response.get("uid")}"'
        )
    if review.get("apiVersion") != REVIEW_API_VERSION or review.get("kind") != "AdmissionReview":
        raise CallFailure(
            f"received invalid webhook response: expected webhook response of {REVIEW_API_VERSION}, "
            f"Kind=AdmissionReview, got {review.get('apiVersion', '')}, Kind={review.get('kind', '')}"
        )
    return response


def denial(hook: Hook, response: Obj) -> ApiError:
    """The error a denying webhook's `status` becomes (code below 400 raised to 400, message prefixed)."""
    found = response.get("status")
    status: Obj = found if isinstance(found, dict) else {}
    denied_by = f'admission webhook "{hook.name}" denied the request'
    if status.get("message"):
        message = f"{denied_by}: {status['message']}"
    elif status.get("reason"):
        message = f"{denied_by}: {status['reason']}"
    else:
        message = f"{denied_by} without explanation"
    code = status.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) and code >= 400 else 400
    error = ApiError(code, message, details=status.get("details"))
    error.reason = str(status.get("reason") or "")
    return error


def internal_error(message: str) -> ApiError:
    return ApiError(500, f"Internal error occurred: {message}", details={"causes": [{"message": message}]})


def decode_patch(hook: Hook, response: Obj) -> list[Any] | None:
    """The JSON patch of a mutating webhook's response (None: no change); CallFailure when malformed."""
    patch, patch_type = response.get("patch"), response.get("patchType")
    if patch and not patch_type:
        raise CallFailure(
            "received invalid webhook response: webhook returned response.patch but not response.patchType"
        )
    if patch_type and not patch:
        raise CallFailure(
            "received invalid webhook response: webhook returned response.patchType but not response.patch"
        )
    if not patch:
        return None
    if patch_type != "JSONPatch":
        raise CallFailure(f'unsupported patch type "{patch_type}"')
    try:
        operations = strict_json(base64.b64decode(str(patch), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise CallFailure(f"received undecodable patch in webhook response: {exc}") from None
    if not isinstance(operations, list):
        raise CallFailure("received undecodable patch in webhook response: a JSON patch must be a list of operations")
    return operations or None


def apply_patch(hook: Hook, obj: Obj | None, operations: list[Any]) -> Obj:
    """`obj` with a webhook's JSON patch applied; a 500 naming the webhook when it does not apply."""
    if obj is None:
        raise internal_error(
            f'admission webhook "{hook.name}" attempted to modify the object, which is not supported for this operation'
        )
    try:
        patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(obj))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError, ValueError) as exc:
        raise internal_error(f'admission webhook "{hook.name}" returned a patch that does not apply: {exc}') from None
    if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
        raise internal_error(f'admission webhook "{hook.name}" returned a patch that removes the object\'s metadata')
    return patched


# -- calling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a call goes: `url` as the API server names it; `dial` the URL actually requested."""

    url: str
    dial: str
    server_name: str | None = None
    host_header: str | None = None


def _describe(exc: BaseException, *, address: str, server_name: str) -> str:
    """A transport error worded as the API server's Go client words it."""
    if isinstance(exc, TimeoutError):
        return "context deadline exceeded"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        if isinstance(cert_error, ssl.SSLCertVerificationError) and cert_error.verify_code == 62:
            return f"tls: failed to verify certificate: x509: certificate is not valid for {server_name}"
        return "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            return f"dial tcp {address}: connect: connection refused"
        return f"dial tcp {address}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"remote error: tls: {exc}"
    return str(exc) or type(exc).__name__


def _unstructured_error(status: int, body: bytes) -> str:
    if status == 404:
        return "the server could not find the requested resource"
    if not body.strip():
        return f"the server responded with the status code {status} but did not return more information"
    return f'an error on the server ("{body[:256].decode(errors="replace")}") has prevented the request from succeeding'


class Admission:
    """The mutating and validating webhook admission of one server.

    `storage` holds the webhook configurations, namespaces, Services and EndpointSlices;
    `resource(plural, group)` and `served()` are the server's resource lookups.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        resource: Callable[..., ResourceType],
        served: Callable[[], Sequence[ResourceType]],
    ) -> None:
        self._storage = storage
        self._resource = resource
        self._served = served

    def hooks(self, plural: str) -> list[Hook]:
        """The webhooks of every stored configuration of `plural`, by configuration name, then webhook order."""
        configs = self._storage.items(self._resource(plural, "admissionregistration.k8s.io"))
        ordered = sorted(configs, key=lambda c: str(c["metadata"]["name"]))
        return [Hook(str(c["metadata"]["name"]), h) for c in ordered for h in c.get("webhooks") or []]

    def _namespace_labels(self, attrs: Attributes) -> dict[str, str] | None:
        if attrs.is_namespace and not attrs.subresource:
            return _labels(attrs.obj if attrs.obj is not None else attrs.old)
        if not attrs.namespace:
            return None
        namespace = self._storage.get(self._resource("namespaces"), "", attrs.namespace)
        if namespace is None:
            raise ApiError(404, f'namespaces "{attrs.namespace}" not found', details={"name": attrs.namespace})
        return _labels(namespace)

    def _invocations(self, hooks: Sequence[Hook], attrs: Attributes) -> list[Invocation]:
        labels = self._namespace_labels(attrs)
        equivalents = [r for r in self._served() if r.key == attrs.resource.key and r.version != attrs.resource.version]
        found = (match(h, attrs, namespace_labels=labels, equivalents=equivalents) for h in hooks)
        return [inv for inv in found if inv is not None]

    async def mutate(self, attrs: Attributes, *, warnings: Recorder) -> Obj | None:
        """The object after every matching mutating webhook (and reinvocations); raises ApiError."""
        hooks = self.hooks("mutatingwebhookconfigurations")
        obj = attrs.obj
        previously_invoked: set[tuple[str, str]] = set()
        reinvoke: set[tuple[str, str]] = set()
        changed_any = False
        for reinvocation in (False, True):
            if reinvocation and not (changed_any and reinvoke):
                break
            for hook in hooks:
                current = attrs.with_object(obj)
                invocations = self._invocations([hook], current)
                if not invocations or (reinvocation and hook.uid not in reinvoke):
                    continue
                failure: CallFailure | None = None
                patched: Obj | None = None
                try:
                    patched = await self._call(invocations[0], current, warnings=warnings, mutating=True)
                except CallFailure as exc:
                    failure = exc
                if patched is not None and patched != obj:
                    reinvoke |= previously_invoked
                    previously_invoked = set()
                    changed_any = True
                    obj = patched
                if hook.spec.get("reinvocationPolicy") == "IfNeeded":
                    previously_invoked.add(hook.uid)
                if failure is not None:
                    self._fail(hook, failure)
        return obj

    async def validate(self, attrs: Attributes, *, warnings: Recorder) -> None:
        """Call every matching validating webhook concurrently; the first failure (in order) is raised."""
        hooks = self.hooks("validatingwebhookconfigurations")
        if not hooks:
            return
        invocations = self._invocations(hooks, attrs)
        if not invocations:
            return
        calls = (self._call(inv, attrs, warnings=warnings, mutating=False) for inv in invocations)
        results = await asyncio.gather(*calls, return_exceptions=True)
        for invocation, result in zip(invocations, results, strict=True):
            if isinstance(result, CallFailure):
                self._fail(invocation.hook, result)
            elif isinstance(result, BaseException):
                raise result

    @staticmethod
    def _fail(hook: Hook, failure: CallFailure) -> None:
        if hook.ignores_failures:
            log.warning("failed calling webhook, failing open %s: %s", hook.name, failure)
            return
        raise internal_error(f'failed calling webhook "{hook.name}": {failure}')

    async def _call(
        self, invocation: Invocation, attrs: Attributes, *, warnings: Recorder, mutating: bool
    ) -> Obj | None:
        """Call one webhook: the patched object (mutating, when it patched), else None; raises ApiError/CallFailure."""
        hook = invocation.hook
        if attrs.dry_run and hook.spec.get("sideEffects") not in _DRY_RUN_SAFE:
            raise ApiError(400, f'admission webhook "{hook.name}" does not support dry run')
        uid = str(uuid.uuid4())
        answer = await self._post(hook, review_request(invocation, attrs, uid=uid))
        response = verify_response(answer, uid=uid)
        warnings.extend(str(w) for w in response.get("warnings") or [])
        if response.get("allowed") is not True:
            raise denial(hook, response)
        if not mutating:
            return None
        operations = decode_patch(hook, response)
        if operations is None:
            return None
        versioned = _as_version(attrs.obj, invocation.resource, attrs)
        patched = apply_patch(hook, versioned, operations)
        if attrs.kind is not None or not invocation.resource.custom:  # decoded into its Go type: a 500 if it fails
            kind = attrs.kind if attrs.kind is not None else _gvk(invocation.resource)
            api_version = f"{kind['group']}/{kind['version']}" if kind["group"] else str(kind["version"])
            problem = decoding.decode_error(patched, kind=str(kind["kind"]), api_version=api_version)
            if problem is not None:
                raise internal_error(problem)
        return _as_version(patched, attrs.resource, attrs)

    def target(self, hook: Hook) -> Target:
        """Where `hook` is called; CallFailure (naming the URL) when a service reference does not resolve."""
        client = hook.spec.get("clientConfig") or {}
        timeout = int(hook.spec.get("timeoutSeconds", 10))
        if client.get("url"):
            try:
                parsed = weburl.parse(str(client["url"]))
            except weburl.URLError as exc:  # validation refuses it; were one stored, `HookClient` would fail
                reason = f'failed calling webhook "{hook.name}": Unparsable URL: {exc}'
                raise CallFailure(f"could not get REST client: {reason}") from None
            url = weburl.request_url(parsed.scheme, parsed.host, parsed.path, timeout)
            return Target(url=url, dial=url)
        service = client.get("service") or {}
        name, namespace = str(service.get("name", "")), str(service.get("namespace", ""))
        port = int(service.get("port", 443))
        path = str(service.get("path") or "")
        server_name = f"{name}.{namespace}.svc"
        url = weburl.request_url("https", f"{server_name}:{port}", path, timeout)
        try:
            address = self._resolve(namespace=namespace, name=name, port=port)
        except CallFailure as exc:
            raise CallFailure(f'failed to call webhook: Post "{url}": {exc}') from None
        return Target(
            url=url,
            dial=weburl.request_url("https", address, path, timeout),
            server_name=server_name,
            host_header=f"{server_name}:{port}",
        )

    def _resolve(self, *, namespace: str, name: str, port: int) -> str:
        """`ip:port` of a ready endpoint of the Service's port `port`, like the API server's service resolver."""
        service = self._storage.get(self._resource("services"), namespace, name)
        if service is None:
            raise CallFailure(f'service "{name}" not found')
        spec = service.get("spec") or {}
        if spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer"):
            raise CallFailure(f'unsupported service type "{spec.get("type")}"')
        service_port = next((p for p in spec.get("ports") or [] if p.get("port") == port), None)
        if service_port is None:
            raise CallFailure(f'no service port {port} found for service "{name}"')
        port_name = service_port.get("name") or ""
        addresses: list[str] = []
        for eps in self._storage.items(self._resource("endpointslices", "discovery.k8s.io"), namespace):
            if _labels(eps).get("kubernetes.io/service-name") != name:
                continue
            target = next((p.get("port") for p in eps.get("ports") or [] if (p.get("name") or "") == port_name), None)
            if target is None:
                continue
            for endpoint in eps.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                for ip in (endpoint.get("addresses") or [])[:1]:
                    addresses.append(weburl.dial_address(f"[{ip}]:{target}"))
        if not addresses:
            raise CallFailure(f'no endpoints available for service "{name}"')
        return random.choice(addresses)

    async def _post(self, hook: Hook, review: Obj) -> Any:
        """POST the review; the decoded answer. CallFailure for every transport or HTTP-level failure."""
        target = self.target(hook)
        client = hook.spec.get("clientConfig") or {}
        try:
            context = ssl.create_default_context()
            if client.get("caBundle"):
                context = ssl.create_default_context(cadata=base64.b64decode(client["caBundle"]).decode())
        except (binascii.Error, UnicodeDecodeError, ssl.SSLError) as exc:
            raise CallFailure(f"could not get REST client: unable to load root certificates: {exc}") from None
        host = yarl.URL(target.dial, encoded=True).raw_authority
        address = weburl.dial_address(host)
        server_name = target.server_name or weburl.split_host_port(host)[0]
        timeout = aiohttp.ClientTimeout(total=float(hook.spec.get("timeoutSeconds", 10)))
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.host_header:
            headers["Host"] = target.host_header
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    yarl.URL(target.dial, encoded=True),  # as escaped and cleaned, not re-quoted
                    data=json.dumps(review).encode(),
                    headers=headers,
                    ssl=context,
                    server_hostname=target.server_name,
                ) as answer,
            ):
                status, body = answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = _describe(exc, address=address, server_name=server_name)
            raise CallFailure(f'failed to call webhook: Post "{target.url}": {detail}') from None
        if not 200 <= status < 300:
            raise CallFailure(f"failed to call webhook: {_unstructured_error(status, body)}")
        try:
            return strict_json(body)
        except ValueError as exc:
            raise CallFailure(f"failed to call webhook: {exc}") from None
