"""`meshplane analyze`: golden cases for every message (text and JSON), and the real command on kubesim.

Golden cases are `golden/analyze/<case>.yaml`: a first document `kind: Charts` naming the
charts/istiod releases to render with helm (`releases`: values per release; `drop`: `Kind/name` of
rendered objects to leave out; `scope`: the namespace analyzed, else all), then the cluster's other
objects. Expected output: `<case>.txt` and `<case>.json`. Regenerate with REFRESH_GOLDEN=1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import pytest
import yaml

from controlplane.cli import main
from controlplane.ops.analyze import (
    EXIT_ISSUES,
    MESSAGE_TYPES,
    SUPPRESS_ANNOTATION,
    Suppression,
    analyze,
    exit_status,
    render,
)
from controlplane.ops.cluster import ClusterState, Pod, Workload
from tests.charts.helm import requires_helm
from tests.kubesim.fixtures import Kubectl
from tests.ops.conftest import GOLDEN, R1, R2, Render, install_canary, load_case, meshplane, stale_pod

pytestmark = requires_helm

CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def check_golden(path: pathlib.Path, actual: str) -> None:
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(actual)
    assert path.exists(), f"{path.name} is missing: run with REFRESH_GOLDEN=1"
    assert actual == path.read_text(), f"{path.name} differs (REFRESH_GOLDEN=1 rewrites it after review)"


@pytest.mark.parametrize("case", CASES)
def test_golden(chart: Render, case: str) -> None:
    messages = analyze(load_case(chart, case))
    text = render(messages, output="text")
    check_golden(GOLDEN / f"{case}.txt", text + "\n" if text else "")
    check_golden(GOLDEN / f"{case}.json", render(messages, output="json") + "\n")
    assert yaml.safe_load(render(messages, output="yaml")) == json.loads(render(messages, output="json"))


def test_no_stale_goldens() -> None:
    outputs = {p.stem for p in GOLDEN.iterdir() if p.suffix in (".txt", ".json")}
    assert outputs <= set(CASES), f"golden outputs without a case: {sorted(outputs - set(CASES))}"


def test_every_message_has_a_golden_case() -> None:
    shown = " ".join((GOLDEN / f"{case}.txt").read_text() for case in CASES)
    assert [t.code for t in MESSAGE_TYPES if f"[{t.code}]" not in shown] == []


def test_canary_names_exactly_the_workloads_to_restart(chart: Render) -> None:
    messages = analyze(load_case(chart, "canary-restart"))
    commands = sorted(m.command for m in messages if m.command)
    assert commands == [
        "kubectl delete pod legacy-7c9b-m2x8d -n shop",  # its ReplicaSet creates it again
        "kubectl get pod debug -n shop -o yaml | kubectl replace --force -f -",  # a bare pod, replaced by itself
        "kubectl rollout restart daemonset/node-agent -n shop",
        "kubectl rollout restart deployment/web -n shop",
        "kubectl rollout restart statefulset/db -n shop",
    ]
    assert exit_status(messages) == 0


def test_an_on_delete_statefulset_or_daemonset_gets_its_pods_deleted_not_a_rollout_restart(chart: Render) -> None:
    """With updateStrategy OnDelete a rollout restart changes the template and replaces no pod."""
    objects = [
        {"kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": {"updateStrategy": {"type": strategy}}}
        for kind, name, strategy in (("StatefulSet", "db", "OnDelete"), ("DaemonSet", "node-agent", "RollingUpdate"))
    ]
    on_delete = ClusterState.from_objects(objects).on_delete
    assert on_delete == {Workload(kind="StatefulSet", namespace="shop", name="db")}
    state = dataclasses.replace(load_case(chart, "canary-restart"), on_delete=on_delete)
    (db,) = [m for m in analyze(state) if m.origin == "StatefulSet shop/db"]
    assert db.command is not None and db.command.startswith("kubectl delete pod db-")
    assert "(its update strategy is OnDelete: a rollout restart would replace no pod;" in db.text
    daemonset = [m.command for m in analyze(state) if m.origin == "DaemonSet shop/node-agent"]
    assert daemonset == ["kubectl rollout restart daemonset/node-agent -n shop"]


def test_a_debugged_bare_pod_is_not_advised_a_replace_that_would_lose_it(chart: Render) -> None:
    """No new pod may carry ephemeral containers (`kubectl debug` adds them to a running one): kubectl replace
    --force would delete the pod and then fail to create it, so the advice stays a delete and a manifest."""
    state = load_case(chart, "canary-restart")

    def debugged(pod: Pod) -> Pod:
        spec = {**pod.manifest["spec"], "ephemeralContainers": [{"name": "debugger", "image": "busybox"}]}
        return dataclasses.replace(pod, manifest={**pod.manifest, "spec": spec})

    state = dataclasses.replace(state, pods=tuple(debugged(p) if p.name == "debug" else p for p in state.pods))
    (message,) = [m for m in analyze(state) if m.origin == "Pod shop/debug"]
    assert message.command == "kubectl delete pod debug -n shop"
    assert message.text.endswith(
        "(a bare pod is not recreated: create it again from its manifest; kubectl replace --force would delete"
        " it and then fail, as no new pod may carry its ephemeral containers)"
    )


def test_an_error_message_gives_exit_status_79(chart: Render) -> None:
    assert exit_status(analyze(load_case(chart, "unknown-revision"))) == EXIT_ISSUES
    assert exit_status(analyze(load_case(chart, "clean"))) == 0


# -- the real command against kubesim -----------------------------------------------------------


async def test_analyze_on_kubesim_names_the_restarts(kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render) -> None:
    await install_canary(kubectl, chart)
    code, out, err = await meshplane("analyze", "-n", "shop", "--kubeconfig", str(kubeconfig))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "Warning [MP0003] (Deployment shop/web) Pod web-6d5f-a runs the sidecar of revision asm-1233-2; its namespace "
        "and labels now select revision asm-1234-1. Restart: kubectl rollout restart deployment/web -n shop",
        "Warning [MP0003] (Pod shop/debug) Pod debug runs the sidecar of revision asm-1233-2; its namespace and labels "
        "now select revision asm-1234-1. Restart: kubectl get pod debug -n shop -o yaml | kubectl replace --force -f - "
        "(it deletes the pod and creates it again from its own spec, which the injector injects anew)",
    ]
    code, out, _ = await meshplane("analyze", "-A", "-o", "json", kubeconfig=kubeconfig)
    found = json.loads(out)
    assert {m["origin"]: m.get("command") for m in found if m["code"] == "MP0003"} == {
        "Deployment shop/web": "kubectl rollout restart deployment/web -n shop",
        "Pod shop/debug": "kubectl get pod debug -n shop -o yaml | kubectl replace --force -f -",
    }
    assert code == 0


async def test_analyze_exits_79_on_an_error_and_says_so_once(
    kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render
) -> None:
    await kubectl.run("create", "namespace", "istio-system")
    await kubectl.run("create", "namespace", "shop")
    await kubectl.run("label", "namespace", "shop", "istio.io/rev=asm-0000-0")
    await kubectl.apply(yaml.safe_dump_all([o for o in chart({"revision": R1}) if o["kind"] == "ConfigMap"]))
    code, out, _ = await meshplane("analyze", "-n", "shop", "-o", "yaml", "--kubeconfig", str(kubeconfig))
    assert code == EXIT_ISSUES
    assert [m["code"] for m in yaml.safe_load(out)] == ["MP0001"]


async def test_a_clean_namespace_reports_nothing_and_a_missing_one_is_named(
    kubectl: Kubectl, kubeconfig: pathlib.Path
) -> None:
    await kubectl.run("create", "namespace", "quiet")
    await kubectl.run("label", "namespace", "quiet", "istio-injection=disabled")
    code, out, err = await meshplane("analyze", "-n", "quiet", "--kubeconfig", str(kubeconfig))
    assert (code, out) == (0, "")
    assert err == "\u2714 No validation issues found when analyzing namespace: quiet.\n"
    code, out, err = await meshplane("analyze", "-n", "nowhere", "--kubeconfig", str(kubeconfig))
    assert (code, out) == (1, "")
    assert err == "meshplane analyze: namespace 'nowhere' does not exist (kubectl get namespaces lists them)\n"


def test_missing_kubeconfig_and_unreachable_server_are_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", "--kubeconfig", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr() == ("", f"meshplane analyze: --kubeconfig: {tmp_path / 'nope'} does not exist\n")
    dead = tmp_path / "dead"
    dead.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],  # nothing listens on 1
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    assert main(["analyze", "-A", "--kubeconfig", str(dead)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("meshplane analyze: cannot reach the Kubernetes API server at http://127.0.0.1:1: ")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["-n", "a", "-A"], "not allowed with argument"),
        (["-o", "xml"], "invalid choice: 'xml'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_exit_2(args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["analyze", *args])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


# -- leaving messages out: istioctl's --suppress, its annotation, and the two thresholds ------------


def test_suppress_matches_the_origin_as_printed_or_as_istioctls_help_writes_it(chart: Render) -> None:
    state = load_case(chart, "canary-restart")

    def left(*suppress: str) -> set[str]:
        found = analyze(state, suppressions=[Suppression.parse(s) for s in suppress])
        return {m.origin for m in found if m.type.code == "MP0003"}

    everything = left()
    assert {"Deployment shop/web", "Pod shop/debug"} <= everything
    for resource in ("Deployment shop/web", "Deployment web.shop", "Deployment shop/*", "*/web", "Deploy*web"):
        assert left(f"MP0003={resource}") == everything - {"Deployment shop/web"}, resource
    for resource in ("Deployment shop/we", "Deployment web", "StatefulSet shop/web", ""):
        assert left(f"MP0003={resource}") == everything, resource
    assert left("IST0103=Deployment shop/web") == everything  # another code
    assert left("MP0003=*") == set()


def test_the_suppress_annotation_is_read_on_the_object_a_message_is_about(chart: Render) -> None:
    state = load_case(chart, "canary-restart")
    web = Workload(kind="Deployment", namespace="shop", name="web")
    for value in ("MP0003", "IST0102, MP0003", "*"):
        annotated = dataclasses.replace(state, owner_annotations={web: {SUPPRESS_ANNOTATION: value}})
        assert "Deployment shop/web" not in {m.origin for m in analyze(annotated)}
    other = dataclasses.replace(state, owner_annotations={web: {SUPPRESS_ANNOTATION: "IST0102"}})
    assert "Deployment shop/web" in {m.origin for m in analyze(other)}


def test_a_deployments_annotations_are_those_its_newest_replicaset_carries() -> None:
    """The Deployment controller keeps the Deployment's annotations on its newest ReplicaSet; an older
    one keeps what it was given then."""

    def replicaset(name: str, revision: str, annotations: dict[str, str]) -> dict[str, Any]:
        owner = {"kind": "Deployment", "name": "web", "controller": True}
        meta = {"name": name, "namespace": "shop", "ownerReferences": [owner]}
        meta["annotations"] = {"deployment.kubernetes.io/revision": revision, **annotations}
        return {"kind": "ReplicaSet", "metadata": meta}

    old = replicaset("web-1", "9", {SUPPRESS_ANNOTATION: "MP0003"})
    new = replicaset("web-2", "10", {})
    state = ClusterState.from_objects([new, old])
    web = Workload(kind="Deployment", namespace="shop", name="web")
    assert SUPPRESS_ANNOTATION not in state.owner_annotations[web]
    assert state.owner_annotations[Workload(kind="ReplicaSet", namespace="shop", name="web-1")][SUPPRESS_ANNOTATION]


def test_the_annotations_of_statefulsets_daemonsets_and_jobs_are_their_own() -> None:
    annotated = {SUPPRESS_ANNOTATION: "MP0003"}
    objects = [
        {"kind": kind, "metadata": {"name": "x", "namespace": "shop", "annotations": annotated}}
        for kind in ("StatefulSet", "DaemonSet", "Job")
    ]
    state = ClusterState.from_objects(objects)
    for kind in ("StatefulSet", "DaemonSet", "Job"):
        assert state.owner_annotations[Workload(kind=kind, namespace="shop", name="x")] == annotated


async def test_suppressions_and_thresholds_on_kubesim(
    kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render
) -> None:
    await install_canary(kubectl, chart)
    config = ("--kubeconfig", str(kubeconfig), "-n", "shop")
    code, out, _ = await meshplane("analyze", *config, "--failure-threshold", "warning")
    assert code == EXIT_ISSUES and len(out.splitlines()) == 2  # two Warnings
    code, out, err = await meshplane("analyze", *config, "--output-threshold", "Error")
    assert (code, out) == (0, "")
    assert err == "\u2714 No validation issues found when analyzing namespace: shop.\n"

    await kubectl.run("annotate", "pod", "debug", "-n", "shop", f"{SUPPRESS_ANNOTATION}=IST0103,MP0003")
    code, out, err = await meshplane("analyze", *config, "-S", "MP0003=Deployment web.shop", "-S", "IST9999=Pod *")
    assert (code, out) == (0, "")
    assert err.splitlines() == [
        "meshplane analyze: warning: supplied message code 'IST9999' is an unknown message code and will not have "
        "any effect (codes: IST0102, IST0103, IST0123, IST0139, IST0158, MP0001, MP0002, MP0003, MP0004)",
        "\u2714 No validation issues found when analyzing namespace: shop.",
    ]
    code, out, err = await meshplane("analyze", *config, "-S", "MP0003")
    assert (code, out) == (2, "")
    assert "argument -S/--suppress: 'MP0003' is not CODE=RESOURCE" in err


async def test_the_suppress_annotation_of_a_statefulset_is_read(
    kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render
) -> None:
    """A StatefulSet's pods carry none of its annotations, so analyze reads the StatefulSet (and DaemonSets and
    Jobs, which kubesim does not serve: a kind the server answers 404 for is left out), and with it its update
    strategy: an OnDelete one gets its pods deleted, as a rollout restart would replace none."""
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {
            "replicas": 0,
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "a", "image": "a"}]}},
        },
    }

    async def database() -> None:
        await kubectl.apply(json.dumps(statefulset))
        uid = (await kubectl.json("get", "statefulset", "db", "-n", "shop"))["metadata"]["uid"]
        await kubectl.apply(json.dumps(stale_pod("db-0", {"kind": "StatefulSet", "name": "db", "uid": uid})))

    await install_canary(kubectl, chart, more=database)
    config = ("--kubeconfig", str(kubeconfig), "-n", "shop", "-o", "json")
    _, out, _ = await meshplane("analyze", *config)
    commands = {(m["code"], m["origin"]): m.get("command") for m in json.loads(out)}
    assert commands[("MP0003", "StatefulSet shop/db")] == "kubectl delete pod db-0 -n shop"  # OnDelete
    await kubectl.run("annotate", "statefulset", "db", "-n", "shop", f"{SUPPRESS_ANNOTATION}=MP0003")
    _, out, _ = await meshplane("analyze", *config)
    origins = {m["origin"] for m in json.loads(out)}
    assert "StatefulSet shop/db" not in origins and "Deployment shop/web" in origins


async def test_without_revision_says_what_removing_it_would_break(
    kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render
) -> None:
    """The last step of a canary upgrade: shop has moved to R2 but web-6d5f-a and debug still run R1's
    sidecar, and the default tag points at R1. Removing R1 now would leave them without a control
    plane (MP0004) and the tag's webhook calling a Service that is gone (IST0139); removing R2 would
    leave shop labelled with a revision nobody installs."""
    await install_canary(kubectl, chart)
    config = ("--kubeconfig", str(kubeconfig), "-n", "shop", "-o", "json")
    code, out, _ = await meshplane("analyze", *config, "--without-revision", R1)
    found = {(m["code"], m["origin"]) for m in json.loads(out)}
    assert code == EXIT_ISSUES
    assert found == {
        ("MP0004", "Deployment shop/web"),
        ("MP0004", "Pod shop/debug"),
        ("IST0139", "MutatingWebhookConfiguration istio-revision-tag-default"),
    }
    code, out, _ = await meshplane("analyze", *config, "--without-revision", R2)
    found = {(m["code"], m["origin"]) for m in json.loads(out)}
    assert code == EXIT_ISSUES
    assert ("MP0001", "Namespace shop") in found and ("MP0004", "Deployment shop/web") in found  # web-6d5f-b runs R2

    code, out, err = await meshplane("analyze", *config, "--without-revision", "asm-0000-0")
    assert (code, out) == (1, "")
    assert err == (
        "meshplane analyze: --without-revision: revision 'asm-0000-0' is not installed "
        f"(installed revisions: {R1}, {R2}; tags: default)\n"
    )
