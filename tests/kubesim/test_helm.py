"""The real helm (Helm 4: server-side apply by default) installs, upgrades and uninstalls a chart on kubesim (HTTPS)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
from dataclasses import dataclass

import pytest

from tests.kubesim.fixtures import Kubectl, secure_fixture  # noqa: F401
from tests.kubesim.server import KubeSim

HELM = pathlib.Path(sys.executable).parent / "helm"

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    "values.yaml": "greeting: hello\nextra: true\nreplicas: 1\n",
    "templates/all.yaml": """
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .Release.Name }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  greeting: {{ .Values.greeting | quote }}
  {{- if .Values.extra }}
  extra: "yes"
  {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {app: {{ .Release.Name }}}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      serviceAccountName: {{ .Release.Name }}
      containers:
      - name: app
        image: example.com/app:1
        ports:
        - {containerPort: 8080, name: http}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .Release.Name }}-reader
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .Release.Name }}-reader
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {{ .Release.Name }}-reader}
subjects:
- {kind: ServiceAccount, name: {{ .Release.Name }}, namespace: {{ .Release.Namespace }}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {{ .Release.Name }}-injector
webhooks:
- name: inject.demo.example.com
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: Ignore
  clientConfig:
    service: {name: {{ .Release.Name }}, namespace: {{ .Release.Namespace }}, path: /inject}
  rules:
  - {operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"]}
  namespaceSelector:
    matchLabels: {demo-injection: enabled}
""",
}


@dataclass(frozen=True)
class Helm:
    kubeconfig: pathlib.Path
    home: pathlib.Path

    async def run(self, *args: str) -> str:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "XDG_CACHE_HOME": str(self.home / "cache"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_DATA_HOME": str(self.home / "data"),
            "KUBECONFIG": str(self.kubeconfig),
        }
        proc = await asyncio.create_subprocess_exec(
            str(HELM),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{err.decode()}"
        return out.decode()


@pytest.fixture(name="chart")
def chart_fixture(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "demo"
    for name, text in CHART.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.skipif(not HELM.exists(), reason="helm is installed into the virtualenv by the project's set-up")
async def test_helm_install_upgrade_uninstall_with_server_side_apply(
    secure: KubeSim, chart: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    kubeconfig = secure.write_kubeconfig(tmp_path / "kubeconfig")
    helm = Helm(kubeconfig=kubeconfig, home=tmp_path / "home")
    (tmp_path / "cache").mkdir()
    kubectl = Kubectl(kubeconfig=kubeconfig, cache_dir=tmp_path / "cache")

    assert "STATUS: deployed" in await helm.run("install", "demo", str(chart), "-n", "default")
    cm = await kubectl.json("get", "configmap", "demo-config", "--show-managed-fields")
    assert cm["data"] == {"greeting": "hello", "extra": "yes"}
    assert [(e["manager"], e["operation"]) for e in cm["metadata"]["managedFields"]] == [("helm", "Apply")]
    for kind, name in (
        ("serviceaccount", "demo"),
        ("service", "demo"),
        ("deployment", "demo"),
        ("clusterrole", "demo-reader"),
        ("clusterrolebinding", "demo-reader"),
        ("mutatingwebhookconfiguration", "demo-injector"),
    ):
        obj = await kubectl.json("get", kind, name)
        assert obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == "demo"

    await helm.run("upgrade", "demo", str(chart), "-n", "default", "--set", "greeting=hi", "--set", "extra=false")
    assert (await kubectl.json("get", "configmap", "demo-config"))["data"] == {"greeting": "hi"}
    assert "REVISION: 2" in await helm.run("status", "demo", "-n", "default")

    await helm.run("uninstall", "demo", "-n", "default")
    left = await kubectl.run("get", "configmaps,serviceaccounts,services,deployments,secrets", "-o", "name")
    assert sorted(left.stdout.split()) == ["service/kubernetes", "serviceaccount/default"]
    cluster = await kubectl.run("get", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations", "-o", "name")
    assert "demo" not in cluster.stdout
    users = {r.username for r in secure.audit}
    assert users == {"kubernetes-admin"}
    assert any(r.verb == "patch" and r.resource == "clusterroles" for r in secure.audit)
