"""Strict decoding: repeated and unknown fields, reported as `fieldValidation` asks (Ignore, Warn, Strict).

With `Warn` (the default) or `Strict` the handlers decode a body with sigs.k8s.io/json's `UnmarshalStrict`. It
reads the whole body and lists, in the order it meets them, each field given twice in one object (`duplicate
field "metadata.name"`) and each field the Go type does not have (`unknown field "spec.foo"`), each text once
and at most 100 in all. A struct's fields are told apart by their exact JSON name, a map's (and an untyped
object's) entries by key; fields the type does not have, and types that decode themselves (`Time`,
`Quantity`, `IntOrString`, `FieldsV1`, raw JSON), are not looked into. The path names fields with dots and
list items with `[i]`.

The value decoded is Go's: a repeated field is decoded into what its earlier occurrence left, so a scalar takes
the last value, a struct keeps the fields only the earlier one set, a map keeps the keys only the earlier one
had (each given key's value replaced), a list is decoded item by item over the earlier one and cut to the later
one's length; what is held as `interface{}` (a custom resource, a patch) takes the last value. A custom
resource is decoded as a map, and its unknown fields come from pruning after the decoder's repeats
(`schemaCoercingDecoder`). A YAML body is converted to JSON first: repeated keys are one error of the YAML
parser (`YAMLToJSONStrict`: `yaml: unmarshal errors:\\n  line 3: key "name" already set in map`, the line of
the repeated key's value), and the converted JSON has its keys sorted, the order unknown fields are met in.

How each handler reports them:

- create and update (`create.go`, `update.go`): `Warn` makes each a warning (a YAML error one per line,
  `addStrictDecodingWarnings`); `Strict` fails with 400, the decoding error as `transformDecodeError` words it:
  `ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: duplicate field
  "metadata.name", unknown field "dta"`;
- JSON, merge and strategic merge patches (`patch.go`): the patch itself is decoded strictly (a JSON patch into
  its list of operations, its errors prefixed `json patch `; the others into a map), then the patched object
  (its unknown fields); `Warn` makes warnings, `Strict` fails with 422 on the field `patch` (`NewInvalid` with
  no kind and no name), its value the patched JSON or, for a strategic merge patch, the patch map;
- server-side apply (`applyPatcher`): once the apply is computed the configuration is parsed again by the
  strict YAML parser; `Warn` makes each repeated key a warning, `Strict` fails with 400 `error strict decoding
  YAML: error converting YAML to JSON: yaml: unmarshal errors: ...`.

`Ignore` decodes without any of it (a repeated field still decodes as above).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.kubesim import decoding
from tests.kubesim.decoding import GoType
from tests.kubesim.resources import ResourceType
from tests.kubesim.status import bad_request
from tests.kubesim.validation import go_string
from tests.kubesim.warning import Recorder

MAX_ERRORS = 100  # `saveStrictError` keeps no more
YAML_ERRORS = "yaml: unmarshal errors:\n"
YAML_CONVERSION = "error converting YAML to JSON: "


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members as written, repeats included."""


# What a value is decoded into: a Go type, `None` for `interface{}`, or one of these.
_LEAF = "leaf"  # a type nothing is looked into
_PATCH_OPS = "[]jsonPatchOp"  # the JSON patch handler's list of operations
_PATCH_OP = "jsonPatchOp"
_PATCH_OP_FIELDS: dict[str, Any] = {"op": _LEAF, "path": _LEAF, "from": _LEAF, "value": None}
Shape = GoType | str | None


def _form(shape: Shape) -> str:
    """struct, map, slice, any (`interface{}`) or leaf."""
    if shape is None:
        return "any"
    if isinstance(shape, str):
        return {_PATCH_OPS: "slice", _PATCH_OP: "struct"}.get(shape, "leaf")
    return shape.kind if shape.kind in ("struct", "map", "slice") else "leaf"


def _field(shape: Shape, key: str) -> tuple[bool, Shape]:
    """(whether the struct has the field `key`, its type)."""
    if shape == _PATCH_OP:
        return key in _PATCH_OP_FIELDS, _PATCH_OP_FIELDS.get(key, _LEAF)
    assert isinstance(shape, GoType)
    found = decoding.struct_fields(shape.ref).get(key)
    return (True, decoding.go_type(*found)) if found is not None else (False, _LEAF)


def _elem(shape: Shape) -> Shape:
    if shape is None:
        return None
    if shape == _PATCH_OPS:
        return _PATCH_OP
    assert isinstance(shape, GoType)
    return decoding.go_type(shape.ref, shape.package)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _plain(node: Any) -> Any:
    """A parsed value with each object's last occurrence of a key kept (what `interface{}` gets)."""
    if isinstance(node, _Pairs):
        out: dict[str, Any] = {}
        for key, item in node:
            out[key] = _plain(item)
        return out
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


def _merge(old: Any, new: Any, shape: Shape) -> Any:
    """What decoding a repeated field's later value `new` into the earlier one's `old` leaves (`decodeState`)."""
    form = _form(shape)
    if form == "struct" and isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for key, item in new.items():
            known, field_shape = _field(shape, key)
            out[key] = _merge(old[key], item, field_shape) if known and key in old else item
        return out
    if form == "map" and isinstance(old, dict) and isinstance(new, dict):
        return {**old, **new}  # each entry decoded afresh
    if form == "slice" and isinstance(old, list) and isinstance(new, list):
        elem = _elem(shape)
        return [_merge(old[i], item, elem) if i < len(old) else item for i, item in enumerate(new)]
    return new


class _Walk:
    """One strict decode: the errors met (each with when it was met), when each field path (without list
    indexes) was first met, and the decoded value. `unknown`: whether a struct's unknown fields are errors
    here (for bodies, pruning finds them)."""

    def __init__(self, *, unknown: bool) -> None:
        self.unknown = unknown
        self.errors: list[tuple[int, str]] = []
        self.order: dict[str, int] = {}
        self._texts: set[str] = set()
        self._count = 0

    def _met(self, plain: str) -> int:
        self._count += 1
        self.order.setdefault(plain, self._count)
        return self._count

    def _save(self, when: int, problem: str, path: str) -> None:
        text = f"{problem} {go_string(path)}"
        if text not in self._texts and len(self.errors) < MAX_ERRORS:
            self._texts.add(text)
            self.errors.append((when, text))

    def value(self, node: Any, shape: Shape, path: str = "", plain: str = "") -> Any:
        form = _form(shape)
        if isinstance(node, _Pairs) and form == "struct":
            return self._struct(node, shape, path, plain)
        if isinstance(node, _Pairs) and form in ("map", "any"):
            return self._map(node, _elem(shape), path, plain)
        if isinstance(node, list) and not isinstance(node, _Pairs) and form in ("slice", "any"):
            elem = _elem(shape)
            return [self.value(item, elem, f"{path}[{i}]", plain) for i, item in enumerate(node)]
        self._note(node, plain)
        return _plain(node)

    def _note(self, node: Any, plain: str) -> None:
        """Met, not looked into: the field paths inside, for the order of what pruning finds there."""
        if isinstance(node, _Pairs):
            for key, item in node:
                self._met(_join(plain, key))
                self._note(item, _join(plain, key))
        elif isinstance(node, list):
            for item in node:
                self._note(item, plain)

    def _struct(self, node: _Pairs, shape: Shape, path: str, plain: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in node:
            child, child_plain = _join(path, key), _join(plain, key)
            when = self._met(child_plain)
            known, field_shape = _field(shape, key)
            if not known:
                if self.unknown:
                    self._save(when, "unknown field", child)
                self._note(item, child_plain)
                out[key] = _plain(item)
                continue
            if key in out:
                self._save(when, "duplicate field", child)
            decoded = self.value(item, field_shape, child, child_plain)
            out[key] = _merge(out[key], decoded, field_shape) if key in out else decoded
        return out

    def _map(self, node: _Pairs, elem: Shape, path: str, plain: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in node:
            child, child_plain = _join(path, key), _join(plain, key)
            when = self._met(child_plain)
            if key in out:
                self._save(when, "duplicate field", child)
            out[key] = self.value(item, elem, child, child_plain)
        return out


def _pairs(raw: bytes | str) -> Any:
    return json.loads(raw, object_pairs_hook=_Pairs)


# -- create and update ------------------------------------------------------------------------------------


@dataclass
class Document:
    """What strict decoding found in a create's or update's body: the YAML parser's error (`first`), the repeated
    fields (each with when it was met) and when each field path was first met, to place what pruning finds."""

    first: list[str] = field(default_factory=list)
    found: list[tuple[int, str]] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)

    def errors(self, unknown: Iterable[str], *, custom: bool) -> list[str]:
        """The strict errors in the decoder's order, with pruning's `unknown` field paths (no list indexes):
        among the repeated ones for a built-in kind, after them for a custom resource."""
        last = len(self.order) + 1
        pruned = [(self.order.get(path, last), f"unknown field {go_string(path)}") for path in unknown]
        if custom:
            return [*self.first, *(text for _, text in self.found), *(text for _, text in pruned)]
        met = sorted([*self.found, *pruned], key=lambda entry: entry[0])
        return [*self.first, *(text for _, text in met[:MAX_ERRORS])]


def decode_body(resource: ResourceType, body: Any, raw: bytes, content_type: str) -> tuple[Any, Document]:
    """A create's or update's `body` (read from `raw`) as the strict decoder reads it: (the value, what it found).
    A built-in kind's JSON with a repeated field has it decoded as Go decodes it into the kind's type."""
    if content_type == "application/yaml":
        order: dict[str, int] = {}
        _sorted_order(body, "", order)
        problem = yaml_error(raw)
        return body, Document(first=[problem] if problem else [], order=order)
    if content_type != "application/json":
        return body, Document()
    try:
        tree = _pairs(raw)
    except ValueError:
        return body, Document()
    shape: Shape = None
    if not resource.custom and isinstance(body, dict):
        try:
            shape = decoding.kind_type(resource.api_version, resource.kind)
        except KeyError:
            shape = None
    walk = _Walk(unknown=False)
    value = walk.value(tree, shape)
    return (value if walk.errors else body), Document(found=walk.errors, order=walk.order)


def _sorted_order(value: Any, plain: str, order: dict[str, int]) -> None:
    """When each field path is met in JSON whose keys are sorted (a YAML body converted by `YAMLToJSON`)."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            path = _join(plain, str(key))
            order.setdefault(path, len(order) + 1)
            _sorted_order(value[key], path, order)
    elif isinstance(value, list):
        for item in value:
            _sorted_order(item, plain, order)


def report_decode(errors: list[str], *, kind: str, version: str, mode: str, warnings: Recorder) -> None:
    """A create's or update's strict errors: warnings under Warn, a 400 under Strict, nothing under Ignore."""
    if not errors or mode == "Ignore":
        return
    if mode == "Strict":
        listed = ", ".join(errors)
        decoded = f'{kind} in version "{version}" cannot be handled as a {kind}'  # `transformDecodeError`
        raise bad_request(f"{decoded}: strict decoding error: {listed}")
    warnings.extend(warning for error in errors for warning in yaml_warnings(error))


def yaml_warnings(error: str) -> list[str]:
    """`parseYAMLWarnings`: a YAML parser's error one warning per line, anything else as it is."""
    for prefix in (YAML_ERRORS, YAML_CONVERSION + YAML_ERRORS):
        if error.startswith(prefix):
            return [line.strip() for line in error[len(prefix) :].split("\n")]
    return [error]


# -- patches ----------------------------------------------------------------------------------------------


def patch_errors(raw: bytes, *, json_patch: bool) -> list[str]:
    """A patch body's own strict errors: a JSON patch's (`[]jsonPatchOp`: `op`, `path`, `from` and an untyped
    `value`), prefixed `json patch `; a merge or strategic merge patch's (a map)."""
    try:
        tree = _pairs(raw)
    except ValueError:
        return []
    walk = _Walk(unknown=True)
    walk.value(tree, _PATCH_OPS if json_patch else None)
    return [f"json patch {text}" if json_patch else text for _, text in walk.errors]


def report_patch(errors: list[str], *, value: str, mode: str, warnings: Recorder) -> None:
    """A patch's strict errors: warnings under Warn; under Strict the 422 on `patch` showing `value`."""
    if not errors or mode == "Ignore":
        return
    if mode == "Strict":
        raise decoding.patch_invalid(value, "strict decoding error: " + ", ".join(errors))
    warnings.extend(errors)


def report_apply(raw: bytes, *, mode: str, warnings: Recorder) -> None:
    """An apply configuration parsed again by the strict YAML parser (`yaml.UnmarshalStrict`)."""
    if mode == "Ignore":
        return
    problem = yaml_error(raw)
    if problem is None:
        return
    error = YAML_CONVERSION + problem
    if mode == "Strict":
        raise bad_request(f"error strict decoding YAML: {error}")
    warnings.extend(yaml_warnings(error))


# -- YAML ---------------------------------------------------------------------------------------------


def yaml_error(raw: bytes | str) -> str | None:
    """What the strict YAML parser (goyaml.v2 `UnmarshalStrict`) says of repeated keys: each as `line N: key
    "k" already set in map`, N the line of the repeated key's value, a value's own repeats before its key's;
    None when there are none (or the YAML does not parse, which the non-strict parser reports first)."""
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        lines: list[str] = []
        if node is not None:
            _yaml_repeats(loader, node, lines)
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return YAML_ERRORS + "  " + "\n  ".join(lines) if lines else None


def _yaml_repeats(loader: yaml.SafeLoader, node: yaml.Node, lines: list[str]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _yaml_repeats(loader, item, lines)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[tuple[str, Any]] = set()
    for key_node, value_node in node.value:
        _yaml_repeats(loader, value_node, lines)
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            ident = (type(key).__name__, key)
            repeated = ident in seen
        except TypeError:  # not a key goyaml takes
            continue
        if repeated:
            lines.append(f"line {value_node.start_mark.line + 1}: key {_go_key(key, key_node)} already set in map")
        seen.add(ident)


def _go_key(key: Any, node: yaml.Node) -> str:
    """Go's `%#v` of a decoded YAML key."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "<nil>"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return decoding.go_format_float(key)
    return go_string(key if isinstance(key, str) else str(node.value))
