"""`InjectionConfigWatcher`: the current injection config, in step with the config store.

An invalid new version of either ConfigMap is logged and reported, and the last good config stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.aio import HEAVY_WORK
from controlplane.model.store import ConfigEvent, ConfigStore, ObjectKey
from webhook.config import ConfigError, InjectionConfig
from webhook.configparse import MESH_KEYS, parse_injection_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Sources:
    """The two ConfigMaps' data as read from the store (None: the ConfigMap does not exist)."""

    injector: Mapping[str, str] | None
    mesh: Mapping[str, str] | None


def _configmap_data(obj: Mapping[str, Any] | None) -> Mapping[str, str] | None:
    if obj is None:
        return None
    data = obj.get("data")
    return data if data is not None else {}


class InjectionConfigWatcher:
    """The current injection config, re-parsed whenever either ConfigMap changes in the store.

    Absent ConfigMaps give the defaults. An invalid new version is logged (naming the ConfigMap,
    key and field), recorded in `describe()["lastError"]`, and the last good config stays current.

    The first config is parsed when the watcher is made (at start-up). Later versions are parsed by
    `run()` in a worker thread: parsing checks the templates by injecting a sample pod with them, tens
    of milliseconds for a large mesh config, which on the event loop would hold every webhook review,
    signing request and xDS push. The ConfigMaps are read on the event loop when a parse starts;
    changes that arrive during a parse are parsed together after it, so the config ends at the
    newest version. `settled()` waits until every change seen so far is parsed.
    """

    def __init__(self, store: ConfigStore, *, namespace: str, injector_configmap: str, mesh_configmap: str) -> None:
        self._store = store
        self._injector_key = ObjectKey("ConfigMap", namespace, injector_configmap)
        self._mesh_key = ObjectKey("ConfigMap", namespace, mesh_configmap)
        self._current = InjectionConfig()
        self._last_error: str | None = None
        self._loaded_from: dict[str, bool] = {"injector": False, "mesh": False}
        self.reloads = 0
        self._changed = asyncio.Event()  # a ConfigMap changed since the last parse started
        self._settled = asyncio.Event()  # nothing changed since the last parse started, and it ended
        self._settled.set()
        sources = self._read()
        self._apply(sources, self._parse(sources))
        store.subscribe(self._on_events)

    @property
    def current(self) -> InjectionConfig:
        return self._current

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _on_events(self, events: Sequence[ConfigEvent]) -> None:
        if any(event.key in (self._injector_key, self._mesh_key) for event in events):
            self._changed.set()
            self._settled.clear()

    async def run(self) -> None:
        """Parse each new version in a worker thread and make it current if valid; until cancelled."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            sources = self._read()
            self._apply(sources, await asyncio.to_thread(self._parse_off_loop, sources))
            if not self._changed.is_set():
                self._settled.set()

    async def settled(self) -> None:
        """Return once every change seen so far is parsed (and current, if valid); needs `run()`."""
        await self._settled.wait()

    def _read(self) -> _Sources:
        injector = self._store.get(self._injector_key)
        mesh = self._store.get(self._mesh_key)
        return _Sources(injector=_configmap_data(injector), mesh=_configmap_data(mesh))

    def _parse_off_loop(self, sources: _Sources) -> InjectionConfig | str:
        with HEAVY_WORK:  # in a worker thread; most of what parsing builds dies with it
            return self._parse(sources)

    def _parse(self, sources: _Sources) -> InjectionConfig | str:
        """The config, or why it is refused (naming the ConfigMap, key and field)."""
        try:
            return parse_injection_config(injector=sources.injector, mesh=sources.mesh)
        except ConfigError as exc:
            source = self._mesh_key if exc.key in MESH_KEYS else self._injector_key
            return f"ConfigMap {source.namespace}/{source.name}: {exc}"
        except Exception as exc:  # a parser defect: keep the last good config and keep watching
            log.exception("parsing the injection config failed")
            names = f"{self._injector_key.namespace}/{self._injector_key.name}, {self._mesh_key.name}"
            return f"ConfigMaps {names}: parsing failed ({type(exc).__name__}: {exc})"

    def _apply(self, sources: _Sources, outcome: InjectionConfig | str) -> None:
        if isinstance(outcome, str):
            self._last_error = outcome
            log.error("invalid injection config, keeping the last good one: %s", outcome)
            return
        self._current = outcome
        self._last_error = None
        self._loaded_from = {"injector": sources.injector is not None, "mesh": sources.mesh is not None}
        self.reloads += 1
        log.info(
            "injection config loaded",
            extra={
                "injector_configmap": str(self._injector_key) if sources.injector is not None else None,
                "mesh_configmap": str(self._mesh_key) if sources.mesh is not None else None,
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
