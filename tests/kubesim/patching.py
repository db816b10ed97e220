"""The three patch formats of the API server.

- JSON merge patch (RFC 7386, `application/merge-patch+json`): maps merge, `null` deletes, every
  list is replaced.
- Strategic merge patch (`application/strategic-merge-patch+json`): like a merge patch, but a list
  with a merge key (containers by `name`, container ports by `containerPort`, ...) is merged item
  by item, primitive lists with the merge strategy (finalizers) are unioned, and the directives
  `$patch` (replace/delete/merge), `$retainKeys`, `$setElementOrder/<list>` and
  `$deleteFromPrimitiveList/<list>` are honoured. Which lists merge, and by which key, comes from
  the resource's schema: a mapping from a dotted field path (list items add no segment) to the
  merge key, `""` meaning a primitive list merged as a set.
- JSON patch (RFC 6902, `application/json-patch+json`).

Errors raise `PatchError(status, message)`: 400 for a malformed patch, 422 for one that cannot be
applied to this object.

`decode_patch` reads a patch body as the patch handler (`patch.go`) does, once the object to patch has been
found: under `fieldValidation` Warn (the default) or Strict the body is first decoded strictly (a JSON patch
into `[]handlers.jsonPatchOp`, a merge or strategic merge patch into a map; its repeated and unknown fields
then reported, `tests.kubesim.strictdecoding`), under Ignore only by the patch library (evanphx/json-patch's
`DecodePatch` and `MergePatch`), each with its own words for a body it cannot read. A `null` JSON patch has no
operations, a `null` strategic merge patch changes nothing, a `null` merge patch is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

from tests.kubesim import decoding, strictdecoding

MergeSchema = Mapping[str, str]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
MAX_JSON_PATCH_OPERATIONS = 10000  # `maxJSONPatchOperations`
BAD_MERGE_PATCH = "Invalid JSON Patch"  # evanphx/json-patch's `ErrBadJSONPatch`
# `NewGenericServerResponse` of a 422: what a JSON patch that cannot be applied answers, whatever the reason
NOT_APPLIED = "the server rejected our request due to an error in our request"

SET_ORDER = "$setElementOrder/"
DELETE_FROM_PRIMITIVE = "$deleteFromPrimitiveList/"
RETAIN_KEYS = "$retainKeys"
PATCH = "$patch"


class PatchError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: the patched copy of `target`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: the patched copy of `target`. An operation that cannot be applied (a failed test, a path that
    is not there, no or an unknown `op`) is a 422 that names nothing, as `NewGenericServerResponse` words it."""
    if not isinstance(operations, list):
        raise PatchError(400, "json patch must be a list of operations")
    if any(not isinstance(op, dict) or not isinstance(op.get("op"), str) for op in operations):
        raise PatchError(422, NOT_APPLIED)  # `Operation.Kind` is "unknown": `Unexpected kind: unknown`
    try:
        patch = jsonpatch.JsonPatch(operations)
        return patch.apply(copy.deepcopy(target))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise PatchError(422, NOT_APPLIED) from exc
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise PatchError(422, NOT_APPLIED) from exc


def _syntax(raw: bytes, exc: ValueError) -> str:
    """A body that is not JSON: Go's words for an empty one, the parser's otherwise."""
    return "unexpected end of JSON input" if not raw.strip() else str(exc)


def decode_patch(content_type: str, raw: bytes, field_validation: str) -> tuple[Any, list[str]]:
    """The patch of a body of `content_type`, read as `patch.go` reads it; (the patch, its strict errors).

    Raises PatchError: 400 for a body that cannot be read as the patch type (JSON that is not a list of objects
    for a JSON patch, not an object for the others), 413 for a JSON patch of more than 10000 operations.
    """
    strict = field_validation != "Ignore"
    try:
        patch = decoding.parse_literal(raw)  # numbers as written, for the decoder's messages
    except ValueError as exc:
        reason = _syntax(raw, exc)
        if content_type == STRATEGIC_PATCH:
            raise PatchError(400, reason) from None
        if strict:
            raise PatchError(400, f"error decoding patch: {reason}") from None
        raise PatchError(400, reason if content_type == JSON_PATCH else BAD_MERGE_PATCH) from None
    if content_type == JSON_PATCH:
        return _json_patch_operations(patch, raw, strict=strict)
    if content_type == MERGE_PATCH and patch is None:
        raise PatchError(400, BAD_MERGE_PATCH)
    if patch is None:
        return {}, []
    if not isinstance(patch, dict):
        into = f"json: cannot unmarshal {decoding.json_kind(patch)} into Go value of type map[string]interface {{}}"
        if content_type == STRATEGIC_PATCH:
            raise PatchError(400, into)
        if strict:
            raise PatchError(400, f"error decoding patch: {into}")
        if not isinstance(patch, list):  # `MergePatch` takes a list as the whole new document
            raise PatchError(400, BAD_MERGE_PATCH)
    return patch, strictdecoding.patch_errors(raw, json_patch=False) if strict else []


def _json_patch_operations(patch: Any, raw: bytes, *, strict: bool) -> tuple[list[Any], list[str]]:
    """A JSON patch's operations: strictly into `[]handlers.jsonPatchOp` (whose `op`, `path` and `from` are
    strings) under Warn and Strict, then by `DecodePatch` into `[]jsonpatch.Operation`."""
    operations = [] if patch is None else patch
    prefix = "error decoding patch: " if strict else ""
    if not isinstance(operations, list):
        into = "[]handlers.jsonPatchOp" if strict else "jsonpatch.Patch"
        raise PatchError(
            400, f"{prefix}json: cannot unmarshal {decoding.json_kind(operations)} into Go value of type {into}"
        )
    for op in operations:
        if op is not None and not isinstance(op, dict):
            into = "handlers.jsonPatchOp" if strict else "jsonpatch.Operation"
            raise PatchError(
                400, f"{prefix}json: cannot unmarshal {decoding.json_kind(op)} into Go value of type {into}"
            )
    for op in operations if strict else ():
        for name in ("op", "path", "from"):
            value = (op or {}).get(name)
            if value is not None and not isinstance(value, str):
                raise PatchError(
                    400,
                    f"{prefix}json: cannot unmarshal {decoding.json_kind(value)} into Go struct field "
                    f"jsonPatchOp.{name} of type string",
                )
    errors = strictdecoding.patch_errors(raw, json_patch=True) if strict else []
    if len(operations) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchError(
            413,
            "Request entity too large: The allowed maximum operations in a JSON patch is "
            f"{MAX_JSON_PATCH_OPERATIONS}, got {len(operations)}",
        )
    return operations, errors


def strategic_merge_patch(target: Mapping[str, Any], patch: Any, schema: MergeSchema) -> dict[str, Any]:
    """The strategic-merge-patched copy of `target` (a whole object)."""
    if not isinstance(patch, dict):
        raise PatchError(400, "strategic merge patch must be a JSON object")
    result = _merge_map(copy.deepcopy(dict(target)), patch, "", schema)
    return result if result is not None else {}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _merge_map(original: dict[str, Any], patch: Mapping[str, Any], path: str, schema: MergeSchema) -> Any:
    directive = patch.get(PATCH)
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != PATCH}
    if directive not in (None, "merge"):
        raise PatchError(400, f"unknown patch type: {directive!r} found in map: {dict(patch)!r}")
    retain = patch.get(RETAIN_KEYS)
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith(SET_ORDER):
            if not isinstance(value, list):
                raise PatchError(400, f"invalid {key}: must be a list")
            orders[key[len(SET_ORDER) :]] = value
        elif key.startswith(DELETE_FROM_PRIMITIVE):
            if not isinstance(value, list):
                raise PatchError(400, f"invalid {key}: must be a list")
            deletions[key[len(DELETE_FROM_PRIMITIVE) :]] = value
    for key, value in patch.items():
        if key in (PATCH, RETAIN_KEYS) or key.startswith((SET_ORDER, DELETE_FROM_PRIMITIVE)):
            continue
        field_path = _join(path, key)
        if value is None:
            original.pop(key, None)
            continue
        current = original.get(key)
        if isinstance(value, dict):
            merged = _merge_map(current if isinstance(current, dict) else {}, value, field_path, schema)
            if merged is None:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, list):
            original[key] = _merge_list(current if isinstance(current, list) else [], value, field_path, schema)
        else:
            original[key] = copy.deepcopy(value)
    for key, values in deletions.items():
        if isinstance(original.get(key), list):
            original[key] = [v for v in original[key] if v not in values]
    for key, order in orders.items():
        if isinstance(original.get(key), list):
            original[key] = _apply_order(original[key], order, schema.get(_join(path, key)))
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError(400, f"invalid {RETAIN_KEYS}: must be a list")
        for key in list(original):
            if key not in retain:
                del original[key]
    return original


def _merge_list(original: list[Any], patch: list[Any], path: str, schema: MergeSchema) -> list[Any]:
    key = schema.get(path)
    if key is None:
        for item in patch:
            if isinstance(item, dict) and PATCH in item:
                raise PatchError(400, f"{path}: $patch directives are only allowed in lists with a merge key")
        return copy.deepcopy(patch)
    if key == "":  # primitive list merged as a set
        result = list(original)
        for item in patch:
            if isinstance(item, (dict, list)):
                raise PatchError(400, f"{path}: expected a list of primitives")
            if item not in result:
                result.append(item)
        return result
    if any(isinstance(item, dict) and item.get(PATCH) == "replace" for item in patch):
        return [copy.deepcopy(item) for item in patch if not (isinstance(item, dict) and PATCH in item)]
    result = [copy.deepcopy(item) for item in original]
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(400, f"{path}: expected a list of objects merged by {key!r}")
        if key not in item:
            raise PatchError(422, f"{path}: map: {item!r} does not contain declared merge key: {key}")
        index = next(
            (i for i, have in enumerate(result) if isinstance(have, dict) and have.get(key) == item[key]), None
        )
        if item.get(PATCH) == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            added = _merge_map({}, item, path, schema)
            result.append(added)
        else:
            result[index] = _merge_map(result[index], item, path, schema)
    return result


def _apply_order(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """Reorder a merged list by a `$setElementOrder` list; items not named keep their neighbours."""

    def ident(item: Any) -> Any:
        if key and isinstance(item, dict):
            return item.get(key)
        return item

    wanted = [ident(o) if key and isinstance(o, dict) else o for o in order]
    by_id = {repr(ident(item)): item for item in items}
    ordered = [by_id[repr(w)] for w in wanted if repr(w) in by_id]
    named = {repr(w) for w in wanted}
    result = list(ordered)
    previous: Any = None
    for item in items:
        ident_repr = repr(ident(item))
        if ident_repr in named:
            previous = item
            continue
        position = 0 if previous is None else next(i for i, x in enumerate(result) if x is previous) + 1
        result.insert(position, item)
        previous = item
    return result
