"""Bad admission requests get a precise 4xx with an AdmissionReview-shaped error, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.serve import Running, admission_review, post_webhook, start_serve


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_serve(tmp_path_factory.mktemp("bad-input"))
    try:
        yield running
    finally:
        running.stop()


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}


def review_with(**request: Any) -> bytes:
    body = json.loads(admission_review(POD, uid="u-1"))
    body["request"].update(request)
    return json.dumps(body).encode()


def assert_error(status: int, review: Any, *, code: int, uid: str, needle: str) -> None:
    assert status == code, review
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    response = review["response"]
    assert response["uid"] == uid and response["allowed"] is False
    assert response["status"]["code"] == code
    assert needle in response["status"]["message"], response["status"]["message"]


def test_body_that_is_not_json(webhook: Running) -> None:
    status, review = post_webhook(webhook, b"{not json")
    assert_error(status, review, code=400, uid="", needle="not valid JSON")


@pytest.mark.parametrize(
    ("literal", "needle"),
    [("NaN", "NaN is not a JSON value"), ("-Infinity", "-Infinity is not a JSON value"), ("1e400", "out of range")],
)
def test_a_body_with_what_json_has_no_value_for_is_not_json(webhook: Running, literal: str, needle: str) -> None:
    """Python's decoder takes these (1e400 as infinity); the API server's never sends them."""
    body = admission_review({**POD, "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}})
    status, review = post_webhook(webhook, body.replace(b'"containerPort": 80', f'"containerPort": {literal}'.encode()))
    assert_error(status, review, code=400, uid="", needle="not valid JSON")
    assert needle in review["response"]["status"]["message"]


def test_wrong_api_version_keeps_the_uid(webhook: Running) -> None:
    body = json.loads(admission_review(POD, uid="u-2"))
    body["apiVersion"] = "admission.k8s.io/v1beta1"
    status, review = post_webhook(webhook, json.dumps(body).encode())
    assert_error(status, review, code=400, uid="u-2", needle="admission.k8s.io/v1beta1")


def test_wrong_kind(webhook: Running) -> None:
    body = json.loads(admission_review(POD, uid="u-3"))
    body["kind"] = "ConversionReview"
    status, review = post_webhook(webhook, json.dumps(body).encode())
    assert_error(status, review, code=400, uid="u-3", needle="ConversionReview")


def test_missing_uid(webhook: Running) -> None:
    body = json.loads(admission_review(POD))
    del body["request"]["uid"]
    status, review = post_webhook(webhook, json.dumps(body).encode())
    assert_error(status, review, code=400, uid="", needle="request.uid")


def test_object_that_is_not_a_pod(webhook: Running) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
    status, review = post_webhook(
        webhook,
        review_with(kind={"group": "apps", "version": "v1", "kind": "Deployment"}, object=deployment),
    )
    assert_error(status, review, code=400, uid="u-1", needle="Deployment")


def test_pod_whose_containers_are_not_a_list(webhook: Running) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "app"}}
    status, review = post_webhook(webhook, review_with(object=pod))
    assert_error(status, review, code=400, uid="u-1", needle="spec.containers")


def test_body_over_3_mib_is_413(webhook: Running) -> None:
    pod = {**POD, "metadata": {"name": "p", "annotations": {"big": "x" * (3 * 1024 * 1024)}}}
    status, review = post_webhook(webhook, admission_review(pod, uid="big"))
    assert status == 413
    assert review["response"]["status"]["code"] == 413 and review["response"]["allowed"] is False


def test_wrong_content_type_is_415(webhook: Running) -> None:
    status, review = post_webhook(webhook, admission_review(POD), content_type="text/plain")
    assert status == 415
    assert "application/json" in review["response"]["status"]["message"]


def test_invalid_annotation_is_denied_naming_annotation_and_value(webhook: Running) -> None:
    pod = {**POD, "metadata": {"name": "p", "annotations": {"sidecar.istio.io/proxyCPU": "lots"}}}
    status, review = post_webhook(webhook, admission_review(pod, uid="ann"))
    assert status == 200  # the API server shows an allowed=false answer's message to the user
    response = review["response"]
    assert response["allowed"] is False and "patch" not in response
    message = response["status"]["message"]
    assert "sidecar.istio.io/proxyCPU" in message and "lots" in message


def test_failures_are_counted_by_reason(webhook: Running) -> None:
    import urllib.request

    def failures(reason: str) -> float:
        with urllib.request.urlopen(webhook.metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        prefix = f'sidecar_injection_failure_total{{reason="{reason}"}} '
        return sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))

    before = failures("invalid_review")
    post_webhook(webhook, b"[]")
    assert failures("invalid_review") == before + 1
