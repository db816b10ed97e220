"""The injection webhooks' caBundle patcher, against kubesim over real HTTP (and its pure plan)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from controlplane.kube.client import KubeApi
from controlplane.kube.webhooks import CaBundlePatcher, plan_cabundle_patch
from tests.kubesim.fixtures import (  # noqa: F401
    eventually,
    kube_api_fixture,
    kubeconfig_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

ROOT_A = b"-----BEGIN CERTIFICATE-----\nroot A\n-----END CERTIFICATE-----\n"
ROOT_B = b"-----BEGIN CERTIFICATE-----\nroot B\n-----END CERTIFICATE-----\n"
MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def hook(name: str, ca_bundle: bytes | None = None) -> dict[str, Any]:
    client: dict[str, Any] = {"service": {"name": "istiod-canary", "namespace": "istio-system", "path": "/inject"}}
    if ca_bundle is not None:
        client["caBundle"] = base64.b64encode(ca_bundle).decode()
    return {
        "name": name,
        "clientConfig": client,
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }


def config(name: str, labels: dict[str, str], *hooks: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels, "resourceVersion": "7"},
        "webhooks": list(hooks),
    }


CANARY = {"istio.io/rev": "canary"}


# -- the plan ----------------------------------------------------------------------------------
def test_plan_patches_only_the_injector_webhooks_that_differ() -> None:
    mwc = config(
        "istio-sidecar-injector-canary",
        CANARY,
        hook("rev.namespace.sidecar-injector.istio.io", ROOT_B),
        hook("rev.object.sidecar-injector.istio.io", ROOT_A),
        hook("validation.example.com", b"other"),
    )
    patch = plan_cabundle_patch(mwc, revision="canary", ca_bundle=ROOT_A)
    assert patch == {
        "metadata": {"resourceVersion": "7"},
        "webhooks": [
            {
                "name": "rev.namespace.sidecar-injector.istio.io",
                "clientConfig": {"caBundle": base64.b64encode(ROOT_A).decode()},
            }
        ],
    }


@pytest.mark.parametrize(
    ("mwc", "why"),
    [
        (config("x", {"istio.io/rev": "stable"}, hook("rev.namespace.sidecar-injector.istio.io")), "other revision"),
        (config("x", {}, hook("rev.namespace.sidecar-injector.istio.io")), "no revision label"),
        (config("x", CANARY, hook("injector.example.com")), "no injector webhook"),
        (config("x", CANARY, hook("rev.object.sidecar-injector.istio.io", ROOT_A)), "already current"),
    ],
)
def test_plan_leaves_alone(mwc: dict[str, Any], why: str) -> None:
    assert plan_cabundle_patch(mwc, revision="canary", ca_bundle=ROOT_A) is None, why


def test_plan_repairs_a_caBundle_that_is_not_base64() -> None:
    broken = hook("rev.namespace.sidecar-injector.istio.io")
    broken["clientConfig"]["caBundle"] = "not base64!"
    assert plan_cabundle_patch(config("x", CANARY, broken), revision="canary", ca_bundle=ROOT_A) is not None


# -- against the API server --------------------------------------------------------------------
@dataclass
class Root:
    pem: bytes = ROOT_A


@pytest.fixture
async def cluster(kubesim: KubeSim) -> KubeSim:
    objects = [
        config(
            "istio-sidecar-injector-canary",
            CANARY,
            hook("rev.namespace.sidecar-injector.istio.io"),
            hook("rev.object.sidecar-injector.istio.io", ROOT_B),
            hook("audit.example.com", b"third party"),
        ),
        config(
            "istio-revision-tag-prod", {**CANARY, "istio.io/tag": "prod"}, hook("namespace.sidecar-injector.istio.io")
        ),
        config(
            "istio-sidecar-injector-stable", {"istio.io/rev": "stable"}, hook("rev.object.sidecar-injector.istio.io")
        ),
        config("third-party", {}, hook("rev.object.sidecar-injector.istio.io")),
    ]
    for obj in objects:
        del obj["metadata"]["resourceVersion"]
        kubesim.create_object(obj)
    return kubesim


@pytest.fixture
async def patcher(cluster: KubeSim, kube_api: KubeApi) -> AsyncIterator[tuple[CaBundlePatcher, Root]]:
    root = Root()
    running = CaBundlePatcher(kube_api, revision="canary", ca_bundle=lambda: root.pem)
    task = asyncio.create_task(running.run())
    try:
        yield running, root
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bundles(sim: KubeSim, name: str) -> dict[str, bytes | None]:
    obj = sim.get_object("mutatingwebhookconfigurations", "", name, group="admissionregistration.k8s.io")
    assert obj is not None
    found = {}
    for webhook in obj["webhooks"]:
        value = webhook["clientConfig"].get("caBundle")
        found[webhook["name"]] = base64.b64decode(value) if value else None
    return found


def injector_bundles(sim: KubeSim) -> dict[str, bytes | None]:
    return {
        **bundles(sim, "istio-sidecar-injector-canary"),
        **{f"tag {k}": v for k, v in bundles(sim, "istio-revision-tag-prod").items()},
    }


def all_current(sim: KubeSim, root: bytes) -> bool:
    found = injector_bundles(sim)
    return all(value == root for name, value in found.items() if name.endswith("sidecar-injector.istio.io"))


async def test_start_patches_the_revisions_injector_webhooks_and_nothing_else(
    patcher: tuple[CaBundlePatcher, Root], cluster: KubeSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.kube.webhooks")
    await eventually(lambda: all_current(cluster, ROOT_A), what="caBundles patched")
    assert bundles(cluster, "istio-sidecar-injector-canary")["audit.example.com"] == b"third party"
    assert bundles(cluster, "istio-sidecar-injector-stable") == {"rev.object.sidecar-injector.istio.io": None}
    assert bundles(cluster, "third-party") == {"rev.object.sidecar-injector.istio.io": None}
    messages = [r.getMessage() for r in caplog.records]
    assert any("MutatingWebhookConfiguration istio-revision-tag-prod" in m for m in messages), messages
    assert any("MutatingWebhookConfiguration istio-sidecar-injector-canary" in m for m in messages), messages


async def test_a_hand_edited_caBundle_is_restored(
    patcher: tuple[CaBundlePatcher, Root], cluster: KubeSim, kube_api: KubeApi
) -> None:
    await eventually(lambda: all_current(cluster, ROOT_A), what="caBundles patched")
    edit = [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": base64.b64encode(b"x").decode()}]
    await kube_api.request(
        "PATCH", f"{MWC_PATH}/istio-sidecar-injector-canary", body=edit, content_type="application/json-patch+json"
    )
    assert not all_current(cluster, ROOT_A)
    await eventually(lambda: all_current(cluster, ROOT_A), what="the edited caBundle restored")


async def test_a_new_root_is_patched_in(patcher: tuple[CaBundlePatcher, Root], cluster: KubeSim) -> None:
    running, root = patcher
    await eventually(lambda: all_current(cluster, ROOT_A), what="caBundles patched")
    root.pem = ROOT_B
    running.root_changed()
    await eventually(lambda: all_current(cluster, ROOT_B), what="the new root in every injector webhook")


async def test_conflicts_and_errors_are_retried(
    cluster: KubeSim, kube_api: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    conflicts = cluster.inject_faults(status=409, count=3, method="PATCH", path_prefix=MWC_PATH)
    errors = cluster.inject_faults(status=500, count=2, method="PATCH", path_prefix=MWC_PATH)
    running = CaBundlePatcher(kube_api, revision="canary", ca_bundle=lambda: ROOT_A)
    task = asyncio.create_task(running.run())
    try:
        await eventually(lambda: all_current(cluster, ROOT_A), what="caBundles patched despite the faults")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert conflicts.count == 0 and errors.count == 0
    assert "caBundle patch of MutatingWebhookConfiguration" in caplog.text


async def test_a_deleted_configuration_is_not_an_error(
    patcher: tuple[CaBundlePatcher, Root], cluster: KubeSim, kube_api: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    running, root = patcher
    await eventually(lambda: all_current(cluster, ROOT_A), what="caBundles patched")
    await kube_api.request("DELETE", f"{MWC_PATH}/istio-revision-tag-prod")
    root.pem = ROOT_B
    running.root_changed()
    await eventually(
        lambda: bundles(cluster, "istio-sidecar-injector-canary")["rev.object.sidecar-injector.istio.io"] == ROOT_B,
        what="the remaining configuration patched",
    )
    assert "failed" not in caplog.text
