"""Keeps the caBundle of this revision's injection webhooks equal to the mesh root.

What is patched: every MutatingWebhookConfiguration labelled `istio.io/rev=<revision>` (revision
tags carry that label too), and in it every webhook whose name ends in `sidecar-injector.istio.io`;
its `clientConfig.caBundle` becomes the PEM trust bundle the CA serves (`ca_bundle()`). Other
webhooks and configurations are never written. `plan_cabundle_patch` is that decision as a pure
function; `CaBundlePatcher` applies it.

When: `CaBundlePatcher.run()` lists and watches the labelled configurations (a list patches them
all, so a new leader or a restarted watch catches up), patches a configuration as soon as a watch
event shows it differs (someone edited it), and all of them after `root_changed()`. A patch is a
strategic merge patch of only the caBundles, carrying the observed `resourceVersion` as a
precondition, so a concurrent edit answers 409 rather than being overwritten. Conflicts and errors
are retried with exponential backoff and full jitter (the watch meanwhile delivers the newer
object); a configuration deleted in between is dropped silently. Each write is logged naming the
configuration and webhooks. `run()` ends only by cancellation.

This module knows nothing of the CA: the caller hands in `ca_bundle` and calls `root_changed()`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from controlplane.kube.client import JsonObject, KubeApi, KubeApiError
from controlplane.kube.watching import Backoff, Kept, Resource, Selection, infinite_watch

log = logging.getLogger(__name__)

MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    group="admissionregistration.k8s.io",
    version="v1",
    plural="mutatingwebhookconfigurations",
    kind="MutatingWebhookConfiguration",
    namespaced=False,
)
REVISION_LABEL = "istio.io/rev"
INJECTOR_WEBHOOK_SUFFIX = "sidecar-injector.istio.io"
FIELD_MANAGER = "meshplane-webhook-patcher"
_FAILURES = (KubeApiError, aiohttp.ClientError, OSError, TimeoutError)


def _decoded(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def plan_cabundle_patch(config: Kept, *, revision: str, ca_bundle: bytes) -> JsonObject | None:
    """The strategic merge patch that sets `ca_bundle` on `config`'s injector webhooks, or None if none is due.

    None when the configuration is not labelled `istio.io/rev=<revision>`, has no webhook named
    `*sidecar-injector.istio.io`, or every such webhook already carries exactly `ca_bundle`. The
    patch names each webhook to change (merge key `name`) and carries the configuration's
    resourceVersion, so the API server refuses it (409) if the configuration changed since.
    """
    meta = config.get("metadata") or {}
    if (meta.get("labels") or {}).get(REVISION_LABEL) != revision:
        return None
    stale = [
        str(hook["name"])
        for hook in config.get("webhooks") or []
        if isinstance(hook, dict)
        and str(hook.get("name", "")).endswith(INJECTOR_WEBHOOK_SUFFIX)
        and _decoded((hook.get("clientConfig") or {}).get("caBundle")) != ca_bundle
    ]
    if not stale:
        return None
    encoded = base64.b64encode(ca_bundle).decode()
    patch: JsonObject = {"webhooks": [{"name": name, "clientConfig": {"caBundle": encoded}} for name in stale]}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": str(meta["resourceVersion"])}
    return patch


class CaBundlePatcher:
    """See the module docstring. Construct once; `await run()` as a task (again after a cancel)."""

    def __init__(
        self,
        api: KubeApi,
        *,
        revision: str,
        ca_bundle: Callable[[], bytes],
        backoff: Callable[[], Backoff] = lambda: Backoff(base=0.1, cap=30.0),
    ) -> None:
        self.api = api
        self.revision = revision
        self.ca_bundle = ca_bundle
        self.patches = 0
        self._backoff = backoff
        self._configs: dict[str, Kept] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    # -- WatchHandler ------------------------------------------------------------------------
    async def on_list(self, objects: Sequence[Kept]) -> None:
        self._configs = {
            str(obj["metadata"]["name"]): obj for obj in objects if (obj.get("metadata") or {}).get("name")
        }
        self._dirty = set(self._configs)
        self._wake.set()

    def on_event(self, event_type: str, obj: Kept) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        if not name:
            return
        if event_type == "DELETED":
            self._configs.pop(name, None)
            self._dirty.discard(name)
            return
        self._configs[name] = obj
        self._dirty.add(name)
        self._wake.set()

    # -- triggers ----------------------------------------------------------------------------
    def root_changed(self) -> None:
        """The trust bundle changed: check every configuration again (a no-op while not running)."""
        self._dirty |= set(self._configs)
        self._wake.set()

    # -- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Watch and patch until cancelled."""
        self._configs.clear()
        self._dirty.clear()
        self._wake.clear()
        selection = Selection(label_selector=f"{REVISION_LABEL}={self.revision}")
        log.info("patching the caBundle of MutatingWebhookConfigurations labelled %s=%s", REVISION_LABEL, self.revision)
        async with asyncio.TaskGroup() as group:
            group.create_task(
                infinite_watch(self.api, MUTATING_WEBHOOK_CONFIGURATIONS, selection, self),
                name="watch mutatingwebhookconfigurations",
            )
            group.create_task(self._patch_loop(), name="patch caBundles")

    async def _patch_loop(self) -> None:
        backoff = self._backoff()
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for name in sorted(self._dirty):
                self._dirty.discard(name)
                config = self._configs.get(name)
                if config is None:
                    continue
                try:
                    await self._patch(name, config)
                except _FAILURES as exc:
                    failed = True
                    self._dirty.add(name)
                    log.warning("caBundle patch of MutatingWebhookConfiguration %s failed: %s", name, exc)
            if failed:
                delay = backoff.next_delay()
                log.info("retrying caBundle patches in %.2fs", delay)
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                backoff.reset()

    async def _patch(self, name: str, config: Kept) -> None:
        """Patch one configuration if due. A configuration deleted meanwhile is not an error; others raise."""
        patch = plan_cabundle_patch(config, revision=self.revision, ca_bundle=self.ca_bundle())
        if patch is None:
            return
        try:
            await self.api.request(
                "PATCH",
                f"{MUTATING_WEBHOOK_CONFIGURATIONS.path()}/{name}",
                body=patch,
                content_type="application/strategic-merge-patch+json",
                query=[("fieldManager", FIELD_MANAGER)],
                request_timeout=10.0,
            )
        except KubeApiError as exc:
            if exc.status == 404:
                log.info("MutatingWebhookConfiguration %s was deleted; nothing to patch", name)
                return
            raise
        self.patches += 1
        webhooks = ", ".join(hook["name"] for hook in patch["webhooks"])
        log.info("patched caBundle of MutatingWebhookConfiguration %s (webhooks %s)", name, webhooks)
