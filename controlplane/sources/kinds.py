"""The object kinds meshplane reads, and the structural checks a document must pass.

The checks are the ones the API server would make before storing the object, reduced to the
fields meshplane reads. A failed check raises `FieldError` naming the field path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.model import names
from controlplane.model.endpoints import EndpointSlice
from controlplane.model.fields import ObjectError
from controlplane.model.security import PeerAuthentication
from controlplane.model.services import Service
from controlplane.model.workloads import Workload


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


Validator = Callable[[Mapping[str, Any]], None]
NameRule = Callable[..., str]  # a `controlplane.model.names` check: (value, *, field) -> value or ObjectError


@dataclass(frozen=True)
class Kind:
    """A kind meshplane reads; `name_rule` is Kubernetes' rule for its `metadata.name`."""

    name: str
    api_versions: frozenset[str]
    namespaced: bool
    validate: Validator | None = None
    name_rule: NameRule = names.dns1123_subdomain


def _string_map(obj: Mapping[str, Any], path: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise FieldError(path, f"must be a map of strings, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise FieldError(f"{path}.{k}", f"must be a string, got {type(v).__name__}")


def _validate_configmap(obj: Mapping[str, Any]) -> None:
    _string_map(obj, "data", obj.get("data"))


def _checked_name(rule: NameRule, value: Any, field: str) -> str:
    try:
        return rule(value, field=field)
    except ObjectError as exc:
        raise FieldError(exc.field, exc.message) from None


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> None:
    """Add (or replace) a kind; each feature registers the kinds it reads."""
    KINDS[kind.name] = kind


register(Kind("Namespace", frozenset({"v1"}), namespaced=False, name_rule=names.dns1123_label))
register(Kind("ConfigMap", frozenset({"v1"}), namespaced=True, validate=_validate_configmap))


def _parsed_by(parse: Callable[[Mapping[str, Any]], object]) -> Validator:
    """A validator that runs the model's own parser, so a stored document is one the model can use."""

    def validate(obj: Mapping[str, Any]) -> None:
        try:
            parse(obj)
        except ObjectError as exc:
            raise FieldError(exc.field, exc.message) from None

    return validate


# The kinds the service registry (controlplane.model.registry) reads.
register(
    Kind(
        "Service",
        frozenset({"v1"}),
        namespaced=True,
        validate=_parsed_by(Service.from_object),
        name_rule=names.dns1035_label,
    )
)
register(Kind("Pod", frozenset({"v1"}), namespaced=True, validate=_parsed_by(Workload.from_object)))
register(
    Kind(
        "EndpointSlice",
        frozenset({"discovery.k8s.io/v1"}),
        namespaced=True,
        validate=_parsed_by(EndpointSlice.from_object),
    )
)
register(
    Kind(
        "PeerAuthentication",
        frozenset({"security.istio.io/v1", "security.istio.io/v1beta1"}),
        namespaced=True,
        validate=_parsed_by(PeerAuthentication.from_object),
    )
)


def check_document(doc: Any) -> Mapping[str, Any]:
    """Return the document with `metadata.namespace` defaulted; raise FieldError if malformed.

    Raises `UnknownKind` for a well-formed document of a kind meshplane does not read.
    """
    if not isinstance(doc, Mapping):
        raise FieldError("(document)", f"must be a mapping, got {type(doc).__name__}")
    for field in ("apiVersion", "kind"):
        if not isinstance(doc.get(field), str) or not doc[field]:
            raise FieldError(field, "is required and must be a non-empty string")
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        raise FieldError("metadata", "is required and must be a mapping")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError("metadata.name", "is required and must be a non-empty string")
    _string_map(doc, "metadata.labels", meta.get("labels"))
    _string_map(doc, "metadata.annotations", meta.get("annotations"))
    kind = KINDS.get(doc["kind"])
    if kind is None:
        raise UnknownKind(doc["kind"])
    if doc["apiVersion"] not in kind.api_versions:
        raise FieldError(
            "apiVersion",
            f"{doc['apiVersion']!r} is not served for {kind.name}; use {', '.join(sorted(kind.api_versions))}",
        )
    _checked_name(kind.name_rule, name, "metadata.name")
    namespace = meta.get("namespace")
    if kind.namespaced:
        if namespace is None:
            namespace = "default"
        _checked_name(names.namespace_name, namespace, "metadata.namespace")
    elif namespace:
        raise FieldError("metadata.namespace", f"{kind.name} is cluster-scoped and takes no namespace")
    if kind.validate is not None:
        kind.validate(doc)
    normalized = dict(doc)
    normalized["metadata"] = {**meta, "namespace": namespace} if kind.namespaced else dict(meta)
    return normalized


class UnknownKind(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
