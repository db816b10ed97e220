"""Mesh-wide settings: the `mesh` key of the revision's ConfigMap (`istio` or `istio-<rev>`).

Only the fields the xDS server uses are read; unknown fields are ignored, as Istio ignores fields
of newer versions. A malformed value raises `ObjectError` naming it (`data.mesh.<field>`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from controlplane.model import fields as f

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class OutboundPolicy(enum.Enum):
    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    enable_auto_mtls: bool = True
    outbound_policy: OutboundPolicy = OutboundPolicy.ALLOW_ANY
    connect_timeout: float = 10.0  # seconds

    @classmethod
    def from_configmap(cls, obj: Mapping[str, Any], *, defaults: MeshConfig | None = None) -> MeshConfig:
        """Parse the ConfigMap's `data.mesh` YAML over `defaults`. Raises `ObjectError`."""
        base = defaults or cls()
        data = f.mapping(obj.get("data"), "data")
        text = f.string(data.get("mesh"), "data.mesh", default="")
        try:
            mesh = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as exc:
            raise f.ObjectError("data.mesh", f"is not valid YAML: {exc}") from None
        raw = f.mapping(mesh, "data.mesh")
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
            connect_timeout=_duration(raw.get("connectTimeout"), "data.mesh.connectTimeout", base.connect_timeout),
        )


def _duration(value: Any, path: str, default: float) -> float:
    if value is None:
        return default
    match = _DURATION.match(str(value))
    if not match:
        raise f.ObjectError(path, f"{value!r} is not a duration like 10s or 500ms")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise f.ObjectError(path, f"{value!r} must be positive")
    return seconds
