"""Every golden case, replayed through the real HTTPS webhook of a running `meshplane serve`.

The webhook's patch, applied with the independent `jsonpatch` library, must produce the golden
pod; sending the injected pod again must give back the same pod (idempotence over the wire).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.helpers.serve import Running, admission_review, apply_response, post_webhook, start_serve
from tests.webhook import golden


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_serve(tmp_path_factory.mktemp("replay"))
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture
def webhook_for(
    webhook: Running, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[golden.GoldenCase], Running]]:
    """The shared server, or for a case with its own injector ConfigMap a server that loads it."""
    started: list[Running] = []

    def get(case: golden.GoldenCase) -> Running:
        if case.config is None:
            return webhook
        config_dir = tmp_path_factory.mktemp(f"config-{case.name}")
        (config_dir / "injector.yaml").write_text(case.config.read_text(encoding="utf-8"), encoding="utf-8")
        started.append(start_serve(tmp_path_factory.mktemp(f"replay-{case.name}"), "--config-dir", str(config_dir)))
        return started[-1]

    try:
        yield get
    finally:
        for running in started:
            assert running.stop() == 0


@pytest.mark.parametrize("case", golden.cases(), ids=str)
def test_golden_case_over_https(webhook_for: Callable[[golden.GoldenCase], Running], case: golden.GoldenCase) -> None:
    webhook = webhook_for(case)
    for n, admission in enumerate(golden.admissions(case)):
        uid = f"{case.name}-{n}"
        status, review = post_webhook(webhook, admission_review(admission.pod, namespace=admission.namespace, uid=uid))
        assert status == 200, review
        response = review["response"]
        assert response["uid"] == uid
        if admission.error is not None:
            assert response["allowed"] is False
            assert response["status"]["code"] == 400
            assert response["status"]["message"] == admission.error
            continue
        assert response["allowed"] is True, response
        injected = apply_response(admission.pod, response)
        assert injected == admission.expected, f"{admission.document}: webhook result differs from the golden"

        status, again = post_webhook(webhook, admission_review(injected, namespace=admission.namespace, uid=uid))
        assert status == 200, again
        assert apply_response(injected, again["response"]) == injected, f"{admission.document}: not idempotent"


def test_every_case_has_a_golden() -> None:
    missing = [case.name for case in golden.cases() if not case.golden.exists()]
    assert not missing
    assert len(golden.cases()) >= 30


def test_cluster_and_network_path_is_served(webhook: Running) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}
    status, review = post_webhook(webhook, admission_review(pod), path="/inject/cluster/east/net/net1")
    assert status == 200 and review["response"]["allowed"] is True
    injected = apply_response(pod, review["response"])
    containers = injected["spec"]["initContainers"] + injected["spec"]["containers"]
    proxy = next(c for c in containers if c["name"] == "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["ISTIO_META_CLUSTER_ID"] == "east"
    assert env["ISTIO_META_NETWORK"] == "net1"
