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


SIDECAR_METRICS_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: stats
  namespace: shop
  annotations:
    prometheus.io/port: "15090"
spec:
  containers:
  - name: app
    image: example/app:1
"""


def test_an_injected_pod_whose_prometheus_port_is_the_sidecars_gets_a_warning_note() -> None:
    out = inject_manifests(SIDECAR_METRICS_POD, settings=OfflineSettings())
    assert "istio-proxy" in out.text
    assert len(out.notes) == 1
    assert out.notes[0].startswith("document 1 (Pod shop/stats): warning: prometheus.io/port 15090 (Envoy Prometheus)")
