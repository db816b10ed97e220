"""Server-side apply and managedFields, as the API server's field manager keeps them.

Ownership is tracked per field manager in `metadata.managedFields` (`fieldsType: FieldsV1`): every
create, update and patch records what its manager (`fieldManager`, else the User-Agent's product) changed
as an `operation: Update` entry (`track_update`); an apply (`PATCH application/apply-patch+yaml`) records
exactly the fields its configuration sets as an `operation: Apply` entry (`apply`). A field is a path of
elements serialized as in FieldsV1: `f:<name>` (a field), `k:{"name":"x"}` (an item of a list merged by
keys), `v:"x"` (an item of a set). Lists merge by the keys `ResourceType.merge_keys` names for strategic
merge (ports also by `protocol`, default TCP); other lists, label selectors and roleRefs are atomic.

Apply, as structured-merge-diff does it: the configuration is merged into the live object; fields the
applier owned and no longer sends are removed unless another applier owns them; a field the applier
changes that another manager owns is a conflict (`ApplyConflict`, 409, naming fields and managers)
unless `force`, which takes it over. `status` of resources with a status subresource, and the system
metadata (name, uid, resourceVersion, ...) are never owned.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tests.kubesim.resources import ResourceType

Obj = dict[str, Any]
Path = tuple[str, ...]
FIELDS_TYPE = "FieldsV1"
STRIPPED_METADATA = frozenset(
    (
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    )
)
KEY_DEFAULTS = {"protocol": "TCP"}
ATOMIC_SUFFIXES = ("namespaceSelector", "objectSelector", "roleRef")
ATOMIC_SELECTOR_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "PodDisruptionBudget", "Job")
_ITEM = "<item>"  # the value recorded for a list item: items compare by presence, their fields by value


class ApplyError(Exception):
    """An apply configuration that cannot be typed (a list item without its key, ...): `status` and `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Conflict:
    """Fields another manager owns that an apply would change."""

    manager: str
    operation: str
    api_version: str
    subresource: str
    paths: tuple[Path, ...]

    def who(self) -> str:
        """The manager as the API server prints it in a conflict message."""
        text = json.dumps(self.manager)
        if self.subresource:
            text = f"{text} with subresource {json.dumps(self.subresource)}"
        return f"{text} using {self.api_version}" if self.operation == "Update" else text


class ApplyConflict(Exception):
    """409 Conflict: `message` in the API server's wording, `causes` one per field (type FieldManagerConflict)."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        self.conflicts = conflicts
        flat = [(c, p) for c in conflicts for p in c.paths]
        if len(flat) == 1:
            message = f"Apply failed with 1 conflict: conflict with {flat[0][0].who()}: {path_string(flat[0][1])}"
        else:
            lines = []
            for conflict in conflicts:
                lines.append(f"conflicts with {conflict.who()}:")
                lines.extend(f"- {path_string(p)}" for p in conflict.paths)
            message = f"Apply failed with {len(flat)} conflicts: " + "\n".join(lines)
        super().__init__(message)
        self.message = message
        self.causes = [
            {"reason": "FieldManagerConflict", "message": f"conflict with {c.who()}", "field": path_string(p)}
            for c, p in flat
        ]


@dataclass(frozen=True)
class Shape:
    """How field ownership sees one resource: associative lists with their keys, atomic maps, status."""

    keys: Mapping[str, tuple[str, ...]]  # dotted path (list items add no segment) -> key fields; () = a set
    atomic: frozenset[str]
    owns_status: bool

    @classmethod
    def of(cls, resource: ResourceType) -> Shape:
        keys: dict[str, tuple[str, ...]] = {}
        for path, key in resource.merge_keys.items():
            if key == "containerPort":
                keys[path] = ("containerPort", "protocol")
            elif key == "port" and resource.kind == "Service":
                keys[path] = ("port", "protocol")
            else:
                keys[path] = (key,) if key else ()
        atomic = {"spec.selector"} if resource.kind in ATOMIC_SELECTOR_KINDS else set()
        return cls(keys=keys, atomic=frozenset(atomic), owns_status=not resource.status_subresource)

    def is_atomic(self, dotted: str) -> bool:
        return dotted in self.atomic or dotted.rsplit(".", 1)[-1] in ATOMIC_SUFFIXES


# -- paths ----------------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def path_string(path: Path) -> str:
    """A path as structured-merge-diff prints it: `.spec.containers[name="app"].image`."""
    out = []
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            out.append(f".{rest}")
        elif kind == "k":
            key = json.loads(rest)
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(key.items())) + "]")
        else:
            out.append(f"[={rest}]")
    return "".join(out)


def _key_element(item: Any, keys: tuple[str, ...], dotted: str, index: int) -> str:
    if not isinstance(item, dict):
        raise ApplyError(500, f".{dotted}: element {index}: expected an object merged by {', '.join(keys)}")
    key = {}
    for name in keys:
        if name in item:
            key[name] = item[name]
        elif name in KEY_DEFAULTS:
            key[name] = KEY_DEFAULTS[name]
        else:
            raise ApplyError(
                500,
                f".{dotted}: element {index}: associative list with keys has an element that omits key field "
                f'"{name}" (and doesn\'t have default value)',
            )
    return f"k:{_compact(key)}"


def members(obj: Mapping[str, Any] | None, shape: Shape) -> dict[Path, Any]:
    """Every path a manager can own in `obj`, with its value (list items: a marker, compared by presence).

    Raises ApplyError for an associative list item without its key.
    """
    out: dict[Path, Any] = {}
    if not obj:
        return out
    top = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind") and (shape.owns_status or k != "status")}
    meta = top.get("metadata")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in STRIPPED_METADATA}
        if meta:
            top["metadata"] = meta
        else:
            top.pop("metadata")
    _walk_map(top, (), "", shape, out)
    return out


def _walk_map(value: Mapping[str, Any], path: Path, dotted: str, shape: Shape, out: dict[Path, Any]) -> None:
    for key, child in value.items():
        _walk(child, (*path, f"f:{key}"), f"{dotted}.{key}" if dotted else key, shape, out)


def _walk(value: Any, path: Path, dotted: str, shape: Shape, out: dict[Path, Any]) -> None:
    if isinstance(value, dict) and value and not shape.is_atomic(dotted):
        _walk_map(value, path, dotted, shape, out)
    elif isinstance(value, list) and dotted in shape.keys:
        keys = shape.keys[dotted]
        for index, item in enumerate(value):
            element = _key_element(item, keys, dotted, index) if keys else f"v:{_compact(item)}"
            out[(*path, element)] = _ITEM
            if keys:
                _walk_map(item, (*path, element), dotted, shape, out)
    else:
        out[path] = value


def _changes(old: Mapping[Path, Any], new: Mapping[Path, Any]) -> tuple[frozenset[Path], frozenset[Path]]:
    """(added or modified, removed) between two member maps."""
    changed = frozenset(p for p, v in new.items() if p not in old or old[p] != v)
    return changed, frozenset(p for p in old if p not in new)


# -- managedFields entries ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One `metadata.managedFields` entry."""

    manager: str
    operation: str  # Apply | Update
    api_version: str
    time: str
    fields: frozenset[Path]
    subresource: str = ""

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes two entries the same manager (an applier's apiVersion is not part of it)."""
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)


def encode_fields(paths: Iterable[Path]) -> dict[str, Any]:
    """A set of paths as a FieldsV1 tree (`.` marks a member that also has members below it)."""
    root: dict[str, Any] = {}
    listed = list(paths)
    for path in listed:
        node = root
        for element in path:
            node = node.setdefault(element, {})
    for path in listed:
        node = root
        for element in path:
            node = node[element]
        if node:
            node["."] = {}
    return _sorted_tree(root)


def _sorted_tree(node: dict[str, Any]) -> dict[str, Any]:
    return {k: _sorted_tree(node[k]) for k in sorted(node, key=lambda k: (k != ".", k))}


def decode_fields(tree: Any, prefix: Path = ()) -> frozenset[Path]:
    """The paths of a FieldsV1 tree; ValueError when it is not one."""
    if not isinstance(tree, dict):
        raise ValueError("fieldsV1 must be an object")
    found: set[Path] = set()
    for element, child in tree.items():
        if element == ".":
            found.add(prefix)
            continue
        if not isinstance(element, str) or element[:2] not in ("f:", "k:", "v:", "i:"):
            raise ValueError(f"invalid field path element {element!r}")
        if not isinstance(child, dict):
            raise ValueError(f"the value of {element!r} must be an object")
        if child:
            found |= decode_fields(child, (*prefix, element))
        else:
            found.add((*prefix, element))
    return frozenset(found)


def decode_entries(raw: Any) -> list[Entry]:
    """`metadata.managedFields` as entries; ValueError naming the first malformed one."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("metadata.managedFields must be a list")
    entries = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("operation") not in ("Apply", "Update"):
            raise ValueError(f"metadata.managedFields[{index}].operation must be Apply or Update")
        if item.get("fieldsType", FIELDS_TYPE) != FIELDS_TYPE:
            raise ValueError(f'metadata.managedFields[{index}].fieldsType must be "{FIELDS_TYPE}"')
        entries.append(
            Entry(
                manager=str(item.get("manager", "")),
                operation=item["operation"],
                api_version=str(item.get("apiVersion", "")),
                time=str(item.get("time", "")),
                fields=decode_fields(item.get("fieldsV1") or {}),
                subresource=str(item.get("subresource", "")),
            )
        )
    return entries


def encode_entries(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Entries in the API server's order: appliers first, then by time, manager, apiVersion, subresource."""
    ordered = sorted(entries, key=lambda e: (e.operation, e.time, e.manager, e.api_version, e.subresource))
    out = []
    for entry in ordered:
        item: dict[str, Any] = {
            "manager": entry.manager,
            "operation": entry.operation,
            "apiVersion": entry.api_version,
            "time": entry.time,
            "fieldsType": FIELDS_TYPE,
            "fieldsV1": encode_fields(entry.fields),
        }
        if entry.subresource:
            item["subresource"] = entry.subresource
        out.append(item)
    return out


def _store(obj: Obj, entries: list[Entry]) -> None:
    meta = obj.setdefault("metadata", {})
    if entries:
        meta["managedFields"] = encode_entries(entries)
    else:
        meta.pop("managedFields", None)


# -- update (create, update, patch) ---------------------------------------------------------------


def track_update(
    *, resource: ResourceType, old: Obj | None, new: Obj, manager: str, api_version: str, now: str
) -> None:
    """Set `new`'s managedFields after `manager` wrote it over `old` (None: a create), operation Update.

    The entries start from those the request set (when it changed them; `[{}]` clears them) or else the
    stored ones; the manager then owns what it added or changed, others lose it, and removed fields leave
    every entry. A write that changes nothing leaves the entries (and their times) alone. A malformed list
    the request sent is ignored, as the API server does.
    """
    shape = Shape.of(resource)
    stored = (old or {}).get("metadata", {}).get("managedFields")
    sent = new.get("metadata", {}).get("managedFields")
    try:
        base = decode_entries(stored)
        if sent is not None and sent != stored:
            base = [e for e in decode_entries(sent) if e.fields or e.manager]
    except ValueError:
        base = []
    try:
        changed, removed = _changes(members(old, shape), members(new, shape))
    except ApplyError:
        changed, removed = frozenset(), frozenset()  # validation rejects such an object with a better message
    if not changed and not removed and sent in (None, stored):
        _store(new, base)
        return
    result = []
    owned: frozenset[Path] = frozenset()
    for entry in base:
        if entry.identity == (manager, "Update", api_version, ""):
            owned = entry.fields
            continue
        fields = entry.fields - changed - removed
        if fields:
            result.append(replace(entry, fields=fields))
    owned = (owned | changed) - removed
    if owned:
        result.append(Entry(manager=manager, operation="Update", api_version=api_version, time=now, fields=owned))
    _store(new, result)


# -- apply ----------------------------------------------------------------------------------------


def apply(
    *,
    resource: ResourceType,
    live: Obj | None,
    config: Obj,
    manager: str,
    force: bool,
    api_version: str,
    now: str,
) -> Obj:
    """The object after `manager` applies `config` to `live` (None: it is created), managedFields set.

    Raises ApplyConflict when another manager owns a field this apply changes (unless `force`: then
    the applier takes it over), ApplyError when the configuration cannot be typed.
    """
    shape = Shape.of(resource)
    base = decode_entries((live or {}).get("metadata", {}).get("managedFields"))
    wanted = members(config, shape)
    applied = frozenset(wanted)
    me = (manager, "Apply", "", "")
    last = next((e.fields for e in base if e.identity == me), frozenset())
    others_applied = frozenset().union(*(e.fields for e in base if e.operation == "Apply" and e.identity != me))
    merged: Obj = _merge(copy.deepcopy(live) if live else {}, config, "", shape)
    keep = applied | others_applied
    for path in sorted(last - keep, key=len):  # outermost first; a node still owned below stays
        if not any(len(k) > len(path) and k[: len(path)] == path for k in keep):
            _remove(merged, path, "", shape)
    live_members = members(live, shape)
    changed, removed = _changes(live_members, members(merged, shape))
    conflicts = [
        Conflict(
            manager=e.manager,
            operation=e.operation,
            api_version=e.api_version,
            subresource=e.subresource,
            paths=tuple(sorted(e.fields & changed)),
        )
        for e in sorted(base, key=lambda e: e.identity)
        if e.identity != me and e.fields & changed
    ]
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    if not changed and not removed and applied == last:
        _store(merged, base)
        return merged
    result = [replace(e, fields=e.fields - changed - removed) for e in base if e.identity != me]
    result = [e for e in result if e.fields]
    if applied:
        result.append(Entry(manager=manager, operation="Apply", api_version=api_version, time=now, fields=applied))
    _store(merged, result)
    return merged


def _merge(live: Any, config: Any, dotted: str, shape: Shape) -> Any:
    """`config` merged into `live` (modified in place when both are maps): maps by field, keyed lists by key."""
    if isinstance(config, dict) and isinstance(live, dict) and not shape.is_atomic(dotted):
        for key, value in config.items():
            child = f"{dotted}.{key}" if dotted else key
            live[key] = _merge(live.get(key), value, child, shape)
        return live
    if isinstance(config, list) and isinstance(live, list) and dotted in shape.keys:
        keys = shape.keys[dotted]
        if not keys:
            return [*live, *(copy.deepcopy(v) for v in config if v not in live)]
        by_key = {_key_element(item, keys, dotted, i): item for i, item in enumerate(live) if isinstance(item, dict)}
        merged = []
        for index, item in enumerate(config):
            element = _key_element(item, keys, dotted, index)
            merged.append(_merge(by_key.pop(element, {}), item, dotted, shape))
        return [*merged, *by_key.values()]
    return copy.deepcopy(config)


def _remove(obj: Any, path: Path, dotted: str, shape: Shape) -> None:
    """Delete the node at `path` (if it is there)."""
    element, rest = path[0], path[1:]
    kind, _, name = element.partition(":")
    if kind == "f" and isinstance(obj, dict) and name in obj:
        child = f"{dotted}.{name}" if dotted else name
        if rest:
            _remove(obj[name], rest, child, shape)
        else:
            del obj[name]
    elif kind in ("k", "v") and isinstance(obj, list):
        keys = shape.keys.get(dotted, ())
        for index, item in enumerate(obj):
            ident = _key_element(item, keys, dotted, index) if kind == "k" else f"v:{_compact(item)}"
            if ident == element:
                if rest:
                    _remove(item, rest, dotted, shape)
                else:
                    del obj[index]
                return
