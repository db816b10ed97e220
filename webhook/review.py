"""AdmissionReview (admission.k8s.io/v1) in, AdmissionReview out.

`review()` (`parse_review()`, then `answer()`) never raises for bad input: it returns the HTTP
status and the body to send.
- Protocol errors (not JSON, nested deeper than `limits.MAX_BODY_DEPTH`, wrong apiVersion/kind,
  no `request.uid`, an object that is not a Pod) answer 400 with an AdmissionReview whose response
  carries the uid when it could be read, `allowed: false` and a status naming the field.
- A pod the injector rejects (an invalid annotation) answers 200 with `allowed: false` and
  status code 400, which is how the API server shows the message to the user.
- Otherwise 200 with `allowed: true`, an optional base64 JSONPatch, and warnings.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.jsontext import json_depth, json_path_past, strict_json
from webhook.limits import MAX_BODY_DEPTH
from webhook.service import Injector

log = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class ReviewError(Exception):
    def __init__(self, message: str, *, uid: str = "", reason: str = "bad_request") -> None:
        super().__init__(message)
        self.uid = uid
        self.reason = reason


@dataclass(frozen=True)
class Parsed:
    """A well-formed AdmissionReview for a Pod."""

    uid: str
    request: Mapping[str, Any]
    pod: Mapping[str, Any]


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    result: str  # "success" | "skip" | "failure"
    reason: str = ""


def _envelope(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def error_body(message: str, *, uid: str = "", code: int = 400) -> dict[str, Any]:
    reasons = {400: "BadRequest", 408: "Timeout", 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType"}
    reason = reasons.get(code, "BadRequest")
    return _envelope(
        {
            "uid": uid,
            "allowed": False,
            "status": {"code": code, "reason": reason, "message": message, "status": "Failure"},
        }
    )


def _parse(body: bytes) -> Parsed:
    """Return the review or raise ReviewError naming what is wrong."""
    depth = json_depth(body)
    if depth > MAX_BODY_DEPTH:
        where = json_path_past(body, MAX_BODY_DEPTH)
        raise ReviewError(
            f"body nests objects/lists {depth} levels deep, at {where}; at most {MAX_BODY_DEPTH} are allowed",
            reason="too_deep",
        )
    try:
        doc = strict_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReviewError(f"body is not valid JSON: {exc}", reason="invalid_json") from None
    if not isinstance(doc, dict):
        raise ReviewError("body must be a JSON object (an AdmissionReview)", reason="invalid_review")
    request = doc.get("request")
    uid = ""
    if isinstance(request, dict) and isinstance(request.get("uid"), str):
        uid = request["uid"]
    if doc.get("apiVersion") != API_VERSION:
        raise ReviewError(
            f"apiVersion {doc.get('apiVersion')!r} is not supported; send {API_VERSION}",
            uid=uid,
            reason="invalid_review",
        )
    if doc.get("kind") != KIND:
        raise ReviewError(f"kind {doc.get('kind')!r} is not {KIND}", uid=uid, reason="invalid_review")
    if not isinstance(request, dict):
        raise ReviewError("request is missing or not an object", reason="invalid_review")
    if not uid:
        raise ReviewError("request.uid is missing or not a string", reason="invalid_review")
    kind = request.get("kind")
    if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        raise ReviewError(
            f"request.kind is {kind!r}; this webhook only admits core/v1 Pods",
            uid=uid,
            reason="not_pod",
        )
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise ReviewError("request.object is missing or not an object", uid=uid, reason="not_pod")
    if pod.get("kind", "Pod") != "Pod" or pod.get("apiVersion", "v1") != "v1":
        raise ReviewError(
            f"request.object is {pod.get('apiVersion')}/{pod.get('kind')}; expected v1/Pod",
            uid=uid,
            reason="not_pod",
        )
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        raise ReviewError("request.object.spec.containers is missing or not a list", uid=uid, reason="invalid_pod")
    meta = pod.get("metadata", {})
    if not isinstance(meta, dict):
        raise ReviewError("request.object.metadata is not an object", uid=uid, reason="invalid_pod")
    return Parsed(uid=uid, request=request, pod=pod)


def parse_review(body: bytes) -> Parsed | Outcome:
    """The review in `body`, or the 400 Outcome naming what is wrong. Pure: safe to run in a thread."""
    try:
        return _parse(body)
    except ReviewError as exc:
        return Outcome(400, error_body(str(exc), uid=exc.uid), "failure", exc.reason)


def review(body: bytes, *, injector: Injector, cluster: str | None = None, network: str | None = None) -> Outcome:
    """`parse_review`, then `answer`."""
    parsed = parse_review(body)
    if isinstance(parsed, Outcome):
        return parsed
    return answer(parsed, injector=injector, cluster=cluster, network=network)


def answer(parsed: Parsed, *, injector: Injector, cluster: str | None = None, network: str | None = None) -> Outcome:
    """Ask the injector about the pod and wrap its decision in an AdmissionReview."""
    uid, request, pod = parsed.uid, parsed.request, parsed.pod
    if request.get("operation", "CREATE") != "CREATE":
        return Outcome(200, _envelope({"uid": uid, "allowed": True}), "skip")
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    try:
        admission = injector.admit(pod, namespace=str(namespace), cluster=cluster, network=network)
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # A pod shape the injector's own checks missed: answer precisely, and log it as a defect.
        log.error("pod shape not caught by validation (uid %s)", uid, exc_info=True)
        message = f"request.object is not a valid Pod: {exc.__class__.__name__}: {exc}"
        return Outcome(400, error_body(message, uid=uid), "failure", "invalid_pod")
    response: dict[str, Any] = {"uid": uid, "allowed": admission.allowed}
    if admission.warnings:
        response["warnings"] = admission.warnings
    if not admission.allowed:
        response["status"] = {
            "code": 400,
            "reason": "BadRequest",
            "message": admission.error or "",
            "status": "Failure",
        }
        return Outcome(200, _envelope(response), "failure", admission.error_reason or "rejected")
    if admission.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(admission.patch, separators=(",", ":")).encode()).decode()
        return Outcome(200, _envelope(response), "success")
    return Outcome(200, _envelope(response), "skip" if admission.skipped else "success")
