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
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

MergeSchema = Mapping[str, str]

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
    """RFC 6902: the patched copy of `target`."""
    if not isinstance(operations, list):
        raise PatchError(400, "json patch must be a list of operations")
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(400, f"json patch operation {index} must be an object with 'op' and 'path'")
    try:
        patch = jsonpatch.JsonPatch(operations)
        return patch.apply(copy.deepcopy(target))
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(422, f"the server rejected our request due to an error in our request: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise PatchError(422, f"the server rejected our request due to an error in our request: {exc}") from None
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise PatchError(400, f"invalid json patch: {exc}") from None


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
