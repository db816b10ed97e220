"""`meshplane analyze`: golden cases for every message (text and JSON), and the real command on kubesim.

Golden cases are `golden/analyze/<case>.yaml`: a first document `kind: Charts` naming the
charts/istiod releases to render with helm (`releases`: values per release; `drop`: `Kind/name` of
rendered objects to leave out; `scope`: the namespace analyzed, else all), then the cluster's other
objects. Expected output: `<case>.txt` and `<case>.json`. Regenerate with REFRESH_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import yaml

from controlplane.cli import main
from controlplane.ops.analyze import EXIT_ISSUES, MESSAGE_TYPES, analyze, exit_status, render
from tests.charts.helm import requires_helm
from tests.kubesim.fixtures import Kubectl
from tests.ops.conftest import GOLDEN, R1, Render, install_canary, load_case, meshplane

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
        "kubectl delete pod debug -n shop",
        "kubectl delete pod legacy-7c9b-m2x8d -n shop",
        "kubectl rollout restart daemonset/node-agent -n shop",
        "kubectl rollout restart deployment/web -n shop",
        "kubectl rollout restart statefulset/db -n shop",
    ]
    assert exit_status(messages) == 0


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
        "now select revision asm-1234-1. Restart: kubectl delete pod debug -n shop (a bare pod is not recreated: "
        "create it again from its manifest)",
    ]
    code, out, _ = await meshplane("analyze", "-A", "-o", "json", kubeconfig=kubeconfig)
    found = json.loads(out)
    assert {m["origin"]: m.get("command") for m in found if m["code"] == "MP0003"} == {
        "Deployment shop/web": "kubectl rollout restart deployment/web -n shop",
        "Pod shop/debug": "kubectl delete pod debug -n shop",
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
