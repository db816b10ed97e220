"""The request side of kubesim's API endpoints, shared by every handler.

What Kubernetes' endpoint handlers take from a request and how they answer (its `handlers`
request scope, `negotiation` and `responsewriters`): the per-request options that reach the write
path (`Context`: dryRun, fieldValidation, fieldManager, the caller) and their checks
(`check_write_options`: a 422 naming CreateOptions, UpdateOptions or PatchOptions), decoding a
body (JSON, YAML, protobuf), label and field selectors, resourceVersion parameters, the Accept
header's choice of object, Table or PartialObjectMetadata, and the JSON answers (objects, Tables,
error Statuses and `Warning` headers). A request's warnings go to its recorder (`request_warnings`), which the server
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

from controlplane.model.yamltext import YamlLoader
from tests.kubesim import admission, decoding, protobuf, tables
from tests.kubesim.resources import ResourceType
from tests.kubesim.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from tests.kubesim.status import ApiError, bad_request, options_invalid
from tests.kubesim.storage import Obj
from tests.kubesim.strictdecoding import Document
from tests.kubesim.validation import FieldErrors, go_len, go_string_slice
from tests.kubesim.warning import Recorder

PROTOBUF = "application/vnd.kubernetes.protobuf"
BODY_TYPES = ("application/json", "application/yaml", PROTOBUF)
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER_MAX_LENGTH = 128  # bytes (`FieldManagerMaxLength`)
FIELD_VALIDATION_VALUES = ["", "Ignore", "Strict", "Warn"]

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
    # what strict decoding found in a create's or update's body (repeated fields, where each field was met)
    document: Document = field(default_factory=Document)


def now_stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- what the request asks -----------------------------------------------------------------------
def context(request: web.Request) -> Context:
    """The request's write context. The options of a create, update or patch are checked apart from it
    (`check_write_options`), so they are taken here as they come."""
    user = request.get(admission.USER_KEY) or admission.ADMIN_USER
    manager = request.query.get("fieldManager") or user_agent_manager(request.headers.get("User-Agent", ""))
    return Context(
        dry_run=dry_run(request),
        field_validation=request.query.get("fieldValidation") or "Warn",
        warnings=request_warnings(request),
        user=copy.deepcopy(user),
        field_manager=manager,
    )


def user_agent_manager(user_agent: str) -> str:
    """The field manager of a write without `fieldManager` (`prefixFromUserAgent`): the User-Agent up to its
    first '/', its unprintable characters dropped, cut at a character boundary to at most 128 bytes. Only this
    derived name is cut; an explicit one that long is refused."""
    kept: list[str] = []
    size = 0
    for char in user_agent.split("/", 1)[0]:
        if not char.isprintable():
            continue
        size += go_len(char)
        if size > FIELD_MANAGER_MAX_LENGTH:
            break
        kept.append(char)
    return "".join(kept)


def check_field_manager(errors: FieldErrors, manager: str) -> None:
    """`ValidateFieldManager`: at most 128 bytes, and each character printable as Go's `unicode.IsPrint` has
    it, an unprintable one named by its code point and byte offset."""
    if go_len(manager) > FIELD_MANAGER_MAX_LENGTH:
        errors.too_long("fieldManager", FIELD_MANAGER_MAX_LENGTH)
    offset = 0
    for char in manager:
        if not char.isprintable():
            errors.invalid("fieldManager", manager, f"invalid character U+{ord(char):04X} (at position {offset})")
        offset += go_len(char)


def check_write_options(request: web.Request, kind: str, *, patch_type: str = "") -> None:
    """The query's options of a create, update or patch, checked as `ValidateCreateOptions`,
    `ValidateUpdateOptions` and `ValidatePatchOptions` check them (`kind` names which): for a patch, `force`
    only with apply and a `fieldManager` always with it; then the fieldManager, dryRun and fieldValidation.
    Raises a 422 of `<kind>.meta.k8s.io ""` with every cause."""
    query = request.query
    errors = FieldErrors()
    manager = query.get("fieldManager", "")
    if kind == "PatchOptions":
        if patch_type != APPLY_PATCH:
            if "force" in query:
                errors.forbidden("force", "may not be specified for non-apply patch")
        elif not manager:
            errors.required("fieldManager", "is required for apply patch")
    check_field_manager(errors, manager)
    dry = query.getall("dryRun", [])
    if any(value != "All" for value in dry):
        errors.not_supported("dryRun", go_string_slice(dry), ["All"])
    mode = query.get("fieldValidation", "")
    if mode not in FIELD_VALIDATION_VALUES:
        errors.not_supported("fieldValidation", mode, FIELD_VALIDATION_VALUES)
    if errors:
        raise options_invalid(kind, errors.causes)


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
    """Whether a write is a dry run; its values were checked with the write's options
    (`check_write_options`, `check_delete_options`)."""
    return bool(request.query.getall("dryRun", []))


def only_post(request: web.Request) -> None:
    if request.method != "POST":
        raise ApiError(405, "the server does not allow this method on the requested resource")


def unsupported_media(allowed: tuple[str, ...]) -> ApiError:
    listed = ", ".join(allowed)
    return ApiError(415, f"the body of the request was in an unknown format - accepted media types include: {listed}")


def body_type(request: web.Request) -> str:
    """The media type of a create's or update's body: its Content-Type, JSON (the first the server speaks) when
    the request names none (`NegotiateInputSerializerForMediaType`), as `kubectl create --raw` sends it."""
    if not request.headers.get("Content-Type", "").strip():
        return "application/json"
    return request.content_type


async def read_body(request: web.Request, *, allowed: tuple[str, ...] = BODY_TYPES, options: str = "") -> Any:
    """The decoded body. `options`, for a create, names the query's options (`CreateOptions`), which are
    checked after the media type and before the body is decoded, as the create handler orders them."""
    ctype = body_type(request)
    if ctype not in allowed:
        raise unsupported_media(allowed)
    raw = await request.read()
    if options:
        check_write_options(request, options)
    if ctype == PROTOBUF:
        try:
            return protobuf.decode(raw)
        except protobuf.ProtobufError as exc:
            raise ApiError(415, f"kubesim cannot decode this protobuf body: {exc}; send JSON instead") from None
    try:
        if ctype == "application/yaml":
            return yaml.load(raw, Loader=YamlLoader)  # sigs.k8s.io/yaml's reading
        return decoding.body_json(raw)
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
