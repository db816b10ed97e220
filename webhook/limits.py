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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from controlplane.literals import decimal, natural
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


# -- annotations -------------------------------------------------------------------------------


def annotations_size(annotations: Mapping[str, Any]) -> int:
    """Bytes of all keys and values, as Kubernetes counts them for its 256 KiB limit."""
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
