"""The config dir bench/soak serves: a realistic mesh in one YAML file per namespace, edited periodically.

`Mesh.write_all()` writes every namespace's file; `Mesh.edit()` changes one namespace (round robin):
one EndpointSlice gets a different set of addresses, and every third edit also adds a Service (with
its EndpointSlice) or removes the one added before, so both endpoint-only and full pushes happen.
Every file is written to a temporary name in the same directory and renamed over the old one, as a
careful operator or a config-sync tool would.
"""

from __future__ import annotations

import pathlib
from typing import Any

from tests.discovery import meshdata as m

NAMESPACES = tuple(f"soak-{n}" for n in range(10))


class Mesh:
    """`services` Services with EndpointSlices and Pods over NAMESPACES, in `directory`."""

    def __init__(self, *, directory: pathlib.Path, services: int) -> None:
        self.directory = directory
        self.edits = 0
        self.objects: dict[str, list[dict[str, Any]]] = {ns: [] for ns in NAMESPACES}
        for obj in m.mesh_objects(services, namespaces=NAMESPACES, endpoints_per_service=4):
            ns = obj["metadata"].get("namespace", obj["metadata"]["name"])
            self.objects[ns].append(obj)
        self.extra: dict[str, list[dict[str, Any]]] = {ns: [] for ns in NAMESPACES}

    def write_all(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for ns in NAMESPACES:
            self._write(ns)

    def edit(self) -> None:
        """One edit of one namespace's file (see the module docstring)."""
        self.edits += 1
        ns = NAMESPACES[self.edits % len(NAMESPACES)]
        slices = [o for o in self.objects[ns] if o["kind"] == "EndpointSlice"]
        chosen = slices[self.edits // len(NAMESPACES) % len(slices)]
        count = 3 + self.edits % 3
        chosen["endpoints"] = [
            {"addresses": [f"10.200.{self.edits % 250}.{n + 1}"], "conditions": {"ready": True}} for n in range(count)
        ]
        if self.edits % 3 == 0:
            if self.extra[ns]:
                self.extra[ns] = []
            else:
                name = f"churn-{self.edits}"
                ip = f"10.201.{self.edits % 250}.1"
                self.extra[ns] = [
                    m.service(name, ns, cluster_ip=f"10.97.{self.edits // 250 % 250}.{self.edits % 250 + 1}"),
                    m.endpoint_slice(name, ns, ips=[ip]),
                ]
        self._write(ns)

    def _write(self, ns: str) -> None:
        path = self.directory / f"{ns}.yaml"
        tmp = self.directory / f".{ns}.yaml.tmp"
        tmp.write_text(m.dump_yaml([*self.objects[ns], *self.extra[ns]]))
        tmp.replace(path)
