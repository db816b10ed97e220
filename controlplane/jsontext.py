"""JSON as Go (the API server, Istio) reads it, in time linear in the input and without recursion.

Python's decoder reads more than JSON (`NaN`, `Infinity`), reads a number beyond a float as infinity
and an integer of any size, and raises RecursionError on a few thousand brackets, which any
annotation, token or environment variable can hold (an annotation may be 256 KiB). `load_json`
counts the depth first (`json_depth`, linear), then decodes with `strict_json`.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_ENV_JSON_DEPTH = 50  # a JSON environment variable of the sidecar's (what the injector writes nests ~5 deep)

# A JSON string, or an unterminated one up to the end: the closing quote is optional so that a
# failed match never makes the regex engine retry from every later quote (which is quadratic).
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"?'
_STRINGS = re.compile(_STRING.encode(), re.DOTALL)
_TOKENS = re.compile(f"{_STRING}|[\\[\\]{{}},:]".encode(), re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(data: bytes) -> int:
    """How deep the objects and lists of a JSON text nest (0 for a scalar), by counting brackets
    outside strings. Linear in `len(data)`; for invalid JSON the count is meaningless but finite."""
    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def json_path_past(data: bytes, depth: int) -> str:
    """The path (`request.object.spec.containers[0]...`) of the first object or list that opens
    deeper than `depth`, shortened to its first twelve steps; "the top level" if there is none."""
    path: list[str | int | None] = []  # per open container: the current key (object) or index (list)
    key = ""
    for match in _TOKENS.finditer(data):
        token = match.group()
        char = token[0]
        if char == ord('"'):
            key = token.decode(errors="replace")
        elif char == ord(":") and path and not isinstance(path[-1], int):
            try:
                path[-1] = str(json.loads(key))
            except ValueError:
                path[-1] = key
        elif char == ord(",") and path and isinstance(path[-1], int):
            path[-1] += 1
        elif char in b"[{":
            if len(path) >= depth:
                break
            path.append(0 if char == ord("[") else None)
        elif char in b"]}" and path:
            path.pop()
    text = ""
    for step in path[:12]:
        text += f"[{step}]" if isinstance(step, int) else f".{step}" if step is not None else ".{}"
    return (text.lstrip(".") or "the top level") + ("..." if len(path) > 12 else "")


def load_json(text: str | bytes, *, max_depth: int) -> Any:
    """`strict_json` after checking the depth; `ValueError` for invalid JSON or deeper nesting."""
    data = text.encode() if isinstance(text, str) else text
    depth = json_depth(data)
    if depth > max_depth:
        raise ValueError(f"nests {depth} levels deep; at most {max_depth} are allowed")
    return strict_json(data)


def strict_json(data: str | bytes) -> Any:
    """`json.loads` as JSON is (RFC 8259) and as Go reads it: Python's decoder also takes `NaN`, `Infinity`
    and `-Infinity`, reads a number too large for a float as infinity, and an integer of any size, which
    Go refuses beyond a float64's range (and `int()` raises on past 4,300 digits). ValueError otherwise."""
    return json.loads(data, parse_constant=_not_json, parse_float=_finite, parse_int=_float_range_int)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _float_range_int(text: str) -> int:
    if len(text) > _FLOAT_DIGITS or math.isinf(float(text)):
        raise ValueError(f"the number {text[:40]} is out of range")
    return int(text)


_FLOAT_DIGITS = 310  # a sign and 309 digits: past that, an integer is beyond any float64
