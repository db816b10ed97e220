"""`meshplane inject` as a user runs it: files and stdin, revisions, injection config, errors."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml

from controlplane.cli import main
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)

REPO = pathlib.Path(__file__).resolve().parents[2]

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example.com/web:1
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}   # kept as written
spec:
  ports: [{port: 80}]
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["inject", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def proxy_env(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    proxy = next(c for c in spec["initContainers"] + spec["containers"] if c["name"] == "istio-proxy")
    return {item["name"]: item.get("value") for item in proxy["env"]}


def test_injects_workloads_and_passes_other_documents_through_unchanged(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(SERVICE + "---\n" + DEPLOYMENT)
    code, out, err = run(["-f", str(manifest)], capsys)
    assert code == 0, err
    assert out.startswith(SERVICE + "---\n")
    service, deployment = yaml.safe_load_all(out)
    assert service == yaml.safe_load(SERVICE)
    env = proxy_env(deployment)
    assert env["ISTIO_META_OWNER"] == "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"
    assert env["CA_ADDR"] == "istiod.istio-system.svc:15012"
    assert err.splitlines() == [
        f"meshplane inject: {manifest}: document 1 (Service shop/web): passed through: a Service has no pod to inject"
    ]


def test_revision_and_control_plane_namespace_choose_the_istiod_to_talk_to(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(DEPLOYMENT)
    code, out, _ = run(["-f", str(manifest), "--revision", "canary", "--namespace", "mesh-system"], capsys)
    assert code == 0
    doc = yaml.safe_load(out)
    assert proxy_env(doc)["CA_ADDR"] == "istiod-canary.mesh-system.svc:15012"
    assert doc["spec"]["template"]["metadata"]["annotations"]["istio.io/rev"] == "canary"


def test_reads_stdin_and_writes_the_output_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "out.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "inject", "-f", "-", "-o", str(target)],
        input=DEPLOYMENT,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "istio-proxy" in target.read_text()


def test_an_invalid_annotation_exits_1_naming_it_and_writes_nothing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "app.yaml"
    bad = DEPLOYMENT.replace(
        "labels: {app: web}\n    spec:",
        "labels: {app: web}\n      annotations: {sidecar.istio.io/proxyCPU: lots}\n    spec:",
    )
    manifest.write_text(DEPLOYMENT + "---\n" + bad.replace("name: web\n  namespace", "name: web2\n  namespace"))
    target = tmp_path / "out.yaml"
    target.write_text("previous content\n")
    code, out, err = run(["-f", str(manifest), "-o", str(target)], capsys)
    assert code == 1
    assert out == ""
    assert err == (
        f"meshplane inject: {manifest}: document 2 (Deployment shop/web2): annotation sidecar.istio.io/proxyCPU: "
        'invalid value "lots": not a Kubernetes quantity (examples: 100m, 0.5, 2, 128Mi, 1Gi)\n'
    )
    assert target.read_text() == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.yaml", "out.yaml"]


def test_skipped_workloads_are_reported_and_left_byte_for_byte(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skipped = DEPLOYMENT.replace(
        "labels: {app: web}\n    spec:", "labels: {app: web, sidecar.istio.io/inject: 'false'}\n    spec:"
    )
    manifest = tmp_path / "app.yaml"
    manifest.write_text(skipped)
    code, out, err = run(["-f", str(manifest)], capsys)
    assert code == 0
    assert out == skipped
    assert "document 1 (Deployment shop/web): not injected: label sidecar.istio.io/inject=false" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            "document 1 (Deployment default/x): spec.template: is required",
        ),
        (
            "kind: CronJob\nmetadata: {name: c}\nspec: {jobTemplate: {spec: {}}}\n",
            "document 1 (CronJob default/c): spec.jobTemplate.spec.template: is required",
        ),
        ("kind: Pod\nmetadata: {name: p}\n", "document 1 (Pod default/p): spec: is required"),
        ("kind: List\nitems: 3\n", "document 1: items: must be a list, got integer: kubectl cannot read it"),
        (
            "kind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: a, env: 3}]}}}\n",
            "document 1 (Deployment default/x): spec.template.spec.containers[0].env: must be a list, got integer",
        ),
        ("kind: Namespace\n---\nkey: [unclosed\n", "document 2: not valid YAML near line 4"),
        (
            "kind: Namespace\n--- {kind: Pod}\n",
            "line 2: invalid YAML document separator '--- {kind: Pod}': after --- only a comment may follow",
        ),
        ("kind: Namespace\n----\n", "line 2: invalid YAML document separator '----'"),
        ("kind: Namespace\n---\nmetadata: {name: a}\n", "document 2: kind: is required: kubectl cannot read it"),
        ("- a\n", "document 1: a YAML list, not a Kubernetes object: kubectl cannot read it as an object"),
        ("kind: List\nitems: [{metadata: {name: a}}]\n", "document 1 (List) item 1: kind: is required"),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: &s {containers: [{name: a, image: x}], x: *s}\n",
            "document 1: not valid YAML near line 3: a YAML alias (*name) refers to a node that contains it",
        ),
    ],
)
def test_malformed_documents_are_named(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    code, out, err = run(["-f", str(manifest)], capsys)
    assert code == 1
    assert out == ""
    assert message in err


def test_the_injection_config_file_supplies_image_and_mesh_settings(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "injection.yaml"
    config.write_text(
        """\
apiVersion: v1
kind: ConfigMap
metadata: {name: istio-sidecar-injector-canary, namespace: istio-system}
data:
  values: '{"global": {"hub": "registry.example.com/istio", "tag": "1.28.2"}}'
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio-canary, namespace: istio-system}
data:
  mesh: |
    trustDomain: example.org
"""
    )
    manifest = tmp_path / "app.yaml"
    manifest.write_text(DEPLOYMENT)
    code, out, err = run(["-f", str(manifest), "--revision", "canary", "--injection-config", str(config)], capsys)
    assert code == 0, err
    doc = yaml.safe_load(out)
    spec = doc["spec"]["template"]["spec"]
    assert {c["image"] for c in spec["initContainers"]} == {"registry.example.com/istio/proxyv2:1.28.2"}
    assert proxy_env(doc)["TRUST_DOMAIN"] == "example.org"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: ConfigMap\nmetadata: {name: istio-sidecar-injector}\ndata: {config: 'policy: sometimes'}\n",
            "ConfigMap 'istio-sidecar-injector': key 'config', field policy: 'sometimes' is not one of enabled",
        ),
        (
            "kind: ConfigMap\nmetadata: {name: istio}\ndata: {mesh: 'defaultConfig: {concurrency: x}'}\n",
            "ConfigMap 'istio': key 'mesh', field defaultConfig: concurrency: must be an integer, got string",
        ),
        ("kind: Secret\nmetadata: {name: istio}\n", "document 1: must be a ConfigMap"),
        (  # a ConfigMapList's items are ConfigMaps, as kubectl reads them
            "kind: ConfigMapList\nitems: [{metadata: {name: istio-sidecar-injector}, data: {config: 'policy: x'}}]\n",
            "ConfigMap 'istio-sidecar-injector': key 'config', field policy: 'x' is not one of enabled",
        ),
        ("kind: ConfigMap\nmetadata: {name: istio}\n--- {x: 1}\n", "invalid YAML document separator '--- {x: 1}'"),
        ("kind: ConfigMap\nmetadata: {name: settings}\n", "ConfigMap 'settings': is neither the injector ConfigMap"),
        (
            "kind: ConfigMap\nmetadata: {name: istio}\n---\nkind: ConfigMap\nmetadata: {name: istio-canary}\n",
            "ConfigMap 'istio-canary': a second mesh ConfigMap",
        ),
    ],
)
def test_a_bad_injection_config_exits_1_naming_configmap_key_and_field(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = tmp_path / "injection.yaml"
    config.write_text(text)
    manifest = tmp_path / "app.yaml"
    manifest.write_text(DEPLOYMENT)
    code, out, err = run(["-f", str(manifest), "--injection-config", str(config)], capsys)
    assert code == 1
    assert out == ""
    assert err.startswith(f"meshplane inject: {config}")
    assert message in err


def test_unreadable_input_and_bad_revision_exit_1(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["-f", str(tmp_path / "missing.yaml")], capsys)
    assert code == 1
    assert "cannot read" in err and "missing.yaml" in err
    manifest = tmp_path / "app.yaml"
    manifest.write_text(DEPLOYMENT)
    code, _, err = run(["-f", str(manifest), "--revision", "Canary_1"], capsys)
    assert code == 1
    assert "--revision: 'Canary_1'" in err
    code, _, err = run(["-f", str(manifest), "--revision", "canary\n"], capsys)
    assert code == 1
    assert "--revision: 'canary\\n'" in err


def test_openshift_deployment_config_and_replication_controller_are_injected_and_others_named_on_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    template = DEPLOYMENT.split("  template:\n", 1)[1]
    dc = "apiVersion: apps.openshift.io/v1\nkind: DeploymentConfig\nmetadata: {name: web, namespace: shop}\nspec:\n"
    rc = "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: web, namespace: shop}\nspec:\n"
    source = tmp_path / "in.yaml"
    source.write_text("---\n".join([dc + "  template:\n" + template, rc + "  template:\n" + template, SERVICE]))
    code, out, err = run(["-f", str(source)], capsys)
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    for doc in docs[:2]:
        assert proxy_env(doc)["ISTIO_META_OWNER"].endswith(f"/{doc['kind'].lower()}s/web")
    assert "document 3 (Service shop/web): passed through: a Service has no pod to inject" in err


# Annotation values kubectl reads as strings, unquoted or not, and PyYAML's YAML 1.1 did not: a date and a
# time, base 60 and `=` unquoted; quoted, strings that goyaml.v2 would read as a boolean or a number.
KUBECTL_STRINGS = """\
        deployed: 2026-12-07
        kubectl.kubernetes.io/restartedAt: 2026-12-07T10:00:00Z
        window: 1:30
        sign: =
        answer: "y"
        octal: "0o17"
        exponent: "1e3"
        leading-zero: "08"
"""


async def test_a_manifest_means_to_meshplane_inject_what_it_means_to_kubectl(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], kubectl: Kubectl
) -> None:
    """The machine's kubectl applies the manifest as written and as `meshplane inject` writes it out:
    the pod template's annotations must be the same strings. Before, inject refused the date ("must be a
    string, got datetime"), and wrote `answer: y`, which kubectl reads as true and the API refuses."""
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        DEPLOYMENT.replace("  namespace: shop\n", "").replace(
            "      labels: {app: web}\n", "      labels: {app: web}\n      annotations:\n" + KUBECTL_STRINGS
        )
    )
    code, out, err = run(["-f", str(manifest)], capsys)
    assert code == 0, err
    await kubectl.apply(manifest.read_text().replace("name: web\n", "name: as-written\n", 1))
    await kubectl.apply(out)
    as_written = await kubectl.json("get", "deployment", "as-written")
    injected = await kubectl.json("get", "deployment", "web")
    annotations = as_written["spec"]["template"]["metadata"]["annotations"]
    assert annotations["deployed"] == "2026-12-07" and annotations["answer"] == "y"
    injected_annotations = injected["spec"]["template"]["metadata"]["annotations"]
    assert {key: injected_annotations.get(key) for key in annotations} == annotations


def test_a_list_of_any_kind_has_its_items_injected_and_text_after_a_document_end_is_named(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kubectl reads any document with `items` as a list, an item without kind as the list's kind without
    `List`, and a piece's first YAML document only: a PodList's pods get the sidecar, and a workload after
    `...` is named on stderr, as kubectl would not create it either."""
    manifest = tmp_path / "pods.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: web}\n  spec: {containers: [{name: a, image: x}]}\n"
        "...\n" + DEPLOYMENT
    )
    code, out, err = run(["-f", str(manifest)], capsys)
    assert code == 0, err
    (pod_list,) = yaml.safe_load_all(out)
    assert pod_list["kind"] == "PodList" and "kind" not in pod_list["items"][0]
    assert any(c["name"] == "istio-proxy" for c in pod_list["items"][0]["spec"]["initContainers"])
    assert "document 1: the text after the document end (... on line 6) is not read, by kubectl either" in err


def test_documents_passed_through_are_named_as_kubectl_names_them(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-x, namespace: shop}\n"
        "addressType: IPv4\nendpoints: []\n"
    )
    code, _, err = run(["-f", str(manifest)], capsys)
    assert code == 0, err
    assert "document 1 (Namespace shop): passed through: a Namespace has no pod to inject" in err
    assert "document 2 (EndpointSlice shop/web-x): passed through: an EndpointSlice has no pod to inject" in err
