"""charts/istiod for every value case (default, canary, tags, autoscaling, replicas): helm lint, Kubernetes'
own schemas, the API server's validation, and the scaling objects (PodDisruptionBudget, HorizontalPodAutoscaler).

Kubernetes' schemas come from the pinned `kubernetes-validate` wheel, which ships them (no network): every
rendered object is checked strictly (an unknown field is an error) against the version kubesim reports.
"""

from __future__ import annotations

import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.charts.helm import CASES, CHART, REV, Objects, helm, render, render_text, requires_helm
from tests.kubesim.fixtures import (  # noqa: F401
    Kubectl,
    kubeconfig_fixture,
    kubectl_fixture,
    kubesim_fixture,
)

pytestmark = requires_helm

KUBERNETES = "1.32"  # the version kubesim reports (/version)


def schema_problems(doc: dict[str, Any]) -> list[str]:
    """What Kubernetes' OpenAPI schema (strict: no unknown fields) finds wrong with one object."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "(object)"
        return [f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}"]
    return []


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_passes(helm_home: pathlib.Path, case: str) -> None:
    result = helm(helm_home, "lint", "--strict", str(CHART), "--namespace", "istio-system", *CASES[case])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(helm_home: pathlib.Path, case: str) -> None:
    docs = [doc for doc in yaml.safe_load_all(render_text(helm_home, *CASES[case])) if doc]
    assert len(docs) >= 10
    assert [problem for doc in docs for problem in schema_problems(doc)] == []


def test_the_schema_check_catches_what_the_api_server_would_refuse(canary: Objects) -> None:
    """The check is not vacuous: a misspelt field, a wrong type, a missing required field are each found."""
    deployment = canary["Deployment", f"istiod-{REV}"]
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    assert schema_problems(misspelt) == [f"Deployment/istiod-{REV}: spec: Additional properties are not allowed "
                                         "('replica' was unexpected)"]  # fmt: skip
    service = canary["Service", f"istiod-{REV}"]
    wrong_type = {**service, "spec": {**service["spec"], "ports": [{"port": "http"}]}}
    assert "spec.ports.0.port" in schema_problems(wrong_type)[0]
    role = canary["Role", f"istiod-{REV}"]
    no_verbs = {**role, "rules": [{"apiGroups": [""], "resources": ["secrets"]}]}
    assert "'verbs' is a required property" in schema_problems(no_verbs)[0]


@pytest.mark.parametrize(
    "case",
    [
        "default-values",
        pytest.param("canary-with-tags", id="canary-with-tags"),
        pytest.param("autoscaling", id="autoscaling"),
    ],
)
async def test_every_object_passes_the_api_servers_strict_validation(
    kubectl: Kubectl, helm_home: pathlib.Path, case: str
) -> None:
    await kubectl.run("create", "namespace", "istio-system")
    manifest = render_text(helm_home, *CASES[case])
    result = await kubectl.run("create", "--dry-run=server", "--validate=strict", "-f", "-", stdin=manifest)
    assert result.stdout.count("created (server dry run)") == len([d for d in yaml.safe_load_all(manifest) if d])


# -- scaling: replicas, PodDisruptionBudget, HorizontalPodAutoscaler --------------------------------

SCALING = [
    # values, replicas on the Deployment (None: not set), PDB minAvailable (None: no PDB), HPA (min, max)
    ((), 1, None, None),
    (("pilot.replicaCount=2",), 2, 1, None),
    (("pilot.replicaCount=0",), 0, None, None),
    (("pilot.autoscaleEnabled=true",), None, None, (1, 5)),
    (("pilot.autoscaleEnabled=true", "pilot.autoscaleMin=2", "pilot.autoscaleMax=4"), None, 1, (2, 4)),
    (("pilot.autoscaleEnabled=true", "pilot.replicaCount=3"), None, None, (1, 5)),
    (("pilot.autoscaleEnabled=false", "pilot.autoscaleMin=3"), 1, None, None),
]


@pytest.mark.parametrize(("values", "replicas", "min_available", "bounds"), SCALING)
def test_replicas_disruption_budget_and_autoscaler_follow_istios_rule(
    helm_home: pathlib.Path,
    values: tuple[str, ...],
    replicas: int | None,
    min_available: int | None,
    bounds: tuple[int, int] | None,
) -> None:
    """PDB (minAvailable 1) whenever more than one pod runs; with autoscaling the HPA owns the replica count."""
    args = [arg for value in values for arg in ("--set", value)]
    objects = render(helm_home, "--set", f"revision={REV}", *args)
    name = f"istiod-{REV}"
    deployment = objects["Deployment", name]
    assert deployment["spec"].get("replicas") == replicas
    pdb = objects.get(("PodDisruptionBudget", name))
    assert (pdb and pdb["spec"]["minAvailable"]) == min_available
    if pdb:
        assert pdb["metadata"]["namespace"] == "istio-system"
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    hpa = objects.get(("HorizontalPodAutoscaler", name))
    assert (hpa and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])) == bounds
    if hpa:
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}


def test_the_budget_selects_only_its_own_revisions_pods(helm_home: pathlib.Path) -> None:
    default = render(helm_home, "--set", "pilot.replicaCount=2")
    canary = render(helm_home, "--set", f"revision={REV}", "--set", "pilot.replicaCount=2")
    assert default["PodDisruptionBudget", "istiod"]["spec"]["selector"]["matchLabels"] == {
        "app": "istiod",
        "istio.io/rev": "default",
    }
    canary_pods = canary["Deployment", f"istiod-{REV}"]["spec"]["template"]["metadata"]["labels"]
    assert canary_pods["istio.io/rev"] == REV  # so the default revision's budget never counts the canary's pods


def test_autoscaler_target_utilization_comes_from_values(helm_home: pathlib.Path) -> None:
    objects = render(
        helm_home, "--set", "pilot.autoscaleEnabled=true", "--set", "pilot.cpu.targetAverageUtilization=60"
    )
    (metric,) = objects["HorizontalPodAutoscaler", "istiod"]["spec"]["metrics"]
    assert metric["resource"]["target"]["averageUtilization"] == 60


def container_args(objects: Objects) -> list[str]:
    (container,) = objects["Deployment", "istiod"]["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def test_proxy_connections_age_out_after_30_minutes_unless_the_values_say_otherwise(helm_home: pathlib.Path) -> None:
    assert "--max-connection-age=30m" in container_args(render(helm_home))
    longer = render(helm_home, "--set", "pilot.keepaliveMaxServerConnectionAge=1h")
    assert "--max-connection-age=1h" in container_args(longer)
    never = render(helm_home, "--set", "pilot.keepaliveMaxServerConnectionAge=0")
    assert "--max-connection-age=0" in container_args(never)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--set", "pilot.keepaliveMaxServerConnectionAge=soon"),
            "- at '/pilot/keepaliveMaxServerConnectionAge': 'soon' does not match pattern",
        ),
        (("--set", "pilot.autoscaleMin=0"), "- at '/pilot/autoscaleMin': minimum: got 0, want 1"),
        (("--set", "pilot.autoscaleEnable=true"), "additional properties 'autoscaleEnable' not allowed"),
        (("--set", "pilot.cpu.targetAverageUtilization=high"), "- at '/pilot/cpu/targetAverageUtilization'"),
        (
            ("--set", "pilot.autoscaleEnabled=true", "--set", "pilot.autoscaleMin=6"),
            "pilot.autoscaleMin (6) is above pilot.autoscaleMax (5): raise autoscaleMax or lower autoscaleMin",
        ),
    ],
)
def test_bad_pilot_values_are_refused_naming_the_value(
    helm_home: pathlib.Path, args: tuple[str, ...], message: str
) -> None:
    result = helm(helm_home, "template", "istiod", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "panic" not in result.stderr
