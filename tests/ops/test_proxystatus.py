"""`meshplane proxy-status` across the revisions of a cluster: istiod pods found through kubesim, each
reached at its pod IP and `http-debug` port, where a real `meshplane serve` (local mode) answers.

Two revisions run (one serve each); proxies are raw ADS clients on the serves' plaintext xDS ports,
one of them connected to both revisions as during an upgrade. A third istiod pod points at a port
where nothing listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import pathlib
import queue
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane import cli
from controlplane.kube.client import KubeApi
from discovery.xdstypes import CLUSTER, LISTENER
from tests.discovery.harness import node
from tests.helpers.serve import Running, closed_port, start_serve
from tests.kubesim.server import KubeSim
from tests.ops.conftest import R1, R2, meshplane

NS = "istio-system"
POD_R1 = f"istiod-{R1}-7d9f5c-abcde"
POD_R2 = f"istiod-{R2}-5c8b6f-fghij"
POD_DOWN = f"istiod-{R2}-5c8b6f-klmno"
TIMEOUT = 20.0


class AdsProxy:
    """A raw SotW ADS client over blocking gRPC (it outlives any one test's event loop)."""

    def __init__(self, address: str, pod: str, namespace: str, *, istio_version: str) -> None:
        self.node = node(pod, namespace, "10.1.0.7", ISTIO_VERSION=istio_version)
        self.channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._responses = stub.StreamAggregatedResources(iter(self._requests.get, None))
        self._reader = ThreadPoolExecutor(max_workers=1)
        self._first = True

    def request(self, type_url: str, *, nonce: str = "", version: str = "") -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version)
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False
        self._requests.put(req)

    def receive(self, type_url: str) -> discovery_pb2.DiscoveryResponse:
        """Ask for `type_url` and wait for the answer (not ACKed yet)."""
        self.request(type_url)
        response: discovery_pb2.DiscoveryResponse = self._reader.submit(next, self._responses).result(TIMEOUT)
        assert response.type_url == type_url
        return response

    def sync(self, type_url: str) -> None:
        """Ask for `type_url`, wait for the answer and ACK it."""
        response = self.receive(type_url)
        self.request(type_url, nonce=response.nonce, version=response.version_info)

    def close(self) -> None:
        self._requests.put(None)
        self._responses.cancel()
        self.channel.close()
        self._reader.shutdown(wait=True)


@dataclass(frozen=True)
class Mesh:
    r1: Running
    r2: Running
    down_port: int


def _main(args: tuple[str, ...]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


async def run(*args: str, kubeconfig: pathlib.Path | None = None) -> tuple[int, str, str]:
    """The meshplane command line in this process (beside kubesim's event loop): exit status, stdout, stderr.

    `kubeconfig` is passed as --kubeconfig.
    """
    flags = ("--kubeconfig", str(kubeconfig)) if kubeconfig is not None else ()
    return await asyncio.to_thread(_main, (*args, *flags))


def syncz(running: Running) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{running.http_url}/debug/syncz", timeout=5) as resp:
        data: list[dict[str, Any]] = json.loads(resp.read())
    return data


def statuses(running: Running) -> dict[str, dict[str, str]]:
    return {e["proxy"]: {t: s["status"] for t, s in e["types"].items()} for e in syncz(running)}


def wait_for(check: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(name="mesh", scope="module")
def mesh_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Serves for R1 and R2; web-1.shop SYNCED on R1 and STALE on R2 (moving), api-1.legacy on R2."""
    started: list[Running] = []
    proxies: list[AdsProxy] = []
    try:
        for rev in (R1, R2):
            started.append(start_serve(tmp_path_factory.mktemp(rev), "--revision", rev))
        r1, r2 = started
        web_r1 = AdsProxy(r1.addr("grpc"), "web-1", "shop", istio_version="1.40.0")
        web_r2 = AdsProxy(r2.addr("grpc"), "web-1", "shop", istio_version="1.40.0")
        api = AdsProxy(r2.addr("grpc"), "api-1", "legacy", istio_version="1.41.0")
        proxies += [web_r1, web_r2, api]
        web_r1.sync(CLUSTER)
        web_r2.receive(CLUSTER)
        api.sync(CLUSTER)
        api.sync(LISTENER)
        wait_for(lambda: statuses(r1) == {"web-1.shop": {"CDS": "SYNCED"}}, what="web-1 SYNCED on R1")
        expected_r2 = {"web-1.shop": {"CDS": "STALE"}, "api-1.legacy": {"CDS": "SYNCED", "LDS": "SYNCED"}}
        wait_for(lambda: statuses(r2) == expected_r2, what="web-1 STALE and api-1 SYNCED on R2")
        with closed_port() as down_port:
            yield Mesh(r1=r1, r2=r2, down_port=down_port)
    finally:
        for proxy in proxies:
            proxy.close()
        for running in started:
            running.stop()


def istiod_pod(name: str, revision: str, *, debug_port: int, image_tag: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "istiod", "istio.io/rev": revision}},
        "spec": {
            "containers": [
                {
                    "name": "discovery",
                    "image": f"docker.io/meshplane/pilot:{image_tag}",
                    "ports": [
                        {"name": "grpc-xds", "containerPort": 15010},
                        {"name": "http-debug", "containerPort": debug_port},
                    ],
                }
            ]
        },
    }


async def add_istiod(api: KubeApi, pod: dict[str, Any], *, ip: str | None = "127.0.0.1") -> None:
    await api.request("POST", f"/api/v1/namespaces/{NS}/pods", body=pod)
    if ip is not None:
        await api.request(
            "PATCH",
            f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/status",
            body={"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
            content_type="application/merge-patch+json",
        )


async def create_namespace(api: KubeApi) -> None:
    await api.request(
        "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    )


@pytest.fixture(name="cluster")
async def cluster_fixture(kube_api: KubeApi, mesh: Mesh) -> Mesh:
    """kubesim holding the istiod pods of both revisions, plus one R2 pod that does not answer."""
    await create_namespace(kube_api)
    await add_istiod(kube_api, istiod_pod(POD_R1, R1, debug_port=mesh.r1.ports["http"], image_tag="0.1.0"))
    await add_istiod(kube_api, istiod_pod(POD_R2, R2, debug_port=mesh.r2.ports["http"], image_tag="0.2.0"))
    await add_istiod(kube_api, istiod_pod(POD_DOWN, R2, debug_port=mesh.down_port, image_tag="0.2.0"))
    return mesh


def down_warning(mesh: Mesh) -> str:
    url = f"http://127.0.0.1:{mesh.down_port}/debug/syncz"
    return (
        f"meshplane proxy-status: warning: istiod {POD_DOWN} ({R2}) at 127.0.0.1:{mesh.down_port}: "
        f"cannot read {url}: Connection refused\n"
    )


HEADER = "NAME           CLUSTER      CDS      LDS        EDS        RDS        ISTIOD"


async def test_every_revision_is_asked_and_a_proxy_on_two_istiods_is_listed_twice(
    cluster: Mesh, kubeconfig: pathlib.Path
) -> None:
    code, out, err = await run("proxy-status", kubeconfig=kubeconfig)
    assert code == 0, err
    assert out == (
        "NAME           CLUSTER      CDS      LDS        EDS        RDS        "
        "ISTIOD                                        VERSION   SUBSCRIBED TYPES\n"
        "api-1.legacy   Kubernetes   SYNCED   SYNCED     NOT SENT   NOT SENT   "
        f"{POD_R2} ({R2})   1.41.0    2 (CDS,LDS)\n"
        "web-1.shop     Kubernetes   SYNCED   NOT SENT   NOT SENT   NOT SENT   "
        f"{POD_R1} ({R1})   1.40.0    1 (CDS)\n"
        "web-1.shop     Kubernetes   STALE    NOT SENT   NOT SENT   NOT SENT   "
        f"{POD_R2} ({R2})   1.40.0    1 (CDS)\n"
    )
    assert err == down_warning(cluster)


async def test_revision_and_namespace_narrow_what_is_asked_and_listed(cluster: Mesh, kubeconfig: pathlib.Path) -> None:
    code, out, err = await run("proxy-status", "--revision", R1, kubeconfig=kubeconfig)
    assert (code, err) == (0, "")  # the unreachable istiod is R2's: not asked
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "web-1.shop"]
    assert f"{POD_R1} ({R1})" in out

    code, out, err = await run("proxy-status", "-n", "legacy", kubeconfig=kubeconfig)
    assert (code, err) == (0, down_warning(cluster))
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "api-1.legacy"]


async def test_a_named_proxy_is_shown_as_each_istiod_sees_it(cluster: Mesh, kubeconfig: pathlib.Path) -> None:
    code, out, _ = await run("proxy-status", "web-1", "-n", "shop", "--revision", R1, kubeconfig=kubeconfig)
    assert code == 0
    assert out.splitlines()[0] == "Proxy:      web-1.shop (sidecar~10.1.0.7~web-1.shop~shop.svc.cluster.local)"
    assert f"Istiod:     {POD_R1} ({R1})" in out

    code, out, _ = await run("proxy-status", "web-1.shop", kubeconfig=kubeconfig)
    assert code == 0
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[3] for b in blocks] == [f"Istiod:     {POD_R1} ({R1})", f"Istiod:     {POD_R2} ({R2})"]
    assert [b.splitlines()[4].split("(")[0] for b in blocks] == ["  CDS: SYNCED ", "  CDS: STALE "]

    code, out, err = await run("proxy-status", "nobody.shop", "--revision", R1, kubeconfig=kubeconfig)
    assert (code, out) == (1, "")
    assert err == "meshplane proxy-status: proxy 'nobody.shop' is not connected\n"


async def test_exit_1_when_no_istiod_answers(kube_api: KubeApi, kubeconfig: pathlib.Path) -> None:
    await create_namespace(kube_api)
    with closed_port() as down:
        await add_istiod(kube_api, istiod_pod("istiod-a", R1, debug_port=down, image_tag="0.1.0"))
        await add_istiod(kube_api, istiod_pod("istiod-b", R1, debug_port=down, image_tag="0.1.0"), ip=None)
        code, out, err = await run("proxy-status", kubeconfig=kubeconfig)
    assert (code, out) == (1, "")
    url = f"http://127.0.0.1:{down}/debug/syncz"
    assert err == (
        f"meshplane proxy-status: warning: istiod istiod-a ({R1}) at 127.0.0.1:{down}: cannot read {url}: "
        "Connection refused\n"
        f"meshplane proxy-status: warning: istiod istiod-b ({R1}): "
        "the pod has no IP yet (not scheduled or not started)\n"
        "meshplane proxy-status: none of the 2 istiod(s) answered\n"
    )


async def test_no_istiod_pods_is_one_line_naming_where_it_looked(kube_api: KubeApi, kubeconfig: pathlib.Path) -> None:
    await create_namespace(kube_api)
    code, out, err = await run("proxy-status", kubeconfig=kubeconfig)
    assert (code, out) == (1, "")
    assert err == (
        "meshplane proxy-status: no istiod pods in namespace 'istio-system' (labelled app=istiod); "
        "is the control plane installed there? (--istio-namespace)\n"
    )
    with closed_port() as down:  # never dialled: the pod is of another revision
        await add_istiod(kube_api, istiod_pod("istiod-a", R1, debug_port=down, image_tag="0.1.0"))
        code, out, err = await run("proxy-status", "--revision", "canary", kubeconfig=kubeconfig)
    assert (code, out) == (1, "")
    assert err == (
        "meshplane proxy-status: no istiod pods in namespace 'istio-system' (labelled app=istiod,"
        f"istio.io/rev=canary); revisions running: {R1}\n"
    )


async def test_unusable_cluster_and_conflicting_flags_are_one_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("just text\n")
    code, out, err = await meshplane("proxy-status", "--kubeconfig", str(bad))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err

    code, _, err = await meshplane("proxy-status", "--kubeconfig", str(bad), "--http-addr", "127.0.0.1:1")
    assert code == 2 and err.startswith("meshplane proxy-status: --http-addr and --kubeconfig: choose one")


async def test_local_mode_reads_one_serve(mesh: Mesh) -> None:
    code, out, err = await run("proxy-status", "--http-addr", mesh.r2.addr("http"))
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.startswith(HEADER)
    assert [row.split()[:3] for row in rows] == [
        ["api-1.legacy", "Kubernetes", "SYNCED"],
        ["web-1.shop", "Kubernetes", "STALE"],
    ]
    istiod = header.index("ISTIOD")
    assert all(row[istiod:].startswith("istiod-") for row in rows)  # the server's own name for itself


async def test_an_api_server_refusal_is_one_line(kubesim: KubeSim, kubeconfig: pathlib.Path) -> None:
    kubesim.inject_faults(status=403, method="GET", path_prefix=f"/api/v1/namespaces/{NS}/pods", message="no pods")
    code, out, err = await run("proxy-status", kubeconfig=kubeconfig)
    assert (code, out) == (1, "")
    assert err == "meshplane proxy-status: cannot read the cluster: 403 Forbidden: no pods\n"
