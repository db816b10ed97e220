"""Trust bundle distribution: `<state-dir>/root-cert.pem` and the `istio-ca-root-cert` ConfigMaps."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Mapping

import pytest

from certs.rootdist import (
    ROOT_CONFIGMAP,
    ConfigMapAction,
    ConfigMapView,
    LocalRootFile,
    NamespaceView,
    RootConfigMapReconciler,
    plan_root_configmaps,
)
from tests.certs.fakes import FakeConfigMaps

ROOT = "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n"
OLD = "-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----\n"
LABEL = {"istio.io/config": "true"}


def ns(*names: str) -> list[NamespaceView]:
    return [NamespaceView(name=n) for n in names]


def test_every_namespace_but_the_ignored_ones_gets_the_configmap() -> None:
    plan = plan_root_configmaps(
        root_pem=ROOT,
        namespaces=ns("default", "kube-system", "kube-public", "kube-node-lease", "local-path-storage", "prod"),
        existing={},
    )
    assert [(a.verb, a.namespace) for a in plan] == [
        ("create", "default"),
        ("create", "kube-system"),
        ("create", "prod"),
    ]
    assert all(a.data == {"root-cert.pem": ROOT} and a.labels == LABEL for a in plan)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (ConfigMapView(namespace="a", data={"root-cert.pem": ROOT}, labels=LABEL), None),
        (ConfigMapView(namespace="a", data={"root-cert.pem": OLD}, labels=LABEL), "update"),
        (ConfigMapView(namespace="a", data={"root-cert.pem": ROOT, "extra": "x"}, labels=LABEL), "update"),
        (ConfigMapView(namespace="a", data={}, labels=LABEL), "update"),
        (ConfigMapView(namespace="a", data={"root-cert.pem": ROOT}, labels={}), "update"),
    ],
    ids=["up-to-date", "stale-root", "extra-key", "emptied", "label-removed"],
)
def test_an_edited_or_stale_configmap_is_restored(current: ConfigMapView, expected: str | None) -> None:
    plan = plan_root_configmaps(root_pem=ROOT, namespaces=ns("a"), existing={"a": current})
    assert [a.verb for a in plan] == ([expected] if expected else [])


def test_restoring_keeps_unrelated_labels() -> None:
    current = ConfigMapView(namespace="a", data={"root-cert.pem": OLD}, labels={"team": "x"})
    (action,) = plan_root_configmaps(root_pem=ROOT, namespaces=ns("a"), existing={"a": current})
    assert action.labels == {"team": "x", **LABEL}


def test_terminating_namespaces_are_left_alone() -> None:
    plan = plan_root_configmaps(root_pem=ROOT, namespaces=[NamespaceView(name="bye", terminating=True)], existing={})
    assert plan == []


async def test_reconciler_applies_the_plan_and_recovers_from_races() -> None:
    client = FakeConfigMaps()
    client.items[("raced", ROOT_CONFIGMAP)] = ({"root-cert.pem": OLD}, {})  # created since our view was taken
    reconciler = RootConfigMapReconciler(client)
    done = await reconciler.reconcile(
        root_pem=ROOT,
        namespaces=ns("raced", "gone"),
        # "gone": we saw a stale ConfigMap that has been deleted since.
        existing={"gone": ConfigMapView(namespace="gone", data={"root-cert.pem": OLD})},
    )
    assert done == [
        ConfigMapAction(verb="update", namespace="gone", data={"root-cert.pem": ROOT}, labels=LABEL),
        ConfigMapAction(verb="create", namespace="raced", data={"root-cert.pem": ROOT}, labels=LABEL),
    ]
    assert client.items[("raced", ROOT_CONFIGMAP)] == ({"root-cert.pem": ROOT}, LABEL)
    assert client.items[("gone", ROOT_CONFIGMAP)] == ({"root-cert.pem": ROOT}, LABEL)
    assert client.calls == [("update", "gone"), ("create", "gone"), ("create", "raced"), ("update", "raced")]


def test_local_root_file_is_rewritten_only_when_the_bundle_changes(tmp_path: pathlib.Path) -> None:
    target = LocalRootFile(tmp_path / "root-cert.pem")
    assert target.publish(b"one")
    assert not target.publish(b"one")
    assert target.publish(b"two")
    assert (tmp_path / "root-cert.pem").read_bytes() == b"two"


class SlowConfigMaps(FakeConfigMaps):
    """Each write takes a turn of the event loop; counts the writes in flight at once; fails for `broken`."""

    def __init__(self, broken: str = "") -> None:
        super().__init__()
        self.broken = broken
        self.in_flight = 0
        self.most = 0

    async def create(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            if namespace == self.broken:
                raise RuntimeError(f"namespaces {namespace!r} is forbidden")
            await super().create(namespace=namespace, name=name, data=data, labels=labels)
        finally:
            self.in_flight -= 1


async def test_a_cluster_of_many_namespaces_gets_its_configmaps_a_few_writes_at_a_time() -> None:
    """A first install in 3,000 namespaces waited one API round trip per namespace, one after the other."""
    client = SlowConfigMaps()
    names = [f"team-{i}" for i in range(100)]
    done = await RootConfigMapReconciler(client, writes=8).reconcile(root_pem=ROOT, namespaces=ns(*names), existing={})
    assert len(done) == 100 and set(client.items) == {(n, ROOT_CONFIGMAP) for n in names}
    assert client.most == 8


async def test_one_failed_write_does_not_stop_the_others_and_is_raised() -> None:
    client = SlowConfigMaps(broken="team-3")
    names = [f"team-{i}" for i in range(20)]
    with pytest.raises(RuntimeError, match="team-3"):
        await RootConfigMapReconciler(client, writes=4).reconcile(root_pem=ROOT, namespaces=ns(*names), existing={})
    assert set(client.items) == {(n, ROOT_CONFIGMAP) for n in names if n != "team-3"}
