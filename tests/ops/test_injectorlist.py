"""`meshplane injector list`: Istio's two tables, with the pods needing a restart named on request."""

from __future__ import annotations

import pathlib

import pytest

from controlplane.cli import main
from controlplane.ops import injectorlist
from controlplane.ops.cluster import ClusterState
from tests.charts.helm import requires_helm
from tests.kubesim.fixtures import Kubectl
from tests.ops.conftest import Render, install_canary, load_case, meshplane

pytestmark = requires_helm


def test_canary_tables(chart: Render) -> None:
    state = load_case(chart, "canary-restart")
    assert injectorlist.render(state).splitlines() == [
        "NAMESPACE ISTIO-REVISION POD-REVISIONS",
        "shop      asm-1234-1     <non-Istio>: 1 (injection disabled: 1)",
        "shop      asm-1234-1     asm-1233-2: 7 NEEDS RESTART: 6",
        "shop      asm-1234-1     asm-1234-1: 1",
        "tagged    asm-1233-2     asm-1233-2: 1",
        "",
        "NAMESPACES          INJECTOR-HOOK                     ISTIO-REVISION SIDECAR-IMAGE",
        "tagged              istio-revision-tag-default        asm-1233-2     docker.io/meshplane/proxyv2:0.1.0",
        "DOES NOT AUTOINJECT istio-sidecar-injector-asm-1233-2 asm-1233-2     docker.io/meshplane/proxyv2:0.1.0",
        "shop                istio-sidecar-injector-asm-1234-1 asm-1234-1     docker.io/meshplane/proxyv2:0.1.0",
    ]


def test_show_pods_names_exactly_the_pods_analyze_would_restart(chart: Render) -> None:
    state = load_case(chart, "canary-restart")
    shown = injectorlist.render(state, show_pods=True).splitlines()[2]
    assert shown == (
        "shop      asm-1234-1     asm-1233-2: 7 NEEDS RESTART: 6 "
        "(db-0, debug, legacy-7c9b-m2x8d, node-agent-h4k2p, web-6d5f-bx2k9, web-6d5f-q7w2m)"
    )


def test_missing_revisions_and_no_pods(chart: Render) -> None:
    table = injectorlist.render(load_case(chart, "unknown-revision")).split("\n\n")[0].splitlines()
    assert "legacy    MISSING/istio-injection <no pods>" in table
    assert "shop      MISSING/asm-1222-9      <no pods>" in table


def test_nothing_installed() -> None:
    state = ClusterState.from_objects([{"kind": "Namespace", "metadata": {"name": "plain"}}])
    assert injectorlist.render(state) == "No Istio injected namespaces present.\n\nNo Istio injection hooks present."


async def test_injector_list_on_kubesim(kubectl: Kubectl, kubeconfig: pathlib.Path, chart: Render) -> None:
    await install_canary(kubectl, chart)
    code, out, err = await meshplane("injector", "list", "--show-pods", "--kubeconfig", str(kubeconfig))
    assert (code, err) == (0, "")
    assert out.splitlines()[:3] == [
        "NAMESPACE ISTIO-REVISION POD-REVISIONS",
        "shop      asm-1234-1     asm-1233-2: 2 NEEDS RESTART: 2 (debug, web-6d5f-a)",
        "shop      asm-1234-1     asm-1234-1: 1",
    ]
    assert "shop                istio-sidecar-injector-asm-1234-1 asm-1234-1" in out


def test_injector_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["injector"])
    assert exited.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_a_pod_whose_status_annotation_nests_deep_is_counted_by_its_revision_label() -> None:
    """Anyone who may create pods can write the status annotation: 100,000 brackets (100 KB, under the
    API server's 256 KiB) raised RecursionError, and every ops command that reads pods failed."""
    pod = {
        "kind": "Pod",
        "metadata": {
            "name": "deep",
            "namespace": "shop",
            "annotations": {"sidecar.istio.io/status": "[" * 100_000, "istio.io/rev": "canary"},
        },
        "spec": {"containers": [{"name": "app", "image": "a"}, {"name": "istio-proxy", "image": "proxyv2:1"}]},
    }
    namespace = {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/rev": "canary"}}}
    table = injectorlist.render(ClusterState.from_objects([namespace, pod])).splitlines()
    assert table[1].split() == ["shop", "MISSING/canary", "canary:", "1", "NEEDS", "RESTART:", "1"]
