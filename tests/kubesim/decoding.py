"""Decoding a body into the kind's Go type, and the errors the API server's decoder gives on the way.

The API server decodes a built-in object into its Go struct before anything else looks at it, so a field of
the wrong JSON type fails there, not in validation: `Pod in version "v1" cannot be handled as a Pod: json:
cannot unmarshal number into Go struct field ObjectMeta.metadata.name of type string`. This module decodes a
body against the kind's types (`tests.kubesim.gotypes`) as sigs.k8s.io/json does (the first type error is kept
and decoding goes on; an `UnmarshalJSON` method's error ends it) and answers as the handlers do:

- a create or update (`create.go`, `update.go`): 400, the codec's error wrapped by `transformDecodeError`;
  before that the body's apiVersion and kind are read (`SimpleMetaFactory.Interpret`);
- a JSON or merge patch (`patch.go`, `jsonPatcher`): 422 `patch: Invalid value: "<patched object>": <error>`;
- a strategic merge patch (`applyPatchToObject`): 422 with the patch map in Go's `%+v`, the error from the
  unstructured converter (`runtime.DefaultUnstructuredConverter`), whose messages differ;
- a mutating webhook's patched object (the dispatcher's `jsonSerializer.Decode`) and a DELETE's DeleteOptions
  (`delete.go`): 500, the decoder's error as it is.

A body that is not JSON is refused in encoding/json's words, as every decode checks the whole body first
(`checkValid`, the state machine of `scanner.go`): `invalid character '}' after object key`, `invalid character
' ' in literal true (expecting 'e')` (a space is fed in at the end), `unexpected end of JSON input`, the byte as
`quoteChar` writes it (`'\\x01'`, a byte from 0x80 up as the Latin-1 rune of its value: `'ÿ'`, `'\\u00a0'`).
A create or update answers it as a body whose apiVersion and kind cannot be read (`body_json`, `Unreadable`:
`the object provided is unrecognized (must be of type Pod): couldn't get version/kind; json parse error: ...`),
a patch as `patch.go` words its decoder's error. Bytes inside strings that are not UTF-8 are read as Go reads
them, each one U+FFFD (`go_utf8`).

Fields whose types decode themselves are decoded as their methods do: `IntOrString` (a string, or a number
Go's `encoding/json` reads as an int32), `resource.Quantity` (`ParseQuantity` of a string or of any other
value's text), `metav1.Time` and `MicroTime` (a string `time.Parse` reads with RFC 3339 layouts), `FieldsV1`
and the JSON of schemas (anything), the schema unions of a CRD. Custom resources are not decoded into structs
(their schema validates them, 422), so they are left alone, but for their metadata (below).

What the server holds from then on is the decoded struct, and what it stores and answers is that struct encoded
again (`encode`) as it is read back from etcd, where built-in objects are kept in protobuf: not the body. A
body that decodes is replaced by its round trip (`check_object`, `check_patched`; an object the registry is
handed, `typed_in_place`), and every built-in object written is stored in its encoded form (`stored_form`,
which the registry and the storage apply, so the objects kubesim's own controllers and kubelet write too). So:

- a null is the zero value: a map's or a list's null element that of its type (`labels: {a: null}` is `a: ""`,
  `args: [null]` is `[""]`, a list of structs' null an empty struct, which validation then sees), a null field
  is as if absent (a nil pointer, slice or map, or a zero value);
- fields with `omitempty` that are empty are dropped (`labels: {}`, `ports: []`, `hostNetwork: false`, `""`);
  fields without it are written even when empty (`null` when nil: an EndpointSlice's `endpoints`), and so are
  structs, which are never empty (a container's `resources: {}`, a template's `creationTimestamp: null`); a
  pointer to a zero value is kept (`privileged: false`);
- protobuf reads an empty repeated field back as nil (`endpoints: []` is stored `null`) and a map's nil []byte
  as empty (a Secret's `data: {k: null}` is `k: ""`);
- Quantity, Time and []byte come back in their canonical text (`tests.kubesim.canonical`: `1000m` is `1`,
  `1024Mi` is `1Gi`, times in UTC);
- the order is encoding/json's, not the body's: a struct's fields in the order its type declares them
  (`typeFields`: `kind`, `apiVersion`, `metadata`, `spec`, `status`; `name`, `namespace`, `uid`, ... in
  ObjectMeta), a map's keys sorted (`mapEncoder`: labels, a ConfigMap's data, a container's limits). The
  checks that follow decoding see that order too, so what they report while ranging over a map (where Go's
  order is random) comes in key order.

A custom resource's metadata is decoded into an ObjectMeta and written back (the schema coercer's
`GetObjectMetaWithOptions` and `SetObjectMeta`); the rest of it is kept as sent, but for its order: the server
holds it as unstructured JSON, maps all the way down, which encoding/json writes with every object's keys sorted
(`unstructuredJSONScheme`), its metadata too. What differs from the real server: a float64 with a fraction is
written as Python writes it; a pointer to a value that encodes as null (a zero Time) is dropped rather than
written null, as kubesim decodes what it encoded again; the metadata of embedded resources in custom resources
is kept as sent; the Scale, TokenRequest and TokenReview answers are built by their handlers, not encoded from
their types; and JSON nested deeper than Python's parser goes (about a thousand levels, where Go's scanner
takes 10000) is not read.
"""

from __future__ import annotations

import codecs
import copy
import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.kubesim import canonical, gotypes
from tests.kubesim.resources import ResourceType
from tests.kubesim.status import ApiError, bad_request
from tests.kubesim.validation import Cause, go_string, go_trim_space, strict_json

# -- the types ------------------------------------------------------------------------------------

PROTOBUF = "application/vnd.kubernetes.protobuf"

# Types with their own UnmarshalJSON, by table name: what `_special` decodes them as.
SPECIAL = {
    "meta/v1.Time": "time",
    "meta/v1.MicroTime": "microtime",
    "meta/v1.FieldsV1": "any",
    "apiextensions/v1.JSON": "any",
    "intstr.IntOrString": "intorstring",
    "resource.Quantity": "quantity",
    "apiextensions/v1.JSONSchemaPropsOrBool": "orbool",
    "apiextensions/v1.JSONSchemaPropsOrArray": "orarray",
    "apiextensions/v1.JSONSchemaPropsOrStringArray": "orstringarray",
}
BASIC = {
    "string": ("string", 0),
    "bool": ("bool", 0),
    "int32": ("int", 32),
    "int64": ("int", 64),
    "uint8": ("uint", 8),
    "float64": ("float", 64),
}
GROUP_PACKAGES = {"": "core"}  # the table package of an API group's types: its first label otherwise


@dataclass(frozen=True)
class GoType:
    """A Go type as the decoder sees it. `display` is reflect's `Type.String()` (`[]v1.Container`); `name` a
    struct's `Type.Name()` (`Container`) or a special type's kind; `ref` a struct's table name or the element
    of a slice or map; `bits` a number's width."""

    kind: str  # struct | slice | map | string | bool | int | uint | float | special
    display: str
    name: str = ""
    ref: str = ""
    package: str = ""
    bits: int = 0


def _closing_bracket(expr: str, start: int) -> int:
    depth = 0
    for at in range(start, len(expr)):
        depth += {"[": 1, "]": -1}.get(expr[at], 0)
        if depth == 0:
            return at
    raise ValueError(expr)


def _display(key: str) -> str:
    package, _, name = key.rpartition(".")
    return f"{package.rsplit('/', 1)[-1]}.{name}"


@functools.cache
def go_type(expr: str, package: str = "") -> GoType:
    """The type a table expression names (`[]Container` in package `core/v1`, `map[string]string`, ...)."""
    if expr.startswith("[]"):
        elem = go_type(expr[2:], package)
        return GoType("slice", f"[]{elem.display}", ref=expr[2:], package=package)
    if expr.startswith("map["):
        end = _closing_bracket(expr, 3)
        key_type, elem = go_type(expr[4:end], package), go_type(expr[end + 1 :], package)
        return GoType("map", f"map[{key_type.display}]{elem.display}", ref=expr[end + 1 :], package=package)
    if expr in BASIC:
        kind, bits = BASIC[expr]
        return GoType(kind, expr, bits=bits)
    key = expr if "." in expr else f"{package}.{expr}"
    owner, _, name = key.rpartition(".")
    if key in SPECIAL:
        return GoType("special", _display(key), name=SPECIAL[key])
    if name in gotypes.STRUCTS.get(owner, {}):
        return GoType("struct", _display(key), name=name, ref=key, package=owner)
    if name in gotypes.STRING_TYPES.get(owner, "").split():
        return GoType("string", _display(key))
    underlying = go_type(gotypes.NAMED_TYPES[owner][name], owner)
    return GoType(underlying.kind, _display(key), ref=underlying.ref, package=underlying.package, bits=underlying.bits)


@functools.cache
def struct_fields(key: str) -> dict[str, tuple[str, str]]:
    """A struct's fields in declaration order: JSON name -> (type expression, its package)."""
    package, _, name = key.rpartition(".")
    fields = {}
    for entry in gotypes.STRUCTS[package][name].split():
        field, _, expr = entry.partition(":")
        fields[field] = (expr, package)
    return fields


def _field_type(struct: GoType, field: str) -> GoType | None:
    found = struct_fields(struct.ref).get(field)
    return go_type(*found) if found is not None else None


def _elem(container: GoType) -> GoType:
    return go_type(container.ref, container.package)


def kind_type(api_version: str, kind: str) -> GoType:
    """The Go type of a built-in kind (`apps/v1`, `Deployment`: `v1.Deployment` of k8s.io/api/apps/v1); a kind
    every group registers from meta/v1 (`DeleteOptions`) is that one."""
    group, _, version = api_version.rpartition("/")
    package = f"{GROUP_PACKAGES.get(group, group.split('.')[0])}/{version}"
    return go_type(f"{package if kind in gotypes.STRUCTS.get(package, {}) else 'meta/v1'}.{kind}")


# -- reading JSON: Go's scanner and its words ----------------------------------------------------------

MAX_NESTING = 10000  # `maxNestingDepth`
_SPACE = frozenset(b" \t\r\n")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'bfnrt\\/"')
_IN_OBJECT_KEY, _IN_OBJECT_VALUE, _IN_ARRAY = range(3)


class JSONSyntaxError(ValueError):
    """JSON that encoding/json's scanner refuses, in its words (`SyntaxError`)."""


def quote_char(byte: int) -> str:
    """`quoteChar`: a byte in single quotes, as `strconv.Quote` writes the rune of its value (so a byte from
    0x80 up is a Latin-1 letter or a `\\u` escape); a quote is escaped, a double quote not."""
    if byte == ord("'"):
        return "'\\''"
    if byte == ord('"'):
        return "'\"'"
    return "'" + go_string(chr(byte))[1:-1] + "'"


class _Scanner:
    """encoding/json's scanner (`scanner.go`) as `checkValid` drives it over a whole body: one byte at a time
    through its states, a stack of the objects and arrays it is in; the first byte no state takes is the error,
    `invalid character <byte> <what the state was looking for>`. At the end a space is fed in, so a number ends
    there (and `1.` is an invalid ' ' after the decimal point); a value not ended by then is `unexpected end of
    JSON input`."""

    def __init__(self) -> None:
        self.step: Callable[[int], None] = self._begin_value
        self.stack: list[int] = []
        self.ended = False
        self.word, self.at = "", 0  # the literal (true, false, null) or `\\u` escape being read, and where

    def check(self, raw: bytes) -> str | None:
        try:
            for byte in raw:
                self.step(byte)
            if not self.ended:
                self.step(ord(" "))
        except JSONSyntaxError as exc:
            return str(exc)
        return None if self.ended else "unexpected end of JSON input"

    def _fail(self, byte: int, context: str) -> None:
        raise JSONSyntaxError(f"invalid character {quote_char(byte)} {context}")

    def _push(self, byte: int, state: int) -> None:
        self.stack.append(state)
        if len(self.stack) > MAX_NESTING:
            self._fail(byte, "exceeded max depth")

    def _pop(self) -> None:
        self.stack.pop()
        if self.stack:
            self.step = self._end_value
        else:
            self.step, self.ended = self._end_top, True

    def _begin_value_or_empty(self, byte: int) -> None:  # after `[`
        if byte == ord("]"):
            self._end_value(byte)
        else:
            self._begin_value(byte)

    def _begin_value(self, byte: int) -> None:
        if byte in _SPACE:
            return
        if byte == ord("{"):
            self.step = self._begin_key_or_empty
            self._push(byte, _IN_OBJECT_KEY)
        elif byte == ord("["):
            self.step = self._begin_value_or_empty
            self._push(byte, _IN_ARRAY)
        elif byte == ord('"'):
            self.step = self._in_string
        elif byte == ord("-"):
            self.step = self._negative
        elif byte == ord("0"):
            self.step = self._zero
        elif ord("1") <= byte <= ord("9"):
            self.step = self._integer
        elif byte in b"tfn":
            self.word, self.at = {"t": "true", "f": "false", "n": "null"}[chr(byte)], 1
            self.step = self._in_literal
        else:
            self._fail(byte, "looking for beginning of value")

    def _begin_key_or_empty(self, byte: int) -> None:  # after `{`
        if byte == ord("}"):
            self.stack[-1] = _IN_OBJECT_VALUE
            self._end_value(byte)
        else:
            self._begin_key(byte)

    def _begin_key(self, byte: int) -> None:
        if byte in _SPACE:
            return
        if byte != ord('"'):
            self._fail(byte, "looking for beginning of object key string")
        self.step = self._in_string

    def _end_value(self, byte: int) -> None:
        if not self.stack:
            self.step, self.ended = self._end_top, True
            self._end_top(byte)
            return
        if byte in _SPACE:
            self.step = self._end_value
            return
        state = self.stack[-1]
        if state == _IN_OBJECT_KEY:
            if byte != ord(":"):
                self._fail(byte, "after object key")
            self.stack[-1], self.step = _IN_OBJECT_VALUE, self._begin_value
        elif state == _IN_OBJECT_VALUE:
            if byte == ord(","):
                self.stack[-1], self.step = _IN_OBJECT_KEY, self._begin_key
            elif byte == ord("}"):
                self._pop()
            else:
                self._fail(byte, "after object key:value pair")
        elif byte == ord(","):
            self.step = self._begin_value
        elif byte == ord("]"):
            self._pop()
        else:
            self._fail(byte, "after array element")

    def _end_top(self, byte: int) -> None:
        if byte not in _SPACE:
            self._fail(byte, "after top-level value")

    def _in_string(self, byte: int) -> None:
        if byte == ord('"'):
            self.step = self._end_value
        elif byte == ord("\\"):
            self.step = self._in_escape
        elif byte < 0x20:
            self._fail(byte, "in string literal")

    def _in_escape(self, byte: int) -> None:
        if byte in _ESCAPES:
            self.step = self._in_string
        elif byte == ord("u"):
            self.at, self.step = 0, self._in_unicode_escape
        else:
            self._fail(byte, "in string escape code")

    def _in_unicode_escape(self, byte: int) -> None:
        if byte not in _HEX:
            self._fail(byte, "in \\u hexadecimal character escape")
        self.at += 1
        if self.at == 4:
            self.step = self._in_string

    def _negative(self, byte: int) -> None:
        if byte == ord("0"):
            self.step = self._zero
        elif ord("1") <= byte <= ord("9"):
            self.step = self._integer
        else:
            self._fail(byte, "in numeric literal")

    def _integer(self, byte: int) -> None:
        if not ord("0") <= byte <= ord("9"):
            self._zero(byte)

    def _zero(self, byte: int) -> None:
        if byte == ord("."):
            self.step = self._dot
        elif byte in b"eE":
            self.step = self._exponent
        else:
            self._end_value(byte)

    def _dot(self, byte: int) -> None:
        if not ord("0") <= byte <= ord("9"):
            self._fail(byte, "after decimal point in numeric literal")
        self.step = self._fraction

    def _fraction(self, byte: int) -> None:
        if byte in b"eE":
            self.step = self._exponent
        elif not ord("0") <= byte <= ord("9"):
            self._end_value(byte)

    def _exponent(self, byte: int) -> None:
        if byte in b"+-":
            self.step = self._exponent_sign
        else:
            self._exponent_sign(byte)

    def _exponent_sign(self, byte: int) -> None:
        if not ord("0") <= byte <= ord("9"):
            self._fail(byte, "in exponent of numeric literal")
        self.step = self._exponent_digits

    def _exponent_digits(self, byte: int) -> None:
        if not ord("0") <= byte <= ord("9"):
            self._end_value(byte)

    def _in_literal(self, byte: int) -> None:
        expected = ord(self.word[self.at])
        if byte != expected:
            self._fail(byte, f"in literal {self.word} (expecting {quote_char(expected)})")
        self.at += 1
        if self.at == len(self.word):
            self.step = self._end_value


def json_syntax_error(raw: bytes | str) -> str | None:
    """What encoding/json says of a body that is not JSON, which every decode checks first (`checkValid`): the
    scanner's error, or None."""
    return _Scanner().check(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)


def _go_replace(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "\ufffd", error.start + 1


codecs.register_error("go-utf8", _go_replace)


def go_utf8(raw: bytes) -> str:
    """Bytes as Go reads them into runes (`utf8.DecodeRune`): each byte that does not start a valid UTF-8
    sequence is U+FFFD on its own (Python's decoder would replace a cut-off sequence as one)."""
    return raw.decode("utf-8", "go-utf8")


def read_json(raw: bytes | str, *, number: Callable[[str], float] = float) -> Any:
    """JSON as the API server's decoders read it: what Go's scanner refuses is a `JSONSyntaxError` in its words
    (NaN and Infinity too); a string's bytes that are not UTF-8 are U+FFFD (`go_utf8`), as the decoder's
    `unquote` reads them. A number beyond a float's range is refused in `strict_json`'s words."""
    try:
        return strict_json(go_utf8(raw) if isinstance(raw, bytes) else raw, number=number)
    except ValueError:
        problem = json_syntax_error(raw)
        if problem is not None:
            raise JSONSyntaxError(problem) from None
        raise


@dataclass(frozen=True)
class Unreadable:
    """A request body that is not JSON, as `body_json` reads it: the handler's decoder refuses it when it reads
    the body's apiVersion and kind, and `check_object` answers it with the kind it decodes into."""

    raw: bytes
    error: str


def body_json(raw: bytes) -> Any:
    """A JSON request body as a create or update handler reads it (`read_json`), `Unreadable` when Go's scanner
    refuses it."""
    try:
        return read_json(raw)
    except JSONSyntaxError as exc:
        return Unreadable(raw, str(exc))


# -- Go's renderings ------------------------------------------------------------------------------


class Literal(float):
    """A JSON number with a fraction or exponent, as written: Go quotes the text (`number 1.50`)."""

    __slots__ = ("text",)
    text: str


def _literal(text: str) -> Literal:
    number = Literal(text)
    number.text = text
    return number


def parse_literal(raw: bytes | str) -> Any:
    """JSON as `read_json` reads it, each non-integer number keeping its text."""
    return read_json(raw, number=_literal)


def plain(value: Any) -> Any:
    """`value` with each `Literal` a plain float again (what is stored holds no literals)."""
    if isinstance(value, Literal):
        return float(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def _digits(value: float) -> tuple[str, int]:
    """The shortest decimal digits of a finite non-zero `abs(value)` and the position of the decimal point."""
    _, digits, exponent = Decimal(repr(abs(value))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0")
    return text, len(digits) + int(exponent)


def _exponent_form(text: str, point: int, *, short_negative: bool) -> str:
    mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
    exponent = point - 1
    shown = f"{abs(exponent):02d}"
    if short_negative and exponent < 0:
        shown = str(abs(exponent))
    return f"{mantissa}e{'-' if exponent < 0 else '+'}{shown}"


def _fixed_form(text: str, point: int) -> str:
    if point <= 0:
        return "0." + "0" * -point + text
    if point >= len(text):
        return text + "0" * (point - len(text))
    return f"{text[:point]}.{text[point:]}"


def go_json_float(value: float) -> str:
    """`encoding/json`'s text of a float64: the shortest digits, in exponent form below 1e-6 and from 1e21."""
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    text, point = _digits(value)
    sign = "-" if value < 0 else ""
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        return sign + _exponent_form(text, point, short_negative=True)
    return sign + _fixed_form(text, point)


def go_format_float(value: float) -> str:
    """`fmt`'s `%v` of a float64 (`strconv.FormatFloat(v, 'g', -1, 64)`): exponent form below 1e-4 and from 1e6."""
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    text, point = _digits(value)
    sign = "-" if value < 0 else ""
    if point - 1 < -4 or point - 1 >= 6:
        return sign + _exponent_form(text, point, short_negative=False)
    return sign + _fixed_form(text, point)


def number_text(value: int | float) -> str:
    """A number's JSON text as the decoder reads it: as written, or as Go encodes the value."""
    if isinstance(value, Literal):
        return value.text
    if isinstance(value, int):
        return str(value)
    return go_json_float(value)


def go_json(value: Any) -> str:
    """`json.Marshal` of an unstructured value: compact, keys sorted, '<', '>', '&' and U+2028/9 escaped."""
    if isinstance(value, dict):
        items = (f"{go_json(str(key))}:{go_json(item)}" for key, item in sorted(value.items()))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return number_text(value)
    text = json.dumps(str(value), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        text = text.replace(char, escape)
    return text.replace("\u2029", "\\u2029")


def go_format(value: Any) -> str:
    """`fmt`'s `%+v` of an unstructured value: `map[k:v ...]` with sorted keys, `[a b]`, `<nil>`, bare strings."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{key}:{go_format(item)}" for key, item in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_format(item) for item in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) or (isinstance(value, int) and not _fits_int64(value)):
        return go_format_float(float(value))
    return str(value)


def json_kind(value: Any) -> str:
    """How `UnmarshalTypeError` names a JSON value's kind."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# -- what types that decode themselves accept -------------------------------------------------------

QUANTITY_FORMAT = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
QUANTITY_SUFFIX = "unable to parse quantity's suffix"
QUANTITY_NUMERIC = "unable to parse numeric part of quantity"
QUANTITY_SUFFIXES = {"", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
_QUANTITY = re.compile(r"[+-]?[0-9]*(\.[0-9]*)?(?P<suffix>[eEinumkKMGTP]*[-+]?[0-9]*)")
_EXPONENT = re.compile(r"[eE][-+]?[0-9]+")
_DIGITS = frozenset("0123456789")
INT64_MAX = 2**63 - 1


def quantity_error(text: str) -> str | None:
    """Why `resource.ParseQuantity` refuses `text`, or None: the number and its suffix must scan
    (`parseQuantityString`), then the suffix must be one it knows or a decimal exponent that fits an int64."""
    if not text:
        return QUANTITY_FORMAT
    match = _QUANTITY.fullmatch(text)
    if match is None:
        return QUANTITY_FORMAT
    suffix = match["suffix"]
    if suffix in QUANTITY_SUFFIXES:
        exponent = canonical.DECIMAL_SUFFIXES.get(suffix, 0)
    elif _EXPONENT.fullmatch(suffix) and abs(int(suffix[1:])) <= INT64_MAX + (suffix[1] == "-"):
        exponent = canonical.int32(int(suffix[1:]))
    else:
        return QUANTITY_SUFFIX
    if any(ch in _DIGITS for ch in text[: len(text) - len(suffix)]):
        return None
    # no digit: zero on the fast path, which takes any number of at most 18 digits (a binary one of less with
    # a larger suffix) no finer than nano; the slow path's `inf.Dec.SetString` needs a digit
    slow = suffix in ("Pi", "Ei") or (suffix not in QUANTITY_SUFFIXES and exponent < canonical.NANO)
    return QUANTITY_NUMERIC if slow else None


def base64_error(text: str) -> str | None:
    """Why `base64.StdEncoding.Decode` refuses `text`, or None: the byte offset of the first bad input, as its
    `decodeQuantum` finds it (line breaks are skipped, padding is required)."""
    data = text.encode("utf-8", "surrogatepass")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    at = 0
    while at < len(data):
        got = 0
        while got < 4:
            if at == len(data):
                if got == 0:
                    return None
                return f"illegal base64 data at input byte {at - got}"
            char = data[at]
            at += 1
            if char in alphabet:
                got += 1
                continue
            if char in b"\r\n":
                continue
            if char != ord("=") or got < 2:
                return f"illegal base64 data at input byte {at - 1}"
            if got == 2:  # "==" expected, the first one read
                while at < len(data) and data[at] in b"\r\n":
                    at += 1
                if at == len(data):
                    return f"illegal base64 data at input byte {len(data)}"
                if data[at] != ord("="):
                    return f"illegal base64 data at input byte {at - 1}"
                at += 1
            while at < len(data) and data[at] in b"\r\n":
                at += 1
            return f"illegal base64 data at input byte {at}" if at < len(data) else None
    return None


RFC3339 = "2006-01-02T15:04:05Z07:00"
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
_TIME_CHUNKS = {
    RFC3339: (("", "2006"), ("-", "01"), ("-", "02"), ("T", "15"), (":", "04"), (":", "05"), ("", "Z07:00")),
    RFC3339_MICRO: (
        ("", "2006"),
        ("-", "01"),
        ("-", "02"),
        ("T", "15"),
        (":", "04"),
        (":", "05"),
        ("", ".000000"),
        ("", "Z07:00"),
    ),
}


def _time_quote(data: bytes) -> str:
    """The time package's `quote`: '"' and '\\' escaped, bytes outside printable ASCII as `\\xNN`."""
    out = []
    for byte in data:
        if byte >= 0x80 or byte < 0x20:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(("\\" if byte in b'"\\' else "") + chr(byte))
    return '"' + "".join(out) + '"'


def _getnum(data: bytes, fixed: bool) -> tuple[int, bytes] | None:
    if not data[:1].isdigit():
        return None
    if not data[1:2].isdigit():
        return None if fixed else (data[0] - 48, data[1:])
    return int(data[:2]), data[2:]


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def time_error(text: str, layout: str) -> str | None:
    """Why `time.Parse(layout, text)` refuses `text`, for the two RFC 3339 layouts, in its `ParseError` words:
    the first part of the value that does not match its part of the layout, or the field out of range. As in
    Go, an hour may have one digit, RFC3339 takes a fraction after the seconds and RFC3339Micro wants six."""
    value = text.encode("utf-8", "surrogatepass")
    rest = value
    fields: dict[str, int] = {}
    for prefix, chunk in _TIME_CHUNKS[layout]:
        if not rest.startswith(prefix.encode()):
            return _cannot_parse(value, layout, prefix, rest)
        rest = rest[len(prefix) :]
        hold, out_of_range = rest, ""
        if chunk == "2006":
            if len(rest) < 4 or not rest[:4].isdigit():
                return _cannot_parse(value, layout, chunk, hold)
            fields["year"], rest = int(rest[:4]), rest[4:]
        elif chunk in _TIME_NUMBERS:
            name, limit = _TIME_NUMBERS[chunk]
            got = _getnum(rest, fixed=chunk != "15")
            if got is None:
                return _cannot_parse(value, layout, chunk, hold)
            fields[name], rest = got
            if not (chunk == "01") <= fields[name] < limit:
                out_of_range = name
            elif chunk == "05" and layout == RFC3339 and rest[:1] in (b".", b",") and rest[1:2].isdigit():
                end = 2
                while rest[end : end + 1].isdigit():
                    end += 1
                rest = rest[end:]
        elif chunk == ".000000":
            if len(rest) < 7 or rest[:1] not in (b".", b",") or not rest[1:7].isdigit():
                return _cannot_parse(value, layout, chunk, hold)
            rest = rest[7:]
        elif rest[:1] == b"Z":
            rest = rest[1:]
        else:
            if len(rest) < 6 or rest[3:4] != b":":
                return _cannot_parse(value, layout, chunk, hold)
            sign, hours, minutes, rest = rest[:1], _getnum(rest[1:3], True), _getnum(rest[4:6], True), rest[6:]
            if hours is not None and hours[0] > 24:
                out_of_range = "time zone offset hour"
            if minutes is not None and minutes[0] > 60:
                out_of_range = "time zone offset minute"
            if not out_of_range and (hours is None or minutes is None or sign not in (b"+", b"-")):
                return _cannot_parse(value, layout, chunk, hold)
        if out_of_range:
            return f"parsing time {_time_quote(value)}: {out_of_range} out of range"
    if rest:
        return f"parsing time {_time_quote(value)}: extra text: {_time_quote(rest)}"
    if not 1 <= fields["day"] <= _days_in(fields["month"], fields["year"]):
        return f"parsing time {_time_quote(value)}: day out of range"
    return None


_TIME_NUMBERS = {
    "01": ("month", 13),
    "02": ("day", 100),
    "15": ("hour", 24),
    "04": ("minute", 60),
    "05": ("second", 60),
}


def _cannot_parse(value: bytes, layout: str, layout_elem: str, value_elem: bytes) -> str:
    """`time.ParseError` without a message: which part of the value did not match which part of the layout."""
    return (
        f"parsing time {_time_quote(value)} as {_time_quote(layout.encode())}: cannot parse "
        f"{_time_quote(value_elem)} as {_time_quote(layout_elem.encode())}"
    )


# -- the decoder ------------------------------------------------------------------------------------


@dataclass
class TypeMismatch:
    """sigs.k8s.io/json's `UnmarshalTypeError`: a JSON value of the wrong kind for a Go type, with the struct and
    the field path (JSON names, list indexes and map keys left out) it was met at."""

    value: str
    type: str
    struct: str = ""
    field: str = ""

    def __str__(self) -> str:
        into = f"Go struct field {self.struct}.{self.field}" if self.struct or self.field else "Go value"
        return f"json: cannot unmarshal {self.value} into {into} of type {self.type}"


DecodeError = TypeMismatch | str


class _Abort(Exception):
    """An `UnmarshalJSON` method failed: the decode ends with its error."""

    def __init__(self, error: DecodeError) -> None:
        super().__init__(str(error))
        self.error = error


class Decoder:
    """`UnmarshalCaseSensitivePreserveInts` of a JSON value into a Go type (`decodeState`): fields matched by
    exact name, unknown ones skipped (strict decoding reports those apart), null accepted everywhere. A type
    error is kept (the first one) and decoding goes on; an `UnmarshalJSON` method's error ends it at once."""

    def __init__(self) -> None:
        self.struct = ""  # the struct whose field is being decoded, and the path of JSON names to it
        self.path: list[str] = []
        self.saved: DecodeError | None = None

    def decode(self, value: Any, t: GoType) -> DecodeError | None:
        try:
            self._value(value, t)
        except _Abort as abort:
            return abort.error
        return self.saved

    def _save(self, error: DecodeError) -> None:
        if self.saved is None:
            self.saved = error

    def _mismatch(self, value: str, t: GoType) -> TypeMismatch:
        return TypeMismatch(value, t.display, self.struct, ".".join(self.path))

    def _value(self, value: Any, t: GoType) -> None:
        if value is None:
            return
        if t.kind == "special":
            self._special(value, t)
        elif t.kind == "struct":
            self._struct(value, t)
        elif t.kind == "map":
            if not isinstance(value, dict):
                self._save(self._mismatch(json_kind(value), t))
                return
            elem = _elem(t)
            for item in value.values():
                self._value(item, elem)
        elif t.kind == "slice":
            self._slice(value, t)
        else:
            self._scalar(value, t)

    def _struct(self, value: Any, t: GoType) -> None:
        if not isinstance(value, dict):
            self._save(self._mismatch(json_kind(value), t))
            return
        outer = self.struct
        for key, item in value.items():
            field = _field_type(t, str(key))
            if field is None:
                continue
            self.struct = t.name
            self.path.append(str(key))
            self._value(item, field)
            self.path.pop()
            self.struct = outer

    def _slice(self, value: Any, t: GoType) -> None:
        elem = _elem(t)
        if isinstance(value, str) and elem.kind == "uint" and elem.bits == 8:
            problem = base64_error(value)  # []byte takes base64
            if problem is not None:
                self._save(problem)
            return
        if not isinstance(value, list):
            self._save(self._mismatch(json_kind(value), t))
            return
        for item in value:
            self._value(item, elem)

    def _scalar(self, value: Any, t: GoType) -> None:
        kind = json_kind(value)
        if t.kind == "string":
            accepted = kind == "string"
        elif t.kind == "bool":
            accepted = kind == "bool"
        elif kind != "number":
            accepted = False
        elif t.kind in ("int", "uint"):
            text = number_text(value)
            if not _int_fits(text, t):
                self._save(self._mismatch(f"number {text}", t))
            return
        else:
            accepted = True  # every JSON number is a float64
        if not accepted:
            self._save(self._mismatch(kind, t))

    def _special(self, value: Any, t: GoType) -> None:
        kind = json_kind(value)
        if t.name == "intorstring":  # IntOrString.UnmarshalJSON: a string, or encoding/json into an int32
            if kind == "string":
                return
            text = f"number {number_text(value)}" if kind == "number" else kind
            if kind != "number" or not _int_fits(number_text(value), go_type("int32")):
                raise _Abort(f"json: cannot unmarshal {text} into Go value of type int32")
        elif t.name == "quantity":  # Quantity.UnmarshalJSON: ParseQuantity of the text inside any quotes
            text = value if kind == "string" else go_json(value)
            problem = quantity_error(go_trim_space(text))
            if problem is not None:
                raise _Abort(problem)
        elif t.name in ("time", "microtime"):  # Time.UnmarshalJSON: encoding/json into a string, time.Parse
            if kind != "string":
                raise _Abort(f"json: cannot unmarshal {kind} into Go value of type string")
            problem = time_error(value, RFC3339 if t.name == "time" else RFC3339_MICRO)
            if problem is not None:
                raise _Abort(problem)
        elif t.name in ("orbool", "orarray", "orstringarray"):
            self._schema_union(value, t.name)

    def _schema_union(self, value: Any, union: str) -> None:
        """A CRD schema's `JSONSchemaPropsOrBool`, `...OrArray` or `...OrStringArray`: an object is a schema,
        an array a list (of schemas or strings), a boolean the OrBool's; each decoded anew by util/json, whose
        type error takes this field as its place. Anything else is ignored, but refused by OrBool."""
        schema = go_type("apiextensions/v1.JSONSchemaProps")
        if isinstance(value, dict):
            target: GoType | None = schema
        elif isinstance(value, list) and union != "orbool":
            target = go_type("[]JSONSchemaProps" if union == "orarray" else "[]string", "apiextensions/v1")
        elif union == "orbool" and not isinstance(value, bool):
            raise _Abort("boolean or JSON schema expected")
        else:
            target = None
        if target is not None:
            error = Decoder().decode(value, target)
            if isinstance(error, TypeMismatch) and (self.struct or self.path):  # `addErrorContext`
                error = TypeMismatch(error.value, error.type, self.struct, ".".join(self.path))
            if error is not None:
                raise _Abort(error)


def _int_fits(text: str, t: GoType) -> bool:
    """Whether `strconv.ParseInt` (`ParseUint`) reads the number `text` into an integer of `t`'s width."""
    if not re.fullmatch(r"-?[0-9]+" if t.kind == "int" else r"[0-9]+", text):
        return False
    number = int(text)
    if t.kind == "uint":
        return number < 1 << t.bits
    return -(1 << (t.bits - 1)) <= number < 1 << (t.bits - 1)


# -- the round trip: what the decoded struct encodes to ------------------------------------------------


@functools.cache
def _encoded_fields(key: str) -> dict[str, tuple[GoType, bool, bool, int]]:
    """A struct's fields as `encoding/json` writes them: JSON name -> (type, a pointer, omitempty, its place in
    the declaration, which is the order `typeFields` gives them: an embedded struct's fields in its place)."""
    package, _, name = key.rpartition(".")
    pointers = gotypes.POINTERS.get(package, {}).get(name, "").split()
    kept = gotypes.WITHOUT_OMITEMPTY.get(package, {}).get(name, "").split()
    return {
        field: (go_type(expr, owner), field in pointers, field not in kept, rank)
        for rank, (field, (expr, owner)) in enumerate(struct_fields(key).items())
    }


def _in_declared_order(out: dict[str, Any], key: str) -> dict[str, Any]:
    """The encoded fields `out` of the struct `key` in declaration order."""
    fields = _encoded_fields(key)
    return {field: out[field] for field in sorted(out, key=lambda field: fields[field][3])}


@functools.cache
def _written_when_unset(key: str) -> tuple[tuple[str, Any, int], ...]:
    """The fields of a struct written even when the body leaves them out or null, with what they are written as
    and their place: those without omitempty, and those of a struct type that are not pointers, which omitempty
    never drops (the types that encode themselves are structs too: a zero Time is `null`, a zero IntOrString 0,
    a Quantity "0")."""
    unset = []
    for field, (field_type, pointer, omitempty, rank) in _encoded_fields(key).items():
        encoded = None if pointer else zero(field_type)
        if not omitempty or (not pointer and not _empty(field_type, encoded)):
            unset.append((field, encoded, rank))
    return tuple(unset)


_SURROGATE = re.compile("[\ud800-\udfff]")
_ZERO_SPECIAL = {"quantity": "0", "intorstring": 0, "orbool": False}  # the rest encode their zero as null
_FLOAT_WHOLE_LIMIT = 1e21  # from here on encoding/json writes a float64 with an exponent


def _go_text(value: str) -> str:
    """A string as Go holds it once decoded: each unpaired surrogate escape became U+FFFD."""
    return value if value.isascii() or not _SURROGATE.search(value) else _SURROGATE.sub("\ufffd", value)


def zero(t: GoType) -> Any:
    """What the zero value of `t` encodes to: a struct with its fields' zero values (absent where omitempty), a
    nil slice, map or pointer `null`, a zero Time `null`, a zero Quantity "0", a zero IntOrString 0."""
    if t.kind == "struct":
        return copy.deepcopy(_zero_struct(t))
    if t.kind == "special":
        return _ZERO_SPECIAL.get(t.name)
    return {"string": "", "bool": False, "int": 0, "uint": 0, "float": 0}.get(t.kind)


@functools.cache
def _zero_struct(t: GoType) -> Any:
    return {field: copy.deepcopy(encoded) for field, encoded, _ in _written_when_unset(t.ref)}


def _empty(t: GoType, encoded: Any) -> bool:
    """`isEmptyValue`, what omitempty leaves out: "", false, 0, a nil or empty slice or map; never a struct (nor a
    type with its own MarshalJSON, all of them structs)."""
    if t.kind in ("slice", "map"):
        return encoded is None or len(encoded) == 0
    if t.kind in ("string", "bool", "int", "uint", "float"):
        return encoded in ("", False, 0)
    return False


def encode(value: Any, t: GoType, *, stored: bool = False) -> Any:
    """`json.Marshal` of the Go value of type `t` a JSON `value` that decodes decodes into: what the API server
    stores and answers for a built-in object. Decoding first: a null, like an absent field, leaves the zero value
    (a nil slice, map or pointer); a list element or map value that is null is its type's zero value. Then
    encoding: a pointer written when set (even to a zero value), a field with omitempty left out when empty
    (`_empty`), one without it written even then (`null` when nil); Quantity, Time and []byte as their methods
    write them (`tests.kubesim.canonical`), IntOrString as its string or number, a float64 without a fraction as
    an integer. A struct's fields are written in declaration order (`typeFields`), whatever order the body had,
    and a map's keys sorted (`mapEncoder`); FieldsV1 and JSON write their raw JSON as it was. Fields the type
    does not have are kept, after the others and as they are (pruning them is the handlers' business); a value
    of the wrong JSON type (which decoding refuses) too.

    `stored`: the value as it comes back from etcd, where the server keeps it in protobuf (`generated.pb.go`)
    and from where it answers a write too: a repeated field that is empty is read back nil, so a field without
    omitempty that was `[]` is `null`; a map's []byte value that was nil is read back empty, `""`."""
    if value is None:
        return zero(t)
    if t.kind == "struct":
        if not isinstance(value, dict):
            return plain(value)
        fields = _encoded_fields(t.ref)
        out: dict[str, Any] = {}
        unknown: dict[str, Any] | None = None
        last, ordered = -1, True  # whether `out` is in declaration order so far, and the last field's place
        for key, item in value.items():
            found = fields.get(key)
            if found is None:
                unknown = unknown or {}
                unknown[key] = plain(item)
                continue
            field_type, pointer, omitempty, rank = found
            if item is None:
                continue  # as if absent
            encoded = encode(item, field_type, stored=stored)
            if stored and not omitempty and encoded == [] and field_type.kind == "slice":
                encoded = None
            if pointer or not omitempty or not _empty(field_type, encoded):
                out[key] = encoded
                ordered = ordered and rank > last
                last = rank
        for field, encoded, rank in _written_when_unset(t.ref):  # and those written though absent
            if value.get(field) is None:
                out[field] = copy.deepcopy(encoded)
                ordered = ordered and rank > last
                last = rank
        if not ordered:
            out = _in_declared_order(out, t.ref)
        if unknown:  # after them, in the body's order
            out.update(unknown)
        return out
    if t.kind == "map":
        if not isinstance(value, dict):
            return plain(value)
        elem = _elem(t)
        out = {_go_text(str(key)): encode(item, elem, stored=stored) for key, item in value.items()}
        if stored and elem.kind == "slice" and _elem(elem).kind == "uint":
            out = {key: "" if item is None else item for key, item in out.items()}
        return dict(sorted(out.items())) if len(out) > 1 else out  # keys sorted (`mapEncoder`)
    if t.kind == "slice":
        return _encode_slice(value, t, stored=stored)
    if t.kind == "special":
        return _encode_special(value, t, stored=stored)
    if t.kind == "string":
        return _go_text(value) if isinstance(value, str) else value
    if t.kind in ("int", "uint") and isinstance(value, float) and value.is_integer():
        return int(value)  # a whole number from YAML or a strategic merge patch
    if t.kind == "float" and isinstance(value, float) and value.is_integer() and abs(value) < _FLOAT_WHOLE_LIMIT:
        return int(value)
    return plain(value)


def _encode_slice(value: Any, t: GoType, *, stored: bool) -> Any:
    elem = _elem(t)
    if elem.kind == "uint" and elem.bits == 8:  # []byte: base64, decoded from base64 or from a list of numbers
        if isinstance(value, str) and base64_error(value) is None:
            return canonical.base64_bytes(value)
        if isinstance(value, list) and all(item is None or _int_fits(number_text(item), elem) for item in value):
            return canonical.byte_list([int(item or 0) for item in value])
    if not isinstance(value, list):
        return plain(value)
    return [encode(item, elem, stored=stored) for item in value]


def _encode_special(value: Any, t: GoType, *, stored: bool) -> Any:
    """The types that encode themselves: each method's output for what its `UnmarshalJSON` read."""
    if t.name in ("time", "microtime") and isinstance(value, str):
        return canonical.timestamp(value, micro=t.name == "microtime")
    if t.name == "quantity" and not isinstance(value, dict | list | bool):
        text = go_trim_space(value if isinstance(value, str) else go_json(value))
        return canonical.quantity(text) if quantity_error(text) is None else value
    if t.name == "intorstring" and isinstance(value, str):
        return _go_text(value)
    if t.name == "intorstring" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    schema = go_type("apiextensions/v1.JSONSchemaProps")
    if t.name in ("orbool", "orarray", "orstringarray") and isinstance(value, dict):
        return encode(value, schema, stored=stored)  # a schema
    if t.name == "orarray":  # a non-empty list of schemas, else nothing
        return [encode(item, schema, stored=stored) for item in value] if isinstance(value, list) and value else None
    if t.name == "orstringarray":  # a non-empty list of strings, else nothing
        strings = go_type("[]string")
        return encode(value, strings) if isinstance(value, list) and value else None
    return plain(value)  # FieldsV1 and JSON: the raw JSON as it was; an OrBool's boolean


def round_trip(obj: Any, *, kind: str, api_version: str, stored: bool = False) -> Any:
    """A body of the built-in `kind` as the API server holds it once decoded: `encode` of it into the kind's Go
    type. Anything else (another kind, not an object) is left as it is."""
    if not isinstance(obj, dict) or (obj.get("kind") or kind) != kind:
        return obj
    if (obj.get("apiVersion") or api_version) != api_version:
        return obj
    return encode(obj, kind_type(api_version, kind), stored=stored)


def custom_round_trip(obj: Any) -> Any:
    """A custom resource as the API server holds it: as sent, but for its metadata, which is decoded into an
    ObjectMeta and written back (`GetObjectMetaWithOptions`, `SetObjectMeta` of the schema coercer, which puts it
    in as the map `ToUnstructured` makes). It is held as unstructured JSON, maps all the way down, so every
    object in it is written with its keys sorted (`unstructuredJSONScheme` hands the map to `encoding/json`). A
    new value."""
    if not isinstance(obj, dict):
        return copy.deepcopy(obj)
    if not isinstance(obj.get("metadata"), dict):
        return sorted_keys(obj)
    return sorted_keys({**obj, "metadata": encode(obj["metadata"], go_type("meta/v1.ObjectMeta"))})


def sorted_keys(value: Any) -> Any:
    """An unstructured value as `encoding/json` writes it: every object's keys sorted. A new value."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


def stored_form(resource: ResourceType, obj: Any) -> Any:
    """What the API server writes and answers for `obj` of `resource`: a built-in object encoded from its Go
    type as it is read back from storage (`round_trip`, `stored`), a custom resource as `custom_round_trip`
    leaves it (JSON in storage). A new value."""
    if resource.custom:
        return custom_round_trip(obj)
    encoded = round_trip(obj, kind=resource.kind, api_version=resource.api_version, stored=True)
    return copy.deepcopy(obj) if encoded is obj else encoded


def typed_in_place(resource: ResourceType, obj: Any) -> None:
    """Make `obj` of `resource` its `round_trip` (a custom resource its `custom_round_trip`), in place: what an
    object the server made or was given back (by a webhook, by an apply) holds once it is decoded."""
    if resource.custom:
        if isinstance(obj, dict):
            obj.update(custom_round_trip(obj))
        return
    _round_trip_in_place(obj, kind=resource.kind, api_version=resource.api_version)


def _round_trip_in_place(body: Any, *, kind: str, api_version: str, source: Any = None) -> None:
    """Make the object `body` what `round_trip` of `source` (default: `body`) gives."""
    if isinstance(body, dict):
        source = body if source is None else source
        encoded = round_trip(source, kind=kind, api_version=api_version)
        if encoded is not source:
            body.clear()
            body.update(encoded)


# -- the unstructured converter (a strategic merge patch's result) ----------------------------------------

_UNSTRUCTURED = {str: "string", bool: "bool", int: "int64", float: "float64", dict: "map", list: "slice"}


def _reflect_kind(value: Any) -> str:
    """reflect's `Kind` of an unstructured value: string, bool, int64, float64 (a number past int64's range
    too, as `PreserveInts` leaves it), map or slice."""
    if type(value) is int and not _fits_int64(value):
        return "float64"
    return _UNSTRUCTURED[type(value)] if type(value) in _UNSTRUCTURED else _UNSTRUCTURED[float]


def _fits_int64(value: int) -> bool:
    return -(1 << 63) <= value < 1 << 63


def convert(value: Any, t: GoType) -> str | None:
    """Why `DefaultUnstructuredConverter.FromUnstructured` cannot put an unstructured `value` into `t`, or None.
    Struct fields are filled in declaration order and the first error ends it; the messages name types, not
    fields. Types that decode themselves get the value's JSON (`TypeReflectCacheEntry.FromUnstructured`)."""
    if value is None:
        return None
    kind = _reflect_kind(value)
    if t.kind == "special":
        error = Decoder().decode(parse_literal(go_json(value)), t)
        return None if error is None else str(error)
    if t.kind == "struct":
        if kind != "map":
            return f"cannot restore struct from: {kind}"
        for field, (expr, package) in struct_fields(t.ref).items():
            problem = convert(value.get(field), go_type(expr, package))
            if problem is not None:
                return problem
        return None
    if t.kind == "map":
        if kind != "map":
            return f"cannot restore map from {kind}"
        return next((p for p in (convert(item, _elem(t)) for item in value.values()) if p is not None), None)
    if t.kind == "slice":
        elem = _elem(t)
        if kind == "string" and elem.kind == "uint" and elem.bits == 8:
            problem = base64_error(value) if value else None
            return None if problem is None else f"error decoding from json: {problem}"
        if kind != "slice":
            return f"cannot restore slice from {kind}"
        return next((p for p in (convert(item, elem) for item in value) if p is not None), None)
    return _convert_scalar(value, kind, t)


def _convert_scalar(value: Any, kind: str, t: GoType) -> str | None:
    """`fromUnstructured` of a simple type: the same kind, or a number into a number (a float only when whole);
    an int64 converts to a string type but is refused; anything else is a type the converter has no case for."""
    same = {"string": "string", "bool": "bool", "int64": "int", "float64": "float"}.get(kind)
    if same == t.kind or (kind == "int64" and t.kind in ("int", "uint", "float")):
        return None
    if kind == "float64" and t.kind in ("int", "uint"):
        return None if float(value).is_integer() else f"cannot convert float64 to {t.display}"
    if kind == "int64" and t.kind == "string":
        return f"cannot convert int64 to {t.display}"
    return f"unrecognized type: {t.kind}{t.bits or ''}"  # reflect's Kind: string, bool, int32, uint8, float64


# -- how the handlers answer --------------------------------------------------------------------------

# The struct `SimpleMetaFactory.Interpret` reads apiVersion and kind into, as reflect prints its type.
FIND_KIND = 'struct { APIVersion string "json:\\"apiVersion,omitempty\\""; Kind string "json:\\"kind,omitempty\\"" }'
FIND_KIND_ERROR = "couldn't get version/kind; json parse error: "  # how `Interpret` words encoding/json's error


def summarize(raw: bytes) -> str:
    """`summarizeData(body, 30)`: an object's first 30 bytes, anything else's in hex, " ..." when cut."""
    if not raw:
        return "<empty>"
    head = raw[:30]
    shown = go_utf8(head) if raw[:1] == b"{" else head.hex()
    return shown + (" ..." if len(raw) > 30 else "")


def interpret_error(body: Any) -> str | None:
    """Why `SimpleMetaFactory.Interpret` cannot read a body's apiVersion and kind: encoding/json (which matches
    names in any case) into a struct of two strings, then `ParseGroupVersion`."""
    if not isinstance(body, dict):
        return None if body is None else f"json: cannot unmarshal {json_kind(body)} into Go value of type {FIND_KIND}"
    found: dict[str, Any] = {}
    for key, value in body.items():
        field = {"apiversion": "apiVersion", "kind": "kind"}.get(str(key).casefold())
        if field is None or value is None:
            continue
        if not isinstance(value, str):
            return f"json: cannot unmarshal {json_kind(value)} into Go struct field .{field} of type string"
        found[field] = value
    api_version = found.get("apiVersion", "")
    if api_version.count("/") > 1:
        return f"unexpected GroupVersion string: {api_version}"
    return None


def unrecognized(kind: str, error: str, raw: bytes) -> ApiError:
    """`transformDecodeError` of a body whose apiVersion and kind could not be read: 400, the error and the
    body's start (`summarize`)."""
    return bad_request(f"the object provided is unrecognized (must be of type {kind}): {error} ({summarize(raw)})")


MISSING_KIND = "Object 'Kind' is missing in '{}'"  # `runtime.NewMissingKindErr`


def check_body(resource: ResourceType, body: Any, raw: bytes, content_type: str) -> None:
    """A create's or update's body decoded as the handlers decode it (`check_object`); a custom resource's is
    not decoded into a struct, so left to its schema, but it must name its kind itself (an Unstructured takes
    it from the body alone, `unstructuredJSONScheme`: the error quotes the whole body, a YAML one as the JSON it
    was turned into, keys sorted); a body that is not JSON is refused all the same."""
    if isinstance(body, Unreadable):
        raise unrecognized(resource.kind, f"{FIND_KIND_ERROR}{body.error}", body.raw)
    if not resource.custom:
        check_object(body, raw, content_type, kind=resource.kind, api_version=resource.api_version)
    elif isinstance(body, dict) and not body.get("kind"):
        data = raw if content_type == "application/json" else json.dumps(body, separators=(",", ":"), sort_keys=True)
        text = data if isinstance(data, str) else data.decode(errors="replace")
        raise unrecognized(resource.kind, MISSING_KIND.format(text), raw)  # the summary is of the body as sent


def decode_error(body: Any, *, kind: str, api_version: str, literal: Any = None) -> str | None:
    """What the codec says of a body meant for the built-in `kind`: that its apiVersion and kind cannot be read
    (`Interpret`), or what the typed decode of a body of that kind met first; None when it decodes, or when it is
    of another kind (whose own checks follow). `literal` is the body read with its numbers as written."""
    problem = interpret_error(body)
    if problem is not None:
        return f"{FIND_KIND_ERROR}{problem}" if problem.startswith("json:") else problem
    if not isinstance(body, dict) or (body.get("apiVersion") or api_version) != api_version:
        return None
    if (body.get("kind") or kind) != kind:
        return None
    error = Decoder().decode(body if literal is None else literal, kind_type(api_version, kind))
    return None if error is None else str(error)


def check_object(body: Any, raw: bytes, content_type: str, *, kind: str, api_version: str) -> None:
    """A create's or update's body of a built-in `kind` decoded as the handlers decode it (`create.go`,
    `update.go`, `transformDecodeError`): 400, `the object provided is unrecognized (must be of type Pod): ...`
    when its apiVersion and kind cannot be read, `Pod in version "v1" cannot be handled as a Pod: ...` when a
    field does not decode. A JSON body is read again for its numbers as written; a protobuf one is typed
    already. A body that decodes becomes, in place, what its Go value encodes to (`round_trip`), its quantities
    read from their numbers as written. A JSON body Go's scanner refuses (`Unreadable`) is refused as the first
    decode of it, `Interpret`'s, words it: `couldn't get version/kind; json parse error: invalid character ...`,
    an unrecognized object."""
    if isinstance(body, Unreadable):
        raise unrecognized(kind, f"{FIND_KIND_ERROR}{body.error}", body.raw)
    if content_type == PROTOBUF:
        _round_trip_in_place(body, kind=kind, api_version=api_version)
        return
    literal = parse_literal(raw) if content_type == "application/json" else None
    problem = decode_error(body, kind=kind, api_version=api_version, literal=literal)
    if problem is None:
        _round_trip_in_place(body, kind=kind, api_version=api_version, source=literal)
        return
    if interpret_error(body) is not None:
        raise unrecognized(kind, problem, raw)
    version = api_version.rpartition("/")[2]
    raise bad_request(f'{kind} in version "{version}" cannot be handled as a {kind}: {problem}')


def patch_invalid(value: str, error: str) -> ApiError:
    """The 422 a patch whose result does not decode gets (`NewInvalid` with no kind and no name): one cause on
    the field `patch`."""
    cause = Cause("FieldValueInvalid", "patch", f"Invalid value: {go_string(value)}: {error}")
    return ApiError(422, f' "" is invalid: {cause}', details={"causes": [cause.to_json()]})


def check_patched(resource: ResourceType, patched: Any, *, patch: Any, strategic: bool, scale: bool = False) -> None:
    """A patched object decoded as `patch.go` decodes it: a JSON or merge patch's result from its JSON
    (`jsonPatcher`, apiVersion and kind read first; the value shown is that JSON), a strategic merge patch's by
    the unstructured converter (`applyPatchToObject`; the value shown is the patch). 422 when it does not
    decode. With `scale` the object is an autoscaling/v1 Scale; a custom resource's result is not decoded into
    a struct. A result that decodes becomes, in place, what its Go value encodes to (`round_trip`); a strategic
    merge patch's numbers are the float64 or int64 the converter holds, a JSON or merge patch's as written."""
    if resource.custom and not scale:
        return
    kind, api_version = ("Scale", "autoscaling/v1") if scale else (resource.kind, resource.api_version)
    if not strategic:
        problem = decode_error(patched, kind=kind, api_version=api_version)
        if problem is not None:
            raise patch_invalid(go_json(patched), problem)
        _round_trip_in_place(patched, kind=kind, api_version=api_version)
        return
    problem = convert(patched, kind_type(api_version, kind))
    if problem is not None:
        raise patch_invalid(go_format(patch), problem)
    _round_trip_in_place(patched, kind=kind, api_version=api_version, source=plain(patched))
