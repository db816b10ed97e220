"""What the operator's workflow tests share: helm, the meshplane CLI, kubectl tables, meshed pods.

Used by the seed workflow and the canary upgrade (tests/e2e/test_seed_workflow.py,
tests/e2e/test_canary_upgrade.py), which run the real helm, kubectl and meshplane against kubesim.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import sys
from typing import Any

from tests.kubesim.cluster import Cluster
from tests.kubesim.fixtures import Kubectl

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "istiod"
HELM = pathlib.Path(sys.executable).parent / "helm"
MESHPLANE = pathlib.Path(sys.executable).parent / "meshplane"
ANALYZE_FOUND = 79  # `meshplane analyze`'s exit code when it reports problems, as istioctl's


def cluster_kubectl(cluster: Cluster, tmp_path: pathlib.Path, *, timeout: float) -> Kubectl:
    """The machine's kubectl for `cluster`, with its own cache dir under `tmp_path`."""
    cache = tmp_path / "kubectl-cache"
    cache.mkdir()
    return Kubectl(kubeconfig=cluster.kubeconfig, cache_dir=cache, timeout=timeout)


async def helm(cluster: Cluster, *args: str) -> str:
    """Run the pinned helm against `cluster`; its stdout. Fails the test when helm fails."""
    proc = await asyncio.create_subprocess_exec(
        str(HELM),
        *args,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": str(cluster.state_dir / "helm")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{err.decode()}"
    return out.decode()


async def meshplane(cluster: Cluster, *args: str) -> tuple[int, str]:
    """Run the meshplane CLI against `cluster`: (exit code, stdout). Fails the test on any other error."""
    proc = await asyncio.create_subprocess_exec(
        str(MESHPLANE),
        *args,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode in (0, ANALYZE_FOUND), f"meshplane {' '.join(args)} failed:\n{err.decode()}"
    return proc.returncode or 0, out.decode()


async def install_revision(cluster: Cluster, kubectl: Kubectl, revision: str) -> None:
    """`helm install istiod-<revision> charts/istiod` and wait for its rollout."""
    await kubectl.run("create", "namespace", "istio-system", check=False)
    release = "istiod" if revision == "default" else f"istiod-{revision}"
    await helm(cluster, "install", release, str(CHART), "-n", "istio-system", "--set", f"revision={revision}")
    await kubectl.run("-n", "istio-system", "rollout", "status", f"deployment/{release}", "--timeout=180s")


def table(text: str) -> list[dict[str, str]]:
    """kubectl's (or meshplane's) table output as dicts keyed by column header."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []  # kubectl says "No resources found" on stderr
    headers = lines[0].split()
    return [dict(zip(headers, re.split(r"\s{2,}|\s(?=\S+$)", line.strip()), strict=False)) for line in lines[1:]]


async def pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await kubectl.json("get", "pods", "-n", namespace))["items"]
    return items


async def all_meshed(kubectl: Kubectl, namespace: str, revision: str, replicas: int) -> bool:
    """Every pod of the namespace shows 2/2 Running in kubectl's table and carries `revision`'s status."""
    rows = table((await kubectl.run("get", "pod", "-n", namespace)).stdout)
    if len(rows) != replicas or any(r["READY"] != "2/2" or r["STATUS"] != "Running" for r in rows):
        return False
    for pod in await pods(kubectl, namespace):
        status = json.loads(pod["metadata"].get("annotations", {}).get("sidecar.istio.io/status", "{}"))
        if status.get("revision") != revision:
            return False
    return True
