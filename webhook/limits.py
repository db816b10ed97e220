"""What one admission request and one connection may cost the webhook, and the checks that enforce it.

Sizes and depths bound the work a single request can cause; the checks here run in time linear in
the input and never recurse, so they are safe to run on input that would make a recursive parser
fail (`json.loads` and PyYAML's composer raise RecursionError on a few thousand brackets).

- An AdmissionReview body nests at most `MAX_BODY_DEPTH` objects/lists (a Pod needs ~15).
- A JSON or YAML annotation value nests at most `MAX_VALUE_DEPTH` levels (a ProxyConfig needs ~5).
- `proxy.istio.io/config` is at most `MAX_PROXY_CONFIG_BYTES`; all annotations of a pod together at
  most `MAX_ANNOTATIONS_BYTES` (Kubernetes' own limit, keys and values counted).
- Each key of the injector and mesh ConfigMaps read as YAML is at most `MAX_CONFIG_KEY_BYTES`: it
  is parsed on the event loop whenever the ConfigMap changes.
- Per connection (`Limits`): the request headers must arrive within `header_timeout` of the
  connection (or of the previous response), the body within `body_timeout` of the headers, and at
  most `max_connections` TLS connections are open at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, ClassVar

from controlplane.literals import decimal, natural, strict_json
from controlplane.settings import SettingsError

MAX_BODY_DEPTH = 100
MAX_VALUE_DEPTH = 50
MAX_PROXY_CONFIG_BYTES = 64 * 1024
MAX_ANNOTATIONS_BYTES = 256 * 1024
MAX_CONFIG_KEY_BYTES = 256 * 1024  # one key (config, values, mesh) of the injector or mesh ConfigMap


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Connection limits of the webhook listener (seconds, and a count of open TLS connections).

    Beyond `max_connections`, a new connection is closed as soon as its TLS handshake completes
    (it does not wait for a slot); a handshake itself must finish within `header_timeout`.
    """

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 512

    ENV: ClassVar[dict[str, str]] = {
        "header_timeout": "MESHPLANE_WEBHOOK_HEADER_TIMEOUT",
        "body_timeout": "MESHPLANE_WEBHOOK_BODY_TIMEOUT",
        "max_connections": "MESHPLANE_WEBHOOK_MAX_CONNECTIONS",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Limits:
        """The defaults, overridden by `MESHPLANE_WEBHOOK_{HEADER_TIMEOUT,BODY_TIMEOUT}` (seconds, > 0)
        and `MESHPLANE_WEBHOOK_MAX_CONNECTIONS` (an integer >= 1). A malformed value raises
        `SettingsError` naming the variable and what it accepts."""
        values: dict[str, Any] = {}
        for field, var in cls.ENV.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            value = natural(raw.strip()) if field == "max_connections" else decimal(raw.strip())
            if value is None or value <= 0:
                kind = "an integer >= 1" if field == "max_connections" else "a number of seconds > 0 (example: 10)"
                raise SettingsError(f"{var}={raw!r}: use {kind}")
            values[field] = value
        return cls(**values)


# -- JSON --------------------------------------------------------------------------------------

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


def load_json(text: str | bytes, *, max_depth: int = MAX_VALUE_DEPTH) -> Any:
    """`strict_json` after checking the depth; `ValueError` for invalid JSON or deeper nesting."""
    data = text.encode() if isinstance(text, str) else text
    depth = json_depth(data)
    if depth > max_depth:
        raise ValueError(f"nests {depth} levels deep; at most {max_depth} are allowed")
    return strict_json(data)


# -- annotations -------------------------------------------------------------------------------


def annotations_size(annotations: Mapping[str, Any]) -> int:
    """Bytes of all keys and values, as Kubernetes counts them for its 256 KiB limit."""
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
