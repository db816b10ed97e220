"""pytest fixtures for kubesim: the server, a kubeconfig, kubectl, and a kubernetes-asyncio client.

Use them from another test package by importing the fixture functions, e.g.
`from tests.kubesim.fixtures import kubesim_fixture  # noqa: F401` (each is registered under the
name without `_fixture`).

kubesim runs on the test's event loop, so kubectl must run without blocking it: `Kubectl.run`
uses an asyncio subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from controlplane.kube.client import KubeApi
from tests.kubesim.controllers import Controllers
from tests.kubesim.server import KubeSim

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class KubectlError(AssertionError):
    pass


@dataclass(frozen=True)
class Kubectl:
    """The machine's kubectl pointed at one kubesim (own kubeconfig and discovery cache)."""

    kubeconfig: pathlib.Path
    cache_dir: pathlib.Path
    timeout: float = 60.0

    async def run(self, *args: str, stdin: str | None = None, check: bool = True) -> Result:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.cache_dir)}
        proc = await asyncio.create_subprocess_exec(
            KUBECTL,
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.cache_dir}",
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout=self.timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise KubectlError(f"kubectl {' '.join(args)} did not finish within {self.timeout}s") from None
        result = Result(proc.returncode or 0, out.decode(), err.decode())
        if check and result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    async def json(self, *args: str) -> Any:
        return json.loads((await self.run(*args, "-o", "json")).stdout)

    async def apply(self, manifest: str, *args: str) -> Result:
        return await self.run("apply", "-f", "-", *args, stdin=manifest)


@pytest.fixture(name="kubesim")
async def kubesim_fixture() -> AsyncIterator[KubeSim]:
    """A running kubesim on 127.0.0.1 (free port), bookmarks every 0.2 s."""
    sim = KubeSim(window=1000, bookmark_interval=0.2)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture(name="secure")
async def secure_fixture() -> AsyncIterator[KubeSim]:
    """A running kubesim serving HTTPS with its own CA and bearer tokens (`write_kubeconfig` carries both)."""
    sim = KubeSim(tls=True)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture(name="kubeconfig")
def kubeconfig_fixture(kubesim: KubeSim, tmp_path: pathlib.Path) -> pathlib.Path:
    path: pathlib.Path = kubesim.write_kubeconfig(tmp_path / "kubeconfig")
    return path


@pytest.fixture(name="controllers")
async def controllers_fixture(kubeconfig: pathlib.Path) -> AsyncIterator[Controllers]:
    """kubesim's controllers (Deployments, ReplicaSets, StatefulSets, EndpointSlices, garbage collection)."""
    controllers = Controllers(kubeconfig=kubeconfig)
    await controllers.start()
    try:
        yield controllers
    finally:
        await controllers.stop()


@pytest.fixture(name="kubectl")
def kubectl_fixture(kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> Kubectl:
    cache = tmp_path / "kubectl-cache"
    cache.mkdir()
    return Kubectl(kubeconfig=kubeconfig, cache_dir=cache)


@pytest.fixture(name="kube_api")
async def kube_api_fixture(kubeconfig: pathlib.Path) -> AsyncIterator[KubeApi]:
    """meshplane's own client (kubernetes-asyncio underneath), connected to the kubesim."""
    api = await KubeApi.connect(kubeconfig=kubeconfig)
    try:
        yield api
    finally:
        await api.close()


async def eventually(check: Any, *, within: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `check()` (sync or async) until it returns a truthy value; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)
