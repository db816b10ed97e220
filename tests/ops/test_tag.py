"""`meshplane tag set|list|remove|generate` against kubesim, with revisions installed from charts/istiod.

Each test renders the chart with the pinned helm, applies a revision's webhook configuration and
Service with the real kubectl, and runs the real `meshplane` command as a process. What a tag is
must not depend on who made it: the objects `tag set` creates are compared with the ones the chart
renders from `revisionTags`, both as the API server stores them.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
import pathlib
import sys
from typing import Any

import pytest
import yaml

from controlplane.kube.client import KubeApi
from controlplane.ops.tag import apply, plan_set
from tests.charts.helm import render_text, requires_helm
from tests.kubesim import admission
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    Result,
    kube_api_fixture,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

pytestmark = requires_helm

MESHPLANE = pathlib.Path(sys.executable).parent / "meshplane"
NEVER_MATCH = {"matchLabels": {"istio.io/deactivated": "never-match"}}


@pytest.fixture(name="helm_home", scope="module")
def helm_home_fixture(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("helm-home")


def chart(helm_home: pathlib.Path, revision: str, *values: str) -> list[dict[str, Any]]:
    """The revision's webhook configuration and Service (and tag objects) as charts/istiod renders them."""
    return copy.deepcopy(_rendered(helm_home, revision, *values))


@functools.cache
def _rendered(helm_home: pathlib.Path, revision: str, *values: str) -> list[dict[str, Any]]:
    release = f"istiod-{revision}" if revision else "istiod"
    text = render_text(helm_home, "--set", f"revision={revision}", *values, release=release)
    kinds = ("MutatingWebhookConfiguration", "Service")
    return [doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] in kinds]


async def install(kubectl: Kubectl, helm_home: pathlib.Path, *revisions: str) -> None:
    """istio-system plus each revision's own injector configuration and Service, applied with kubectl."""
    docs: list[Any] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}]
    for revision in revisions:
        docs += chart(helm_home, revision)
    await kubectl.apply(yaml.safe_dump_all(docs))


async def meshplane(kubeconfig: pathlib.Path, *args: str) -> Result:
    """`meshplane tag ARGS --kubeconfig KUBECONFIG` as a process (killed if it outlives the test's patience)."""
    proc = await asyncio.create_subprocess_exec(
        str(MESHPLANE), "tag", *args, "--kubeconfig", str(kubeconfig),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return Result(proc.returncode or 0, out.decode(), err.decode())


async def namespace(api: KubeApi, name: str, **labels: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    await api.request("POST", "/api/v1/namespaces", body=body)


async def tag_set(api: KubeApi, tag: str, revision: str) -> None:
    """`tag set` in this process, for tests where making the tag is only the set-up."""
    _, writes = await plan_set(api, tag=tag, revision=revision, overwrite=False)
    await apply(api, writes)


async def webhook_configs(kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    items = (await kubectl.json("get", "mutatingwebhookconfigurations"))["items"]
    return {item["metadata"]["name"]: item for item in items}


async def tag_services(kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    items = (await kubectl.json("get", "services", "-A", "-l", "istio.io/tag"))["items"]
    return {item["metadata"]["name"]: item for item in items}


async def dry_run(kubectl: Kubectl, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`docs` as the API server would store them (defaults applied), without storing them."""
    result = await kubectl.run("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=yaml.safe_dump_all(docs))
    decoder, text, found = json.JSONDecoder(), result.stdout.strip(), []
    while text:  # one JSON document per object
        obj, end = decoder.raw_decode(text)
        found.append(obj)
        text = text[end:].lstrip()
    return found


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """What makes a tag: name, namespace, labels, webhooks or the Service's ports and selector."""
    meta = obj["metadata"]
    out = {"kind": obj["kind"], "name": meta["name"], "namespace": meta.get("namespace"), "labels": meta["labels"]}
    if obj["kind"] == "Service":
        out["spec"] = {k: v for k, v in obj["spec"].items() if k not in ("clusterIP", "clusterIPs")}
    else:
        out["webhooks"] = obj["webhooks"]
    return out


def matching(sim: KubeSim, *, namespace_labels: dict[str, str], pod_labels: dict[str, str]) -> list[str]:
    """`configuration/webhook` of every mutating webhook kubesim's admission would call for such a pod."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "app", "labels": pod_labels}}
    attrs = admission.Attributes(resource=sim.resource("pods"), operation="CREATE", namespace="app", name="p", obj=pod)
    hooks = sim.admission.hooks("mutatingwebhookconfigurations")
    found = (admission.match(h, attrs, namespace_labels=namespace_labels, equivalents=[]) for h in hooks)
    return [f"{i.hook.configuration}/{i.hook.name}" for i in found if i is not None]


# -- set ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["prod", "default"])
async def test_set_creates_exactly_what_the_chart_renders_for_the_tag(
    kubectl: Kubectl, kubeconfig: pathlib.Path, helm_home: pathlib.Path, tag: str
) -> None:
    await install(kubectl, helm_home, "r2")
    rendered = [
        d
        for d in chart(helm_home, "r2", "--set", f"revisionTags={{{tag}}}")
        if "istio.io/tag" in d["metadata"]["labels"]
    ]
    assert len(rendered) == 2
    stored = await dry_run(kubectl, rendered)

    result = await meshplane(kubeconfig, "set", tag, "--revision", "r2")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f'Revision tag "{tag}" created, referencing control plane revision "r2". To enable injection using this '
        f"revision tag, use 'kubectl label namespace <NAMESPACE> istio.io/rev={tag}'"
    )
    made = [
        (await webhook_configs(kubectl))[f"istio-revision-tag-{tag}"],
        (await tag_services(kubectl))[f"istiod-revision-tag-{tag}"],
    ]
    assert [comparable(o) for o in made] == sorted((comparable(o) for o in stored), key=lambda o: o["kind"])
    assert made[1]["spec"]["selector"] == {"app": "istiod", "istio.io/rev": "r2"}
    assert {h["clientConfig"]["service"]["name"] for h in made[0]["webhooks"]} == {"istiod-r2"}


async def test_set_copies_the_revisions_ca_bundle(
    kubectl: Kubectl, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "r1")
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n").decode()
    config = (await webhook_configs(kubectl))["istio-sidecar-injector-r1"]
    for hook in config["webhooks"]:
        hook["clientConfig"]["caBundle"] = bundle
    await kubectl.run("replace", "-f", "-", stdin=json.dumps(config))

    assert (await meshplane(kubeconfig, "set", "prod", "-r", "r1")).returncode == 0

    tagged = (await webhook_configs(kubectl))["istio-revision-tag-prod"]
    assert [h["clientConfig"]["caBundle"] for h in tagged["webhooks"]] == [bundle, bundle]


async def test_set_refuses_a_tag_that_names_a_revision(
    kubectl: Kubectl, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "r1", "r2")

    for flags in ((), ("--overwrite",)):
        result = await meshplane(kubeconfig, "set", "r1", "--revision", "r2", *flags)
        assert result.returncode == 1
        assert (
            "MutatingWebhookConfiguration istio-sidecar-injector-r1 belongs to control plane revision" in result.stderr
        )
        assert "choose another name" in result.stderr
    assert not [n for n in await webhook_configs(kubectl) if n.startswith("istio-revision-tag-")]


async def test_set_refuses_an_unknown_revision_and_a_tag_given_as_revision(
    kubectl: Kubectl, kube_api: KubeApi, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "r1", "r2")

    unknown = await meshplane(kubeconfig, "set", "prod", "--revision", "r3")
    assert unknown.returncode == 1
    assert 'cannot find control plane revision "r3"' in unknown.stderr
    assert "installed revisions: r1, r2" in unknown.stderr
    await tag_set(kube_api, "prod", "r1")
    via_tag = await meshplane(kubeconfig, "set", "stable", "--revision", "prod")
    assert via_tag.returncode == 1
    assert '"prod" is a revision tag pointing at revision "r1": pass --revision r1' in via_tag.stderr.strip()


async def test_an_existing_tag_moves_only_with_overwrite(
    kubectl: Kubectl, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "r1", "r2")
    assert (await meshplane(kubeconfig, "set", "prod", "--revision", "r1")).returncode == 0
    before = (await webhook_configs(kubectl))["istio-revision-tag-prod"]

    refused = await meshplane(kubeconfig, "set", "prod", "--revision", "r2")
    assert refused.returncode == 1
    assert (
        'revision tag "prod" already exists (MutatingWebhookConfiguration istio-revision-tag-prod, ' in refused.stderr
    )
    assert "Service istio-system/istiod-revision-tag-prod, pointing at revision r1" in refused.stderr
    assert "pass --overwrite" in refused.stderr
    assert (await webhook_configs(kubectl))["istio-revision-tag-prod"] == before

    moved = await meshplane(kubeconfig, "set", "prod", "--revision", "r2", "--overwrite")
    assert moved.returncode == 0, moved.stderr
    config = (await webhook_configs(kubectl))["istio-revision-tag-prod"]
    service = (await tag_services(kubectl))["istiod-revision-tag-prod"]
    assert config["metadata"]["labels"]["istio.io/rev"] == service["metadata"]["labels"]["istio.io/rev"] == "r2"
    assert {h["clientConfig"]["service"]["name"] for h in config["webhooks"]} == {"istiod-r2"}
    assert service["spec"]["selector"] == {"app": "istiod", "istio.io/rev": "r2"}
    assert service["spec"]["clusterIP"]  # the same Service, updated in place


async def test_a_failed_step_leaves_the_cluster_as_it_was(
    kubectl: Kubectl, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "", "r2")
    meta = {"name": "istiod-revision-tag-default", "namespace": "istio-system"}
    squatter = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": [{"port": 80}]}}
    await kubectl.apply(yaml.safe_dump(squatter))
    before = await webhook_configs(kubectl)

    result = await meshplane(kubeconfig, "set", "default", "--revision", "r2")

    assert result.returncode == 1
    assert "could not create Service istio-system/istiod-revision-tag-default" in result.stderr
    assert "nothing was changed" in result.stderr
    after = await webhook_configs(kubectl)
    assert set(after) == set(before)  # the tag's configuration was created, then deleted again
    assert after["istio-sidecar-injector"]["webhooks"] == before["istio-sidecar-injector"]["webhooks"]


async def test_bad_names_and_flags_are_refused_before_connecting(tmp_path: pathlib.Path) -> None:
    nowhere = tmp_path / "missing-kubeconfig"
    bad = await meshplane(nowhere, "set", "Prod_1", "--revision", "r1")
    assert bad.returncode == 1
    assert "tag 'Prod_1': use lowercase letters, digits and '-'" in bad.stderr
    for tag, revision in (("prod\n", "r1"), ("prod", "r1\n")):
        newline = await meshplane(nowhere, "set", tag, "--revision", revision)
        assert newline.returncode == 1 and ("tag 'prod\\n'" in newline.stderr or "--revision 'r1\\n'" in newline.stderr)
    missing = await meshplane(nowhere, "set", "prod")
    assert missing.returncode == 2
    assert "--revision" in missing.stderr
    unreachable = await meshplane(nowhere, "list")
    assert unreachable.returncode == 1
    assert unreachable.stderr.count("\n") == 1 and "does not exist" in unreachable.stderr


# -- default: deactivation and re-activation ---------------------------------------------------------


async def test_default_tag_takes_over_injection_and_remove_gives_it_back(
    kubesim: KubeSim, kubectl: Kubectl, kube_api: KubeApi, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "", "r2")  # the default revision (legacy webhooks) and a canary
    installed = await webhook_configs(kubectl)
    original = installed["istio-sidecar-injector"]
    cases = {
        "istio-injection=enabled": ({"istio-injection": "enabled"}, {}),
        "istio.io/rev=default": ({"istio.io/rev": "default"}, {}),
        "pod sidecar.istio.io/inject=true": ({}, {"sidecar.istio.io/inject": "true"}),
    }

    def fired() -> dict[str, list[str]]:
        return {case: matching(kubesim, namespace_labels=ns, pod_labels=pod) for case, (ns, pod) in cases.items()}

    assert fired() == {
        "istio-injection=enabled": ["istio-sidecar-injector/namespace.sidecar-injector.istio.io"],
        "istio.io/rev=default": ["istio-sidecar-injector/rev.namespace.sidecar-injector.istio.io"],
        "pod sidecar.istio.io/inject=true": ["istio-sidecar-injector/object.sidecar-injector.istio.io"],
    }

    result = await meshplane(kubeconfig, "set", "default", "--revision", "r2")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "Deactivated the webhooks of MutatingWebhookConfiguration istio-sidecar-injector"
        ' that the "default" tag takes over'
    ]
    assert fired() == {
        "istio-injection=enabled": ["istio-revision-tag-default/namespace.sidecar-injector.istio.io"],
        "istio.io/rev=default": ["istio-revision-tag-default/rev.namespace.sidecar-injector.istio.io"],
        "pod sidecar.istio.io/inject=true": ["istio-revision-tag-default/object.sidecar-injector.istio.io"],
    }
    configs = await webhook_configs(kubectl)
    for hook in configs["istio-sidecar-injector"]["webhooks"]:
        assert (hook["namespaceSelector"], hook["objectSelector"]) == (NEVER_MATCH, NEVER_MATCH), hook["name"]
    assert configs["istio-sidecar-injector-r2"] == installed["istio-sidecar-injector-r2"]  # the canary is untouched

    await namespace(kube_api, "legacy", **{"istio-injection": "enabled"})
    removed = await meshplane(kubeconfig, "remove", "default")

    assert removed.returncode == 0, removed.stderr  # the legacy namespace is served by the re-activated revision
    assert removed.stdout.splitlines() == [
        "Re-activated the injection webhooks of MutatingWebhookConfiguration istio-sidecar-injector",
        "Revision tag default removed",
    ]
    configs = await webhook_configs(kubectl)
    assert "istio-revision-tag-default" not in configs and not await tag_services(kubectl)
    assert configs["istio-sidecar-injector"]["webhooks"] == original["webhooks"]
    assert fired()["istio-injection=enabled"] == ["istio-sidecar-injector/namespace.sidecar-injector.istio.io"]


async def test_removing_default_refuses_when_legacy_namespaces_would_lose_injection(
    kubectl: Kubectl, kube_api: KubeApi, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "r2")  # no default revision: nothing to re-activate
    await tag_set(kube_api, "default", "r2")
    await namespace(kube_api, "shop", **{"istio-injection": "enabled"})

    refused = await meshplane(kubeconfig, "remove", "default")

    assert refused.returncode == 1
    assert 'revision tag "default" is still used by namespace(s) shop' in refused.stderr
    assert "--force" in refused.stderr
    assert "istio-revision-tag-default" in await webhook_configs(kubectl)


# -- list and remove ----------------------------------------------------------------------------


async def test_list_shows_tags_revisions_and_namespaces(
    kubectl: Kubectl, kube_api: KubeApi, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "r1", "r2", "r3")
    for tag, revision in (("prod", "r1"), ("canary", "r2"), ("stable", "r1")):
        await tag_set(kube_api, tag, revision)
    await namespace(kube_api, "shop", **{"istio.io/rev": "prod"})
    await namespace(kube_api, "books", **{"istio.io/rev": "prod"})
    await namespace(kube_api, "legacy", **{"istio.io/rev": "r3"})

    listed = await meshplane(kubeconfig, "list")

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "TAG    REVISION NAMESPACES",
        "prod   r1       books,shop",
        "stable r1       ",
        "canary r2       ",
        "       r3       legacy",
    ]
    as_json = json.loads((await meshplane(kubeconfig, "list", "-o", "json")).stdout)
    assert as_json[0] == {"tag": "prod", "revision": "r1", "namespaces": ["books", "shop"]}
    assert [(row["tag"], row["revision"]) for row in as_json] == [
        ("prod", "r1"),
        ("stable", "r1"),
        ("canary", "r2"),
        ("", "r3"),
    ]


async def test_list_without_revisions(kubeconfig: pathlib.Path) -> None:
    listed = await meshplane(kubeconfig, "list")
    assert (listed.returncode, listed.stdout) == (0, "No Istio revision tags found.\n")


async def test_remove_refuses_while_namespaces_use_the_tag_then_deletes_it(
    kubectl: Kubectl, kube_api: KubeApi, kubeconfig: pathlib.Path, helm_home: pathlib.Path
) -> None:
    await install(kubectl, helm_home, "r1")
    await tag_set(kube_api, "prod", "r1")
    await namespace(kube_api, "shop", **{"istio.io/rev": "prod"})
    await namespace(kube_api, "books", **{"istio.io/rev": "prod"})

    refused = await meshplane(kubeconfig, "remove", "prod")
    assert refused.returncode == 1
    assert 'revision tag "prod" is still used by namespace(s) books, shop' in refused.stderr
    assert "kubectl label namespace NAME istio.io/rev=REVISION --overwrite" in refused.stderr
    assert "istio-revision-tag-prod" in await webhook_configs(kubectl)

    forced = await meshplane(kubeconfig, "remove", "prod", "--force")
    assert (forced.returncode, forced.stdout) == (0, "Revision tag prod removed\n")
    assert "istio-revision-tag-prod" not in await webhook_configs(kubectl)
    assert not await tag_services(kubectl)
    assert "istio-sidecar-injector-r1" in await webhook_configs(kubectl)

    again = await meshplane(kubeconfig, "remove", "prod")
    assert again.returncode == 1
    assert (
        'cannot remove tag "prod": no MutatingWebhookConfiguration or Service carries istio.io/tag=prod' in again.stderr
    )


# -- generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["prod", "default"])
async def test_generate_prints_what_set_applies_and_changes_nothing(
    kubectl: Kubectl, kubeconfig: pathlib.Path, helm_home: pathlib.Path, tag: str
) -> None:
    await install(kubectl, helm_home, "", "r2")
    before = await webhook_configs(kubectl)

    generated = await meshplane(kubeconfig, "generate", tag, "--revision", "r2")

    assert generated.returncode == 0, generated.stderr
    assert await webhook_configs(kubectl) == before and not await tag_services(kubectl)
    assert "&id" not in generated.stdout  # plain YAML, no anchors
    docs = list(yaml.safe_load_all(generated.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("MutatingWebhookConfiguration", f"istio-revision-tag-{tag}"),
        ("Service", f"istiod-revision-tag-{tag}"),
    ]
    assert (await meshplane(kubeconfig, "set", tag, "--revision", "r2")).returncode == 0
    made = [
        (await webhook_configs(kubectl))[f"istio-revision-tag-{tag}"],
        (await tag_services(kubectl))[f"istiod-revision-tag-{tag}"],
    ]
    applied = await dry_run(kubectl, _renamed(docs))
    applied.sort(key=lambda o: str(o["kind"]))
    assert [comparable(o) | {"name": ""} for o in made] == [comparable(o) | {"name": ""} for o in applied]


def _renamed(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The generated objects under other names, so a server dry run can create them beside the real ones."""
    copies = copy.deepcopy(docs)
    for doc in copies:
        doc["metadata"]["name"] += "-generated"
    return copies
