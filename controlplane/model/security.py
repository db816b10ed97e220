"""PeerAuthentication (`security.istio.io/v1`): which inbound traffic a workload's sidecar accepts.

Scopes, most specific first (Istio's rules):
- workload: a policy in the workload's namespace whose `selector.matchLabels` match the pod;
- namespace: a policy without selector in the workload's namespace;
- mesh: a policy without selector in the root namespace (mesh config `rootNamespace`).
When several policies tie at one scope, the oldest (`metadata.creationTimestamp`, then name) wins.
`UNSET` inherits from the next scope; with nothing set the mode is PERMISSIVE. Port-level modes
(`portLevelMtls`) are only valid on a workload policy and apply to the workload's target port.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controlplane.literals import natural
from controlplane.model import fields as f


class MtlsMode(enum.Enum):
    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


def _mode(value: Any, path: str) -> MtlsMode:
    section = f.mapping(value, path)
    text = f.string(section.get("mode"), f"{path}.mode", default="UNSET")
    try:
        return MtlsMode(text)
    except ValueError:
        raise f.ObjectError(f"{path}.mode", f"{text!r} is not one of UNSET, DISABLE, PERMISSIVE, STRICT") from None


@dataclass(frozen=True, kw_only=True)
class PeerAuthentication:
    name: str
    namespace: str
    created: str  # creationTimestamp as written (RFC 3339 sorts as text), "" if absent
    selector: Mapping[str, str] | None  # None: no selector (namespace or mesh scope)
    mode: MtlsMode
    port_modes: Mapping[int, MtlsMode] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PeerAuthentication:
        """Parse a PeerAuthentication. Raises `ObjectError` naming the bad field."""
        namespace, name = f.metadata(obj)
        meta = f.mapping(obj.get("metadata"), "metadata")
        spec = f.mapping(obj.get("spec"), "spec")
        selector: Mapping[str, str] | None = None
        if spec.get("selector") is not None:
            raw_selector = f.mapping(spec.get("selector"), "spec.selector")
            selector = f.labels(raw_selector.get("matchLabels"), "spec.selector.matchLabels")
            if not selector:
                selector = None
        port_modes: dict[int, MtlsMode] = {}
        raw_ports = f.mapping(spec.get("portLevelMtls"), "spec.portLevelMtls")
        for key, value in raw_ports.items():
            path = f"spec.portLevelMtls.{key}"
            number = natural(key) if isinstance(key, str) else key
            if number is None:
                raise f.ObjectError(path, f"{key!r} is not a port number")
            f.port_number(number, path)
            port_modes[number] = _mode(value, path)
        if port_modes and selector is None:
            raise f.ObjectError("spec.portLevelMtls", "needs spec.selector (port-level mTLS applies to workloads)")
        created = meta.get("creationTimestamp")
        return cls(
            name=name,
            namespace=namespace,
            created=str(created) if created is not None else "",
            selector=selector,
            mode=_mode(spec.get("mtls"), "spec.mtls"),
            port_modes=MappingProxyType(port_modes),
        )


def _oldest(policies: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
    ordered = sorted(policies, key=lambda p: (p.created == "", p.created, p.name))
    return ordered[0] if ordered else None


@dataclass(frozen=True, kw_only=True)
class EffectiveMtls:
    """The resolved policy of one workload: a mode for every port not listed, and per-port modes."""

    mode: MtlsMode
    port_modes: Mapping[int, MtlsMode] = field(default_factory=lambda: MappingProxyType({}))

    def for_port(self, port: int) -> MtlsMode:
        return self.port_modes.get(port, self.mode)


def effective_mtls(
    policies: Iterable[PeerAuthentication],
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
) -> EffectiveMtls:
    """Resolve the mTLS mode of a workload in `namespace` with `labels` (see the module docstring)."""
    candidates = list(policies)
    workload = _oldest(
        p
        for p in candidates
        if p.namespace == namespace and p.selector is not None and f.selector_matches(p.selector, labels)
    )
    ns_policy = _oldest(p for p in candidates if p.namespace == namespace and p.selector is None)
    mesh = _oldest(p for p in candidates if p.namespace == root_namespace and p.selector is None)
    mode = MtlsMode.UNSET
    for policy in (workload, ns_policy, mesh):
        if policy is not None and mode is MtlsMode.UNSET:
            mode = policy.mode
    if mode is MtlsMode.UNSET:
        mode = MtlsMode.PERMISSIVE
    port_modes: dict[int, MtlsMode] = {}
    if workload is not None:
        for port, port_mode in workload.port_modes.items():
            port_modes[port] = mode if port_mode is MtlsMode.UNSET else port_mode
    return EffectiveMtls(mode=mode, port_modes=MappingProxyType(port_modes))


class PolicyIndex:
    """A snapshot's PeerAuthentications, indexed so that resolving one workload reads only those that
    could apply to it (`candidates`): the namespace-wide ones of its namespace and of the root
    namespace, and of its namespace's workload policies those whose selector has one of the
    workload's label pairs (each policy is filed under its selector's first pair; a selector without
    labels selects every workload). With 1,000 Services each selected by its own policy, resolving
    every Service read all 1,000 policies each time: 1.5 s for 20 proxies' clusters."""

    def __init__(self, policies: Iterable[PeerAuthentication]) -> None:
        self._wide: dict[str, list[PeerAuthentication]] = {}  # namespace -> policies without selector
        self._all_workloads: dict[str, list[PeerAuthentication]] = {}  # namespace -> empty selectors
        self._by_pair: dict[str, dict[tuple[str, str], list[PeerAuthentication]]] = {}
        for policy in policies:
            if policy.selector is None:
                self._wide.setdefault(policy.namespace, []).append(policy)
            elif not policy.selector:
                self._all_workloads.setdefault(policy.namespace, []).append(policy)
            else:
                first = min(policy.selector.items())
                self._by_pair.setdefault(policy.namespace, {}).setdefault(first, []).append(policy)

    def candidates(self, *, namespace: str, labels: Mapping[str, str], root_namespace: str) -> list[PeerAuthentication]:
        """A superset of the policies `effective_mtls` picks from for this workload."""
        found = [*self._wide.get(namespace, ()), *self._all_workloads.get(namespace, ())]
        if root_namespace != namespace:
            found += self._wide.get(root_namespace, ())
        by_pair = self._by_pair.get(namespace)
        if by_pair:
            for pair in labels.items():
                found += by_pair.get(pair, ())
        return found
