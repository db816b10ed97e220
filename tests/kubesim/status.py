"""`Status` errors shaped like the API server's (`kind: Status`, `reason`, `details`, `code`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.kubesim.resources import ResourceType
from tests.kubesim.validation import Cause, go_string, path_segment_problems

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An error answer: HTTP `code` with a Status body.

    `reason` defaults to the code's; an empty one is the API server's StatusReasonUnknown, which its
    Status leaves out: how it answers an error a registry returns that is not a Status (a 500).
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = REASONS.get(code, "Unknown") if reason is None else reason
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def qualified(resource: ResourceType) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def _details(resource: ResourceType, name: str, *, kind: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = kind or resource.plural
    return details


def not_found(resource: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{qualified(resource)} "{name}" not found', details=_details(resource, name))


def already_exists(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        409, f'{qualified(resource)} "{name}" already exists', reason="AlreadyExists", details=_details(resource, name)
    )


def conflict(resource: ResourceType, name: str, detail: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {qualified(resource)} "{name}": {detail}',
        details=_details(resource, name),
    )


def _listed(causes: Sequence[Cause]) -> str:
    """The causes as the server's error aggregate prints them: each distinct one once (an update can report
    one cause twice), in brackets when there are several."""
    shown = list(dict.fromkeys(str(c) for c in causes))
    return shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"


def invalid(resource: ResourceType, name: str, causes: Sequence[Cause]) -> ApiError:
    """A 422 as `NewInvalid` builds it: every cause in the details, in order; the message lists each distinct
    one once."""
    kind = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
    details = _details(resource, name, kind=resource.kind)
    details["causes"] = [c.to_json() for c in causes]
    return ApiError(422, f'{kind} "{name}" is invalid: {_listed(causes)}', details=details)


def options_invalid(kind: str, causes: Sequence[Cause]) -> ApiError:
    """A 422 for bad query options (`CreateOptions`, `UpdateOptions`, `PatchOptions`), as the handlers build
    it: `NewInvalid` of the meta.k8s.io kind with no name."""
    details = {"group": "meta.k8s.io", "kind": kind, "causes": [c.to_json() for c in causes]}
    return ApiError(422, f'{kind}.meta.k8s.io "" is invalid: {_listed(causes)}', details=details)


def forbidden(resource: ResourceType, name: str, detail: str) -> ApiError:
    return ApiError(403, f'{qualified(resource)} "{name}" is forbidden: {detail}', details=_details(resource, name))


def expired(message: str) -> ApiError:
    return ApiError(410, message, reason="Expired")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def check_name_parameter(name: str) -> None:
    """400 for an object name from a URL that cannot be the last segment of a storage key, as the generic
    registry's key functions (`NamespaceKeyFunc`, `NoNamespaceKeyFunc`) refuse it before anything is read or
    written: '.' or '..', or a name holding '/' or '%' (`IsValidPathSegmentName`, its problems joined by ';')."""
    problems = path_segment_problems(name)
    if problems:
        raise bad_request(f"Name parameter invalid: {go_string(name)}: {';'.join(problems)}")


def page_not_found() -> ApiError:
    return ApiError(404, "the server could not find the requested resource", details={})
