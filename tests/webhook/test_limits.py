"""The webhook's limits: deep nesting and oversized annotations get a precise 400 / allowed:false
(never a 5xx), and slow or surplus connections are closed by the server."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane.settings import SettingsError
from tests.helpers.serve import SERVER_NAME, Running, admission_review, post_webhook, start_serve
from webhook.limits import Limits

TIMEOUT = 1.0  # header and body timeouts of the served webhook, so the slow-client tests take seconds


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    env = {"MESHPLANE_WEBHOOK_HEADER_TIMEOUT": str(TIMEOUT), "MESHPLANE_WEBHOOK_BODY_TIMEOUT": str(TIMEOUT)}
    running = start_serve(tmp_path_factory.mktemp("limits"), env=env)
    try:
        yield running
    finally:
        running.stop()


def pod(annotations: dict[str, str] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "app:1", **container}]},
    }


def denied(running: Running, body: bytes) -> str:
    """The message of an `allowed: false` answer with HTTP 200 (how the API server shows it)."""
    status, review = post_webhook(running, body)
    assert status == 200, review
    response = review["response"]
    assert response["allowed"] is False and "patch" not in response, response
    assert response["status"]["code"] == 400
    return str(response["status"]["message"])


def bad_request(running: Running, body: bytes) -> str:
    status, review = post_webhook(running, body)
    assert status == 400, review
    assert review["kind"] == "AdmissionReview" and review["response"]["allowed"] is False
    return str(review["response"]["status"]["message"])


# -- nesting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "[" * 1000,
        "{" * 5000,
        "- " * 1000,
        "[" * 1000 + "]" * 1000,
        "a:\n" + "".join(f"{' ' * i}b{i}:\n" for i in range(1, 120)),
    ],
    ids=["open-brackets", "open-braces", "block-sequence", "closed-brackets", "block-mapping"],
)
def test_deeply_nested_proxy_config_is_denied_naming_the_annotation(webhook: Running, value: str) -> None:
    message = denied(webhook, admission_review(pod({"proxy.istio.io/config": value})))
    assert message.startswith("annotation proxy.istio.io/config: invalid value"), message
    assert "not valid YAML/JSON" in message


def test_deeply_nested_closed_yaml_names_the_depth_limit(webhook: Running) -> None:
    message = denied(webhook, admission_review(pod({"proxy.istio.io/config": "[" * 60 + "]" * 60})))
    assert "nests deeper than 50 levels" in message


def test_deeply_nested_status_annotation_is_denied_naming_it(webhook: Running) -> None:
    message = denied(webhook, admission_review(pod({"sidecar.istio.io/status": "[" * 5000 + "]" * 5000})))
    assert message.startswith("annotation sidecar.istio.io/status: invalid value"), message


@pytest.mark.parametrize("depth", [101, 500, 5000, 100_000])
def test_deeply_nested_body_is_400(webhook: Running, depth: int) -> None:
    message = bad_request(webhook, b"[" * depth + b"]" * depth)
    assert f"nests objects/lists {depth} levels deep, at [0][0][0][0][0][0][0][0][0][0][0][0]..." in message
    assert "at most 100 are allowed" in message


def test_deeply_nested_pod_field_is_400_naming_the_field(webhook: Running) -> None:
    deep: Any = "x"
    for _ in range(600):
        deep = {"k": deep}
    body = admission_review(pod(env=[{"name": "E", "valueFrom": deep}]))
    message = bad_request(webhook, body)
    assert "nests objects/lists 608 levels deep, at request.object.spec.containers[0].env[0].valueFrom.k" in message


def test_nesting_within_the_limit_is_injected(webhook: Running) -> None:
    deep: Any = "x"
    for _ in range(60):
        deep = {"k": deep}
    status, review = post_webhook(webhook, admission_review(pod(args=[json.dumps(deep)], extra=deep)))
    assert status == 200 and review["response"]["allowed"] is True and "patch" in review["response"], review


# -- size -------------------------------------------------------------------------------------


def test_large_proxy_config_is_denied_by_size(webhook: Running) -> None:
    value = "proxyMetadata:\n" + "".join(f"  K{i}: {'v' * 40}\n" for i in range(5000))  # ~250 KB of valid YAML
    message = denied(webhook, admission_review(pod({"proxy.istio.io/config": value})))
    assert message.startswith("annotation proxy.istio.io/config: invalid value"), message
    assert f"is {len(value)} bytes; a proxy config may be at most 65536 bytes" in message


def test_annotations_over_kubernetes_total_limit_are_denied(webhook: Running) -> None:
    annotations = {f"example.com/note-{i}": "n" * 100_000 for i in range(3)}
    message = denied(webhook, admission_review(pod(annotations)))
    assert message.startswith("metadata.annotations: "), message
    assert "Kubernetes allows at most 262144" in message


# -- slow clients -----------------------------------------------------------------------------


def tls_connection(running: Running) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", running.ports["webhook"]), timeout=30)
    return running.client_ssl_context().wrap_socket(raw, server_hostname=SERVER_NAME)


def read_until_closed(conn: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout fails a hang)."""
    received = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return received
        if not chunk:
            return received
        received += chunk


def test_partial_headers_are_closed_after_the_header_timeout(webhook: Running) -> None:
    with tls_connection(webhook) as conn:
        conn.sendall(b"POST /inject HTTP/1.1\r\nHost: istiod\r\nContent-Type: application/json\r\n")
        assert read_until_closed(conn) == b""


def test_a_connection_that_never_says_hello_is_closed_after_the_header_timeout(webhook: Running) -> None:
    with socket.create_connection(("127.0.0.1", webhook.ports["webhook"]), timeout=30) as raw:
        assert raw.recv(1) == b""


def test_idle_connection_is_closed_after_the_header_timeout(webhook: Running) -> None:
    with tls_connection(webhook) as conn:
        assert read_until_closed(conn) == b""


def test_short_body_gets_408_and_the_connection_is_closed(webhook: Running) -> None:
    with tls_connection(webhook) as conn:
        conn.sendall(
            b"POST /inject HTTP/1.1\r\nHost: istiod\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000\r\n\r\n{"apiVersion":'
        )
        answer = read_until_closed(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    status = json.loads(body)["response"]["status"]
    assert status["code"] == 408 and "did not arrive within 1s (14 bytes received)" in status["message"]


def test_the_webhook_still_answers_after_slow_clients(webhook: Running) -> None:
    status, review = post_webhook(webhook, admission_review(pod()))
    assert status == 200 and review["response"]["allowed"] is True


def test_malformed_limit_setting_stops_serve_naming_the_variable(tmp_path: Any) -> None:
    with pytest.raises(RuntimeError) as caught:
        start_serve(tmp_path, env={"MESHPLANE_WEBHOOK_BODY_TIMEOUT": "soon"})
    logs = str(caught.value)
    assert "MESHPLANE_WEBHOOK_BODY_TIMEOUT='soon': use a number of seconds > 0" in logs
    assert "Traceback" not in logs


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MESHPLANE_WEBHOOK_MAX_CONNECTIONS", "1_000"),  # int() reads it
        ("MESHPLANE_WEBHOOK_MAX_CONNECTIONS", "\u0665\u0661\u0662"),  # Arabic-Indic 512, which int() reads
        ("MESHPLANE_WEBHOOK_HEADER_TIMEOUT", "1_0"),  # float() reads it
        ("MESHPLANE_WEBHOOK_HEADER_TIMEOUT", "\u0661\u0660"),
        ("MESHPLANE_WEBHOOK_BODY_TIMEOUT", "infinity"),
        ("MESHPLANE_WEBHOOK_BODY_TIMEOUT", "1e400"),
    ],
)
def test_a_limit_setting_is_read_as_ascii_digits_only(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{var}="):
        Limits.from_env({var: value})


def test_a_limit_setting_may_have_surrounding_spaces() -> None:
    limits = Limits.from_env({"MESHPLANE_WEBHOOK_MAX_CONNECTIONS": " 64 ", "MESHPLANE_WEBHOOK_BODY_TIMEOUT": " 2.5"})
    assert (limits.max_connections, limits.body_timeout) == (64, 2.5)
