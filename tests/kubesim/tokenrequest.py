"""The service-account token APIs: TokenRequest and TokenReview.

`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token` (TokenRequest) issues a token for an
existing ServiceAccount, optionally bound to a Pod or Secret (`spec.boundObjectRef`), for the
requested audiences (the API server's by default) and lifetime. `POST
/apis/authentication.k8s.io/v1/tokenreviews` (TokenReview) answers whether a token is valid for
the requested audiences, and who it names. Signing and verification are `tests.kubesim.tokens`'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.kubesim import decoding, tokens
from tests.kubesim.endpoints import Clock, body_type, json_response, now_stamp, read_body
from tests.kubesim.resources import ResourceType
from tests.kubesim.status import bad_request, check_name_parameter, conflict, invalid, not_found
from tests.kubesim.storage import Obj, Storage
from tests.kubesim.validation import FieldErrors


def auth_body(body: Any, kind: str) -> Obj:
    """The spec of a TokenRequest or TokenReview body of `kind` (400 for another kind or a malformed body)."""
    if not isinstance(body, dict):
        raise bad_request("the object provided is unrecognized (must be a JSON object)")
    api_version = body.get("apiVersion", tokens.API_VERSION)
    if api_version != tokens.API_VERSION or body.get("kind", kind) != kind:
        raise bad_request(
            f"the object provided is unrecognized: {api_version}/{body.get('kind')} (want {tokens.API_VERSION}/{kind})"
        )
    spec = body.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise bad_request("spec must be an object")
    return spec


class TokenAPI:
    """TokenRequest and TokenReview against the objects in `storage`, signed by `service_accounts`.

    `resource` is the server's resource lookup; `lookup` finds the uid a token is bound to.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        resource: Callable[..., ResourceType],
        service_accounts: tokens.ServiceAccountTokens,
        lookup: tokens.Lookup,
        clock: Clock,
    ) -> None:
        self._storage = storage
        self._resource = resource
        self._tokens = service_accounts
        self._lookup = lookup
        self._clock = clock

    def _bound_object(self, ref: Any, namespace: str, account: str) -> tokens.Bound | None:
        """The Pod or Secret a TokenRequest's boundObjectRef names (400 other kinds, 404 absent, 409 other uid)."""
        if not ref:
            return None
        if not isinstance(ref, dict) or not ref.get("name"):
            raise bad_request("spec.boundObjectRef must be an object with kind, apiVersion and name")
        kind, api_version, name = ref.get("kind"), ref.get("apiVersion", "v1"), str(ref["name"])
        if kind not in tokens.BOUND_KINDS or api_version != "v1":
            raise bad_request(f"cannot bind token to object of type {api_version}, Kind={kind}")
        resource = self._resource("pods" if kind == "Pod" else "secrets")
        obj = self._storage.get(resource, namespace, name)
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

    async def token_request(self, request: web.Request, namespace: str, name: str) -> web.Response:
        """POST .../serviceaccounts/{name}/token: a TokenRequest answered with a signed token (201).

        As `TokenREST.Create` does, the ServiceAccount is read (400 for a name no key can hold, 404 when it or its
        namespace does not exist) before the request's spec is checked (422)."""
        body = await read_body(request, options="CreateOptions")
        decoding.check_object(
            body, await request.read(), body_type(request), kind="TokenRequest", api_version=tokens.API_VERSION
        )
        spec = auth_body(body, "TokenRequest")
        sa_resource = self._resource("serviceaccounts")
        if self._storage.get(self._resource("namespaces"), "", namespace) is None:
            raise not_found(self._resource("namespaces"), namespace)
        check_name_parameter(name)
        uid = self._lookup("ServiceAccount", namespace, name)
        if uid is None:
            raise not_found(sa_resource, name)
        errors = FieldErrors()
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            errors.invalid("spec.audiences", audiences, "must be a list of non-empty strings")
        seconds = spec.get("expirationSeconds")
        if seconds is None:  # a nil pointer, defaulted (`SetDefaults_TokenRequestSpec`)
            seconds = tokens.DEFAULT_EXPIRATION
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            errors.invalid("spec.expirationSeconds", seconds, "must be an integer")
        elif seconds < tokens.MIN_EXPIRATION:
            errors.invalid("spec.expirationSeconds", seconds, "may not specify a duration less than 10 minutes")
        elif seconds > tokens.MAX_EXPIRATION:
            errors.invalid("spec.expirationSeconds", seconds, "may not specify a duration larger than 2^32 seconds")
        token_requests = tokens.TOKEN_REQUESTS
        if errors.causes:
            raise invalid(token_requests, name, errors.causes)
        bound = self._bound_object(spec.get("boundObjectRef"), namespace, name)
        wanted = list(audiences) or list(tokens.API_AUDIENCES)
        issued = self._tokens.issue(
            tokens.Account(namespace=namespace, name=name, uid=uid, bound=bound),
            audiences=wanted,
            expiration_seconds=seconds,
        )
        answer = {
            "kind": "TokenRequest",
            "apiVersion": tokens.API_VERSION,
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now_stamp(self._clock())},
            "spec": {"audiences": wanted, "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")},
            "status": {"token": issued.token, "expirationTimestamp": now_stamp(issued.expires)},
        }
        return json_response(answer, status=201)

    async def token_review(self, request: web.Request) -> web.Response:
        """POST /apis/authentication.k8s.io/v1/tokenreviews: the verdict on a token, always 201."""
        body = await read_body(request, allowed=("application/json", "application/yaml"), options="CreateOptions")
        decoding.check_object(
            body, await request.read(), body_type(request), kind="TokenReview", api_version=tokens.API_VERSION
        )
        spec = auth_body(body, "TokenReview")
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("token is required for TokenReview in authentication")
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise bad_request("spec.audiences must be a list of strings")
        status: dict[str, Any]
        try:
            claims, granted = self._tokens.review(token, audiences=audiences, lookup=self._lookup)
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
        return json_response(answer, status=201)
