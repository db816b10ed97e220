"""Mesh-wide settings: the `mesh` key of the revision's ConfigMap (`istio` or `istio-<rev>`).

Only the fields meshplane uses are read; unknown fields are ignored, as Istio ignores fields of
newer versions. A malformed value raises `ObjectError` naming it (`data.mesh.<field>`), so the
caller keeps the last good mesh config.

`discoverySelectors` is a list of Kubernetes label selectors (matchLabels and matchExpressions,
ANDed within a selector) that are ORed: a namespace is in the mesh's discovery scope when any
selector matches its labels. An absent or empty list selects every namespace; an empty selector
(`{}`) matches every namespace, as in Kubernetes. Keys, operators and values are checked by
Kubernetes' rules, and a key a selector does not have (a typo like `matchLabel`) is refused rather
than read as the empty selector.

The YAML is read bounded (`controlplane.model.yamltext`): at most `MAX_MESH_BYTES` and
`MAX_MESH_DEPTH` levels, no aliases; an Istio mesh config is a few KB and nests a handful of
levels, and the text is read on the event loop whenever the ConfigMap changes, by every part that
needs it (the last text's result is kept, so they share one parse).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.literals import duration
from controlplane.model import fields as f
from controlplane.model import yamltext

MAX_MESH_BYTES = 64 * 1024
MAX_MESH_DEPTH = 50

CONNECT_TIMEOUT_MIN = 0.001  # Istio's range for connectTimeout
CONNECT_TIMEOUT_MAX = 3600.0
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_LABEL_RULE = "alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character, at most 63"


class OutboundPolicy(enum.Enum):
    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


@dataclass(frozen=True, kw_only=True)
class Requirement:
    """One matchExpressions entry (matchLabels entries become `In` with one value)."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True, kw_only=True)
class NamespaceSelector:
    """A label selector of namespaces: every requirement must hold; none at all matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in self.requirements)


def selects(selectors: tuple[NamespaceSelector, ...], labels: Mapping[str, str]) -> bool:
    """Whether a namespace with `labels` is in scope: no selectors select all, else any one must match."""
    return not selectors or any(selector.matches(labels) for selector in selectors)


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    enable_auto_mtls: bool = True
    outbound_policy: OutboundPolicy = OutboundPolicy.ALLOW_ANY
    connect_timeout: float = 10.0  # seconds
    discovery_selectors: tuple[NamespaceSelector, ...] = ()  # ORed; empty: every namespace

    @classmethod
    def from_configmap(cls, obj: Mapping[str, Any], *, defaults: MeshConfig | None = None) -> MeshConfig:
        """Parse the ConfigMap's `data.mesh` YAML over `defaults`. Raises `ObjectError`."""
        base = defaults or cls()
        data = f.mapping(obj.get("data"), "data")
        text = f.string(data.get("mesh"), "data.mesh", default="")
        raw = f.mapping(_read_mesh(text), "data.mesh")
        policy_section = f.mapping(raw.get("outboundTrafficPolicy"), "data.mesh.outboundTrafficPolicy")
        policy_text = f.string(
            policy_section.get("mode"), "data.mesh.outboundTrafficPolicy.mode", default=base.outbound_policy.value
        )
        try:
            policy = OutboundPolicy(policy_text)
        except ValueError:
            raise f.ObjectError(
                "data.mesh.outboundTrafficPolicy.mode", f"{policy_text!r} is not ALLOW_ANY or REGISTRY_ONLY"
            ) from None
        return cls(
            trust_domain=f.string(raw.get("trustDomain"), "data.mesh.trustDomain", default=base.trust_domain)
            or base.trust_domain,
            root_namespace=f.string(raw.get("rootNamespace"), "data.mesh.rootNamespace", default=base.root_namespace)
            or base.root_namespace,
            enable_auto_mtls=f.boolean(
                raw.get("enableAutoMtls"), "data.mesh.enableAutoMtls", default=base.enable_auto_mtls
            ),
            outbound_policy=policy,
            connect_timeout=_connect_timeout(
                raw.get("connectTimeout"), "data.mesh.connectTimeout", base.connect_timeout
            ),
            discovery_selectors=_selectors(raw.get("discoverySelectors"), "data.mesh.discoverySelectors"),
        )


def _connect_timeout(value: Any, path: str, default: float) -> float:
    """A Go duration, as Istio's mesh validation takes it: whole milliseconds from 1ms to 1h (Envoy
    refuses a zero `connect_timeout`, and a protobuf Duration past ~10,000 years, on every cluster)."""
    if value is None:
        return default
    seconds = duration(str(value))
    if seconds is None:
        raise f.ObjectError(path, f"{value!r} is not a duration like 10s or 500ms")
    if not CONNECT_TIMEOUT_MIN <= seconds <= CONNECT_TIMEOUT_MAX:
        raise f.ObjectError(path, f"{value!r} must be from 1ms to 1h")
    if round(seconds * 1e9) % 1_000_000:
        raise f.ObjectError(path, f"{value!r} must be whole milliseconds")
    return seconds


def _selectors(value: Any, path: str) -> tuple[NamespaceSelector, ...]:
    return tuple(_selector(item, f"{path}[{index}]") for index, item in enumerate(f.sequence(value, path)))


def _selector(value: Any, path: str) -> NamespaceSelector:
    raw = f.mapping(value, path)
    unknown = sorted(str(key) for key in raw if key not in ("matchLabels", "matchExpressions"))
    if unknown:
        raise f.ObjectError(
            f"{path}.{unknown[0]}", "is not a field of a label selector (matchLabels, matchExpressions)"
        )
    requirements: list[Requirement] = []
    for key, label in f.mapping(raw.get("matchLabels"), f"{path}.matchLabels").items():
        where = f"{path}.matchLabels.{key}"
        _label_key(key, where)
        requirements.append(Requirement(key=key, operator="In", values=frozenset({_label_value(label, where)})))
    for index, item in enumerate(f.sequence(raw.get("matchExpressions"), f"{path}.matchExpressions")):
        requirements.append(_requirement(item, f"{path}.matchExpressions[{index}]"))
    return NamespaceSelector(requirements=tuple(requirements))


def _requirement(value: Any, path: str) -> Requirement:
    raw = f.mapping(value, path)
    unknown = sorted(str(key) for key in raw if key not in ("key", "operator", "values"))
    if unknown:
        raise f.ObjectError(
            f"{path}.{unknown[0]}", "is not a field of a label selector requirement (key, operator, values)"
        )
    key = _label_key(f.string(raw.get("key"), f"{path}.key"), f"{path}.key")
    operator = f.string(raw.get("operator"), f"{path}.operator")
    if operator not in _OPERATORS:
        raise f.ObjectError(f"{path}.operator", f"{operator!r} is not a valid operator ({', '.join(_OPERATORS)})")
    values = [
        _label_value(item, f"{path}.values[{i}]")
        for i, item in enumerate(f.sequence(raw.get("values"), f"{path}.values"))
    ]
    if operator in ("In", "NotIn") and not values:
        raise f.ObjectError(f"{path}.values", f"must be non-empty for operator {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise f.ObjectError(f"{path}.values", f"must be empty for operator {operator}")
    return Requirement(key=key, operator=operator, values=frozenset(values))


def _label_key(key: Any, path: str) -> str:
    """A label key: an optional DNS-subdomain prefix and '/', then a name (Kubernetes' qualified name)."""
    if not isinstance(key, str):
        raise f.ObjectError(path, f"must be a string, got {type(key).__name__}")
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or _DNS_SUBDOMAIN.fullmatch(prefix) is None):
        raise f.ObjectError(path, f"{key!r}: the prefix must be a DNS-1123 subdomain (lowercase, at most 253)")
    if len(name) > 63 or _LABEL_NAME.fullmatch(name) is None:
        raise f.ObjectError(path, f"{key!r} is not a valid label key: the name part must be {_LABEL_RULE}")
    return key


def _label_value(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise f.ObjectError(path, f"must be a string, got {type(value).__name__} (quote it)")
    if value and (len(value) > 63 or _LABEL_NAME.fullmatch(value) is None):
        raise f.ObjectError(path, f"{value!r} is not a valid label value: it must be empty or {_LABEL_RULE}")
    return value


@functools.lru_cache(maxsize=2)
def _read_mesh(text: str) -> Any:
    """The parsed `data.mesh` text (only read, never changed, by `from_configmap`)."""
    try:
        return yamltext.load_yaml(text, max_depth=MAX_MESH_DEPTH, max_bytes=MAX_MESH_BYTES)
    except ValueError as exc:
        raise f.ObjectError("data.mesh", str(exc)) from None
