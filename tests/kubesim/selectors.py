"""Label and field selectors with the API server's syntax and matching rules.

Label selectors: comma-separated requirements, each one of `key`, `!key`, `key=value`,
`key==value`, `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key>N`, `key<N`. Keys and
values are checked like label keys and values. `!=` and `notin` also match objects without the
key. Field selectors: comma-separated `field=value`, `field==value` or `field!=value`, with `\\`
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
        try:
            have = int(str(value))
        except ValueError:
            return False
        want = int(self.values[0])
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


_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|>|<|[^\s!=(),<>]+)")


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:  # pragma: no cover - the pattern accepts every non-space character
            raise SelectorError(f"unable to parse requirement: unexpected character at {pos} in {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def _check_key(key: str) -> None:
    """A requirement's key is a qualified name; the parser joins its problems with "; " in one error."""
    problems = qualified_name_problems(key)
    if problems:
        raise SelectorError(f"unable to parse requirement: key: Invalid value: {go_string(key)}: {'; '.join(problems)}")


def _check_value(key: str, value: str, index: int) -> None:
    """A requirement's value is a label value, named by its index and the requirement's key."""
    problems = label_value_problems(value)
    if problems:
        detail = "; ".join(problems)
        raise SelectorError(
            f"unable to parse requirement: values[{index}][{key}]: Invalid value: {go_string(value)}: {detail}"
        )


def parse_label_selector(text: str) -> LabelSelector:
    """Parse the `labelSelector` query parameter; raise SelectorError on bad syntax or names."""
    tokens = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise SelectorError(f"unable to parse requirement: unexpected end of selector {text!r}")
        tok = tokens[i]
        i += 1
        return tok

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    while i < len(tokens):
        tok = take()
        if tok == "!":
            key = take()
            _check_key(key)
            reqs.append(Requirement(key, "!"))
        else:
            key = tok
            if key in {",", "(", ")", "=", "==", "!=", ">", "<"}:
                raise SelectorError(f"unable to parse requirement: found '{key}', expected: !, identifier")
            _check_key(key)
            op = peek()
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                take()
                nxt = peek()
                value = "" if nxt is None or nxt == "," else take()
                if value in {"(", ")", "=", "==", "!=", "!", ">", "<"}:
                    raise SelectorError(f"unable to parse requirement: found '{value}', expected: identifier")
                _check_value(key, value, 0)
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(f"unable to parse requirement: found '{tokens[i - 1]}', expected: '('")
                values: list[str] = []
                while True:
                    tok = take()
                    if tok == ")" and not values:
                        values.append("")  # "()" is the one empty value, as the server's parser reads it
                        break
                    if tok in {",", ")"}:
                        value = ""
                    else:
                        value = tok
                        tok = take()
                    _check_value(key, value, len(values))
                    values.append(value)
                    if tok == ")":
                        break
                    if tok != ",":
                        raise SelectorError(f"unable to parse requirement: found '{tok}', expected: ',' or ')'")
                reqs.append(Requirement(key, op, tuple(values)))
            elif op in (">", "<"):
                take()
                value = take()
                if not re.fullmatch(r"-?[0-9]+", value):
                    raise SelectorError(
                        f'unable to parse requirement: values[0]: Invalid value: "{value}": '
                        "for 'Gt', 'Lt' operators, the value must be an integer"
                    )
                reqs.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
            else:
                raise SelectorError(
                    f"unable to parse requirement: found '{op}', expected: in, notin, =, ==, !=, gt, lt"
                )
        nxt = peek()
        if nxt is None:
            break
        if nxt != ",":
            raise SelectorError(f"found '{nxt}', expected: ',' or 'end of string'")
        take()
        if peek() is None:
            raise SelectorError("found 'end of string', expected: !, identifier")
    return LabelSelector(tuple(reqs))


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
