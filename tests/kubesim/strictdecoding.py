"""Strict decoding: repeated and unknown fields, reported as `fieldValidation` asks (Ignore, Warn, Strict).

With `Warn` (the default) or `Strict` the handlers decode a body with sigs.k8s.io/json's `UnmarshalStrict`. It
reads the whole body and lists, in the order it meets them, each field given twice in one object (`duplicate
field "metadata.name"`) and each field the Go type does not have (`unknown field "spec.foo"`), each text once
and at most 100 in all. A struct's fields are told apart by their exact JSON name, a map's (and an untyped
object's) entries by key; fields the type does not have, and types that decode themselves (`Time`,
`Quantity`, `IntOrString`, `FieldsV1`, raw JSON), are not looked into. The path is the decoder's field stack
(`appendStrictFieldStackKey`, `appendStrictFieldStackIndex`): struct fields and map keys joined with dots, list
items by their index, `[i]`, with no dot before it: `unknown field "spec.containers[0].ports[1].hostIPP"`,
`unknown field "spec.versions[0].schema.openAPIV3Schema.properties.spec.bogus"`. The struct has no place for
an unknown field, so it is not in the decoded object, whatever `fieldValidation` says.

The value decoded is Go's: a repeated field is decoded into what its earlier occurrence left, so a scalar takes
the last value, a struct keeps the fields only the earlier one set, a map keeps the keys only the earlier one
had (each given key's value replaced), a list is decoded item by item over the earlier one and cut to the later
one's length; what is held as `interface{}` (a custom resource, a patch) takes the last value. A custom
resource is decoded as a map, and its unknown fields are the schema coercer's, after the decoder's repeats
(`schemaCoercingDecoder`, `unstructuredSchemaCoercer.apply`): its metadata's first, from a strict decode of the
metadata into an ObjectMeta (`GetObjectMetaWithOptions`: `metadata.ownerReferences[0].bogus`), then what
pruning by the version's schema finds, sorted (`PruneWithOptions`, list items `[i]` too); these are written
`unknown field "<path>"` as they are, not quoted. A YAML body is converted to JSON first: repeated keys are one
error of the YAML parser (`YAMLToJSONStrict`: `yaml: unmarshal errors:\\n  line 3: key "name" already set in
map`, the line of the repeated key's value), and the converted JSON has its keys sorted, the order unknown
fields are met in.

How each handler reports them:

- create and update (`create.go`, `update.go`): `Warn` makes each a warning (a YAML error one per line,
  `addStrictDecodingWarnings`); `Strict` fails with 400, the decoding error as `transformDecodeError` words it:
  `ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: duplicate field
  "metadata.name", unknown field "dta"`;
- JSON, merge and strategic merge patches (`patch.go`): the patch itself is decoded strictly (a JSON patch into
  its list of operations, its errors prefixed `json patch `; the others into a map), then the patched object
  (its unknown fields, `patched_unknown`: a JSON or merge patch's by the strict decoder, a strategic merge
  patch's by the unstructured converter, whose path leaves map keys out and whose errors are sorted and not
  quoted, `FromUnstructuredWithValidation`); `Warn` makes warnings, `Strict` fails with 422 on the field
  `patch` (`NewInvalid` with no kind and no name), its value the patched JSON or, for a strategic merge patch,
  the patch map;
- server-side apply (`applyPatcher`): once the apply is computed the configuration is parsed again by the
  strict YAML parser; `Warn` makes each repeated key a warning, `Strict` fails with 400 `error strict decoding
  YAML: error converting YAML to JSON: yaml: unmarshal errors: ...`.

`Ignore` decodes without any of it (a repeated field still decodes as above).

What differs from the real server: a JSON or merge patch's patched object is walked in kubesim's order of its
fields, where the server meets them in the JSON evanphx/json-patch writes (keys sorted where the patch went);
what the kinds' pruning schemas (`tests.kubesim.schemas`) find that the Go types do not is reported too, by the
path pruning gives it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from controlplane.model.yamltext import YamlLoader
from tests.kubesim import decoding
from tests.kubesim.decoding import GoType
from tests.kubesim.resources import ResourceType
from tests.kubesim.schemas import ANY, Schema, prune_unknown
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


_INDEX = re.compile(r"\[[0-9]+\]")


def _unindexed(path: str) -> str:
    """A field path without its list indexes (`spec.containers.image`)."""
    return _INDEX.sub("", path)


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
    """One strict decode: the errors met (each with when it was met), when each field path was first met (with
    its list indexes and without), the unknown fields' paths, and the decoded value. `unknown`: whether a
    struct's unknown fields are errors here (a custom resource's come from its schema). The path is sigs.k8s.io/
    json's (`appendStrictFieldStackKey`, `...Index`): struct fields and map keys joined with dots, list items
    `[i]` (`spec.containers[0].ports[1].name`); `map_keys` false leaves map keys out of it, as the unstructured
    converter's path does (`fromUnstructuredContext`)."""

    def __init__(self, *, unknown: bool, map_keys: bool = True) -> None:
        self.unknown = unknown
        self.map_keys = map_keys
        self.errors: list[tuple[int, str]] = []
        self.order: dict[str, int] = {}
        self.unknown_paths: list[str] = []
        self.repeated = False
        self._texts: set[str] = set()
        self._count = 0

    def _met(self, path: str, plain: str) -> int:
        self._count += 1
        self.order.setdefault(plain, self._count)
        self.order.setdefault(path, self._count)
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
        self._note(node, path, plain)
        return _plain(node)

    def _note(self, node: Any, path: str, plain: str) -> None:
        """Met, not looked into: the field paths inside, for the order of what pruning finds there."""
        if isinstance(node, _Pairs):
            for key, item in node:
                self._met(_join(path, key), _join(plain, key))
                self._note(item, _join(path, key), _join(plain, key))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                self._note(item, f"{path}[{i}]", plain)

    def _struct(self, node: _Pairs, shape: Shape, path: str, plain: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in node:
            child, child_plain = _join(path, key), _join(plain, key)
            when = self._met(child, child_plain)
            known, field_shape = _field(shape, key)
            if not known:
                if self.unknown:
                    self._save(when, "unknown field", child)
                    self.unknown_paths.append(child)
                self._note(item, child, child_plain)
                out[key] = _plain(item)
                continue
            if key in out:
                self._repeat(when, child)
            decoded = self.value(item, field_shape, child, child_plain)
            out[key] = _merge(out[key], decoded, field_shape) if key in out else decoded
        return out

    def _map(self, node: _Pairs, elem: Shape, path: str, plain: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in node:
            child, child_plain = _join(path, key), _join(plain, key)
            when = self._met(child, child_plain)
            if key in out:
                self._repeat(when, child)
            out[key] = self.value(item, elem, child if self.map_keys else path, child_plain)
        return out

    def _repeat(self, when: int, path: str) -> None:
        self.repeated = True
        self._save(when, "duplicate field", path)


def _pairs(raw: bytes | str) -> Any:
    return json.loads(decoding.go_utf8(raw) if isinstance(raw, bytes) else raw, object_pairs_hook=_Pairs)


def _as_pairs(value: Any, *, sort: bool) -> Any:
    """A decoded value as the decoder meets it in JSON: its keys in order, or sorted as `json.Marshal` writes a
    map (a YAML body converted by `YAMLToJSON`, metadata marshalled again)."""
    if isinstance(value, dict):
        keys = sorted(value, key=str) if sort else list(value)
        return _Pairs((str(key), _as_pairs(value[key], sort=sort)) for key in keys)
    if isinstance(value, list):
        return [_as_pairs(item, sort=sort) for item in value]
    return value


def _drop_unknown(value: Any, shape: Shape) -> None:
    """Remove from a decoded value (in place) the fields its Go type does not have, which the struct it is decoded
    into has no place for."""
    form = _form(shape)
    if form == "struct" and isinstance(value, dict):
        for key in list(value):
            known, field_shape = _field(shape, str(key))
            if known:
                _drop_unknown(value[key], field_shape)
            else:
                del value[key]
    elif form in ("map", "slice") and isinstance(value, dict | list):
        elem = _elem(shape)
        for item in value.values() if isinstance(value, dict) else value:
            _drop_unknown(item, elem)


def _kind_shape(resource: ResourceType, body: Any) -> GoType | None:
    """The Go type a built-in kind's body decodes into; None for a custom resource or a body that is not an
    object."""
    if resource.custom or not isinstance(body, dict):
        return None
    try:
        return decoding.kind_type(resource.api_version, resource.kind)
    except KeyError:
        return None


def _of_kind(resource: ResourceType, body: Any) -> bool:
    """Whether a body is of the resource's kind (its apiVersion and kind as the resource's, or left out)."""
    if not isinstance(body, dict):
        return False
    return (body.get("apiVersion") or resource.api_version) == resource.api_version and (
        body.get("kind") or resource.kind
    ) == resource.kind


def _custom_unknown(resource: ResourceType, obj: Any) -> list[str]:
    """A custom resource's unknown fields as the schema coercer finds them (`unstructuredSchemaCoercer.apply`),
    each removed from `obj`: first its metadata's, from a strict decode of the metadata marshalled again (keys
    sorted) into an ObjectMeta (`GetObjectMetaWithOptions`, `metadata.` before each path), then what pruning by
    the version's schema finds, sorted (`PruneWithOptions`). The paths are the server's, as they are (not
    quoted)."""
    if not isinstance(obj, dict):
        return []
    found: list[str] = []
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        walk = _Walk(unknown=True)
        meta_type = decoding.go_type("meta/v1.ObjectMeta")
        walk.value(_as_pairs(meta, sort=True), meta_type, "metadata", "metadata")
        _drop_unknown(meta, meta_type)
        found += walk.unknown_paths
    if resource.schema is not None:
        found += sorted(_schema_unknown(obj, resource.schema, ""))
        prune_unknown(obj, resource.schema)
    return found


def _schema_unknown(value: Any, schema: Schema, path: str) -> list[str]:
    """The fields pruning by `schema` removes (`tests.kubesim.schemas.prune_unknown`), by the paths the pruner
    gives them (`UnknownFieldPathOptions`: list items by their index); the root's metadata is the ObjectMeta's
    business, not the pruner's."""
    if schema is ANY or schema.get("*", 0) is None:
        return []
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in _schema_unknown(item, schema, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    found: list[str] = []
    for key, item in value.items():
        child = _join(path, str(key))
        if key not in schema:
            found.append(child)
        elif path or key != "metadata":
            found += _schema_unknown(item, schema[key], child)
    return found


def patched_unknown(resource: ResourceType, patched: Any, *, strategic: bool) -> list[str]:
    """The unknown fields of a patched object as `patch.go` reports them (each `unknown field "<path>"`), removed
    from it (in place). A built-in kind's: a JSON or merge patch's from the strict decode of the patched JSON
    into the kind's type (`jsonPatcher`: in the order met, each once), a strategic merge patch's from the
    unstructured converter (`FromUnstructuredWithValidation`: map keys left out of the path, the errors sorted,
    the path not quoted). A custom resource's as its schema coercer finds them (`_custom_unknown`)."""
    if resource.custom:
        return [f'unknown field "{path}"' for path in _custom_unknown(resource, patched)]
    shape = _kind_shape(resource, patched)
    if shape is None:
        return []
    walk = _Walk(unknown=True, map_keys=not strategic)
    walk.value(_as_pairs(patched, sort=False), shape)
    _drop_unknown(patched, shape)
    if strategic:
        return sorted(f'unknown field "{path}"' for path in walk.unknown_paths)
    return [text for _, text in walk.errors]


# -- create and update ------------------------------------------------------------------------------------


@dataclass
class Document:
    """What strict decoding found in a create's or update's body: the YAML parser's error (`first`), the decoder's
    errors (each with when it was met: repeated fields, and a built-in kind's unknown fields), a custom
    resource's unknown fields (what its schema coercer finds, after the decoder's errors), and when each field
    path was first met, to place what pruning finds besides."""

    first: list[str] = field(default_factory=list)
    found: list[tuple[int, str]] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)
    custom: list[str] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)  # the unknown fields above, without list indexes

    def errors(self, unknown: Iterable[str], *, custom: bool) -> list[str]:
        """The strict errors in the decoder's order, with the `unknown` field paths pruning found that are not
        among them: with the decoder's errors for a built-in kind, after them for a custom resource."""
        last = len(self.order) + 1
        rest = [path for path in unknown if _unindexed(path) not in self.reported]
        pruned = [
            (self.order.get(path, self.order.get(_unindexed(path), last)), f"unknown field {go_string(path)}")
            for path in rest
        ]
        if custom:
            coerced = [f'unknown field "{path}"' for path in self.custom]
            return [*self.first, *(text for _, text in self.found), *coerced, *(text for _, text in pruned)]
        met = sorted([*self.found, *pruned], key=lambda entry: entry[0])
        return [*self.first, *(text for _, text in met[:MAX_ERRORS])]


def decode_body(resource: ResourceType, body: Any, raw: bytes, content_type: str) -> tuple[Any, Document]:
    """A create's or update's `body` (read from `raw`) as the strict decoder reads it: (the value, what it found).
    A JSON body is read as sent, a YAML one as the JSON `YAMLToJSON` makes of it (keys sorted, its repeated keys
    the YAML parser's error). A built-in kind's body is decoded into the kind's Go type: a repeated field as Go
    decodes it, the fields the type does not have reported by their paths (`spec.containers[0].imagePullPolicyy`)
    and left out of the value. A custom resource's unknown fields are its schema coercer's (`_custom_unknown`)."""
    first: list[str] = []
    if content_type == "application/yaml":
        problem = yaml_error(raw)
        first = [problem] if problem else []
        tree = _as_pairs(body, sort=True)
    elif content_type == "application/json":
        try:
            tree = _pairs(raw)
        except ValueError:
            return body, Document()
    else:
        return body, Document()
    shape = _kind_shape(resource, body)
    walk = _Walk(unknown=shape is not None and _of_kind(resource, body))
    value = walk.value(tree, shape)
    if not walk.repeated:
        value = body
    if walk.unknown:
        _drop_unknown(value, shape)
    document = Document(first=first, found=walk.errors, order=walk.order)
    if resource.custom:
        document.custom = _custom_unknown(resource, value)
    document.reported = {_unindexed(path) for path in [*walk.unknown_paths, *document.custom]}
    return value, document


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
    loader = YamlLoader(raw)  # goyaml.v2's scalars: `n` and `false` are one key
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


def _yaml_repeats(loader: YamlLoader, node: yaml.Node, lines: list[str]) -> None:
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
