"""The selector matrix of docs/operations.md, checked over the rendered charts of two revisions and a tag.

Every combination of namespace `istio-injection` (absent/enabled/disabled), namespace `istio.io/rev`
(absent/R1/R2/default/unknown), pod `sidecar.istio.io/inject` (absent/true/false) and pod
`istio.io/rev` (absent/R1/R2) is evaluated by meshplane's matcher and by kubesim's admission matcher;
both must fire exactly the webhook the documented table names, and the revision's injector must agree.
"""

from __future__ import annotations

import itertools
import pathlib
import re
from typing import Any

import pytest

from controlplane.ops.cluster import ClusterState
from controlplane.ops.matcher import evaluate
from tests.charts.helm import requires_helm
from tests.kubesim import admission
from tests.kubesim.resources import find
from tests.ops.conftest import R1, R2, Obj, Render

pytestmark = requires_helm

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ABSENT = "absent"
INJECTION = (ABSENT, "enabled", "disabled")
NS_REV = (ABSENT, R1, R2, "default", "asm-9999")
POD_INJECT = (ABSENT, "true", "false")
POD_REV = (ABSENT, R1, R2)
KEYS = ("istio-injection", "istio.io/rev", "sidecar.istio.io/inject", "istio.io/rev")
Expected = tuple[tuple[str, str] | None, str | None]  # ((configuration, webhook) or None, revision or None)


def documented_table() -> list[tuple[tuple[str, ...], Expected]]:
    """The rows between the selector-matrix markers: (4 patterns, expectation)."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- selector-matrix -->", 1)[1].split("<!-- /selector-matrix -->", 1)[0]
    rows = []
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        patterns, fires, revision = tuple(cells[:4]), cells[4], cells[5]
        if fires == "none":
            rows.append((patterns, (None, None)))
            continue
        found = re.fullmatch(r"`([a-z.]+)` of `([a-z0-9.-]+)`", fires)
        assert found, f"cannot read {fires!r} in {DOC}"
        rows.append((patterns, ((found[2], found[1] + "sidecar-injector.istio.io"), revision)))
    return rows


def expected_for(table: list[tuple[tuple[str, ...], Expected]], combo: tuple[str, ...]) -> Expected:
    for patterns, expected in table:
        if _covers(patterns, combo):
            return expected
    raise AssertionError(f"no row of the documented table covers {combo}")


@pytest.fixture(name="webhook_configs", scope="module")
def webhook_configs_fixture(chart: Render) -> list[Obj]:
    objects = chart({"revision": R1, "revisionTags": ["default"]}) + chart({"revision": R2})
    return [o for o in objects if o["kind"] in ("MutatingWebhookConfiguration", "ConfigMap")]


def kubesim_fires(configs: list[Obj], ns: str, ns_labels: dict[str, str], pod: Obj) -> list[tuple[str, str]]:
    """What kubesim's admission would call for this pod CREATE, in its order."""
    pods = find("", "v1", "pods")
    assert pods is not None
    attrs = admission.Attributes(resource=pods, operation="CREATE", namespace=ns, name="p", obj=pod)
    fired = []
    for config in sorted(
        (c for c in configs if c["kind"] == "MutatingWebhookConfiguration"), key=lambda c: c["metadata"]["name"]
    ):
        for spec in config["webhooks"]:
            hook = admission.Hook(configuration=config["metadata"]["name"], spec=spec)
            if admission.match(hook, attrs, namespace_labels=ns_labels, equivalents=()) is not None:
                fired.append(hook.uid)
    return fired


def test_every_combination_fires_exactly_the_documented_webhook(webhook_configs: list[Obj]) -> None:
    table = documented_table()
    state = ClusterState.from_objects(webhook_configs)
    checked = 0
    failures: list[str] = []
    for combo in itertools.product(INJECTION, NS_REV, POD_INJECT, POD_REV):
        ns = "app"
        ns_labels = {
            "kubernetes.io/metadata.name": ns,
            **{k: v for k, v in zip(KEYS[:2], combo[:2], strict=True) if v != ABSENT},
        }
        pod_labels = {k: v for k, v in zip(KEYS[2:], combo[2:], strict=True) if v != ABSENT}
        pod: dict[str, Any] = {"metadata": {"name": "p", "namespace": ns, "labels": pod_labels}, "spec": {}}
        want_hook, want_rev = expected_for(table, combo)
        evaluation = evaluate(state, namespace=ns, namespace_labels=ns_labels, pod=pod)
        ours = [(r.config.name, r.webhook.name) for r in evaluation.firing]
        theirs = kubesim_fires(webhook_configs, ns, ns_labels, pod)
        want = [want_hook] if want_hook else []
        if ours != want or theirs != want or evaluation.revision != want_rev:
            failures.append(
                f"{combo}: documented {want} ({want_rev}), meshplane {ours} ({evaluation.revision}), kubesim {theirs}"
            )
        checked += 1
    assert checked == 135
    assert not failures, "\n".join(failures)


def _covers(patterns: tuple[str, ...], combo: tuple[str, ...]) -> bool:
    return all(p in ("*", v) or (p == "other" and v == "asm-9999") for p, v in zip(patterns, combo, strict=True))


def test_the_documented_table_has_no_dead_rows() -> None:
    """Every row decides at least one combination (a row shadowed by earlier ones is a doc bug)."""
    table = documented_table()
    winners = set()
    for combo in itertools.product(INJECTION, NS_REV, POD_INJECT, POD_REV):
        winners.add(next(i for i, (patterns, _) in enumerate(table) if _covers(patterns, combo)))
    assert winners == set(range(len(table)))
