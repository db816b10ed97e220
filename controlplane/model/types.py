"""Typed, immutable model objects derived from the raw config store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controlplane.model.store import ConfigStore, ObjectKey

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Namespace:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        return cls(
            name=str(meta["name"]),
            labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
        )


def namespace(store: ConfigStore, name: str) -> Namespace | None:
    """The namespace `name` as the config source last reported it, or None if unknown."""
    obj = store.get(ObjectKey("Namespace", "", name))
    return Namespace.from_object(obj) if obj is not None else None
