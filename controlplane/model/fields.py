"""Typed reads from Kubernetes-shaped dicts, with errors that name the field path.

The model's `from_object` parsers use these helpers, so a document that parses is a document the
model can use: the config sources call the same parsers as validators, and an error here becomes
the "file, document, field" report of the file source.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from controlplane import literals

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})


def empty_labels() -> Mapping[str, str]:
    """A default for frozen dataclass label fields (a shared read-only empty mapping)."""
    return EMPTY_LABELS


class ObjectError(ValueError):
    """A field of an object is missing or has the wrong type or value. `field` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def mapping(value: Any, path: str, *, required: bool = False) -> Mapping[str, Any]:
    """`value` as a mapping; None gives an empty mapping unless `required`."""
    if value is None:
        if required:
            raise ObjectError(path, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise ObjectError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def sequence(value: Any, path: str) -> list[Any]:
    """`value` as a list; None gives an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ObjectError(path, f"must be a list, got {type(value).__name__}")
    return value


def string(value: Any, path: str, *, default: str | None = None) -> str:
    """`value` as a string; None gives `default`, or an error if there is no default."""
    if value is None:
        if default is None:
            raise ObjectError(path, "is required")
        return default
    if not isinstance(value, str):
        raise ObjectError(path, f"must be a string, got {type(value).__name__}")
    return value


def boolean(value: Any, path: str, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ObjectError(path, f"must be true or false, got {value!r}")
    return value


def port_number(value: Any, path: str) -> int:
    """A TCP/UDP port 1-65535 (an int, not a numeric string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ObjectError(path, f"must be a port number, got {value!r}")
    if not 1 <= value <= 65535:
        raise ObjectError(path, f"{value} is out of range 1-65535")
    return value


def canonical_ipv4(text: str) -> str | None:
    """`text` when it is an IPv4 address in canonical form, else None (20x cheaper than `ipaddress`)."""
    try:
        return text if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text else None
    except OSError:
        return None


def ip_address(value: Any, path: str) -> str:
    """A literal IPv4 or IPv6 address, returned in canonical text form."""
    text = string(value, path)
    if canonical_ipv4(text) is not None:
        return text
    try:
        return str(literals.ip_address(text))
    except ValueError as exc:
        raise ObjectError(path, str(exc)) from None


def labels(value: Any, path: str) -> Mapping[str, str]:
    """A map of string to string, frozen."""
    raw = mapping(value, path)
    out: dict[str, str] = {}
    for key, item in raw.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ObjectError(f"{path}.{key}", f"must be a string, got {type(item).__name__}")
        out[key] = item
    return MappingProxyType(out) if out else EMPTY_LABELS


def metadata(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object; namespace is "" when absent."""
    meta = mapping(obj.get("metadata"), "metadata", required=True)
    name = string(meta.get("name"), "metadata.name")
    namespace = string(meta.get("namespace"), "metadata.namespace", default="")
    return namespace, name


def selector_matches(selector: Mapping[str, str], target: Mapping[str, str]) -> bool:
    """Equality-based label selection: every selector pair is in `target`. An empty selector matches all."""
    return all(target.get(key) == value for key, value in selector.items())
