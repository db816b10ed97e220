"""The root ConfigMap controller: reacts to the store and to root changes, retries failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from certs.ca import CertificateAuthority
from certs.rootdist import ROOT_CONFIGMAP, RootConfigMapReconciler
from certs.rootsync import RootConfigMapController
from controlplane.model.store import ConfigStore, ObjectKey
from tests.certs.fakes import FakeConfigMaps
from tests.certs.helpers import make_root
from tests.helpers.tasks import running
from tests.kubesim.fixtures import eventually


def namespace(name: str, *, terminating: bool = False) -> tuple[ObjectKey, dict[str, Any]]:
    meta: dict[str, Any] = {"name": name}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return ObjectKey("Namespace", "", name), {"kind": "Namespace", "metadata": meta}


class FlakyConfigMaps(FakeConfigMaps):
    """Fails the first `failures` writes like an API server answering 503."""

    failures = 0

    async def create(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("connection refused")
        await super().create(namespace=namespace, name=name, data=data, labels=labels)


@pytest.fixture
def store() -> ConfigStore:
    return ConfigStore()


@pytest.fixture
def client() -> FlakyConfigMaps:
    return FlakyConfigMaps()


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority(make_root())


@pytest.fixture
async def controller(
    store: ConfigStore, ca: CertificateAuthority, client: FlakyConfigMaps
) -> AsyncIterator[RootConfigMapController]:
    ctl = RootConfigMapController(
        store=store, ca=ca, reconciler=RootConfigMapReconciler(client), retry_base=0.01, retry_cap=0.05
    )
    async with running(ctl.run()):
        yield ctl


def root_in(client: FakeConfigMaps, ns: str) -> str | None:
    item = client.items.get((ns, ROOT_CONFIGMAP))
    return item[0]["root-cert.pem"] if item else None


async def test_nothing_is_written_before_the_store_has_synced(
    controller: RootConfigMapController, store: ConfigStore, client: FlakyConfigMaps, ca: CertificateAuthority
) -> None:
    store.apply([namespace("shop")])
    await asyncio.sleep(0.3)  # not synchronisation: gives a wrong implementation the chance to write
    assert client.calls == []
    store.mark_synced()
    store.apply([namespace("late")])
    await eventually(lambda: root_in(client, "late") == ca.current.root_pem.decode(), what="late's ConfigMap")
    assert root_in(client, "shop") == ca.current.root_pem.decode()


async def test_the_first_pass_runs_as_the_store_syncs_with_no_event_after_it(
    controller: RootConfigMapController, store: ConfigStore, client: FlakyConfigMaps, ca: CertificateAuthority
) -> None:
    store.apply([namespace("shop")])
    await asyncio.sleep(0.05)
    store.mark_synced()
    await eventually(lambda: root_in(client, "shop") == ca.current.root_pem.decode(), what="shop's ConfigMap")


async def test_a_new_root_is_written_to_every_namespace_and_terminating_ones_are_skipped(
    controller: RootConfigMapController, store: ConfigStore, client: FlakyConfigMaps, ca: CertificateAuthority
) -> None:
    store.apply([namespace("a"), namespace("b"), namespace("gone", terminating=True), namespace("kube-public")])
    store.mark_synced()
    store.apply([namespace("c")])
    await eventually(lambda: root_in(client, "c") is not None, what="first pass")
    rotated = make_root()
    ca.replace(rotated)
    new_root = rotated.root_pem.decode()
    await eventually(lambda: all(root_in(client, ns) == new_root for ns in "abc"), what="the new root everywhere")
    assert root_in(client, "gone") is None and root_in(client, "kube-public") is None


async def test_a_failed_pass_is_retried(
    controller: RootConfigMapController, store: ConfigStore, client: FlakyConfigMaps, ca: CertificateAuthority
) -> None:
    client.failures = 2
    store.mark_synced()
    store.apply([namespace("shop")])
    await eventually(lambda: root_in(client, "shop") == ca.current.root_pem.decode(), what="the retried write")
    assert controller.failures == 2
