"""Custom resources: the `ResourceType`s a stored CustomResourceDefinition makes the server serve.

While a CRD exists, each of its served versions is a resource at `/apis/<group>/<version>/<plural>`
(namespaced or cluster-scoped per `spec.scope`), listed in discovery and in `/openapi/v3`. All
versions share one storage key (`<plural>.<group>`), as they share one etcd prefix in the real
server. What kubesim models, and what it does not:

- unknown fields are pruned (and reported or refused per `fieldValidation`) from the version's
  `openAPIV3Schema` as the structural pruner prunes them (`schema_from_openapi`): `properties` name the
  known fields, `additionalProperties` makes every key known and prunes inside each value by its schema,
  `x-kubernetes-preserve-unknown-fields` keeps the keys it does not list as they are but still prunes inside
  the ones it lists; `x-kubernetes-embedded-resource` keeps an object's apiVersion, kind and metadata, whose
  fields are not checked (the real coercer checks an embedded ObjectMeta); `additionalProperties: false`,
  whose keys the real pruner keeps for validation to refuse (422), prunes them here instead; types, enums,
  patterns and the rest of validation are not checked;
- a strategic merge patch is refused with 415 (custom resources have no patch strategy);
- objects are returned in the apiVersion they were written with (no conversion between versions);
- the status subresource and `additionalPrinterColumns` are not modelled (tables print NAME, AGE).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.kubesim.resources import ResourceType
from tests.kubesim.schemas import ANY, METADATA, Fields, Schema
from tests.kubesim.validation import go_lower

Obj = dict[str, Any]


_EMBEDDED_META = ("apiVersion", "kind", "metadata")  # what pruning skips in an embedded resource (`metaFields`)


def schema_from_openapi(node: Any, *, preserving: bool = False) -> Schema:
    """The pruning schema (`tests.kubesim.schemas` form) of one OpenAPI v3 structural schema node, as the
    structural pruner walks it (`prune` and `skipPrune`, apiextensions-apiserver
    pkg/apiserver/schema/pruning/algorithm.go). An object's key is known when `properties` lists it, its
    value pruned by that property's schema; else when `additionalProperties` is given, its value pruned by
    that schema (`true`: as by no schema, so an object value keeps no field); else it is pruned, unless the
    node has `x-kubernetes-preserve-unknown-fields`, which keeps it as it is. So a preserving node still
    prunes inside what it lists, and a map's values are pruned as their schema says. A list's items are
    pruned by `items` (a preserving list's items as preserving nodes). No schema at all keeps no field of an
    object, and a scalar has nothing below it to prune. `preserving`: the node is an item of a preserving
    list (`skipPrune` of its `items`)."""
    if not isinstance(node, Mapping):
        return ANY if preserving else {}
    preserving = preserving or node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("type") == "array":
        return schema_from_openapi(node.get("items"), preserving=preserving)
    properties = node.get("properties")
    listed: dict[str, Schema] = {}
    if isinstance(properties, Mapping):
        listed = {str(name): schema_from_openapi(sub) for name, sub in properties.items()}
    if node.get("x-kubernetes-embedded-resource") is True:
        listed.update(dict.fromkeys(_EMBEDDED_META, ANY))
    extra = node.get("additionalProperties")
    rest: Schema | None = ANY if preserving else None
    if isinstance(extra, Mapping):
        rest = schema_from_openapi(extra)
    elif extra is True:
        rest = {}
    if rest is None:
        return listed  # only the listed keys are known: none when nothing is listed
    if rest is ANY and not listed:
        return ANY
    return Fields(listed, rest)


def _root_schema(version: Mapping[str, Any]) -> Schema:
    """A version's schema for its objects: its `openAPIV3Schema`, apiVersion, kind and metadata known at the root
    whatever it says (the pruner treats the root as an embedded resource; the metadata is the ObjectMeta's)."""
    node = (version.get("schema") or {}).get("openAPIV3Schema")
    if node is None:
        return ANY
    root = schema_from_openapi(node)
    if root is ANY:
        return ANY
    known = {**root, "apiVersion": ANY, "kind": ANY, "metadata": METADATA}
    return Fields(known, root.rest) if isinstance(root, Fields) else known


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
