"""Custom resources: the `ResourceType`s a stored CustomResourceDefinition makes the server serve.

While a CRD exists, each of its served versions is a resource at `/apis/<group>/<version>/<plural>`
(namespaced or cluster-scoped per `spec.scope`), listed in discovery and in `/openapi/v3`. All
versions share one storage key (`<plural>.<group>`), as they share one etcd prefix in the real
server. What kubesim models, and what it does not:

- unknown fields are pruned (and reported or refused per `fieldValidation`) from the version's
  `openAPIV3Schema`: `properties` name the known fields, `x-kubernetes-preserve-unknown-fields`
  and `additionalProperties` keep a subtree as is; types, enums and patterns are not checked;
- a strategic merge patch is refused with 415 (custom resources have no patch strategy);
- objects are returned in the apiVersion they were written with (no conversion between versions);
- the status subresource and `additionalPrinterColumns` are not modelled (tables print NAME, AGE).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.kubesim.resources import ResourceType
from tests.kubesim.schemas import ANY, METADATA, Schema
from tests.kubesim.validation import go_lower

Obj = dict[str, Any]


def schema_from_openapi(node: Any) -> Schema:
    """The pruning schema (`tests.kubesim.schemas` form) of one OpenAPI v3 structural schema node."""
    if not isinstance(node, Mapping) or node.get("x-kubernetes-preserve-unknown-fields") is True:
        return ANY
    extra = node.get("additionalProperties")
    if extra not in (None, False):
        return ANY
    if node.get("type") == "array":
        return schema_from_openapi(node.get("items"))
    properties = node.get("properties")
    if isinstance(properties, Mapping):
        return {str(name): schema_from_openapi(sub) for name, sub in properties.items()}
    if node.get("type") == "object":
        return {}  # an object without properties keeps no fields
    return ANY  # a scalar: nothing below it to prune


def _root_schema(version: Mapping[str, Any]) -> Schema:
    root = schema_from_openapi((version.get("schema") or {}).get("openAPIV3Schema"))
    if root is ANY:
        return ANY
    return {**root, "apiVersion": ANY, "kind": ANY, "metadata": METADATA}


def resource_types(crd: Mapping[str, Any]) -> tuple[ResourceType, ...]:
    """One ResourceType per served version of a (validated) CRD."""
    spec = crd["spec"]
    names = spec["names"]
    kind = str(names["kind"])
    return tuple(
        ResourceType(
            str(spec["group"]),
            str(version["name"]),
            str(names["plural"]),
            str(names.get("singular") or go_lower(kind)),
            kind,
            namespaced=spec["scope"] == "Namespaced",
            short_names=tuple(str(n) for n in names.get("shortNames") or ()),
            categories=tuple(str(c) for c in names.get("categories") or ()),
            generation_fields=("spec",),
            custom=True,
            schema=_root_schema(version),
            custom_list_kind=str(names.get("listKind") or f"{kind}List"),
        )
        for version in spec["versions"]
        if version.get("served") is True
    )


class CustomResources:
    """The resource types served for the CRDs currently stored, by CRD name."""

    def __init__(self) -> None:
        self._by_crd: dict[str, tuple[ResourceType, ...]] = {}

    def set(self, crd: Mapping[str, Any]) -> None:
        """Serve (or re-serve after an update) the versions of `crd`."""
        self._by_crd[str(crd["metadata"]["name"])] = resource_types(crd)

    def remove(self, name: str) -> tuple[ResourceType, ...]:
        """Stop serving the CRD `name`; return the types it served."""
        return self._by_crd.pop(name, ())

    def all(self) -> tuple[ResourceType, ...]:
        return tuple(r for types in self._by_crd.values() for r in types)
