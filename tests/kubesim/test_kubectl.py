"""The machine's real kubectl against kubesim: apply, get, label, patch, delete and their errors."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import sys

import pytest

from tests.helpers.serve import REPO
from tests.kubesim.fixtures import Kubectl, eventually
from tests.kubesim.server import KubeSim

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: app:1
        env: [{name: A, value: "1"}]
        ports: [{containerPort: 80}]
      - name: side
        image: side:1
"""

ALL_KINDS = """
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {a: "1", b: "2"}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
stringData: {a: b}
---
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: web}}
spec:
  containers: [{name: c, image: nginx}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}, {name: grpc, port: 9000, targetPort: 9090}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  replicas: 2
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec: {containers: [{name: c, image: nginx}]}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: istio-sidecar-injector}
webhooks:
- name: rev.namespace.sidecar-injector.istio.io
  clientConfig: {service: {name: istiod, namespace: istio-system, path: /inject}}
  sideEffects: None
  admissionReviewVersions: [v1]
  rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]
ports: [{name: http, port: 80}]
"""


def columns(output: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


async def test_apply_creates_then_merges_containers_by_name(kubectl: Kubectl) -> None:
    out = await kubectl.apply(DEPLOYMENT)
    assert out.stdout.strip() == "deployment.apps/web created"
    changed = DEPLOYMENT.replace("image: app:1", "image: app:2").replace('value: "1"', 'value: "2"')
    out = await kubectl.apply(changed)
    assert out.stdout.strip() == "deployment.apps/web configured"
    out = await kubectl.apply(changed)
    assert out.stdout.strip() == "deployment.apps/web unchanged"
    deploy = await kubectl.json("get", "deployment", "web")
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("app", "app:2"), ("side", "side:1")]
    assert containers[0]["env"] == [{"name": "A", "value": "2"}]
    assert containers[0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert deploy["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in deploy["metadata"]["annotations"]


async def test_apply_removes_a_container_dropped_from_the_manifest(kubectl: Kubectl) -> None:
    await kubectl.apply(DEPLOYMENT)
    without_side = DEPLOYMENT.split("      - name: side", maxsplit=1)[0]
    await kubectl.apply(without_side)
    deploy = await kubectl.json("get", "deployment", "web")
    assert [c["name"] for c in deploy["spec"]["template"]["spec"]["containers"]] == ["app"]


@pytest.mark.parametrize(
    ("kind", "header", "row"),
    [
        ("configmaps", ["NAME", "DATA", "AGE"], ["cm", "2"]),
        ("secrets", ["NAME", "TYPE", "DATA", "AGE"], ["s", "Opaque", "1"]),
        ("serviceaccounts", ["NAME", "SECRETS", "AGE"], ["default", "0"]),
        (
            "pods",
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
            ["p", "0/1", "Pending", "0"],
        ),
        (
            "services",
            ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"],
            ["web", "ClusterIP", "10.96.0.10", "<none>", "80/TCP,9000/TCP"],
        ),
        (
            "replicasets",
            ["NAME", "DESIRED", "CURRENT", "READY", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
            ["rs", "2", "0", "0"],
        ),
        ("mutatingwebhookconfigurations", ["NAME", "WEBHOOKS", "AGE"], ["istio-sidecar-injector", "1"]),
        (
            "endpointslices",
            ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            ["web-abc", "IPv4", "80", "10.0.0.1,10.0.0.2"],
        ),
    ],
)
async def test_get_prints_the_server_side_columns(
    kubectl: Kubectl, kind: str, header: list[str], row: list[str]
) -> None:
    await kubectl.apply(ALL_KINDS)
    out = await kubectl.run("get", kind, "-o", "wide")
    table = columns(out.stdout)
    assert table[0] == header
    found = [r for r in table[1:] if r[0] == row[0]]
    assert found and found[0][: len(row)] == row
    assert re.fullmatch(r"\d+s", found[0][header.index("AGE")])


async def test_get_namespaces_shows_status_and_filters_by_label(kubectl: Kubectl) -> None:
    await kubectl.run("create", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n")
    await kubectl.run("label", "namespace", "apps", "istio-injection=enabled", "istio.io/rev=canary")
    table = columns((await kubectl.run("get", "namespaces", "-l", "istio-injection=enabled,istio.io/rev")).stdout)
    assert table[0] == ["NAME", "STATUS", "AGE"]
    assert [r[:2] for r in table[1:]] == [["apps", "Active"]]
    table = columns((await kubectl.run("get", "ns", "-l", "!istio-injection", "-o", "name")).stdout)
    assert ["namespace/apps"] not in table and ["namespace/default"] in table
    out = await kubectl.run("label", "namespace", "apps", "istio.io/rev-")
    assert out.stdout.strip() == "namespace/apps unlabeled"
    ns = await kubectl.json("get", "namespace", "apps")
    assert ns["metadata"]["labels"] == {"istio-injection": "enabled", "kubernetes.io/metadata.name": "apps"}


async def test_patch_in_all_three_formats(kubectl: Kubectl) -> None:
    await kubectl.apply(DEPLOYMENT)
    await kubectl.run(
        "patch",
        "deployment",
        "web",
        "-p",
        '{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"side:2"}]}}}}',
    )
    await kubectl.run("patch", "deployment", "web", "--type=merge", "-p", '{"metadata":{"labels":{"tier":"front"}}}')
    await kubectl.run(
        "patch", "deployment", "web", "--type=json", "-p", '[{"op":"replace","path":"/spec/replicas","value":3}]'
    )
    deploy = await kubectl.json("get", "deployment", "web")
    assert [c["image"] for c in deploy["spec"]["template"]["spec"]["containers"]] == ["app:1", "side:2"]
    assert deploy["metadata"]["labels"] == {"tier": "front"}
    assert deploy["spec"]["replicas"] == 3
    failed = await kubectl.run(
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        '[{"op":"test","path":"/spec/replicas","value":9}]',
        check=False,
    )
    assert failed.returncode != 0
    assert "The request is invalid: the server rejected our request" in failed.stderr


async def test_errors_print_like_the_real_server(kubectl: Kubectl) -> None:
    missing = await kubectl.run("get", "configmap", "nope", check=False)
    assert missing.stderr.strip() == 'Error from server (NotFound): configmaps "nope" not found'
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: once}\n"
    await kubectl.run("create", "-f", "-", stdin=manifest)
    again = await kubectl.run("create", "-f", "-", stdin=manifest, check=False)
    assert (
        'Error from server (AlreadyExists): error when creating "STDIN": configmaps "once" already exists'
        in again.stderr
    )
    invalid = await kubectl.run(
        "apply", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n", check=False
    )
    assert invalid.returncode != 0
    assert 'The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' in invalid.stderr
    unknown = await kubectl.run(
        "apply", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndta: {a: b}\n", check=False
    )
    assert 'strict decoding error: unknown field "dta"' in unknown.stderr


async def test_a_name_with_a_percent_is_a_bad_request_and_kubectl_refuses_to_send_one(kubectl: Kubectl) -> None:
    """kubectl refuses a '%' in a resource name itself; sent anyway (`get --raw`, the name escaped), the
    server's key function refuses it with 400, a BadRequest, not a NotFound."""
    refused = await kubectl.run("get", "configmap", "a%b", check=False)
    assert refused.stderr.strip() == "error: invalid resource name \"a%b\": [may not contain '%']"
    raw = await kubectl.run("get", "--raw", "/api/v1/namespaces/default/configmaps/a%25b", check=False)
    assert raw.returncode == 1
    assert raw.stderr.strip() == "Error from server (BadRequest): Name parameter invalid: \"a%b\": may not contain '%'"


SYSTEM_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:controller:Mesh_Reader"}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:controller:Mesh_Reader"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:controller:Mesh_Reader"}
subjects: [{kind: ServiceAccount, name: reader, namespace: default}]
"""


async def test_rbac_objects_named_like_the_system_ones_are_applied_got_and_deleted(kubectl: Kubectl) -> None:
    """RBAC names are path segments (`ValidateRBACName`): kubectl applies, gets and deletes a ClusterRole and a
    binding with colons and capitals in their names, which it puts in the URL as they are."""
    name = "system:controller:Mesh_Reader"
    out = await kubectl.apply(SYSTEM_RBAC)
    assert out.stdout.splitlines() == [
        f"clusterrole.rbac.authorization.k8s.io/{name} created",
        f"clusterrolebinding.rbac.authorization.k8s.io/{name} created",
    ]
    out = await kubectl.apply(SYSTEM_RBAC)
    assert out.stdout.splitlines() == [
        f"clusterrole.rbac.authorization.k8s.io/{name} unchanged",
        f"clusterrolebinding.rbac.authorization.k8s.io/{name} unchanged",
    ]
    role = await kubectl.json("get", "clusterrole", name)
    assert (role["metadata"]["name"], role["rules"][0]["verbs"]) == (name, ["get"])
    out = await kubectl.run("delete", "clusterrolebinding", name)
    assert out.stdout.strip() == f'clusterrolebinding.rbac.authorization.k8s.io "{name}" deleted'
    await kubectl.run("delete", "clusterrole", name)
    missing = await kubectl.run("get", "clusterrole", name, check=False)
    assert missing.stderr.strip() == (
        f'Error from server (NotFound): clusterroles.rbac.authorization.k8s.io "{name}" not found'
    )


async def test_delete_and_namespace_deletion_wait_until_gone(kubectl: Kubectl, kubesim: KubeSim) -> None:
    kubesim.namespace_deletion_delay = 0.5
    await kubectl.run("create", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: tmp}\n")
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: tmp}\n")
    out = await kubectl.run("delete", "configmap", "c", "-n", "tmp")
    assert out.stdout.strip() == 'configmap "c" deleted'
    await kubectl.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: d, namespace: tmp}\n")
    out = await kubectl.run("delete", "namespace", "tmp")
    assert out.stdout.strip() == 'namespace "tmp" deleted'
    assert kubesim.get_object("namespaces", "", "tmp") is None  # kubectl waited for the removal
    assert kubesim.get_object("configmaps", "tmp", "d") is None


async def test_get_watch_prints_changes(kubectl: Kubectl, kubesim: KubeSim) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubectl.kubeconfig)}
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        f"--cache-dir={kubectl.cache_dir}",
        "get",
        "configmaps",
        "--watch",
        "-o",
        "name",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        await eventually(lambda: kubesim.watch_count > 0, what="kubectl's watch")
        kubesim.create_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "seen"}})
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.decode().strip() == "configmap/seen"
    finally:
        proc.terminate()
        await proc.wait()


async def test_python_m_kubesim_serves_kubectl(tmp_path: pathlib.Path) -> None:
    kubeconfig = tmp_path / "kc"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.kubesim",
        "--port",
        "0",
        "--kubeconfig-out",
        str(kubeconfig),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        announced = line.decode().strip()
        assert announced.startswith("kubesim serving on http://127.0.0.1:"), announced
        assert int(announced.rpartition(":")[2]) > 0  # the port it bound, read back
        cache = tmp_path / "cache"
        out = await Kubectl(kubeconfig=kubeconfig, cache_dir=cache).run("get", "namespace", "default", "-o", "name")
        assert out.stdout.strip() == "namespace/default"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


async def test_typed_create_commands_send_protobuf_that_kubesim_decodes(kubectl: Kubectl) -> None:
    await kubectl.run("create", "namespace", "demo")
    await kubectl.run("create", "configmap", "c1", "--from-literal=a=b", "-n", "demo", "--save-config")
    await kubectl.run("create", "secret", "generic", "s1", "--from-literal=x=y", "-n", "demo")
    await kubectl.run("create", "serviceaccount", "robot", "-n", "demo")
    cm = await kubectl.json("get", "configmap", "c1", "-n", "demo")
    assert cm["data"] == {"a": "b"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in cm["metadata"]["annotations"]
    secret = await kubectl.json("get", "secret", "s1", "-n", "demo")
    assert (secret["type"], secret["data"]) == ("Opaque", {"x": "eQ=="})
    sa = await kubectl.json("get", "serviceaccount", "robot", "-n", "demo")
    assert sa["metadata"]["namespace"] == "demo"
    await kubectl.run("create", "deployment", "d", "--image=x", "--replicas=0", "-n", "demo")
    deployment = await kubectl.json("get", "deployment", "d", "-n", "demo")
    assert deployment["spec"]["replicas"] == 0
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "x"
