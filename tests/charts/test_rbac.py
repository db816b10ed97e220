"""tests/charts/rbac.py: the chart's RBAC against recorded API calls, with tables, then for real.

The live test installs the chart with the real helm into an in-process kubesim (HTTPS, audit on),
starts `meshplane serve` with the chart's args under the chart's service account (a TokenRequest
token, as the pod would have), lets it do what a first start does (CA secret, Lease, root ConfigMaps,
informers, caBundle patches), and compares what it called with what the chart grants.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import yaml

from tests.charts.helm import CHART, REPO, REV, helm, render, requires_helm
from tests.charts.rbac import EXERCISED_ELSEWHERE, Call, Grant, Rule, compare, rules_by_subject
from tests.helpers.serve import start_serve
from tests.kubesim.auth import AuditRecord
from tests.kubesim.fixtures import Kubectl, eventually, kubeconfig_fixture, kubectl_fixture  # noqa: F401
from tests.kubesim.kubeconfig import write_kubeconfig
from tests.kubesim.server import KubeSim

ISTIOD = f"system:serviceaccount:istio-system:istiod-{REV}"
PEER_AUTHENTICATION_CRD = REPO / "tests" / "kubesim" / "crds" / "peerauthentications.security.istio.io.yaml"


def record(verb: str, resource: str, *, group: str = "", namespace: str = "", sub: str = "", user: str = ISTIOD):
    return AuditRecord(
        username=user, verb=verb, api_group=group, resource=resource, subresource=sub, namespace=namespace
    )


def rule(
    *verbs: str, resources: tuple[str, ...], groups: tuple[str, ...] = ("",), namespace: str | None = None
) -> Rule:
    return Rule(namespace=namespace, api_groups=groups, resources=resources, verbs=verbs)


def call(verb: str, resource: str, *, group: str = "", namespace: str = "") -> Call:
    return Call(username=ISTIOD, namespace=namespace, api_group=group, resource=resource, verb=verb)


def grant(verb: str, resource: str, *, group: str = "", namespace: str | None = None) -> Grant:
    return Grant(username=ISTIOD, namespace=namespace, api_group=group, resource=resource, verb=verb)


SECRETS_IN_NS = rule("get", "create", resources=("secrets",), namespace="istio-system")
READ_PODS = rule("list", "watch", resources=("pods",))

COMPARE_TABLE = [
    # rules, records, missing, unused
    pytest.param([READ_PODS], [record("list", "pods"), record("watch", "pods")], [], [], id="exactly-used"),
    pytest.param([READ_PODS], [record("list", "pods")], [], [grant("watch", "pods")], id="granted-not-used"),
    pytest.param(
        [READ_PODS], [record("get", "pods", namespace="a")], [call("get", "pods", namespace="a")],
        [grant("list", "pods"), grant("watch", "pods")], id="used-not-granted",
    ),
    pytest.param(
        [SECRETS_IN_NS],
        [record("get", "secrets", namespace="istio-system"), record("create", "secrets", namespace="istio-system")],
        [], [], id="role-in-its-namespace",
    ),
    pytest.param(
        [SECRETS_IN_NS],
        [record("get", "secrets", namespace="apps"), record("list", "secrets")],
        [call("list", "secrets"), call("get", "secrets", namespace="apps")],
        [grant("create", "secrets", namespace="istio-system"), grant("get", "secrets", namespace="istio-system")],
        id="role-does-not-reach-other-namespaces-or-cluster-wide",
    ),
    pytest.param(
        [READ_PODS], [record("list", "pods", user="kubernetes-admin"), record("list", "pods")], [],
        [grant("watch", "pods")], id="other-users-ignored",
    ),
    pytest.param(
        [rule("get", resources=("deployments",), groups=("apps",))],
        [record("get", "deployments", group="apps", namespace="a"),
         record("get", "deployments", group="extensions", namespace="a")],
        [call("get", "deployments", group="extensions", namespace="a")], [], id="group-must-match",
    ),
    pytest.param(
        [rule("update", resources=("deployments",), groups=("apps",))],
        [record("update", "deployments", group="apps", namespace="a", sub="scale")],
        [call("update", "deployments/scale", group="apps", namespace="a")],
        [grant("update", "deployments", group="apps")], id="subresource-needs-its-own-rule",
    ),
    pytest.param(
        [rule("*", resources=("*/status",), groups=("*",))],
        [record("patch", "pods", namespace="a", sub="status")], [], [], id="wildcards",
    ),
    pytest.param(
        [rule("update", resources=("secrets",), namespace="istio-system"), READ_PODS],
        [record("list", "pods"), record("watch", "pods")], [], [], id="exercised-elsewhere-is-not-unused",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "records", "missing", "unused"), COMPARE_TABLE)
def test_compare(rules: list[Rule], records: list[AuditRecord], missing: list[Call], unused: list[Grant]) -> None:
    assert compare({ISTIOD: rules}, records) == (missing, unused)


def test_compare_with_nothing_exercised_elsewhere_reports_every_idle_grant() -> None:
    rules = [rule("update", resources=("secrets",), namespace="istio-system")]
    assert compare({ISTIOD: rules}, [], elsewhere={}) == ([], [grant("update", "secrets", namespace="istio-system")])


def test_rules_are_resolved_through_the_rendered_bindings(helm_home: pathlib.Path) -> None:
    rules = rules_by_subject(render(helm_home, "--set", f"revision={REV}").values())
    assert set(rules) == {ISTIOD}
    namespaces = {r.namespace for r in rules[ISTIOD]}
    assert namespaces == {None, "istio-system"}
    secrets = [r for r in rules[ISTIOD] if "secrets" in r.resources]
    assert [r.namespace for r in secrets] == ["istio-system"], "Secrets only in the control plane's namespace"


@pytest.mark.parametrize(
    ("objects", "problem"),
    [
        (
            [{"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "n"},
              "roleRef": {"kind": "Role", "name": "gone"}, "subjects": []}],
            "RoleBinding b: roleRef Role gone is not rendered",
        ),
        (
            [{"kind": "ClusterRole", "metadata": {"name": "c"},
              "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["x"], "verbs": ["get"]}]}],
            "ClusterRole c: rules with resourceNames/nonResourceURLs are not checked",
        ),
    ],
)  # fmt: skip
def test_rules_that_cannot_be_checked_are_refused_by_name(objects: list[dict[str, object]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        rules_by_subject(objects)


# -- for real: meshplane serve under the chart's service account --------------------------------


@pytest.fixture(name="kubesim")
async def secure_kubesim_fixture() -> AsyncIterator[KubeSim]:
    """kubesim over HTTPS with bearer tokens: every request is audited with its user."""
    sim = KubeSim(tls=True, bookmark_interval=0.2)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@dataclass(frozen=True)
class Installed:
    rendered: list[dict[str, object]]
    args: list[str]


async def install(kubeconfig: pathlib.Path, home: pathlib.Path) -> Installed:
    env_args = ("--kubeconfig", str(kubeconfig))
    args = ("istiod-" + REV, str(CHART), "-n", "istio-system", "--create-namespace", "--set", f"revision={REV}")
    await asyncio.to_thread(helm, home, "install", *args, *env_args)
    manifest = await asyncio.to_thread(helm, home, "get", "manifest", f"istiod-{REV}", "-n", "istio-system", *env_args)
    rendered = [doc for doc in yaml.safe_load_all(manifest.stdout) if doc]
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    return Installed(rendered=rendered, args=list(container["args"]))


@requires_helm
async def test_a_first_start_uses_exactly_what_the_chart_grants(
    kubesim: KubeSim, kubeconfig: pathlib.Path, kubectl: Kubectl, tmp_path: pathlib.Path, helm_home: pathlib.Path
) -> None:
    installed = await install(kubeconfig, helm_home)
    await kubectl.run("create", "-f", str(PEER_AUTHENTICATION_CRD))  # so the PeerAuthentication watch runs too
    await kubectl.run("create", "namespace", "apps")
    token = (await kubectl.run("create", "token", f"istiod-{REV}", "-n", "istio-system")).stdout.strip()
    as_istiod = write_kubeconfig(
        tmp_path / "istiod-kubeconfig",
        server=kubesim.url,
        token=token,
        ca_pem=kubesim.certs.ca_pem,  # type: ignore[union-attr]
    )
    # The pod's args, less the listen address and state dir start_serve sets for a test on loopback.
    args = [a for a in installed.args[1:] if not a.startswith(("--http-addr", "--state-dir"))]
    running = await asyncio.to_thread(start_serve, tmp_path, *args, "--kubeconfig", str(as_istiod),
                                      env={"MESHPLANE_NAMESPACE": "istio-system"})  # fmt: skip
    try:

        async def published() -> bool:
            result = await kubectl.run("get", "configmap", "istio-ca-root-cert", "-n", "apps", check=False)
            return result.returncode == 0

        await eventually(published, what="the root ConfigMap published in a new namespace")

        async def patched() -> bool:
            config = await kubectl.json("get", "mutatingwebhookconfiguration", f"istio-sidecar-injector-{REV}")
            return all(hook["clientConfig"].get("caBundle") for hook in config["webhooks"])

        await eventually(patched, what="the injector's caBundle patched")
    finally:
        await asyncio.to_thread(running.stop)
    elsewhere = {key: why for key, why in EXERCISED_ELSEWHERE.items() if key[1] != "peerauthentications"}
    missing, unused = compare(rules_by_subject(installed.rendered), kubesim.audit, elsewhere=elsewhere)
    assert missing == [], "\n".join(map(str, missing))
    assert unused == [], "\n".join(map(str, unused))
