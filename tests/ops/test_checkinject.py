"""`meshplane check-inject`: one row per injection webhook configuration, and an error on overlaps."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from controlplane.cli import main
from controlplane.ops import checkinject
from tests.charts.helm import requires_helm
from tests.kubesim.fixtures import Kubectl
from tests.ops.conftest import R1, R2, Render, install_canary, load_case, meshplane

pytestmark = requires_helm


def rows_for(chart: Render, case: str, namespace: str, **meta: object) -> list[tuple[str, str, bool, str]]:
    pod = {"metadata": {"name": "p", **meta}, "spec": meta.pop("spec", {})}
    return checkinject.check(load_case(chart, case), namespace=namespace, pod=pod)


def test_namespace_revision_injects_and_the_others_say_why_not(chart: Render) -> None:
    assert rows_for(chart, "canary-restart", "shop") == [
        (
            "istio-revision-tag-default",
            R1,
            False,
            "No matching namespace labels (istio.io/rev=default, istio-injection=enabled) "
            "or pod labels (istio.io/rev=default, sidecar.istio.io/inject=true)",
        ),
        (
            f"istio-sidecar-injector-{R1}",
            R1,
            False,
            f"No matching namespace labels (istio.io/rev={R1}) or pod labels (istio.io/rev={R1})",
        ),
        (f"istio-sidecar-injector-{R2}", R2, True, f"Namespace label istio.io/rev={R2} matches"),
    ]


def test_reasons_for_opt_out_disabled_namespace_and_the_injectors_own_policy(chart: Render) -> None:
    opted_out = rows_for(chart, "missing-proxy", "legacy", labels={"sidecar.istio.io/inject": "false"})
    assert opted_out[0] == (
        "istio-revision-tag-default",
        R1,
        False,
        "Pod has sidecar.istio.io/inject=false label, preventing injection",
    )
    host = rows_for(chart, "missing-proxy", "revisioned", spec={"hostNetwork": True})
    assert host[2][2:] == (
        False,
        f"Namespace label istio.io/rev={R1} matches, but the injector skips the pod: the pod uses hostNetwork",
    )
    disabled = rows_for(chart, "unknown-revision", "plain", labels={"istio.io/rev": R1})
    assert disabled[1][2:] == (False, "Namespace has istio-injection=disabled label, preventing injection")
    by_pod = rows_for(chart, "missing-proxy", "unlabelled", labels={"istio.io/rev": "prod"})
    assert by_pod[1] == ("istio-revision-tag-prod", R1, True, "Pod label istio.io/rev=prod matches")


def test_deactivated_webhooks_say_so(chart: Render) -> None:
    state = load_case(chart, "canary-restart")
    never = {"matchLabels": {"istio.io/deactivated": "never-match"}}
    config = state.injectors[0]
    hooks = tuple(
        type(h)(name=h.name, namespace_selector=never, object_selector=never, service=h.service)
        for h in config.webhooks
    )
    deactivated = type(config)(name=config.name, revision=config.revision, tag=config.tag, webhooks=hooks)
    state = type(state)(**{**state.__dict__, "injectors": (deactivated,)})
    rows = checkinject.check(state, namespace="tagged", pod={"metadata": {}})
    assert rows == [(config.name, R1, False, "The injection webhook is deactivated, and will never match labels.")]


def test_overlap_is_an_error_naming_the_webhooks(chart: Render) -> None:
    rows = rows_for(chart, "overlapping-webhooks", "x", labels={"sidecar.istio.io/inject": "true"})
    assert checkinject.overlap_error("x/p", rows) == (
        f"pod x/p would be injected by several webhooks: istio-revision-tag-default (revision {R2}), "
        "istio-sidecar-injector (revision default); each adds its sidecar in turn. Keep one injection label on the "
        "namespace and the pod, or deactivate the overlapping webhooks (meshplane analyze reports them as IST0139)"
    )


def test_a_workload_manifest_is_checked_through_its_pod_template(tmp_path: pathlib.Path) -> None:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"metadata": {"labels": {"istio.io/rev": R2}}, "spec": {"containers": []}}},
    }
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump(manifest))
    pod = checkinject.read_manifest(str(path))
    assert pod["metadata"] == {"labels": {"istio.io/rev": R2}, "name": "web", "namespace": "shop"}
    path.write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(checkinject.common.CommandError, match="kind ConfigMap has no pod template"):
        checkinject.read_manifest(str(path))
    path.write_text("kind: [")
    with pytest.raises(checkinject.common.CommandError, match=r"not valid YAML at line 1"):
        checkinject.read_manifest(str(path))
    path.write_text("kind: Pod\nmetadata: {name: p}\nspec: &s {containers: [{name: a, image: x}], x: *s}\n")
    with pytest.raises(
        checkinject.common.CommandError,
        match=r"not valid YAML at line 3 column 7: a YAML alias \(\*name\) refers to a node that contains it",
    ):
        checkinject.read_manifest(str(path))  # a pod that contains itself would never finish matching


def test_exactly_one_of_pod_selector_file(capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], ["p", "-l", "a=b"]):
        with pytest.raises(SystemExit) as exited:
            main(["check-inject", *args])
        assert exited.value.code == 2
    assert "POD and -l exclude each other" in capsys.readouterr().err


async def test_check_inject_on_kubesim(
    kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render, tmp_path: pathlib.Path
) -> None:
    await install_canary(kubectl, chart)
    code, out, err = await meshplane("check-inject", "-n", "shop", "web-6d5f-a", "--kubeconfig", str(kubeconfig))
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["WEBHOOK", "REVISION", "INJECTED", "REASON"]
    assert f"istio-sidecar-injector-{R2}  {R2}  \u2714         Namespace label istio.io/rev={R2} matches" in out
    code, out, err = await meshplane("check-inject", "-n", "shop", "-l", "app=web", "--kubeconfig", str(kubeconfig))
    assert code == 0
    assert sorted({line.split()[0] for line in out.splitlines()[1:]}) == ["shop/web-6d5f-a", "shop/web-6d5f-b"]
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        yaml.safe_dump({"kind": "Pod", "metadata": {"name": "x", "labels": {"sidecar.istio.io/inject": "true"}}})
    )
    code, out, err = await meshplane(
        "check-inject", "-n", "default", "-f", str(manifest), "--kubeconfig", str(kubeconfig)
    )
    assert code == 0 and "istio-revision-tag-default         asm-1233-2  \u2714" in out, out
    code, out, err = await meshplane("check-inject", "-n", "shop", "nope", "--kubeconfig", str(kubeconfig))
    assert (code, out, err) == (1, "", 'meshplane check-inject: pod "nope" not found in namespace "shop"\n')
    code, out, err = await meshplane("check-inject", "-n", "shop", "-l", "a=(", "--kubeconfig", str(kubeconfig))
    assert code == 2 and err.startswith("meshplane check-inject: -l 'a=(': ") and out == "", err


async def test_several_injecting_webhooks_exit_1(kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render) -> None:
    await kubectl.run("create", "namespace", "istio-system")
    await kubectl.run("create", "namespace", "app")
    await kubectl.run("label", "namespace", "app", "istio-injection=enabled")
    rendered = chart({"revision": "default"}) + chart({"revision": R2, "revisionTags": ["default"]})
    await kubectl.apply(yaml.safe_dump_all([o for o in rendered if o["kind"] == "MutatingWebhookConfiguration"]))
    manifest = yaml.safe_dump({"kind": "Pod", "metadata": {"name": "x"}})
    path = pathlib.Path(kubeconfig).parent / "x.yaml"
    path.write_text(manifest)
    code, out, err = await meshplane("check-inject", "-n", "app", "-f", str(path), "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert out.count("\u2714") == 2
    assert err.startswith("meshplane check-inject: error: pod app/x would be injected by several webhooks: ")
