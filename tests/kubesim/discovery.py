"""The API server's discovery documents: /version, /api, /apis, /apis/<group> and the APIResourceLists.

Built from the resources served at the moment of the request (`KubeSim.served()`), so a
CustomResourceDefinition's group and resource appear while it exists and disappear with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.kubesim import resources
from tests.kubesim.resources import ResourceType

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubesim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def document(parts: list[str], *, served: Sequence[ResourceType], address: str) -> Any:
    """The discovery document at the path `parts` (split on "/"); None when the path is not one.

    `address` (host:port) is what /api advertises in serverAddressByClientCIDRs.
    """
    groups = resources.group_versions(served)
    if parts == ["version"]:
        return VERSION
    if parts == ["api"]:
        return {
            "kind": "APIVersions",
            "versions": groups.get("", []),
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
        }
    if parts == ["apis"]:
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group_doc(g, vs) for g, vs in groups.items() if g],
        }
    if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups and parts[1]:
        doc = _group_doc(parts[1], groups[parts[1]])
        return {"kind": "APIGroup", "apiVersion": "v1", **doc}
    if parts == ["api", "v1"]:
        return _resource_list("", "v1", served)
    if len(parts) == 3 and parts[0] == "apis" and parts[1] and parts[2] in groups.get(parts[1], []):
        return _resource_list(parts[1], parts[2], served)
    return None


def _group_doc(group: str, versions: list[str]) -> dict[str, Any]:
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def _resource_list(group: str, version: str, served: Sequence[ResourceType]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [
            *(r.discovery() for r in served if r.group == group and r.version == version),
            *(e for r in served if r.group == group and r.version == version for e in r.subresource_discovery()),
            *resources.CREATE_ONLY.get((group, version), ()),
        ],
    }
