"""`InjectionConfigWatcher`: the current injection config, in step with the config store.

An invalid new version of either ConfigMap is logged and reported, and the last good config stays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.model.store import ConfigEvent, ConfigStore, ObjectKey
from webhook.config import ConfigError, InjectionConfig
from webhook.configparse import MESH_KEYS, parse_injection_config

log = logging.getLogger(__name__)


def _configmap_data(obj: Mapping[str, Any] | None) -> Mapping[str, str] | None:
    if obj is None:
        return None
    data = obj.get("data")
    return data if data is not None else {}


class InjectionConfigWatcher:
    """The current injection config, re-parsed whenever either ConfigMap changes in the store.

    Absent ConfigMaps give the defaults. An invalid new version is logged (naming the ConfigMap,
    key and field), recorded in `describe()["lastError"]`, and the last good config stays current.
    """

    def __init__(self, store: ConfigStore, *, namespace: str, injector_configmap: str, mesh_configmap: str) -> None:
        self._store = store
        self._injector_key = ObjectKey("ConfigMap", namespace, injector_configmap)
        self._mesh_key = ObjectKey("ConfigMap", namespace, mesh_configmap)
        self._current = InjectionConfig()
        self._last_error: str | None = None
        self._loaded_from: dict[str, bool] = {"injector": False, "mesh": False}
        self.reloads = 0
        self._reload()
        store.subscribe(self._on_events)

    @property
    def current(self) -> InjectionConfig:
        return self._current

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _on_events(self, events: Sequence[ConfigEvent]) -> None:
        if any(event.key in (self._injector_key, self._mesh_key) for event in events):
            self._reload()

    def _reload(self) -> None:
        injector = self._store.get(self._injector_key)
        mesh = self._store.get(self._mesh_key)
        try:
            config = parse_injection_config(injector=_configmap_data(injector), mesh=_configmap_data(mesh))
        except ConfigError as exc:
            source = self._mesh_key if exc.key in MESH_KEYS else self._injector_key
            self._last_error = f"ConfigMap {source.namespace}/{source.name}: {exc}"
            log.error("invalid injection config, keeping the last good one: %s", self._last_error)
            return
        self._current = config
        self._last_error = None
        self._loaded_from = {"injector": injector is not None, "mesh": mesh is not None}
        self.reloads += 1
        log.info(
            "injection config loaded",
            extra={
                "injector_configmap": str(self._injector_key) if injector is not None else None,
                "mesh_configmap": str(self._mesh_key) if mesh is not None else None,
            },
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able: which ConfigMaps the current config came from, the last error, the config."""
        return {
            "injectorConfigMap": {
                "name": f"{self._injector_key.namespace}/{self._injector_key.name}",
                "used": self._loaded_from["injector"],
            },
            "meshConfigMap": {
                "name": f"{self._mesh_key.namespace}/{self._mesh_key.name}",
                "used": self._loaded_from["mesh"],
            },
            "lastError": self._last_error,
            "config": self._current.to_dict(),
        }
