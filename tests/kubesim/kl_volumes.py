"""A pod's volumes on the node: emptyDir, configMap, secret, downwardAPI and projected.

Each volume is a directory `<root>/<name>` that containers bind-mount. Files of configMap, secret,
downwardAPI and projected volumes are written as the kubelet's atomic writer does: the payload in a hidden
timestamped directory, `..data` a symlink to it, and each visible entry a symlink through `..data`, so an
update swaps every file at once and a reader never sees half of it. `refresh()` rewrites them when their
sources changed and renews service-account tokens once 80% of their lifetime has passed (or after 24 h).

A source that is missing and not `optional` raises `VolumeError` with the kubelet's wording
(`configmap "x" not found`); so does a volume type the node does not support. Tokens come from the
`TokenSource` (the TokenRequest API, bound to the pod).
"""

from __future__ import annotations

import base64
import datetime
import os
import pathlib
import secrets
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.kubesim.kl_env import ConfigError, Lookup, PodFacts, resource_value

Obj = Mapping[str, Any]
Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)
TOKEN_REFRESH_AFTER = datetime.timedelta(hours=24)
DEFAULT_TOKEN_SECONDS = 3600


class VolumeError(Exception):
    """A volume cannot be set up; the message says which volume and why."""


@dataclass(frozen=True, kw_only=True)
class Token:
    token: str
    issued: datetime.datetime
    expires: datetime.datetime

    def due(self, now: datetime.datetime) -> bool:
        lifetime = self.expires - self.issued
        return now >= self.issued + min(lifetime * 0.8, TOKEN_REFRESH_AFTER)


# (service account, audiences (empty: the API server's), expirationSeconds) -> a token bound to the pod
TokenSource = Callable[[str, Sequence[str], int], Awaitable[Token]]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_atomic(target: pathlib.Path, payload: Payload) -> bool:
    """Make `target` hold exactly `payload` (atomic-writer layout); False when it already did."""
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    data_link = target / "..data"
    current = target / os.readlink(data_link) if data_link.is_symlink() else None
    if current is not None and _holds(current, payload):
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + secrets.token_hex(5)
    fresh = target / stamp
    fresh.mkdir(mode=0o755)
    for rel, (content, mode) in payload.items():
        path = fresh / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_bytes(content)
        path.chmod(mode)
    tmp_link = target / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp)
    tmp_link.rename(data_link)
    visible = {rel.split("/", 1)[0] for rel in payload}
    for top in visible:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in visible:
            entry.unlink()
    if current is not None and current.exists():
        shutil.rmtree(current)
    return True


def _holds(directory: pathlib.Path, payload: Payload) -> bool:
    found = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    if found != set(payload):
        return False
    return all(
        (directory / rel).read_bytes() == content and (directory / rel).stat().st_mode & 0o7777 == mode
        for rel, (content, mode) in payload.items()
    )


class PodVolumes:
    """The volumes of one pod under `root` (see the module docstring)."""

    def __init__(
        self,
        *,
        root: pathlib.Path,
        facts: PodFacts,
        configmaps: Lookup,
        secrets: Lookup,
        tokens: TokenSource,
    ) -> None:
        self.root = root
        self.facts = facts
        self._configmaps = configmaps
        self._secrets = secrets
        self._tokens = tokens
        self._issued: dict[tuple[str, int], Token] = {}

    @property
    def _spec(self) -> Obj:
        return self.facts.pod.get("spec") or {}

    @property
    def _namespace(self) -> str:
        return str((self.facts.pod.get("metadata") or {}).get("namespace", ""))

    def path(self, name: str) -> pathlib.Path:
        return self.root / name

    async def setup(self) -> None:
        """Create every volume; VolumeError for the first that cannot be."""
        self.root.mkdir(parents=True, exist_ok=True)
        await self.refresh()

    async def refresh(self, facts: PodFacts | None = None) -> None:
        """Bring every volume up to date with its sources (and `facts`, the pod as now known)."""
        if facts is not None:
            self.facts = facts
        for volume in self._spec.get("volumes") or []:
            name = str(volume["name"])
            target = self.path(name)
            if "emptyDir" in volume:
                if not target.is_dir():
                    target.mkdir(parents=True)
                    target.chmod(0o777)
                continue
            try:
                payload = await self._payload(volume)
            except ConfigError as exc:
                raise VolumeError(f'MountVolume.SetUp failed for volume "{name}" : {exc}') from None
            write_atomic(target, payload)

    async def _payload(self, volume: Obj) -> Payload:
        name = str(volume["name"])
        if "configMap" in volume:
            source = volume["configMap"]
            return self._keyed("configmap", source, str(source.get("name", "")), int(source.get("defaultMode", 0o644)))
        if "secret" in volume:
            source = volume["secret"]
            mode = int(source.get("defaultMode", 0o644))
            return self._keyed("secret", source, str(source.get("secretName", "")), mode)
        if "downwardAPI" in volume:
            source = volume["downwardAPI"]
            return self._downward(source.get("items") or [], int(source.get("defaultMode", 0o644)))
        if "projected" in volume:
            return await self._projected(name, volume["projected"])
        kinds = sorted(set(volume) - {"name"})
        raise VolumeError(f'volume "{name}": type {", ".join(kinds) or "<none>"} is not supported by this node')

    def _keyed(self, kind: str, source: Obj, name: str, mode: int) -> Payload:
        lookup = self._secrets if kind == "secret" else self._configmaps
        obj = lookup(self._namespace, name)
        if obj is None:
            if source.get("optional"):
                return {}
            raise ConfigError(f'{kind} "{name}" not found')
        data: dict[str, bytes] = {}
        if kind == "secret":
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        else:
            data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        items = source.get("items")
        if not items:
            return {key: (value, mode) for key, value in data.items()}
        payload: Payload = {}
        for item in items:
            key = str(item.get("key", ""))
            if key not in data:
                if source.get("optional"):
                    continue
                raise ConfigError(
                    f"configmap references non-existent config key: {key}"
                    if kind == "configmap"
                    else f"references non-existent secret key: {key}"
                )
            payload[str(item.get("path", key))] = (data[key], int(item.get("mode", mode)))
        return payload

    def _downward(self, items: Sequence[Obj], mode: int) -> Payload:
        payload: Payload = {}
        containers = {str(c.get("name")): c for c in self._spec.get("containers") or []}
        for item in items:
            if "fieldRef" in item:
                value = self.facts.field(str(item["fieldRef"].get("fieldPath", "")))
            elif "resourceFieldRef" in item:
                ref = item["resourceFieldRef"]
                container = containers.get(str(ref.get("containerName", "")))
                if container is None:
                    raise ConfigError(f"resourceFieldRef: container {ref.get('containerName')!r} not found")
                value = resource_value(container, ref)
            else:
                raise ConfigError(f"downwardAPI item {item.get('path')!r} has neither fieldRef nor resourceFieldRef")
            payload[str(item["path"])] = (value.encode(), int(item.get("mode", mode)))
        return payload

    async def _projected(self, name: str, projected: Obj) -> Payload:
        mode = int(projected.get("defaultMode", 0o644))
        payload: Payload = {}
        for index, source in enumerate(projected.get("sources") or []):
            if "serviceAccountToken" in source:
                token = await self._token(name, index, source["serviceAccountToken"])
                payload[str(source["serviceAccountToken"].get("path", "token"))] = (token.encode(), mode)
            elif "configMap" in source:
                cm = source["configMap"]
                payload.update(self._keyed("configmap", cm, str(cm.get("name", "")), mode))
            elif "secret" in source:
                secret = source["secret"]
                payload.update(self._keyed("secret", secret, str(secret.get("name", "")), mode))
            elif "downwardAPI" in source:
                payload.update(self._downward(source["downwardAPI"].get("items") or [], mode))
        return payload

    async def _token(self, volume: str, index: int, source: Obj) -> str:
        key = (volume, index)
        held = self._issued.get(key)
        if held is None or held.due(_now()):
            audience = str(source.get("audience") or "")
            seconds = int(source.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
            account = str(self._spec.get("serviceAccountName") or "default")
            held = await self._tokens(account, [audience] if audience else [], seconds)
            self._issued[key] = held
        return held.token

    def remove(self) -> None:
        """Delete every volume directory (the pod is gone)."""
        shutil.rmtree(self.root, ignore_errors=True)
