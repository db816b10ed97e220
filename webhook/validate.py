"""Parsers for the values injection reads from annotations and from the injector ConfigMaps.

Every parser takes the raw text and returns a normalised value, or raises `ValueError` with a
message that says what is wrong and what is accepted; the caller adds where the value came from
(`InjectionError` for a pod annotation or label, `ConfigError` for a ConfigMap field). The same
parser serves both, so a value the ConfigMap accepts as a default is exactly a value the pod
annotation accepts as an override.

Also here: the two errors of injection (`InjectionError`, `InvalidPod`) and a YAML loader that
refuses aliases and deep nesting (see `webhook.limits`).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, Context, Decimal, localcontext
from typing import Any

from controlplane.literals import INT32_MAX, duration, host_port, ip_network, natural
from controlplane.model import yamltext
from webhook.limits import MAX_PROXY_CONFIG_BYTES, MAX_VALUE_DEPTH

# -- errors ------------------------------------------------------------------------------------

_MAX_SHOWN = 160


def show_value(value: str) -> str:
    """`value` quoted as JSON, shortened when long, for error messages."""
    if len(value) <= _MAX_SHOWN:
        return json.dumps(value)
    return f"{json.dumps(value[:_MAX_SHOWN])}... ({len(value)} characters)"


class InjectionError(ValueError):
    """A pod annotation (or the `sidecar.istio.io/inject` label) has a value injection cannot use.

    `annotation` is the annotation or label name, `value` the offending value, `problem` what is
    wrong with it; the message names all three. The webhook turns this into a rejected admission
    (HTTP 200, `allowed: false`), `meshplane inject` into exit code 1.
    """

    def __init__(self, *, annotation: str, value: str, problem: str, kind: str = "annotation") -> None:
        super().__init__(f"{kind} {annotation}: invalid value {show_value(value)}: {problem}")
        self.annotation = annotation
        self.value = value
        self.problem = problem
        self.kind = kind


class InvalidPod(ValueError):
    """The pod is structurally malformed (a field has the wrong JSON type); `field` is its path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# -- YAML ------------------------------------------------------------------------------------


def load_yaml(text: str) -> Any:
    """Parse one YAML (or JSON) document; raise `ValueError` with the line and column on error.

    Aliases and nesting deeper than `limits.MAX_VALUE_DEPTH` are refused before anything is built,
    so neither a small value expanding into gigabytes nor a deep one exhausting the stack gets in.
    """
    return yamltext.load_yaml(text, max_depth=MAX_VALUE_DEPTH)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


# -- containers --------------------------------------------------------------------------------


def container_problem(container: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of `container` that injection reads and that does not have the type the API
    server decodes it to, as (path under the container, problem); None when all do. Checked on the
    user's containers (an `istio-proxy` of their own is merged into ours) and on what templates render.
    """
    for key in ("command", "args"):
        items = container.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            return key, f"must be a list of strings, got {type_name(items)}"
        for index, item in enumerate(items):
            if not isinstance(item, str):
                return f"{key}[{index}]", f"must be a string, got {type_name(item)}"
    for key, named in (("env", True), ("ports", False), ("volumeMounts", True)):
        entries = container.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            return key, f"must be a list, got {type_name(entries)}"
        for index, entry in enumerate(entries):
            where = f"{key}[{index}]"
            if not isinstance(entry, dict):
                return where, f"must be an object, got {type_name(entry)}"
            if named and (not isinstance(entry.get("name"), str) or not entry["name"]):
                return f"{where}.name", "is required and must be a non-empty string"
            if key == "env":
                problem = _env_problem(entry)
                if problem is not None:
                    return f"{where}.{problem[0]}", problem[1]
    return None


def _env_problem(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    value = entry.get("value")
    if value is not None and not isinstance(value, str):
        return "value", f"must be a string, got {type_name(value)} (quote it)"
    source = entry.get("valueFrom")
    if source is None:
        return None
    if not isinstance(source, dict):
        return "valueFrom", f"must be an object, got {type_name(source)}"
    for key, field in (("fieldRef", "fieldPath"), ("resourceFieldRef", "resource")):
        ref = source.get(key)
        if ref is None:
            continue
        if not isinstance(ref, dict):
            return f"valueFrom.{key}", f"must be an object, got {type_name(ref)}"
        if not isinstance(ref.get(field), str) or not ref[field]:
            return f"valueFrom.{key}.{field}", "is required and must be a non-empty string"
    return None


# -- scalars -----------------------------------------------------------------------------------


def parse_bool(text: str) -> bool:
    """Exactly `true` or `false` (Istio accepts a few more spellings in some places; one rule here)."""
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError('use "true" or "false"')


_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]*))?"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?",
    re.ASCII,  # only ASCII digits, as the API server's quantities
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_MAX_EXPONENT = 30
_MILLI = Decimal("0.001")
_BINARY_CAP = Decimal(2**63 - 1)  # `ParseQuantity` caps a binary quantity at the largest int64


def parse_quantity(text: str) -> Decimal:
    """A non-negative Kubernetes resource quantity (`100m`, `0.5`, `128Mi`, `1e3`), valued as a pod holds it.

    The text is read as `resource.ParseQuantity` reads it (a binary one capped at 2^63-1: `9Ei` holds what `8Ei`
    does), and the value is then rounded up to a thousandth, as the API server's defaulting of a container's
    resources does (`SetDefaults_ResourceList`: `1.0001` holds `1001m`). So a request and its limit compare here
    as the API server compares them. Refused although the API server reads them: a text with no digit (`M`, `.`
    and `+` are 0 to it), a negative amount (`-0` is zero, and taken), and an exponent beyond -30..30 (`1e31`)."""
    match = _QUANTITY.fullmatch(text)
    if match is None or not (match["whole"] or match["fraction"]):
        raise ValueError("not a Kubernetes quantity (examples: 100m, 0.5, 2, 128Mi, 1Gi)")
    suffix = match["suffix"] or ""
    exponent = _DECIMAL.get(suffix, 0) if suffix in _DECIMAL or suffix in _BINARY else int(suffix[1:])
    if abs(exponent) > _MAX_EXPONENT:
        raise ValueError(f"exponent {exponent} is out of range: meshplane takes {-_MAX_EXPONENT} to {_MAX_EXPONENT}")
    # exact arithmetic: enough digits for the whole text, a binary suffix's factor and the thousandths
    with localcontext(Context(prec=len(text) + 2 * _MAX_EXPONENT + 20)):
        number = Decimal(f"{match['sign']}{match['whole'] or 0}.{match['fraction'] or 0}")
        if suffix in _BINARY:
            value = min(number * Decimal(1024) ** _BINARY[suffix], _BINARY_CAP)
        else:
            value = number.scaleb(exponent)
        if value < 0:
            raise ValueError("a resource quantity must not be negative")
        return value.quantize(_MILLI, rounding=ROUND_CEILING)


def parse_cidr_list(text: str) -> str:
    """`*`, empty (nothing), or comma-separated CIDRs (`10.0.0.0/8,fd00::/8`); returns it normalised."""
    stripped = text.strip()
    if stripped in ("", "*"):
        return stripped
    items = [item.strip() for item in stripped.split(",")]
    for item in items:
        if not item:
            raise ValueError("empty entry in the comma-separated list")
        if item == "*":
            raise ValueError("* must be the whole value, not part of a list")
        ip_network(item)
    return ",".join(items)


def parse_port_list(text: str, *, allow_star: bool) -> str:
    """Empty (none), comma-separated ports 1-65535, or (when `allow_star`) `*` for all."""
    stripped = text.strip()
    if stripped == "":
        return ""
    if stripped == "*":
        if allow_star:
            return "*"
        raise ValueError("* (all ports) is not allowed here; list the ports")
    ports: list[int] = []
    for item in (item.strip() for item in stripped.split(",")):
        if not item:
            raise ValueError("empty entry in the comma-separated list")
        port = natural(item)
        if port is None or not 1 <= port <= 65535:
            raise ValueError(f"{item!r} is not a port number 1-65535")
        ports.append(port)
    return ",".join(map(str, ports))


INTERCEPTION_MODES = ("REDIRECT", "NONE")
# Istio's third mode. meshplane's istio-init installs no TPROXY rules, so a pod given it would never start:
# it is refused where it is written, with this text.
TPROXY_UNSUPPORTED = (
    "TPROXY is not supported: meshplane's istio-init installs REDIRECT rules only; use REDIRECT or NONE"
)


def parse_interception_mode(text: str) -> str:
    if text in _UNSUPPORTED["interceptionMode"]:
        raise ValueError(_UNSUPPORTED["interceptionMode"][text])
    if text not in INTERCEPTION_MODES:
        raise ValueError(f"use one of {', '.join(INTERCEPTION_MODES)}")
    return text


LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


def parse_log_level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
    return text


_COMPONENT = re.compile(r"^[a-zA-Z0-9_]+$")


def parse_component_log_level(text: str) -> str:
    """`component:level` pairs separated by commas, e.g. `misc:error,upstream:debug`."""
    items = [item.strip() for item in text.split(",")]
    for item in items:
        component, sep, level = item.partition(":")
        if not sep or not _COMPONENT.fullmatch(component):
            raise ValueError(f"{item!r} is not component:level (example: misc:error,upstream:debug)")
        if level not in LOG_LEVELS:
            raise ValueError(f"level {level!r} of {component!r} is not one of {', '.join(LOG_LEVELS)}")
    return ",".join(items)


_IMAGE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._\-/:@+]*$")


def parse_image(text: str) -> str:
    """A container image reference (`registry/name:tag` or `name@sha256:...`), no spaces."""
    if not text or len(text) > 1024 or not _IMAGE.fullmatch(text) or text.endswith((":", "/", "@")):
        raise ValueError("not a container image reference (example: docker.io/istio/proxyv2:1.28.0)")
    return text


PULL_POLICIES = ("Always", "IfNotPresent", "Never")
IMAGE_TYPES = ("default", "distroless", "debug")


# -- ProxyConfig -------------------------------------------------------------------------------

_PORT_FIELDS = {"proxyAdminPort", "statusPort"}
# The integer fields are int32 in Istio's proto, fileFlushMinSizeKb uint32: a larger number does not decode.
_INTEGER_MAX = {"fileFlushMinSizeKb": 2**32 - 1}
# Values Istio takes that meshplane cannot serve, with why: refused by name, not as unknown.
_UNSUPPORTED: dict[str, dict[str, str]] = {"interceptionMode": {"TPROXY": TPROXY_UNSUPPORTED}}
_ENUMS: dict[str, tuple[str, ...]] = {
    "interceptionMode": INTERCEPTION_MODES,
    "controlPlaneAuthPolicy": ("NONE", "MUTUAL_TLS", "INHERIT"),
    "tracingServiceName": ("APP_LABEL_AND_NAMESPACE", "CANONICAL_NAME_ONLY", "CANONICAL_NAME_AND_NAMESPACE"),
}

# Fields of istio.mesh.v1alpha1.ProxyConfig (JSON names) and the shape of each value.
PROXY_CONFIG_FIELDS: dict[str, str] = {
    "configPath": "string",
    "binaryPath": "string",
    "serviceCluster": "string",
    "tracingServiceName": "enum",
    "drainDuration": "duration",
    "parentShutdownDuration": "duration",
    "discoveryAddress": "address",
    "discoveryRefreshDelay": "duration",
    "zipkinAddress": "string",
    "statsdUdpAddress": "string",
    "envoyMetricsServiceAddress": "string",
    "proxyAdminPort": "integer",
    "availabilityZone": "string",
    "controlPlaneAuthPolicy": "enum",
    "customConfigFile": "string",
    "statNameLength": "integer",
    "concurrency": "integer",
    "proxyBootstrapTemplatePath": "string",
    "interceptionMode": "enum",
    "tracing": "object",
    "sds": "object",
    "envoyAccessLogService": "object",
    "envoyMetricsService": "object",
    "proxyMetadata": "string map",
    "runtimeValues": "string map",
    "statusPort": "integer",
    "extraStatTags": "string list",
    "gatewayTopology": "object",
    "terminationDrainDuration": "duration",
    "meshId": "string",
    "readinessProbe": "object",
    "proxyStatsMatcher": "object",
    "holdApplicationUntilProxyStarts": "boolean",
    "caCertificatesPem": "string list",
    "image": "image",
    "privateKeyProvider": "object",
    "proxyHeaders": "object",
    "fileFlushInterval": "duration",
    "fileFlushMinSizeKb": "integer",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def unknown_field(name: str, known: list[str] | tuple[str, ...] | Mapping[str, Any]) -> str:
    """The message for an unknown field, with a suggestion when one is close."""
    names = list(known)
    if "_" in name and _camel(name) in names:
        return f"unknown field {name!r}; did you mean {_camel(name)!r} (fields are camelCase)?"
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"unknown field {name!r}; did you mean {close[0]!r}?"
    return f"unknown field {name!r}"


def _check_proxy_field(name: str, kind: str, value: Any) -> None:
    got = type_name(value)
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{name}: must be a string, got {got}")
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: must be an integer, got {got}")
        if value < 0:
            raise ValueError(f"{name}: must not be negative")
        if name in _PORT_FIELDS and not 1 <= value <= 65535:
            raise ValueError(f"{name}: {value} is not a port number 1-65535")
        most = _INTEGER_MAX.get(name, INT32_MAX)
        if value > most:
            raise ValueError(f"{name}: {value} is more than {most}")
    elif kind == "address":  # the sidecar's control plane: Istio checks it as host:port
        if not isinstance(value, str):
            raise ValueError(f"{name}: must be a string, got {got}")
        try:
            host_port(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {json.dumps(value)} {exc}") from None
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: must be true or false, got {got}")
    elif kind == "duration":  # Istio decodes a Duration with Go's time.ParseDuration
        seconds = duration(value) if isinstance(value, str) else None
        if seconds is None:
            raise ValueError(f"{name}: must be a duration such as 5s, 1m30s or 500ms, got {json.dumps(value)}")
        if seconds < 0:
            raise ValueError(f"{name}: {json.dumps(value)} must not be negative")
    elif kind == "enum":
        choices = _ENUMS[name]
        unsupported = _UNSUPPORTED.get(name, {})
        if isinstance(value, str) and value in unsupported:
            raise ValueError(f"{name}: {unsupported[value]}")
        if value not in choices:
            raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {json.dumps(value)}")
    elif kind == "image":
        if not isinstance(value, dict):
            raise ValueError(f"{name}: must be an object, got {got}")
        for key, item in value.items():
            if key != "imageType":
                raise ValueError(f"{name}: {unknown_field(str(key), ['imageType'])}")
            if item not in IMAGE_TYPES:
                raise ValueError(f"{name}.imageType: must be one of {', '.join(IMAGE_TYPES)}, got {json.dumps(item)}")
    elif kind == "object":
        if not isinstance(value, dict):
            raise ValueError(f"{name}: must be an object, got {got}")
    elif kind == "string map":
        if not isinstance(value, dict):
            raise ValueError(f"{name}: must be a map of strings, got {got}")
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str):
                raise ValueError(f"{name}.{key}: must be a string, got {type_name(item)}")
    elif kind == "string list":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{name}: must be a list of strings, got {got}")
    else:  # pragma: no cover - the table above lists only these kinds
        raise AssertionError(kind)


def check_proxy_config(value: Any) -> dict[str, Any]:
    """Validate a ProxyConfig given as a decoded object; return it as a plain dict.

    Unknown fields and wrong types raise `ValueError` naming the field. `null` values are dropped
    (they mean "not set").
    """
    if not isinstance(value, dict):
        raise ValueError(f"a ProxyConfig must be an object, got {type_name(value)}")
    result: dict[str, Any] = {}
    for name, item in value.items():
        if not isinstance(name, str) or name not in PROXY_CONFIG_FIELDS:
            raise ValueError(unknown_field(str(name), PROXY_CONFIG_FIELDS))
        if item is None:
            continue
        _check_proxy_field(name, PROXY_CONFIG_FIELDS[name], item)
        result[name] = item
    return result


def parse_proxy_config(text: str) -> dict[str, Any]:
    """A ProxyConfig written as YAML or JSON (the `proxy.istio.io/config` annotation), at most
    `MAX_PROXY_CONFIG_BYTES` long (refused by size before parsing)."""
    size = len(text.encode())
    if size > MAX_PROXY_CONFIG_BYTES:
        raise ValueError(f"is {size} bytes; a proxy config may be at most {MAX_PROXY_CONFIG_BYTES} bytes (64 KiB)")
    if not text.strip():
        return {}
    return check_proxy_config(load_yaml(text))


def merge_proxy_config(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Istio's ProxyConfig merge: a field set in a later layer replaces the whole field."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged
