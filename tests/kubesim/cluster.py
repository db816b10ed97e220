"""A one-machine Kubernetes cluster: kubesim's API server, controllers, kube-proxy and a kubelet.

`Cluster(state_dir=...)`, `await cluster.start()`, `await cluster.stop()` (also as `async with`).
Start order: the node network (`tests.kubesim.podnet`), the API server over HTTPS on 127.0.0.1 and
on the host's address on the node link (so pods reach it at 10.96.0.1:443 through kube-proxy), the
`default/kubernetes` EndpointSlice, then the `kube-root-ca.crt` publisher, the controllers, kube-proxy
and the kubelet, each a client
of the API server like the real ones. Stop runs in reverse and leaves no process, network namespace,
veth or iptables rule behind. Needs root (network namespaces).

`python -m tests.kubesim cluster --kubeconfig-out FILE` runs one until interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from types import TracebackType
from typing import Any, Protocol

from controlplane.kube.client import KubeApi
from tests.kubesim.controllers import Controllers
from tests.kubesim.kubelet import Kubelet
from tests.kubesim.kubeproxy import ServiceProxy
from tests.kubesim.podnet import NodeNetwork
from tests.kubesim.rootca import RootCaPublisher
from tests.kubesim.server import KubeSim

log = logging.getLogger(__name__)


class _Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Cluster:
    """See the module docstring. Attributes are set by `start()`."""

    def __init__(self, *, state_dir: pathlib.Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state_dir = state_dir
        self.kubeconfig = state_dir / "kubeconfig"
        self._host = host
        self._port = port
        self.network: NodeNetwork | None = None
        self.sim: KubeSim | None = None
        self.controllers: Controllers | None = None
        self.proxy: ServiceProxy | None = None
        self.kubelet: Kubelet | None = None
        self._started: list[_Component] = []

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.network = await NodeNetwork.create()
            self.sim = KubeSim(tls=True)
            await self.sim.start(host=self._host, port=self._port, extra_hosts=(self.network.host_ip,))
            self.sim.write_kubeconfig(self.kubeconfig)
            await self._publish_api_endpoint()
            assert self.sim.ca_pem is not None
            root_ca = RootCaPublisher(kubeconfig=self.kubeconfig, ca_pem=self.sim.ca_pem)
            self.controllers = Controllers(kubeconfig=self.kubeconfig)
            self.proxy = ServiceProxy(kubeconfig=self.kubeconfig, network=self.network)
            self.kubelet = Kubelet(kubeconfig=self.kubeconfig, network=self.network, state_dir=self.state_dir / "node")
            for component in (root_ca, self.controllers, self.proxy, self.kubelet):
                await component.start()
                self._started.append(component)
        except BaseException:
            await self.stop()
            raise
        log.info("cluster up: API server %s, pod network %s", self.sim.url, self.network.cidr)

    async def _publish_api_endpoint(self) -> None:
        """The `default/kubernetes` EndpointSlice: the API server at the host's address on the node link."""
        assert self.sim is not None and self.network is not None
        body: dict[str, Any] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.network.host_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": self.sim.port, "protocol": "TCP"}],
        }
        api = await KubeApi.connect(kubeconfig=self.kubeconfig)
        try:
            await api.request("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", body=body)
        finally:
            await api.close()

    async def stop(self) -> None:
        """Stop everything started, in reverse order; safe to call twice."""
        while self._started:
            component = self._started.pop()
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        if self.sim is not None:
            with contextlib.suppress(Exception):
                await self.sim.stop()
        if self.network is not None:
            await self.network.close()
