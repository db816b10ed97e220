"""A minimal OpenAPI v3 document: just enough for kubectl to see server-side field validation.

kubectl (1.27+) asks `/openapi/v3` whether the PATCH operation of a kind takes the
`fieldValidation` query parameter; if it does, kubectl leaves validation to the server and sends
`fieldValidation=Strict`. Without it, kubectl would validate client-side against full schemas,
which kubesim does not serve. Schemas (`components`) are deliberately empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.kubesim.resources import RESOURCES, ResourceType

HASH = "kubesim0"


def _gv_path(resource: ResourceType) -> str:
    return f"apis/{resource.group}/{resource.version}" if resource.group else f"api/{resource.version}"


def index(served: Sequence[ResourceType] = RESOURCES) -> dict[str, Any]:
    paths = {_gv_path(r): {"serverRelativeURL": f"/openapi/v3/{_gv_path(r)}?hash={HASH}"} for r in served}
    return {"paths": paths}


def _operation(resource: ResourceType, verb: str) -> dict[str, Any]:
    return {
        "operationId": f"{verb}{resource.kind}",
        "parameters": [
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {
            "group": resource.group,
            "version": resource.version,
            "kind": resource.kind,
        },
    }


def group_version(path: str, served: Sequence[ResourceType] = RESOURCES) -> dict[str, Any] | None:
    """The document for `api/v1` or `apis/<group>/<version>`, or None if not served."""
    in_path = [r for r in served if _gv_path(r) == path]
    if not in_path:
        return None
    paths: dict[str, Any] = {}
    for r in in_path:
        base = f"/{_gv_path(r)}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"/{_gv_path(r)}/{r.plural}"
        paths[base] = {"post": _operation(r, "post")}
        paths[f"{base}/{{name}}"] = {"put": _operation(r, "put"), "patch": _operation(r, "patch")}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-kubesim"},
        "paths": paths,
        "components": {"schemas": {}},
    }
