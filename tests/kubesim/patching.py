"""The three patch formats of the API server.

- JSON merge patch (RFC 7386, `application/merge-patch+json`): maps merge, `null` deletes, every
  list is replaced; as evanphx/json-patch v4.12 does it (`merge_patch`).
- Strategic merge patch (`application/strategic-merge-patch+json`): like a merge patch, but a list
  with a merge key (containers by `name`, container ports by `containerPort`, ...) is merged item
  by item, primitive lists with the merge strategy (finalizers) are unioned, and the directives
  `$patch` (replace/delete/merge), `$retainKeys`, `$setElementOrder/<list>` and
  `$deleteFromPrimitiveList/<list>` are honoured. Which lists merge, and by which key, comes from
  the resource's schema: a mapping from a dotted field path (list items add no segment) to the
  merge key, `""` meaning a primitive list merged as a set. It is a port of apimachinery's
  `strategicpatch` (`mergeMap`, `mergeSlice`, `normalizeElementOrder`), list order included, down to
  what Go's slice sharing does to a `$setElementOrder` list; `kubectl patch --local`, which runs that
  library, is the test's oracle. Where Go's map order decides (a list and its
  `$deleteFromPrimitiveList` in one patch), kubesim takes the patch's key order.
- JSON patch (RFC 6902, `application/json-patch+json`), as evanphx/json-patch v4.12 applies it, its
  departures from the RFC included (`json_patch`).

`kubectl patch --local`, which runs the same libraries, is the oracle of the three in the tests.

Errors raise `PatchError(status, message)`: 400 for a malformed patch, 422 for one that cannot be
applied to this object, 500 where the library panics (a JSON patch `test` reaching a null list item).

`decode_patch` reads a patch body as the patch handler (`patch.go`) does, once the object to patch has been
found: under `fieldValidation` Warn (the default) or Strict the body is first decoded strictly (a JSON patch
into `[]handlers.jsonPatchOp`, a merge or strategic merge patch into a map; its repeated and unknown fields
then reported, `tests.kubesim.strictdecoding`), under Ignore only by the patch library (evanphx/json-patch's
`DecodePatch` and `MergePatch`), each with its own words for a body it cannot read. A `null` JSON patch has no
operations, a `null` strategic merge patch changes nothing, a `null` merge patch is refused.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

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
    """RFC 7386 as evanphx/json-patch's `MergePatch` applies it: the patched copy of `target`. A value taken
    whole from the patch loses the null members of its objects, also inside lists, except where it
    replaces an object's member that was an object (the patch's value is then taken as written); a
    list patch is the new document."""
    if isinstance(patch, list):
        return _pruned(copy.deepcopy(patch))
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    document = copy.deepcopy(target) if isinstance(target, dict) else {}
    _merge_docs(document, copy.deepcopy(patch))
    return document


def _merge_docs(document: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            document.pop(key, None)
        elif not isinstance(document.get(key), dict):  # absent, null, or not an object
            document[key] = _pruned(value)
        elif isinstance(value, dict):
            _merge_docs(document[key], value)
        else:
            document[key] = value


def _pruned(value: Any) -> Any:
    """`pruneNulls`: null members of objects dropped, at every depth; a list keeps its null items."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) if v is not None else None for v in value]
    return value


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 as evanphx/json-patch v4 applies it (what the API server and `kubectl patch` run): the
    patched copy of `target`. Its ways: `replace` and `copy` of an absent key act on null, `replace` of the
    whole document with a value that is not an object or a list does nothing, `test` of
    an absent key passes for null, list indexes may be negative (`-1` is the last; for `add`, the end),
    a move's destination is found after its source is removed, `add` and `remove` of the whole
    document fail. An operation that cannot be applied is a 422 that names nothing, as
    `NewGenericServerResponse` words it."""
    if not isinstance(operations, list):
        raise PatchError(400, "json patch must be a list of operations")
    document = copy.deepcopy(target)
    try:
        for op in operations:
            document = _json_operation(document, op if isinstance(op, dict) else {})
    except _NotApplied:
        raise PatchError(422, NOT_APPLIED) from None
    return document


class _NotApplied(Exception):
    """An operation evanphx/json-patch refuses."""


def _operation_text(op: Mapping[str, Any], name: str) -> str:
    value = op.get(name)
    if not isinstance(value, str):
        raise _NotApplied(f"operation missing {name} field")
    return value


def _json_operation(document: Any, op: Mapping[str, Any]) -> Any:
    kind = op.get("op") if isinstance(op.get("op"), str) else "unknown"
    value = copy.deepcopy(op.get("value"))
    if kind == "add":
        parent, key = _find(document, _operation_text(op, "path"))
        _container_add(parent, key, value)
    elif kind == "remove":
        parent, key = _find(document, _operation_text(op, "path"))
        _container_remove(parent, key)
    elif kind == "replace":
        path = _operation_text(op, "path")
        if path == "":  # v4.12 wraps a nil error for a value that is neither: nothing happens
            return value if isinstance(value, (dict, list)) else document
        parent, key = _find(document, path)
        _container_get(parent, key)
        _container_set(parent, key, value)
    elif kind in ("move", "copy"):
        source, key = _find(document, _operation_text(op, "from"))
        moved = _container_get(source, key)
        if kind == "move":
            _container_remove(source, key)
        parent, key = _find(document, _operation_text(op, "path"))
        _container_add(parent, key, copy.deepcopy(moved))
    elif kind == "test":
        path = _operation_text(op, "path")
        if path == "":
            if not _json_equal(document, value):
                raise _NotApplied("testing value failed")
            return document
        parent, key = _find(document, path)
        have = _container_get(parent, key)
        if (have is None) != (value is None) or (have is not None and not _json_equal(have, value)):
            raise _NotApplied("testing value failed")
    else:
        raise _NotApplied(f"Unexpected kind: {kind}")
    return document


def _pointer_token(token: str) -> str:
    return re.sub("~[01]", lambda m: "/" if m.group() == "~1" else "~", token)


def _find(document: Any, path: str) -> tuple[Any, str]:
    """`findObject`: the container the last token of `path` is in, and that token."""
    tokens = path.split("/")
    if len(tokens) < 2:
        raise _NotApplied(f"doc is missing path: {path!r}")
    node = document
    for token in tokens[1:-1]:
        try:
            node = _container_get(node, _pointer_token(token))
        except _NotApplied:
            node = None
        if not isinstance(node, (dict, list)):
            raise _NotApplied(f"doc is missing path: {path!r}")
    if not isinstance(node, (dict, list)):
        raise _NotApplied(f"doc is missing path: {path!r}")
    return node, _pointer_token(tokens[-1])


def _atoi(key: str) -> int:
    """strconv.Atoi: an optional sign and decimal digits, leading zeros allowed."""
    if not re.fullmatch("[+-]?[0-9]+", key):
        raise _NotApplied(f"not an array index: {key!r}")
    return int(key)


def _container_get(container: Any, key: str) -> Any:
    if isinstance(container, dict):
        return container.get(key)
    index = _atoi(key)
    if index < 0:
        if index < -len(container):
            raise _NotApplied(f"Unable to access invalid index: {index}")
        index += len(container)
    if index >= len(container):
        raise _NotApplied(f"Unable to access invalid index: {index}")
    return container[index]


def _container_set(container: Any, key: str, value: Any) -> None:
    if isinstance(container, dict):
        container[key] = value
        return
    index = _atoi(key)
    container[index + len(container) if index < 0 else index] = value  # `get` checked the range


def _container_add(container: Any, key: str, value: Any) -> None:
    if isinstance(container, dict):
        container[key] = value
        return
    if key == "-":
        container.append(value)
        return
    index, size = _atoi(key), len(container) + 1
    if index >= size or index < -size:
        raise _NotApplied(f"Unable to access invalid index: {index}")
    container.insert(index + size if index < 0 else index, value)


def _container_remove(container: Any, key: str) -> None:
    if isinstance(container, dict):
        if key not in container:
            raise _NotApplied(f"Unable to remove nonexistent key: {key}")
        del container[key]
        return
    index = _atoi(key)
    if index >= len(container) or index < -len(container):
        raise _NotApplied(f"Unable to access invalid index: {index}")
    del container[index]


def _json_equal(left: Any, right: Any) -> bool:
    """`lazyNode.equal`: structure, with scalars compared as their JSON text (true is not 1)."""
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(
            (left[k] is None) == (right[k] is None) and (left[k] is None or _json_equal(left[k], right[k]))
            for k in left
        )
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return False
        for a, b in zip(left, right, strict=True):
            if a is None or b is None:  # a nil list item: `lazyNode.equal` dereferences it and panics
                raise PatchError(
                    500, "Internal error occurred: runtime error: invalid memory address or nil pointer dereference"
                )
            if not _json_equal(a, b):
                return False
        return True
    if isinstance(left, (dict, list)) or isinstance(right, (dict, list)):
        return False
    return json.dumps(left) == json.dumps(right)


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
    """The strategic-merge-patched copy of `target` (a whole object), as apimachinery's `strategicpatch`
    computes it (`StrategicMergeMapPatchUsingLookupPatchMeta`: parallel lists merged, unmatched nulls
    ignored), list order included: the items the patch names in its order, the others where they were."""
    if not isinstance(patch, dict):
        raise PatchError(400, "strategic merge patch must be a JSON object")
    return _merge_map(copy.deepcopy(dict(target)), copy.deepcopy(patch), "", schema)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _go_type(value: Any) -> str:
    """The Go type `encoding/json` decodes `value` to (what `mergeMap` compares)."""
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "slice"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    return "string" if isinstance(value, str) else "nil"


def _no_merge_key(item: Any, key: str) -> PatchError:
    return PatchError(422, f"map: {decoding.go_format(item)} does not contain declared merge key: {key}")


def _merge_map(original: dict[str, Any], patch: dict[str, Any], path: str, schema: MergeSchema) -> dict[str, Any]:
    """`mergeMap`. Both arguments are this call's own copies: they are changed."""
    if PATCH in patch:
        directive = patch.pop(PATCH)
        if directive == "replace":
            return patch
        if directive == "delete":
            return {}
        raise PatchError(
            400,
            f"unknown patch type: {decoding.go_format(directive)} in map: "
            f"{decoding.go_format({PATCH: directive, **patch})}",
        )
    _retain_keys(original, patch)
    _set_element_orders(original, patch, path, schema)
    for written, value in list(patch.items()):
        delete_list = written.startswith(DELETE_FROM_PRIMITIVE)
        key = written[len(DELETE_FROM_PRIMITIVE) :] if delete_list else written
        if not delete_list and written.startswith("$deleteFromPrimitiveList"):
            raise PatchError(400, "invalid patch format of primitive list")
        if value is None:
            original.pop(key, None)
            continue
        if key not in original or _go_type(original[key]) != _go_type(value):
            if not delete_list:
                kept, keep = _remove_directives(value)
                if keep:
                    original[key] = kept
                else:
                    original.pop(key, None)
            continue
        current = original[key]
        if isinstance(value, dict):
            original[key] = _merge_map(current, value, _join(path, key), schema)
        elif isinstance(value, list):
            merge_key = schema.get(_join(path, key))
            if merge_key is not None or delete_list:
                original[key] = _merge_slice(
                    current, value, _join(path, key), merge_key or "", schema, delete_list=delete_list
                )
            else:
                original[key] = value  # an atomic list: the patch's, as it is
        else:
            original[key] = value
    return original


def _remove_directives(value: Any) -> tuple[Any, bool]:
    """`removeDirectives`: a value taken whole from the patch, without directive maps; False: drop it."""
    if isinstance(value, dict):
        if PATCH in value:
            return None, False
        kept_map: dict[str, Any] = {}
        for key, item in value.items():
            kept, keep = _remove_directives(item)
            if keep:
                kept_map[key] = kept
        return kept_map, True
    if isinstance(value, list):
        out = []
        for item in value:
            kept, keep = _remove_directives(item)
            if keep:
                out.append(kept)
        return out, True
    return value, True


def _retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    """`applyRetainKeysDirective` (parallel lists merged): keys of `original` not listed are cleared."""
    if RETAIN_KEYS not in patch:
        return
    retain = patch.pop(RETAIN_KEYS)
    if not isinstance(retain, list):
        raise PatchError(400, "invalid patch format of retainKeys")
    for key, value in patch.items():
        if value is None or key.startswith((DELETE_FROM_PRIMITIVE, SET_ORDER)):
            continue
        if key not in retain:
            raise PatchError(400, "invalid patch format of retainKeys")
    for key in list(original):
        if key not in retain:
            del original[key]


def _element_kind(*lists: list[Any]) -> str:
    """`sliceElementType`: the one Go type of every item ("" for no items)."""
    kind = ""
    for items in lists:
        for item in items:
            this = _go_type(item)
            if this == "slice":
                raise PatchError(400, "lists of lists are not supported")
            if kind and this != kind:
                raise PatchError(400, f"list element types are not identical: {decoding.go_format(list(lists))}")
            kind = this
    return kind


def _ident(item: Any, key: str, kind: str) -> Any:
    if kind == "map":
        return item.get(key) if isinstance(item, dict) else None
    return item


def _index(items: list[Any], item: Any, key: str, kind: str) -> int:
    wanted = _ident(item, key, kind)
    for position, candidate in enumerate(items):
        if _go_equal(_ident(candidate, key, kind), wanted):
            return position
    return -1


def _go_equal(left: Any, right: Any) -> bool:
    """`==` of two decoded JSON scalars held as interface{} (a bool is never equal to a number)."""
    return _go_type(left) == _go_type(right) and left == right


def _set_element_orders(original: dict[str, Any], patch: dict[str, Any], path: str, schema: MergeSchema) -> None:
    """`mergePatchIntoOriginal`: each `$setElementOrder/<list>` with its list, merged and put in that order."""
    for directive in [k for k in patch if k.startswith("$setElementOrder")]:
        order = patch.pop(directive)
        if not directive.startswith(SET_ORDER):
            raise PatchError(400, "invalid patch format of setElementOrder list")
        if not isinstance(order, list):
            raise PatchError(400, f"expected a []interface {{}}, but received a {_go_type(order)}")
        key = directive[len(SET_ORDER) :]
        list_path = _join(path, key)
        merge_key = schema.get(list_path)
        in_original, in_patch = key in original, key in patch
        for value in (original.get(key, []), patch.get(key, [])):
            if not isinstance(value, list):
                raise PatchError(400, f"expected a []interface {{}}, but received a {_go_type(value)}")
        original_list: list[Any] = original.get(key, [])
        patch_list: list[Any] = patch.get(key, [])
        _check_order(patch_list, order, merge_key or "")
        if in_original and not in_patch:
            merged = original_list
        elif in_patch and not in_original:
            merged, _ = _remove_directives(patch_list)
        elif in_original:
            if merge_key is not None:
                merged = _merge_slice(original_list, patch_list, list_path, merge_key, schema, delete_list=False)
            else:
                merged = patch_list
        else:
            continue
        kind = _element_kind(original_list, patch_list)
        first, rest = _partition(merged, order, merge_key or "", kind)
        original[key] = _normalize(first, rest, order=(order, original_list), key=merge_key or "", kind=kind)
        patch.pop(key, None)


def _check_order(patch_list: list[Any], order: list[Any], key: str) -> None:
    """`validatePatchWithSetOrderList`: the patch's items appear in the order list, in its order."""
    if not order or not patch_list:
        return
    items = [i for i in patch_list if not (isinstance(i, dict) and i.get(PATCH) == "delete")] if key else patch_list
    patch_index = order_index = 0
    while patch_index < len(items) and order_index < len(order):
        item = items[patch_index]
        if isinstance(item, dict) and PATCH in item:
            patch_index += 1
            continue
        if key:
            for value in (item, order[order_index]):
                if not isinstance(value, dict):
                    raise PatchError(400, f"expected a map[string]interface {{}}, but received a {_go_type(value)}")
                if key not in value:
                    raise _no_merge_key(value, key)
            equal = _go_equal(item[key], order[order_index][key])
        else:
            equal = _go_equal(item, order[order_index])
        if equal:
            patch_index += 1
        order_index += 1
    if patch_index < len(items):
        raise PatchError(
            400,
            f"The order in patch list:\n{decoding.go_format(patch_list)}\n doesn't match $setElementOrder list:\n"
            f"{decoding.go_format(order)}\n",
        )


def _merge_slice(
    original: list[Any], patch: list[Any], path: str, key: str, schema: MergeSchema, *, delete_list: bool
) -> list[Any]:
    """`mergeSlice`: merge, then the patch's items in the patch's order and the others in place."""
    if not original and not patch:
        return original
    kind = _element_kind(original, patch)
    if kind != "map":
        if delete_list:
            return [item for item in original if not any(_go_equal(item, gone) for gone in patch)]
        merged = _deduplicated(original + patch)
    else:
        if not key:
            raise PatchError(400, f"cannot merge lists without merge key for {path.rsplit('.', 1)[-1]}")
        backing, capacity = original, _go_capacity(len(original))
        original, patch, shared = _special_items(original, patch, key)
        merged = list(original)
        for item in patch:
            if key not in item:
                raise _no_merge_key(item, key)
            position = next(
                (
                    i
                    for i, have in enumerate(merged)
                    if isinstance(have, dict) and key in have and _go_equal(have[key], item[key])
                ),
                None,
            )
            if position is None:
                merged.append(item)
                position = len(merged) - 1
            else:
                merged[position] = _merge_map(merged[position], item, path, schema)
            if shared and position < min(capacity, len(backing)):
                backing[position] = merged[position]  # Go's append wrote into the caller's array
    first, rest = _partition(merged, patch, key, kind)
    return _normalize(first, rest, order=(patch, original), key=key, kind=kind)


def _go_capacity(length: int) -> int:
    """The capacity `encoding/json` leaves a decoded list of `length` items: it appends one at a time."""
    capacity = 0
    while capacity < length:
        capacity = max(1, capacity * 2)
    return capacity


def _special_items(original: list[Any], patch: list[Any], key: str) -> tuple[list[Any], list[Any], bool]:
    """`mergeSliceWithSpecialElements`: `$patch: delete` items remove theirs, `replace` makes the patch
    (without its directive items) the whole list. Returns the list to merge into, the patch's plain
    items, and whether that list still shares the caller's array.

    Go deletes with `append(s[:i], s[i+1:]...)`, which moves the later items down in the caller's own
    array: a `$setElementOrder` of the same list then orders by what it sees there. `original` (the
    caller's list) is changed the same way."""
    plain: list[Any] = []
    replace = False
    length = len(original)
    for item in patch:
        if PATCH not in item:
            plain.append(item)
            continue
        directive = item[PATCH]
        if directive == "delete":
            if key not in item:
                raise _no_merge_key(item, key)
            for have in original[:length]:
                if not isinstance(have, dict):
                    raise PatchError(400, "value for key is not a map")
            while True:
                found = [
                    i for i, have in enumerate(original[:length]) if key in have and _go_equal(have[key], item[key])
                ]
                if not found:
                    break
                original[found[0] : length - 1] = original[found[0] + 1 : length]
                length -= 1
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError(400, "merging lists cannot yet be specified in the patch")
        else:
            raise PatchError(
                400, f"unknown patch type: {decoding.go_format(directive)} in map: {decoding.go_format(item)}"
            )
    return (plain, [], False) if replace else (original[:length], plain, True)


def _deduplicated(items: list[Any]) -> list[Any]:
    """`deduplicateScalars`, whose swaps decide the order of what is left."""
    s = list(items)
    length = len(s) - 1
    i = 0
    while i < length:
        j = i + 1
        while j <= length:
            if _go_equal(s[i], s[j]):
                s[j] = s[length]
                s = s[:length]
                length -= 1
                j -= 1
            j += 1
        i += 1
    return s


def _partition(items: list[Any], by: list[Any], key: str, kind: str) -> tuple[list[Any], list[Any]]:
    """Items named in `by` (by merge key for maps), and the others: `partition...ByPresentInList`."""
    named: list[Any] = []
    others: list[Any] = []
    for item in items:
        if key:
            if not isinstance(item, dict):
                raise PatchError(400, f"expected a map[string]interface {{}}, but received a {_go_type(item)}")
            if key not in item:
                raise _no_merge_key(item, key)
            found = any(isinstance(b, dict) and key in b and _go_equal(b[key], item[key]) for b in by)
        else:
            found = any(_go_equal(b, item) for b in by)
        (named if found else others).append(item)
    return named, others


def _normalize(
    patch_items: list[Any], server_only: list[Any], *, order: tuple[list[Any], list[Any]], key: str, kind: str
) -> list[Any]:
    """`normalizeElementOrder`: each part sorted by its order, then the server's items interleaved into
    the patch's by their places on the server."""
    patch_order, server_order = order
    patch_items = _sorted_by(patch_items, patch_order, key, kind)
    server_only = _sorted_by(server_only, server_order, key, kind)
    merged: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(patch_items):
        if i >= len(server_only):
            merged.append(patch_items[j])
            j += 1
        elif j >= len(patch_items):
            merged.append(server_only[i])
            i += 1
        else:
            left, right = (
                _index(server_order, server_only[i], key, kind),
                _index(server_order, patch_items[j], key, kind),
            )
            if left >= 0 and right >= 0 and left < right:
                merged.append(server_only[i])
                i += 1
            else:
                merged.append(patch_items[j])
                j += 1
    return merged


def _sorted_by(items: list[Any], order: list[Any], key: str, kind: str) -> list[Any]:
    """`normalizeSliceOrder`: Go's stable insertion sort with its `less` (true when either item is not in
    `order`); `$patch: delete` items last."""
    deleted: list[Any] = []
    if kind == "map":
        for value in [*items, *order]:
            if not isinstance(value, dict):
                raise PatchError(400, f"expected a map[string]interface {{}}, but received a {_go_type(value)}")
            if key not in value:
                raise _no_merge_key(value, key)
        deleted = [item for item in items if item.get(PATCH) == "delete"]
        items = [item for item in items if item.get(PATCH) != "delete"]
    out = list(items)

    def less(a: Any, b: Any) -> bool:
        ia, ib = _index(order, a, key, kind), _index(order, b, key, kind)
        return ia < ib if ia >= 0 and ib >= 0 else True

    for i in range(1, len(out)):
        j = i
        while j > 0 and less(out[j], out[j - 1]):
            out[j], out[j - 1] = out[j - 1], out[j]
            j -= 1
    return out + deleted
