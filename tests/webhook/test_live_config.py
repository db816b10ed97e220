"""Local mode: the injector ConfigMap and namespace labels in the config dir apply live."""

from __future__ import annotations

import os
import pathlib
import textwrap
import time
from typing import Any

from tests.helpers.serve import Running, admission_review, apply_response, post_webhook

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}


def write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)


def injector(data: str) -> str:
    """The injector ConfigMap with `data` (YAML, unindented) as its data."""
    header = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio-sidecar-injector\n  namespace: istio-system\n"
    return header + "data:\n" + textwrap.indent(textwrap.dedent(data).strip("\n"), "  ") + "\n"


def injector_configmap(image: str) -> str:
    return injector(f"""
    values: |
      global:
        proxy:
          image: {image}
    """)


def proxy_image(running: Running, namespace: str = "default") -> tuple[str, dict[str, Any]]:
    status, review = post_webhook(running, admission_review(POD, namespace=namespace))
    assert status == 200, review
    pod = apply_response(POD, review["response"])
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-proxy")
    return proxy["image"], review["response"]


def wait_for(check: Any, *, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_injector_configmap_edits_apply_live_and_bad_edits_keep_the_last_good(serve: Running) -> None:
    assert serve.config_dir is not None
    default_image, _ = proxy_image(serve)
    assert default_image.startswith("docker.io/istio/proxyv2:")

    write(serve.config_dir / "injector.yaml", injector_configmap("registry.example/proxy:1"))
    assert wait_for(lambda: proxy_image(serve)[0] == "registry.example/proxy:1")

    write(serve.config_dir / "injector.yaml", injector_configmap("registry.example/proxy:2").replace("image:", "imag:"))
    assert wait_for(lambda: "imag" in serve.logs())  # the bad field is reported ...
    assert proxy_image(serve)[0] == "registry.example/proxy:1"  # ... and the last good config stays

    (serve.config_dir / "injector.yaml").unlink()
    assert wait_for(lambda: proxy_image(serve)[0] == default_image)


def test_namespace_with_both_injection_labels_gets_a_warning_naming_both(serve: Running) -> None:
    assert serve.config_dir is not None
    write(
        serve.config_dir / "ns.yaml",
        """
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
          labels: {istio-injection: enabled, istio.io/rev: canary}
        """,
    )

    def warnings() -> list[str]:
        return list(proxy_image(serve, "shop")[1].get("warnings", []))

    [warning] = wait_for(warnings)
    assert "istio-injection=enabled" in warning and "istio.io/rev=canary" in warning
    assert "istio-injection wins" in warning
    assert proxy_image(serve, "default")[1].get("warnings") is None


def test_a_prometheus_port_of_the_sidecar_is_warned_about_over_the_wire(serve: Running) -> None:
    annotated = {**POD, "metadata": {"name": "p", "annotations": {"prometheus.io/port": "15090"}}}
    status, review = post_webhook(serve, admission_review(annotated, namespace="default"))
    assert status == 200 and review["response"]["allowed"], review
    assert any("prometheus.io/port 15090 (Envoy Prometheus)" in w for w in review["response"].get("warnings", []))
    injected = apply_response(annotated, review["response"])
    assert injected["metadata"]["annotations"]["prometheus.io/port"] == "15090"


SPIN = injector("""
config: |
  templates:
    spin: |
      metadata:
        labels:
          x: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
""")


def test_a_template_that_loops_for_hours_is_refused_and_the_process_still_stops(serve: Running) -> None:
    """Jinja's sandbox bounds one range(), not loops in loops: the sample injection that checks a new
    config looped for hours in its thread, no later edit applied, and SIGTERM left the process running."""
    assert serve.config_dir is not None
    write(serve.config_dir / "injector.yaml", SPIN)
    assert wait_for(lambda: "rendering took longer than 2s" in serve.logs(), timeout=30)
    assert "templates.spin" in serve.logs()
    write(serve.config_dir / "injector.yaml", injector_configmap("registry.example/proxy:3"))
    assert wait_for(lambda: proxy_image(serve)[0] == "registry.example/proxy:3")  # later edits still apply
    assert serve.stop(timeout=15) == 0  # a process that does not exit is killed, and stop() returns -9
