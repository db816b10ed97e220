"""The request side of kubesim's API endpoints, shared by every handler.

What Kubernetes' endpoint handlers take from a request and how they answer (its `handlers`
request scope, `negotiation` and `responsewriters`): the per-request options that reach the write
path (`Context`: dryRun, fieldValidation, fieldManager, the caller), decoding a body (JSON, YAML,
protobuf), label and field selectors, resourceVersion parameters, the Accept header's choice of
object, Table or PartialObjectMetadata, and the JSON answers (objects, Tables, error Statuses and
`Warning` headers). A request's warnings go to its recorder (`request_warnings`), which the server
sends on whatever the request is answered with; boolean query parameters are read as the real
server's parameter codec reads them (`query_bool`).
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

from tests.kubesim import admission, protobuf, tables
from tests.kubesim.resources import ResourceType
from tests.kubesim.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from tests.kubesim.status import ApiError, bad_request
from tests.kubesim.storage import Obj
from tests.kubesim.validation import strict_json
from tests.kubesim.warning import Recorder

PROTOBUF = "application/vnd.kubernetes.protobuf"
BODY_TYPES = ("application/json", "application/yaml", PROTOBUF)
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
APPLY_PATCH = "application/apply-patch+yaml"

Clock = Callable[[], datetime.datetime]
WARNINGS_KEY: web.RequestKey[Recorder] = web.RequestKey("kubesim.warnings", Recorder)  # the request's recorder


@dataclass
class Context:
    """Per-request options that reach the write path: dry run, field validation, warnings to send."""

    dry_run: bool = False
    field_validation: str = "Warn"
    warnings: Recorder = field(default_factory=Recorder)
    user: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(admission.ADMIN_USER))  # admission's userInfo
    # who writes, recorded in managedFields (operation Update); None: keep the managedFields the object
    # carries (an apply computed them, or kubesim itself writes)
    field_manager: str | None = None


def now_stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- what the request asks -----------------------------------------------------------------------
def context(request: web.Request) -> Context:
    mode = request.query.get("fieldValidation", "Warn") or "Warn"
    if mode not in ("Ignore", "Warn", "Strict"):
        raise bad_request(f'fieldValidation: Unsupported value: "{mode}": supported values: "Ignore", "Strict", "Warn"')
    user = request.get(admission.USER_KEY) or admission.ADMIN_USER
    manager = request.query.get("fieldManager") or request.headers.get("User-Agent", "").split("/", 1)[0]
    return Context(
        dry_run=dry_run(request),
        field_validation=mode,
        warnings=request_warnings(request),
        user=copy.deepcopy(user),
        field_manager=manager[:128],
    )


def request_warnings(request: web.Request) -> Recorder:
    """The request's warning recorder: whatever adds to it is sent on the answer, success or failure."""
    recorder = request.get(WARNINGS_KEY)
    if recorder is None:
        recorder = request[WARNINGS_KEY] = Recorder()
    return recorder


def query_bool(request: web.Request, name: str) -> bool | None:
    """A boolean query parameter as the real server converts it; None when absent.

    Only "0" and "false" (in any letter case) are false; any other value, the empty one included
    (`?watch`, `?watch=`, `?watch=yes`), is true. The first value counts when it is repeated.
    """
    values = request.query.getall(name, [])
    if not values:
        return None
    return not (values[0] == "0" or values[0].casefold() == "false")


def dry_run(request: web.Request) -> bool:
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise bad_request(f'Invalid dry run value: "{value}": supported values: "All"')
    return bool(values)


def only_post(request: web.Request) -> None:
    if request.method != "POST":
        raise ApiError(405, "the server does not allow this method on the requested resource")


def unsupported_media(allowed: tuple[str, ...]) -> ApiError:
    listed = ", ".join(allowed)
    return ApiError(415, f"the body of the request was in an unknown format - accepted media types include: {listed}")


async def read_body(request: web.Request, *, allowed: tuple[str, ...] = BODY_TYPES) -> Any:
    ctype = request.content_type
    if ctype not in allowed:
        raise unsupported_media(allowed)
    raw = await request.read()
    if ctype == PROTOBUF:
        try:
            return protobuf.decode(raw)
        except protobuf.ProtobufError as exc:
            raise ApiError(415, f"kubesim cannot decode this protobuf body: {exc}; send JSON instead") from None
    try:
        if ctype == "application/yaml":
            return yaml.safe_load(raw)
        return strict_json(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise bad_request(f"the object provided is unrecognized (body is not {ctype}): {exc}") from None


def selectors(request: web.Request, resource: ResourceType) -> tuple[LabelSelector, FieldSelector]:
    try:
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""), resource.field_getters())
    except SelectorError as exc:
        raise bad_request(str(exc)) from None
    return labels, fields


def parse_rv(text: str, *, param: str = "resourceVersion") -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f'{param}: Invalid value: "{text}": must be a non-negative integer') from None
    if value < 0:
        raise bad_request(f'{param}: Invalid value: "{text}": must be a non-negative integer')
    return value


# -- how it is answered --------------------------------------------------------------------------
def negotiate(request: web.Request) -> tuple[str, str]:
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


def table_key(resource: ResourceType) -> str:
    """The column set of `tests.kubesim.tables` for a resource (a custom one never takes a built-in's)."""
    return resource.key if resource.custom else resource.plural


def json_response(data: Any, *, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        headers={"Content-Type": content_type},
    )


def error_response(exc: ApiError) -> web.Response:
    response = json_response(exc.status(), status=exc.code)
    response.headers.update(exc.headers)
    return response


def render_object(
    request: web.Request,
    resource: ResourceType,
    obj: Obj,
    *,
    clock: Clock,
    status: int = 200,
) -> web.Response:
    """`obj` in the form the Accept header asks for."""
    return _render(request, resource, obj, clock=clock, status=status)


def with_warnings(response: web.StreamResponse, recorder: Recorder) -> web.StreamResponse:
    """`response` with the request's warnings as `Warning` headers, one each (none once the answer has started)."""
    if not response.prepared:
        for value in recorder.headers():
            response.headers.add("Warning", value)
    return response


def _render(request: web.Request, resource: ResourceType, obj: Obj, *, clock: Clock, status: int) -> web.Response:
    form, version = negotiate(request)
    if form == "table":
        body = tables.table(
            table_key(resource),
            [obj],
            resource_version=obj["metadata"].get("resourceVersion", ""),
            include_object=request.query.get("includeObject", "Metadata"),
            now=clock(),
        )
        body["apiVersion"] = f"meta.k8s.io/{version}"
        return json_response(body, status=status, content_type=f"application/json;as=Table;v={version};g=meta.k8s.io")
    if form == "partial":
        body = tables.partial_metadata(obj)
        body["apiVersion"] = f"meta.k8s.io/{version}"
        return json_response(body, status=status)
    return json_response(obj, status=status)
