"""What `meshplane inject` tells the user about a workload it leaves alone: the policy's reason, word for word."""

from __future__ import annotations

from controlplane.injectcmd import OfflineSettings, inject_manifests

HOST_NETWORK_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: node-agent
  namespace: shop
spec:
  hostNetwork: true
  containers:
  - name: agent
    image: example/agent:1
"""


def test_a_host_network_pod_passes_through_with_the_reason_spelled_out() -> None:
    out = inject_manifests(HOST_NETWORK_POD, settings=OfflineSettings())
    assert out.text == HOST_NETWORK_POD
    assert out.notes == ("document 1 (Pod shop/node-agent): not injected: the pod uses hostNetwork",)
