"""`meshplane version`: the client, the revisions whose istiod pods kubesim holds, and the proxies connected
to each real `meshplane serve` behind them (the same cluster as tests/ops/test_proxystatus.py)."""

from __future__ import annotations

import json
import pathlib

import yaml

from controlplane import __version__
from tests.helpers.serve import closed_port
from tests.kubesim.server import KubeSim
from tests.ops.conftest import R1, R2, meshplane
from tests.ops.test_proxystatus import (
    POD_DOWN,
    POD_R1,
    POD_R2,
    Mesh,
    cluster_fixture,
    mesh_fixture,
    run,
)

__all__ = ["cluster_fixture", "mesh_fixture"]

CLIENT = f"client version: {__version__}\n"


def down_warning(mesh: Mesh) -> str:
    url = f"http://127.0.0.1:{mesh.down_port}/debug/syncz"
    return (
        f"meshplane version: warning: istiod {POD_DOWN} ({R2}) at 127.0.0.1:{mesh.down_port}: "
        f"cannot read {url}: Connection refused\n"
    )


async def test_each_revision_with_its_version_and_the_proxy_versions_connected(
    cluster: Mesh, kubeconfig: pathlib.Path
) -> None:
    code, out, err = await run("version", kubeconfig=kubeconfig)
    assert (code, err) == (0, down_warning(cluster))
    assert out == CLIENT + (
        "REVISION     ISTIOD                           VERSION   PROXIES\n"
        f"{R1}   {POD_R1}   0.1.0     1.40.0 (1 proxy)\n"
        f"{R2}   {POD_R2}   0.2.0     1.40.0 (1 proxy), 1.41.0 (1 proxy)\n"
        f"{R2}   {POD_DOWN}   0.2.0     unreachable\n"
    )


async def test_short_counts_a_proxy_on_two_revisions_once(cluster: Mesh, kubeconfig: pathlib.Path) -> None:
    code, out, _ = await run("version", "--short", kubeconfig=kubeconfig)
    assert code == 0
    assert out == CLIENT + (
        f"control plane version: 0.1.0 ({R1}), 0.2.0 ({R2})\ndata plane version: 1.40.0 (1 proxy), 1.41.0 (1 proxy)\n"
    )

    code, out, err = await run("version", "-s", "--revision", R1, kubeconfig=kubeconfig)
    assert (code, err) == (0, "")
    assert out == CLIENT + "control plane version: 0.1.0\ndata plane version: 1.40.0 (1 proxy)\n"


async def test_json_and_yaml_carry_istioctls_keys(cluster: Mesh, kubeconfig: pathlib.Path) -> None:
    code, out, _ = await run("version", "-o", "json", kubeconfig=kubeconfig)
    assert code == 0
    image = "docker.io/meshplane/pilot:{}"
    web_id, api_id = (
        f"sidecar~10.1.0.7~{pod}~{pod.split('.')[1]}.svc.cluster.local" for pod in ("web-1.shop", "api-1.legacy")
    )
    refused = f"cannot read http://127.0.0.1:{cluster.down_port}/debug/syncz: Connection refused"
    expected = {
        "clientVersion": {"version": __version__},
        "meshVersion": [
            {
                "Component": "istiod",
                "Revision": R1,
                "Pod": POD_R1,
                "Image": image.format("0.1.0"),
                "Info": {"version": "0.1.0"},
            },
            {
                "Component": "istiod",
                "Revision": R2,
                "Pod": POD_R2,
                "Image": image.format("0.2.0"),
                "Info": {"version": "0.2.0"},
            },
            {
                "Component": "istiod",
                "Revision": R2,
                "Pod": POD_DOWN,
                "Image": image.format("0.2.0"),
                "Info": {"version": "0.2.0"},
                "Error": refused,
            },
        ],
        "dataPlaneVersion": [
            {"ID": web_id, "IstioVersion": "1.40.0", "Istiod": POD_R1, "Revision": R1},
            {"ID": api_id, "IstioVersion": "1.41.0", "Istiod": POD_R2, "Revision": R2},
            {"ID": web_id, "IstioVersion": "1.40.0", "Istiod": POD_R2, "Revision": R2},
        ],
    }
    assert json.loads(out) == expected
    code, out, _ = await run("version", "-o", "yaml", kubeconfig=kubeconfig)
    assert (code, yaml.safe_load(out)) == (0, expected)


async def test_without_a_cluster_only_the_client_version_and_why(tmp_path: pathlib.Path) -> None:
    code, out, err = await meshplane("version")  # no KUBECONFIG, not in a pod
    assert (code, out) == (0, CLIENT)
    assert err == (
        "meshplane version: control plane not shown: "
        "no cluster configured (no --kubeconfig, $KUBECONFIG unset, no ~/.kube/config, not in a pod)\n"
    )

    code, out, err = await meshplane("version", "-o", "json")
    assert (code, json.loads(out)) == (0, {"clientVersion": {"version": __version__}})

    broken = tmp_path / "broken"
    broken.write_text("- not a kubeconfig\n")
    code, out, err = await meshplane("version", kubeconfig=broken)  # $KUBECONFIG: still exit 0
    assert (code, out) == (0, CLIENT)
    assert err.startswith("meshplane version: control plane not shown: ") and str(broken) in err
    assert err.count("\n") == 1


async def test_an_explicit_kubeconfig_that_fails_is_exit_1(kubesim: KubeSim, tmp_path: pathlib.Path) -> None:
    with closed_port() as closed:
        nowhere = kubesim.write_kubeconfig(tmp_path / "nowhere", server=f"http://127.0.0.1:{closed}")
        code, out, err = await run("version", kubeconfig=nowhere)
    assert (code, out) == (1, CLIENT)
    reason = f"cannot reach the Kubernetes API server at http://127.0.0.1:{closed}: "
    assert err.startswith(f"meshplane version: control plane not shown: {reason}")
    assert err.count("\n") == 1

    code, out, err = await run("version", "--kubeconfig", str(tmp_path / "missing"))
    assert (code, out) == (1, CLIENT)
    assert err == f"meshplane version: control plane not shown: --kubeconfig: {tmp_path / 'missing'} does not exist\n"


async def test_a_cluster_without_istiod_says_so_and_exits_0(kubeconfig: pathlib.Path) -> None:
    code, out, err = await run("version", kubeconfig=kubeconfig)
    assert (code, out) == (0, CLIENT)
    assert err == (
        "meshplane version: control plane not shown: no istiod pods in namespace 'istio-system' (labelled "
        "app=istiod); is the control plane installed there? (--istio-namespace)\n"
    )
