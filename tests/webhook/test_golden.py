"""Golden injection tests: `testdata/*.yaml` through `meshplane inject` must give `*.yaml.injected`.

Run with `REFRESH_GOLDEN=1` to rewrite the goldens from the current code (then review the diff).
Besides the offline comparison, every case also goes through the webhook's injector in process
(policy, injection, JSON Patch applied with the independent `jsonpatch` library) and must give the
same pod; the HTTPS replay against a running server lives with the webhook server tests.
"""

from __future__ import annotations

import os
from typing import Any

import jsonpatch
import pytest
import yaml

from controlplane.model.store import ConfigStore, ObjectKey
from tests.webhook import golden
from webhook.configwatch import InjectionConfigWatcher
from webhook.service import Injector

REFRESH = os.environ.get("REFRESH_GOLDEN") == "1"
CASES = golden.cases()


def _is_error_case(case: golden.GoldenCase) -> bool:
    return case.golden.exists() and golden.golden_error(case.golden.read_text(encoding="utf-8")) is not None


INJECTION_CASES = [case for case in CASES if not _is_error_case(case)]
ERROR_CASES = [case for case in CASES if _is_error_case(case)]


def _docs(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def test_there_are_at_least_thirty_cases_including_rejections() -> None:
    assert len(CASES) >= 30
    assert len(ERROR_CASES) >= 8


def test_every_golden_file_has_its_input() -> None:
    assert golden.orphaned_goldens() == [], "delete goldens whose input was removed or renamed"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_offline_injection_matches_golden(case: golden.GoldenCase) -> None:
    actual = golden.render(case.input.read_text(encoding="utf-8"), case.settings())
    if REFRESH:
        case.golden.write_text(actual, encoding="utf-8")
        return
    assert case.golden.exists(), f"{case.golden.name} is missing; run with REFRESH_GOLDEN=1 and review it"
    assert actual == case.golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", INJECTION_CASES, ids=str)
def test_injecting_the_injected_output_again_changes_nothing(case: golden.GoldenCase) -> None:
    injected = case.golden.read_text(encoding="utf-8")
    assert _docs(golden.render(injected, case.settings())) == _docs(injected)


def _injector(case: golden.GoldenCase) -> Injector:
    store = ConfigStore()
    configmap = case.configmap()
    if configmap is not None:
        store.apply([(ObjectKey("ConfigMap", "istio-system", "istio-sidecar-injector"), configmap)])
    settings = golden.SETTINGS
    watcher = InjectionConfigWatcher(
        store, namespace=settings.namespace, injector_configmap="istio-sidecar-injector", mesh_configmap="istio"
    )
    return Injector(
        store=store,
        config=watcher,
        revision=settings.revision,
        discovery_address=settings.discovery_address,
        trust_domain=settings.trust_domain,
        cluster_id=settings.cluster_id,
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_webhook_injector_gives_the_golden_pod(case: golden.GoldenCase) -> None:
    injector = _injector(case)
    assert injector.config.describe()["lastError"] is None
    for admission in golden.admissions(case):
        result = injector.admit(admission.pod, namespace=admission.namespace)
        if admission.error is not None:
            assert not result.allowed, admission.document
            assert result.error == admission.error
            continue
        assert result.allowed, f"{admission.document}: {result.error}"
        patched = jsonpatch.apply_patch(admission.pod, result.patch or [])
        assert patched == admission.expected, admission.document
        again = injector.admit(patched, namespace=admission.namespace)
        assert again.allowed
        assert jsonpatch.apply_patch(patched, again.patch or []) == patched, admission.document
