"""Bounded YAML: parse text a user wrote without letting its shape decide what parsing costs.

- libyaml's loader where PyYAML was built with it (several times faster than the pure-Python one,
  and it stops nesting at 1,000 levels instead of exhausting the interpreter's stack);
- in text embedded in an object, aliases (`*name`) are refused: one small value could expand into
  gigabytes; nesting deeper than the caller's `max_depth` is refused before anything is built, and
  text over the caller's `max_bytes` before it is parsed at all (`check_yaml`, `load_yaml`);
- in whole files, where Kubernetes' own YAML decoding allows aliases, they are allowed within
  bounds: a document may not contain itself, nor grow through aliases beyond
  `ALIAS_FREE_NODES` nodes or twice the nodes written in it, whichever is more (`load_all`). A
  500-byte "billion laughs" file otherwise builds 40 million strings, and a recursive alias
  (`&a [*a]`) a value that never ends.

`check_yaml` walks the event stream, never recursing; `load_yaml` checks, then loads, and reports
a failure as `ValueError` with the line and column; `load_all` raises `yaml.YAMLError` with a mark.

A file of manifests is read as kubectl reads it (`kubectl_pieces`, `kubectl_documents`): cut at every
line that begins with `---` (apimachinery's `YAMLReader`), then the first YAML document of each piece.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import yaml

_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT64 = range(-(2**63), 2**63)

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + name for name in ("str", "int", "float", "bool", "null"))
# goyaml.v2's table of plain scalars that are looked up, not parsed (YAML 1.1, with y/Y/n/N as booleans)
_WORDS: dict[str, tuple[str, Any]] = {
    **{word: (_BOOL, True) for word in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")},
    **{word: (_BOOL, False) for word in ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")},
    **{word: (_NULL, None) for word in ("", "~", "null", "Null", "NULL")},
    **{word: (_FLOAT, math.nan) for word in (".nan", ".NaN", ".NAN")},
    **{sign + word: (_FLOAT, math.inf) for sign in ("", "+") for word in (".inf", ".Inf", ".INF")},
    **{"-" + word: (_FLOAT, -math.inf) for word in (".inf", ".Inf", ".INF")},
}
_NUMBER_START = frozenset("+-0123456789.")
# Go's strconv.ParseInt/ParseUint with base 0 (after goyaml drops every underscore): 0x, 0o, 0b, or a
# leading 0 for octal; and goyaml's own pattern for the floats it then tries
_GO_INT = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_GO_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_JSON_INTEGRAL = 1e21  # encoding/json writes a float below this size without an exponent


def _plain_tag(value: str) -> str:
    """The tag goyaml.v2 gives a plain (unquoted) scalar. What PyYAML's YAML 1.1 resolver does
    differently, and Kubernetes does not: `1:30` (base 60) and `2026-12-07` (a date) stay strings,
    `0o17` and `1e3` are numbers, `y` and `n` booleans, `=` a string."""
    word = _WORDS.get(value)
    if word is not None:
        return word[0]
    if value == "<<":
        return _TAG + "merge"
    if not value or value[0] not in _NUMBER_START:
        return _STR
    plain = value if value[0] == "." else value.replace("_", "")
    if value[0] != "." and _GO_INT.fullmatch(plain):
        return _INT
    if _GO_FLOAT.fullmatch(plain) and math.isfinite(float(plain)):  # strconv refuses what overflows
        return _FLOAT
    return _STR  # a date among them: goyaml reads it as a timestamp but hands it back as its text


def _go_int(text: str) -> int:
    """strconv.ParseInt(text, 0, 64) as goyaml calls it: underscores dropped, a lone leading 0 octal."""
    plain = text.replace("_", "")
    if not _GO_INT.fullmatch(plain):
        raise ValueError(text)
    sign, digits = (-1, plain[1:]) if plain[0] == "-" else (1, plain.lstrip("+"))
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXoObB":
        return sign * int(digits, 8)
    return sign * int(digits, 0)


def _go_float32_text(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 32), as sigs.k8s.io/yaml turns a float map key into a
    string (goyaml's spellings for the infinities and NaN)."""
    if math.isnan(value):
        return ".nan"
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        single = math.copysign(math.inf, value)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    for precision in range(9):  # the shortest digits that read back as the same float32
        shown = f"{single:.{precision}e}"
        if struct.unpack("f", struct.pack("f", float(shown)))[0] == single:
            break
    mantissa, exponent_text = shown.split("e")
    exponent = int(exponent_text)
    digits = mantissa.replace(".", "").lstrip("-")
    sign = "-" if single < 0 or (single == 0 and math.copysign(1, single) < 0) else ""
    if exponent < -4 or exponent >= 6:
        return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    whole, fraction = digits[: exponent + 1].ljust(exponent + 1, "0"), digits[exponent + 1 :]
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


class YamlLoader(_SafeLoader):  # type: ignore[misc]
    """A safe loader that reads YAML as Kubernetes does (sigs.k8s.io/yaml: goyaml.v2, then JSON), so a
    file means to meshplane what it means to `kubectl apply`, and the mesh config and annotations what
    they mean to Istio:

    - plain scalars resolve by goyaml.v2's rules (`_plain_tag`), not PyYAML's YAML 1.1 ones;
    - a value is what its JSON conversion gives: a float with no fraction is an integer (`1.0` is 1,
      as `encoding/json` writes it), a timestamp its text, `!!binary` its decoded text; `.inf` and
      `.nan` are refused, as JSON has no such number;
    - a mapping key is a string: numbers and booleans as sigs.k8s.io/yaml spells them, a null key refused;
    - a tag goyaml does not know (`!thing`, `!!set`, `!!omap`) is ignored: the node is read as written;
    - integers are 64-bit, as Kubernetes' (and Istio's) are: one beyond that range is refused with a
      mark. PyYAML converts with `int()`, which raises a bare `ValueError` for more than 4,300 digits:
      a config file holding such a number stopped the control plane."""

    def resolve(self, kind: Any, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            return _plain_tag(value) if implicit[0] else _STR  # quoted and block scalars are strings
        return super().resolve(kind, value, implicit)  # type: ignore[no-any-return]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[str, Any]:
        self.flatten_mapping(node)  # merge keys (<<)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            mapping[self._json_key(key_node)] = self.construct_object(value_node, deep=deep)
        return mapping

    def _json_key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise _refusal("a mapping key must be a string or a number, not a list or a mapping", node)
        if node.tag == _NULL:
            raise _refusal("a mapping key may not be null (~)", node)
        if node.tag == _FLOAT:
            word = _WORDS.get(node.value)
            if word is not None and word[0] == _FLOAT:
                return _go_float32_text(word[1])
            return _go_float32_text(float(_construct_number(self, node)))  # refuses what is no number
        key = self.construct_object(node)
        if isinstance(key, bool):
            return "true" if key else "false"
        return str(key)


class YamlDumper(yaml.SafeDumper):
    """Writes YAML that reads back as written both by Kubernetes (goyaml.v2) and by PyYAML: a string
    either would take for something else is quoted (`'y'`, `'0o17'`, `'1e3'`, `'1:30'`, `'2026-12-07'`).
    PyYAML's own dumper quotes only what PyYAML would misread, so `y` went out plain and
    `kubectl apply` read it as true."""

    def resolve(self, kind: Any, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _plain_tag(value)
            if tag != _STR:
                return tag
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call,no-any-return]


def _construct_int64(loader: Any, node: yaml.ScalarNode) -> int:
    try:
        value = _go_int(node.value)
    except ValueError:
        if _GO_INT.fullmatch(node.value.replace("_", "")) is None:
            raise _refusal(f"cannot decode {node.value!r} as an integer (!!int)", node) from None
        value = _INT64.stop  # more digits than int() converts
    if value not in _INT64:
        shown = node.value if len(node.value) <= 24 else f"{node.value[:20]}... ({len(node.value):,} characters)"
        raise yaml.constructor.ConstructorError(
            None, None, f"the integer {shown} is out of the range of a 64-bit integer", node.start_mark
        )
    return value


def _construct_number(loader: Any, node: yaml.ScalarNode) -> int | float:
    word = _WORDS.get(node.value)
    if word is not None and word[0] == _FLOAT:
        raise _refusal(f"{node.value} is not a number JSON can carry; Kubernetes refuses it too", node)
    plain = node.value.replace("_", "")
    if _GO_INT.fullmatch(plain):  # !!float 5: goyaml reads the integer, then makes it a float
        return _construct_int64(loader, node)
    if not _GO_FLOAT.fullmatch(plain) or not math.isfinite(float(plain)):
        raise _refusal(f"cannot decode {node.value!r} as a number (!!float)", node)
    value = float(plain)
    return int(value) if value.is_integer() and abs(value) < _JSON_INTEGRAL else value


def _construct_bool(loader: Any, node: yaml.ScalarNode) -> bool:
    word = _WORDS.get(node.value)
    if word is None or word[0] != _BOOL:
        raise _refusal(f"cannot decode {node.value!r} as a boolean (!!bool)", node)
    return bool(word[1])


def _construct_text(loader: Any, node: yaml.ScalarNode) -> str:
    return str(node.value)


def _construct_binary(loader: Any, node: yaml.ScalarNode) -> str:
    try:
        data = base64.b64decode("".join(node.value.split()), validate=True)
    except binascii.Error:
        raise _refusal("!!binary value contains invalid base64 data", node) from None
    return data.decode("utf-8", "replace")  # encoding/json's replacement of bytes that are not UTF-8


def _construct_null(loader: Any, node: yaml.ScalarNode) -> None:
    word = _WORDS.get(node.value)
    if word is None or word[0] != _NULL:
        raise _refusal(f"cannot decode {node.value!r} as null (!!null)", node)


_TIMESTAMP = _TAG + "timestamp"
# goyaml.v2's timestamp layouts (time.Parse): 2006-1-2T15:4:5.999999999Z07:00 (or t),
# 2006-1-2 15:4:5.999999999 and 2006-1-2
_GO_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[Tt](\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})"
    r"|[ ](\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.\d{1,9})?)?"
)


def _is_timestamp(text: str) -> bool:
    match = _GO_TIMESTAMP.fullmatch(text)
    if match is None:
        return False
    year, month, day = (int(part) for part in match.groups()[:3])
    clock = [int(part) for part in match.groups()[3:] if part is not None]
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return not clock or (clock[0] < 24 and clock[1] < 60 and clock[2] < 60)


def _scalar_as(tag: str, construct: Callable[[Any, yaml.ScalarNode], Any]) -> Callable[[Any, yaml.ScalarNode], Any]:
    """A scalar read as goyaml reads one tagged `tag`: it must resolve to that tag (an integer may be
    tagged `!!float`); otherwise goyaml's "cannot decode !!int `0` as a !!timestamp"."""

    def read(loader: Any, node: yaml.ScalarNode) -> Any:
        resolved = _TIMESTAMP if tag == _TIMESTAMP and _is_timestamp(node.value) else _plain_tag(node.value)
        resolved = _STR if resolved == _TAG + "merge" else resolved
        if resolved != tag and not (tag == _FLOAT and resolved == _INT):
            short = "!!" + resolved.removeprefix(_TAG), "!!" + tag.removeprefix(_TAG)
            raise _refusal(f"cannot decode {short[0]} `{node.value}` as a {short[1]}", node)
        return construct(loader, node)

    return read


def _by_kind(scalar: Callable[[Any, yaml.ScalarNode], Any]) -> Callable[[Any, yaml.Node], Any]:
    """goyaml builds a mapping or a list whatever its tag says; a tag decides only how a scalar reads."""

    def construct(loader: Any, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_yaml_map(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_yaml_seq(node)
        return scalar(loader, cast(yaml.ScalarNode, node))

    return construct


for _tag, _scalar in {
    _INT: _scalar_as(_INT, _construct_int64),
    _FLOAT: _scalar_as(_FLOAT, _construct_number),
    _BOOL: _scalar_as(_BOOL, _construct_bool),
    _NULL: _scalar_as(_NULL, _construct_null),
    _STR: _construct_text,
    _TIMESTAMP: _scalar_as(_TIMESTAMP, _construct_text),  # as goyaml hands one to an interface{}: its text
    _TAG + "binary": _construct_binary,
    _TAG + "map": _construct_text,
    _TAG + "seq": _construct_text,
    _TAG + "set": _construct_text,
    _TAG + "omap": _construct_text,
    _TAG + "pairs": _construct_text,
    None: _construct_text,  # a tag goyaml does not resolve: a scalar is its text
}.items():
    YamlLoader.add_constructor(_tag, _by_kind(_scalar))

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def check_yaml(text: str, *, max_depth: int) -> None:
    """Walk the YAML event stream (no recursion, no objects built) and raise `yaml.YAMLError` with a
    mark for an alias or nesting deeper than `max_depth`. Syntax errors raise as the parser finds them."""
    depth = 0
    for event in yaml.parse(text, Loader=YamlLoader):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > max_depth:
                raise _refusal(f"nests deeper than {max_depth} levels", event)
        elif isinstance(event, _CLOSE):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            raise _refusal("YAML aliases (*name) are not allowed here", event)


def load_yaml(text: str, *, max_depth: int, max_bytes: int | None = None) -> Any:
    """Parse one YAML (or JSON) document of plain data; `ValueError` naming the line and column on a
    syntax error, an alias or nesting deeper than `max_depth`, or the size when over `max_bytes`."""
    size = len(text.encode())
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"is {size:,} bytes; at most {max_bytes:,} are read")
    try:
        check_yaml(text, max_depth=max_depth)
        return yaml.load(text, Loader=YamlLoader)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"not valid YAML/JSON{error_place(exc, text)}: {problem}") from None


def error_place(exc: yaml.YAMLError, text: str) -> str:
    """Where `exc` marks `text`, as ' at line L column C' (1-based); '' when it marks nothing."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ""
    lines = text.split("\n")
    line, column = mark.line, mark.column
    if line >= len(lines):  # libyaml places the end of the text after a final line break it assumes
        line, column = len(lines) - 1, len(lines[-1])
    return f" at line {line + 1} column {column + 1}"


ALIAS_FREE_NODES = 100_000


def load_all(text: str) -> Iterator[Any]:
    """Every YAML (or JSON) document of `text`, as plain data (a safe loader), with aliases bounded
    as the module says. Raises `yaml.YAMLError` (with a mark) as the document that fails is reached,
    after yielding those before it."""
    loader = YamlLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if "&" in text:  # no anchor, no alias: nothing to count
                _check_aliases(node)
            yield loader.construct_document(node)
    finally:
        loader.dispose()


def _check_aliases(root: yaml.Node) -> None:
    """Raise for a node that contains itself, or for a document whose aliases make it larger than
    allowed. An alias is the node its anchor names, so a shared node is one reached twice; each
    collection is counted once (no recursion, no expansion), each scalar where it is named."""
    size: dict[int, int] = {}  # id(collection) -> the nodes it stands for, once counted
    open_nodes: set[int] = set()  # collections whose children are being counted: reached again, a cycle
    written = 0  # collections, and the scalars written (or named) in them
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        key = id(node)
        if children_counted:
            open_nodes.discard(key)
            size[key] = 1 + sum(
                1 if isinstance(child, yaml.ScalarNode) else size[id(child)] for child in _children(node)
            )
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _refusal("a YAML alias (*name) refers to a node that contains it", node)
        children = _children(node)
        collections = [child for child in children if not isinstance(child, yaml.ScalarNode)]
        written += 1 + len(children) - len(collections)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in collections if id(child) not in size)
    expanded = size.get(id(root), 1)
    allowed = max(ALIAS_FREE_NODES, 2 * written)
    if expanded > allowed:
        problem = (
            f"YAML aliases (*name) expand this document to {expanded:,} nodes; it has {written:,} of its own,"
            f" and at most {allowed:,} are read"
        )
        raise _refusal(problem, root)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _refusal(problem: str, at: Any) -> yaml.MarkedYAMLError:
    """An error marked where the event or node `at` starts."""
    return yaml.MarkedYAMLError(problem=problem, problem_mark=at.start_mark)


# -- files of manifests, as kubectl reads them -----------------------------------------------------

# Go's strings.TrimSpace: Unicode's White_Space (Python's str.strip() also takes \x1c-\x1f)
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
LINE = re.compile(r"[^\n]*\n|[^\n]+")  # Go reads lines at \n alone; str.splitlines also cuts at \r, \x0c, \u2028...


@dataclass(frozen=True)
class Piece:
    """One document as kubectl cuts a file: `separator` is the `---` line that ended the document before it
    (kubectl drops it), `text` what kubectl reads as this document, `line` the line (1-based) `text` begins on."""

    separator: str
    text: str
    line: int


def kubectl_pieces(text: str) -> list[Piece]:
    """`text` cut into documents as kubectl and `istioctl kube-inject` cut it (apimachinery's `YAMLReader`).

    Every line that begins with `---` ends the document before it, and is dropped; when no line came since the
    last cut, it is the first line of the next document instead (where YAML reads `---` and `--- # note` as a
    document start, and `---#x` as text). After the `---` only spaces and a comment may follow: kubectl refuses
    a file with `--- {a: 1}` or `----`, and so does this (`yaml.MarkedYAMLError` marking the line). Joining
    each piece's separator and text gives `text` back."""
    pieces: list[Piece] = []
    separator, start = "", 1
    lines: list[str] = []
    for number, line in enumerate(LINE.findall(text), start=1):
        if line.startswith("---"):
            rest = line[3:].strip(GO_SPACE)
            if rest and not rest.startswith("#"):
                problem = (
                    f"invalid YAML document separator {line.rstrip(GO_SPACE)!r}: after --- only a comment may "
                    "follow on its line (kubectl refuses the file too)"
                )
                raise yaml.MarkedYAMLError(problem=problem, problem_mark=yaml.Mark("", 0, number - 1, 0, None, 0))
            if lines:
                pieces.append(Piece(separator, "".join(lines), start))
                separator, lines, start = line, [], number + 1
                continue
        lines.append(line)
    pieces.append(Piece(separator, "".join(lines), start))
    return pieces


def first_document(piece: Piece) -> Any:
    """The piece's first YAML document (all kubectl reads of it; None when it holds none), as `load_all`
    reads it; a `yaml.YAMLError` marks the line in the whole file."""
    try:
        return next(load_all(piece.text), None)
    except yaml.MarkedYAMLError as exc:
        exc.context_mark, exc.problem_mark = (
            _moved(mark, piece.line - 1) for mark in (exc.context_mark, exc.problem_mark)
        )
        raise


def _moved(mark: Any, lines: int) -> Any:
    """`mark` that many lines further on (libyaml's marks cannot be changed in place)."""
    return None if mark is None else yaml.Mark(mark.name, mark.index, mark.line + lines, mark.column, None, 0)


def kubectl_documents(text: str) -> Iterator[Any]:
    """The documents of a file of manifests as kubectl reads them (`kubectl_pieces`, `first_document`), None
    for a piece with none (only comments, or empty)."""
    for piece in kubectl_pieces(text):
        yield first_document(piece)


def listed_kind(listing: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    """The kind kubectl reads an item of a list document as: its own, else, when it has no apiVersion either, the
    list's kind without `List` (`PodList` items are Pods; a `List`'s need their own); "" for none."""
    if item.get("kind"):
        return str(item["kind"])
    return "" if item.get("apiVersion") else str(listing.get("kind") or "").removesuffix("List")
