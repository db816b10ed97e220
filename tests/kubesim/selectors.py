"""Label and field selectors with the API server's syntax and matching rules.

Label selectors: comma-separated requirements, each one of `key`, `!key`, `key=value`,
`key==value`, `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key>N`, `key<N`. Keys and
values are checked like label keys and values: a key as soon as it is read, all the values of a
requirement together once it is read. `!=` and `notin` also match objects without the key.
Field selectors: comma-separated `field=value`, `field==value` or `field!=value`, with `\\`
escaping `,` `=` `!` and `\\` in values; only the fields a resource supports are accepted.

Errors raise `SelectorError` with the message the server puts in its 400 BadRequest Status.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.kubesim.validation import go_string, label_value_problems, qualified_name_problems


class SelectorError(ValueError):
    """A selector the server would reject with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "exists", "!", "=", "!=", "in", "notin", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        op = self.operator
        if op == "exists":
            return present
        if op == "!":
            return not present
        if op in ("=", "in"):
            return present and value in self.values
        if op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        # both read as Go's `strconv.ParseInt` reads them: "1_0" or " 1" is no number
        have, want = _go_int64(str(value)), _go_int64(self.values[0])
        if have is None or want is None:
            return False
        return have > want if op == "gt" else have < want


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        found = labels or {}
        return all(req.matches(found) for req in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


# Go's lexer separates tokens with these four only; any other character (\v, U+00A0, ...) is part of a word.
_SPACE = " \t\r\n"
_SPECIAL = "=!(),><"
_WORD_END = _SPACE + _SPECIAL + "\0"
_SYMBOLS = {",", "(", ")", "=", "==", "!=", "!", ">", "<"}
_GO_INT = re.compile(r"[+-]?[0-9]+")


def _tokens(text: str) -> list[str]:
    """The words and symbols of a selector as the server's lexer (`labels.Lexer`) reads them.

    Its reader answers a NUL character (U+0000) as it answers the end of the text, though it moves past it:
    a NUL where a token may start ends the selector there (whatever follows is never read), and a NUL inside
    a word or after a symbol ends that token, the next one starting right after it ("a", NUL, "b" is the
    words a and b). Symbols are read greedily: `!=` and `==` are one token, `=!` two.
    """
    tokens: list[str] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _SPACE:
            pos += 1
        if pos == end or text[pos] == "\0":
            return tokens
        start = pos
        if text[pos] in _SPECIAL:
            pos += 1
            while pos < end and text[pos] in _SPECIAL and text[start : pos + 1] in _SYMBOLS:
                pos += 1
        else:
            while pos < end and text[pos] not in _WORD_END:
                pos += 1
        tokens.append(text[start:pos])
        if pos < end and text[pos] == "\0":
            pos += 1


def _go_int64(text: str) -> int | None:
    """`text` as `strconv.ParseInt(text, 10, 64)` reads it: an optional sign and ASCII digits, in range."""
    if _GO_INT.fullmatch(text) is None or len(text.lstrip("+-").lstrip("0")) > 19:  # past int64 (and int()'s limit)
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _check_key(key: str) -> None:
    """A requirement's key is a qualified name, checked as soon as it is read (`parseKeyAndInferOperator`).
    The parser has no field path there, so Go prints the nil path as `<nil>`; the problems are joined with
    "; " in one error."""
    problems = qualified_name_problems(key)
    if problems:
        detail = "; ".join(problems)
        raise SelectorError(f"unable to parse requirement: <nil>: Invalid value: {go_string(key)}: {detail}")


def _value_errors(key: str, operator: str, values: tuple[str, ...]) -> list[str]:
    """What `NewRequirement` finds wrong with a whole requirement's values, in its order: for `>` and `<`
    each value that is no integer, then each value that is no label value (named by its key)."""
    errors = []
    if operator in ("gt", "lt"):
        for i, value in enumerate(values):
            if _go_int64(value) is None:
                detail = "for 'Gt', 'Lt' operators, the value must be an integer"
                errors.append(f"values[{i}]: Invalid value: {go_string(value)}: {detail}")
    for i, value in enumerate(values):
        problems = label_value_problems(value)
        if problems:
            errors.append(f"values[{i}][{key}]: Invalid value: {go_string(value)}: {'; '.join(problems)}")
    return errors


def _aggregate(errors: list[str]) -> str:
    """Go's aggregate of errors as text: the one error, or every distinct one in brackets."""
    distinct = list(dict.fromkeys(errors))
    return distinct[0] if len(distinct) == 1 else f"[{', '.join(distinct)}]"


def _requirement(key: str, operator: str, values: tuple[str, ...] = ()) -> Requirement:
    """A parsed requirement, its values checked all together as `NewRequirement` checks them; the values of
    `in` and `notin` are a set, sorted and without repeats, so their indexes are those of the sorted set."""
    if operator in ("in", "notin"):
        values = tuple(sorted(set(values)))
    errors = _value_errors(key, operator, values)
    if errors:
        raise SelectorError(f"unable to parse requirement: {_aggregate(errors)}")
    return Requirement(key, operator, values)


def parse_label_selector(text: str) -> LabelSelector:
    """Parse the `labelSelector` query parameter; raise SelectorError on bad syntax or names."""
    return LabelSelector(tuple(_Parser(text).requirements()))


_END = ""  # the token after the last one: Go's lexer reports the end of the selector with an empty literal
_OPERATORS = {"in": "in", "notin": "notin", "=": "=", "==": "=", "!=": "!=", ">": "gt", "<": "lt"}


def _is_word(token: str) -> bool:
    """A key or a value. Where a key or a value may stand, `in` and `notin` are words too."""
    return token != _END and token not in _SYMBOLS


def _syntax_error(detail: str) -> SelectorError:
    """A syntax error inside a requirement, which the server's parser prefixes as it does a bad key or value."""
    return SelectorError(f"unable to parse requirement: {detail}")


class _Parser:
    """The server's label selector parser (`labels.Parser`), step for step, so that a bad selector fails at
    the same token with the same text. Errors between requirements have no prefix; errors inside one do."""

    def __init__(self, text: str) -> None:
        self.tokens = [*_tokens(text), _END]
        self.pos = 0

    def peek(self) -> str:
        return self.tokens[self.pos]

    def take(self) -> str:
        """The next token, read; the end is never read past."""
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def requirements(self) -> list[Requirement]:
        """`parse`: requirements separated by commas, each comma followed by another requirement."""
        first = self.peek()
        if first == _END:
            return []
        if first != "!" and not _is_word(first):
            raise SelectorError(f"found '{first}', expected: !, identifier, or 'end of string'")
        reqs = []
        while True:
            reqs.append(self.requirement())
            after = self.take()
            if after == _END:
                return reqs
            if after != ",":
                raise SelectorError(f"found '{after}', expected: ',' or 'end of string'")
            if self.peek() != "!" and not _is_word(self.peek()):
                raise SelectorError(f"found '{self.peek()}', expected: identifier after ','")

    def requirement(self) -> Requirement:
        """`parseRequirement`: a key with `!` before it or nothing after it, else a key, an operator and
        its values."""
        key, operator = self.key_and_inferred_operator()
        if operator:
            return _requirement(key, operator)
        operator = self.operator()
        values = self.value_set() if operator in ("in", "notin") else (self.exact_value(),)
        return _requirement(key, operator, values)

    def key_and_inferred_operator(self) -> tuple[str, str]:
        """`parseKeyAndInferOperator`: the key, checked at once; "!" when `!` came before it, "exists" when
        the requirement ends after it, else no operator yet."""
        negated = self.peek() == "!"
        if negated:
            self.take()
        key = self.take()
        if not _is_word(key):
            raise _syntax_error(f"found '{key}', expected: identifier")
        _check_key(key)
        if negated:
            return key, "!"
        return key, "exists" if self.peek() in (_END, ",") else ""

    def operator(self) -> str:
        """`parseOperator`: here `in` and `notin` are operators, not words."""
        token = self.take()
        if token not in _OPERATORS:
            raise _syntax_error(f"found '{token}', expected: in, notin, =, ==, !=, gt, lt")
        return _OPERATORS[token]

    def value_set(self) -> tuple[str, ...]:
        """`parseValues`: `(` and a list of values, or `()`, which is the one empty value."""
        opening = self.take()
        if opening != "(":
            raise _syntax_error(f"found '{opening}' expected: '('")  # the server's text has no comma here
        first = self.peek()
        if first == ")":
            self.take()
            return ("",)
        if first != "," and not _is_word(first):
            raise _syntax_error(f"found '{first}', expected: ',', ')' or identifier")
        values = self.value_list()
        self.take()  # the ")" the list stopped before
        return values

    def value_list(self) -> tuple[str, ...]:
        """`parseIdentifiersList`: values and commas up to a `)`. A comma adds the empty value when no value
        came before it, when `)` follows it, or when a second comma does, which it reads too: `(a,,b)` holds
        "", a and b, while `(a,,)` is refused."""
        values: list[str] = []
        while True:
            token = self.take()
            if _is_word(token):
                values.append(token)
                after = self.peek()
                if after == ")":
                    return tuple(values)
                if after != ",":
                    raise _syntax_error(f"found '{after}', expected: ',' or ')'")
            elif token == ",":
                if not values:
                    values.append("")
                after = self.peek()
                if after == ")":
                    values.append("")
                    return tuple(values)
                if after == ",":
                    self.take()
                    values.append("")
            else:
                raise _syntax_error(f"found '{token}', expected: ',', or identifier")

    def exact_value(self) -> str:
        """`parseExactValue`: the one value after `=`, `==`, `!=`, `>` or `<`, empty before a comma or the
        end."""
        if self.peek() in (_END, ","):
            return ""
        value = self.take()
        if not _is_word(value):
            raise _syntax_error(f"found '{value}', expected: identifier")
        return value


def selector_from_label_selector(spec: Mapping[str, Any] | None) -> LabelSelector:
    """A `metav1.LabelSelector` object (matchLabels, matchExpressions) as a LabelSelector.

    Raises SelectorError for an unknown operator or bad values (the caller turns it into a field
    error). An empty or missing selector matches everything.
    """
    if not spec:
        return LabelSelector()
    reqs: list[Requirement] = []
    for key, value in sorted((spec.get("matchLabels") or {}).items()):
        reqs.append(Requirement(str(key), "=", (str(value),)))
    for expr in spec.get("matchExpressions") or []:
        op = str(expr.get("operator", ""))
        key = str(expr.get("key", ""))
        values = tuple(str(v) for v in expr.get("values") or [])
        if op == "In":
            reqs.append(Requirement(key, "in", values))
        elif op == "NotIn":
            reqs.append(Requirement(key, "notin", values))
        elif op == "Exists":
            reqs.append(Requirement(key, "exists"))
        elif op == "DoesNotExist":
            reqs.append(Requirement(key, "!"))
        else:
            raise SelectorError(f'"{op}" is not a valid label selector operator')
    return LabelSelector(tuple(reqs))


def format_label_selector(spec: Mapping[str, Any] | None) -> str:
    """The string form kubectl prints for a metav1.LabelSelector (`<none>` when empty)."""
    if not spec:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((spec.get("matchLabels") or {}).items())]
    for expr in spec.get("matchExpressions") or []:
        op = expr.get("operator")
        key = expr.get("key")
        values = ",".join(sorted(str(v) for v in expr.get("values") or []))
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts) if parts else "<none>"


# -- field selectors ----------------------------------------------------------------------------

FieldGetter = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any], fields: Mapping[str, FieldGetter]) -> bool:
        for req in self.requirements:
            have = fields[req.field](obj)
            if (have == req.value) == req.negate:
                return False
        return True


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            if ch not in "\\,=!":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            raise SelectorError(f"invalid field selector: unescaped {ch!r} in value {value!r}")
        else:
            out.append(ch)
    if escaped:
        raise SelectorError("invalid field selector: unterminated escape sequence")
    return "".join(out)


def parse_field_selector(text: str, supported: Mapping[str, FieldGetter]) -> FieldSelector:
    """Parse the `fieldSelector` query parameter against the resource's supported fields."""
    reqs: list[FieldRequirement] = []
    if not text.strip():
        return FieldSelector()
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        for op in ("!=", "==", "="):
            idx = part.find(op)
            if idx > 0:
                field, value = part[:idx], part[idx + len(op) :]
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field = field.strip()
        if field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        reqs.append(FieldRequirement(field, op == "!=", _unescape(value)))
    return FieldSelector(tuple(reqs))
