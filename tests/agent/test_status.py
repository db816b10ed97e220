"""The status server over real HTTP: readiness, application probes, merged metrics, certificates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from controlplane.agent import status
from controlplane.agent.probes import parse_probers
from controlplane.agent.status import ReadyState, StatusError, StatusServer, app_metrics_urls
from tests.agent.test_probes import app_server, serve

ENVOY_STATS = '# TYPE envoy_cluster_upstream_cx_total counter\nenvoy_cluster_upstream_cx_total{cluster_name="x"} 7'


class Readiness:
    """The wiring's readiness: a state the test changes, or an exception."""

    def __init__(self) -> None:
        self.state: ReadyState | Exception = ReadyState(ready=False, reason="envoy has not received listeners yet")

    async def __call__(self) -> ReadyState:
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def agent_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("meshplane_agent_certificates_total", "certificates", registry=registry).inc(3)
    return registry


@contextlib.asynccontextmanager
async def metrics_source(body: str | bytes, content_type: str) -> AsyncIterator[int]:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(
            body=body if isinstance(body, bytes) else body.encode(), headers={"Content-Type": content_type}
        )

    app = web.Application()
    app.router.add_get("/stats/prometheus", answer)
    app.router.add_get("/metrics", answer)
    async with serve(app) as port:
        yield port


@pytest.fixture
def refused_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def status_server(**kwargs: Any) -> AsyncIterator[tuple[StatusServer, aiohttp.ClientSession, str]]:
    settings: dict[str, Any] = {
        "ready": Readiness(),
        "probers": {},
        "app_host": "127.0.0.1",
        "registry": agent_registry(),
        "cert_info": lambda: {"identity": "spiffe://cluster.local/ns/default/sa/web", "rotations": 1},
        "bind_address": "127.0.0.1",
        "port": 0,
    }
    settings.update(kwargs)
    async with StatusServer(**settings) as server, aiohttp.ClientSession() as client:
        yield server, client, f"http://127.0.0.1:{server.port}"


# -- readiness ----------------------------------------------------------------------------------


async def test_readiness_follows_the_wiring() -> None:
    readiness = Readiness()
    async with status_server(ready=readiness) as (_, client, base):
        async with client.get(f"{base}/healthz/ready") as response:
            assert (response.status, await response.text()) == (503, "envoy has not received listeners yet\n")
        readiness.state = ReadyState(ready=True)
        async with client.get(f"{base}/healthz/ready") as response:
            assert (response.status, await response.text()) == (200, "ready\n")
        readiness.state = RuntimeError("admin API unreachable")
        async with client.get(f"{base}/healthz/ready") as response:
            assert response.status == 503
            assert "admin API unreachable" in await response.text()


# -- application probes -------------------------------------------------------------------------


async def test_connections_beyond_the_cap_are_closed_and_the_port_serves_once_they_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any pod can connect to 15020, and the agent's descriptors are also its SDS and xDS connections:
    with no cap, enough connections left the agent none (and Envoy none of its secrets)."""
    monkeypatch.setattr(status, "MAX_CONNECTIONS", 8)
    async with status_server() as (server, client, base):
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(12)]
        closed = 0
        for reader, _ in held:
            with contextlib.suppress(asyncio.TimeoutError):
                closed += await asyncio.wait_for(reader.read(1), 0.2) == b""
        assert closed == 4
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        async with client.get(f"{base}/healthz/ready") as response:
            assert response.status == 503  # answered: nothing is ready in this wiring
        async with client.get(f"{base}/stats/prometheus") as response:
            assert "meshplane_agent_connections_refused_total 4.0" in await response.text()


async def test_the_kubelets_probe_is_answered_while_another_address_fills_the_port_with_silent_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any pod can hold every place of the status port with connections that send nothing: the probe,
    from the node's address, takes the place of one of them, so the pod does not go unready."""
    monkeypatch.setattr(status, "MAX_CONNECTIONS", 8)
    async with status_server() as (server, client, base):
        held = [await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.2", 0)) for _ in range(8)]
        try:
            for _ in range(3):
                async with client.get(f"{base}/healthz/ready") as response:
                    assert response.status == 503  # answered: nothing is ready in this wiring
        finally:
            for _, writer in held:
                writer.close()


async def test_app_probes_answer_200_when_they_pass_and_500_when_they_fail() -> None:
    async with app_server() as (app_port, seen):
        probers = parse_probers(
            json.dumps(
                {
                    "/app-health/web/readyz": {"httpGet": {"path": "/ok", "port": app_port}},
                    "/app-health/web/livez": {"httpGet": {"path": "/fail", "port": app_port}},
                    "/app-health/web/startupz": {"tcpSocket": {"port": app_port}},
                }
            )
        )
        async with status_server(probers=probers) as (_, client, base):
            statuses = {}
            for kind in ("readyz", "livez", "startupz"):
                async with client.get(f"{base}/app-health/web/{kind}") as response:
                    statuses[kind] = response.status
            headers = {"User-Agent": "kube-probe/1.33", "X-Probe": "readiness"}
            async with client.get(f"{base}/app-health/web/readyz", headers=headers) as response:
                assert response.status == 200
    assert statuses == {"readyz": 200, "livez": 500, "startupz": 200}
    assert seen.paths() == ["/ok", "/fail", "/ok"]
    _, forwarded, _ = seen.requests[-1]
    assert (forwarded["User-Agent"], forwarded["X-Probe"]) == ("kube-probe/1.33", "readiness")
    assert forwarded["Host"] == f"127.0.0.1:{app_port}"


async def test_an_unknown_probe_path_is_404_naming_it() -> None:
    probers = parse_probers('{"/app-health/web/readyz": {"tcpSocket": {"port": 1}}}')
    async with status_server(probers=probers) as (_, client, base), client.get(f"{base}/app-health/api/readyz") as r:
        assert r.status == 404
        text = await r.text()
    assert "/app-health/api/readyz" in text
    assert "/app-health/web/readyz" in text


async def test_other_paths_are_404() -> None:
    async with status_server() as (_, client, base):
        for path in ("/", "/healthz", "/metrics", "/app-health/web", "/debug/certs/x"):
            async with client.get(f"{base}{path}") as response:
                assert response.status == 404, path


# -- merged metrics -----------------------------------------------------------------------------


async def test_stats_merge_the_agent_envoy_and_the_application() -> None:
    app_registry = CollectorRegistry()
    Gauge("app_queue_depth", "queue", registry=app_registry).set(4)
    async with (
        metrics_source(ENVOY_STATS, "text/plain; version=0.0.4") as envoy_port,
        metrics_source(generate_latest(app_registry), "text/plain; version=0.0.4") as app_port,
        status_server(
            envoy_stats_url=f"http://127.0.0.1:{envoy_port}/stats/prometheus",
            prometheus_annotations=json.dumps({"scrape": "true", "path": "", "port": str(app_port)}),
        ) as (_, client, base),
        client.get(f"{base}/stats/prometheus") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["meshplane_agent_certificates_total"] == 3
    assert samples["envoy_cluster_upstream_cx_total"] == 7
    assert samples["app_queue_depth"] == 4
    assert samples["istio_agent_scrapes_total"] == 1
    assert text.index("meshplane_agent_") < text.index("envoy_cluster") < text.index("app_queue_depth")


async def test_a_dead_source_is_skipped_and_counted(refused_port: int) -> None:
    app_registry = CollectorRegistry()
    Gauge("app_queue_depth", "queue", registry=app_registry).set(4)
    async with (
        metrics_source(generate_openmetrics(app_registry), "application/openmetrics-text; version=1.0.0") as app_port,
        status_server(
            envoy_stats_url=f"http://127.0.0.1:{refused_port}/stats/prometheus",
            prometheus_annotations=json.dumps({"scrape": "true", "path": "/metrics", "port": str(app_port)}),
        ) as (_, client, base),
        client.get(f"{base}/stats/prometheus") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples = {
        (s.name, s.labels.get("type", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("app_queue_depth", "")] == 4
    assert samples[("istio_agent_scrape_failures_total", "envoy")] == 1  # this scrape's failure is in its own output
    assert ("istio_agent_scrape_failures_total", "application") not in samples
    assert "# EOF" not in text


async def test_stats_without_envoy_or_app_serve_the_agent_alone() -> None:
    async with (
        status_server(envoy_stats_url=None, prometheus_annotations="") as (_, client, base),
        client.get(f"{base}/stats/prometheus") as response,
    ):
        assert response.status == 200
        text = await response.text()
    names = [s.name for family in text_string_to_metric_families(text) for s in family.samples]
    assert "meshplane_agent_certificates_total" in names
    assert "istio_agent_scrape_failures_total" not in names


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("", []),
        ('{"scrape":"","path":"","port":""}', []),
        ('{"scrape":"false","path":"/m","port":"9090"}', []),
        ('{"scrape":"true","path":"","port":"9080"}', ["http://10.1.2.3:9080/metrics"]),
        ('{"scrape":"true","path":"/metrics","port":"9102"}', ["http://10.1.2.3:9102/metrics"]),
        ('{"scrape":"true","path":"stats","port":""}', ["http://10.1.2.3:80/stats"]),
        (
            '{"scrape":"","path":"/metrics","port":"8080",'
            '"targets":[{"port":"8080","path":"/metrics"},{"port":"9100","path":""}]}',
            ["http://10.1.2.3:8080/metrics", "http://10.1.2.3:9100/metrics"],
        ),
        ('{"scrape":"false","targets":[{"port":"8080","path":"/metrics"}]}', []),
    ],
)
def test_app_metrics_location_follows_the_saved_annotations(text: str, urls: list[str]) -> None:
    assert [url for _, url in app_metrics_urls(text, host="10.1.2.3")] == urls


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('"x"', "must be a JSON object"),
        ('{"scrape":"true","port":"http"}', "port 'http' is not a port number"),
        ('{"scrape":"true","port":"15020"}', "port 15020 is the sidecar's own (agent status)"),
        ('{"scrape":"true","port":"15090"}', "port 15090 is the sidecar's own (Envoy Prometheus)"),
        ('{"scrape":true,"port":"9090"}', "scrape must be a string"),
        ('{"targets":[{"port":"8080","path":"/m"},{"port":"15000","path":"/m"}]}', "targets[1].port 15000"),
        ('{"targets":[{"port":"x","path":"/m"}]}', "targets[0].port 'x' is not a port number"),
        ('{"targets":{"port":"8080"}}', "targets must be a list"),
    ],
)
def test_bad_prometheus_annotations_are_refused_naming_the_env(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        StatusServer(
            ready=Readiness(),
            probers={},
            app_host="127.0.0.1",
            registry=CollectorRegistry(),
            cert_info=dict,
            prometheus_annotations=text,
        )
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" in str(info.value)
    assert message in str(info.value)


def targets_env(*ports: int, path: str = "/metrics") -> str:
    """ISTIO_PROMETHEUS_ANNOTATIONS as the injector writes it for `prometheus.istio.io/scrape-targets`."""
    targets = [{"port": str(port), "path": path} for port in ports]
    return json.dumps({"scrape": "true", "path": path, "port": str(ports[0]), "targets": targets})


def gauge_text(name: str, value: float, *, openmetrics: bool = False) -> bytes:
    registry = CollectorRegistry()
    Gauge(name, name, registry=registry).set(value)
    return generate_openmetrics(registry) if openmetrics else generate_latest(registry)


def samples_of(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("type", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client: aiohttp.ClientSession, base: str) -> tuple[str, str]:
    async with client.get(f"{base}/stats/prometheus") as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


async def test_scrape_targets_are_scraped_together_and_merged_in_declared_order() -> None:
    second_asked = asyncio.Event()

    async def first(_: web.Request) -> web.Response:
        await second_asked.wait()  # answers only once the second target has been asked: scrapes run together
        return web.Response(body=gauge_text("app_first", 1), content_type="text/plain")

    async def second(_: web.Request) -> web.Response:
        second_asked.set()
        return web.Response(body=gauge_text("app_second", 2), content_type="text/plain")

    first_app, second_app = web.Application(), web.Application()
    first_app.router.add_get("/metrics", first)
    second_app.router.add_get("/metrics", second)
    async with (
        serve(first_app) as first_port,
        serve(second_app) as second_port,
        metrics_source(ENVOY_STATS, "text/plain; version=0.0.4") as envoy_port,
        status_server(
            envoy_stats_url=f"http://127.0.0.1:{envoy_port}/stats/prometheus",
            prometheus_annotations=targets_env(first_port, second_port),
        ) as (_, client, base),
    ):
        content_type, text = await scrape(client, base)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples = samples_of(text)
    assert (samples[("app_first", "")], samples[("app_second", "")]) == (1, 2)
    assert ("istio_agent_scrape_failures_total", "application") not in samples
    order = [text.index(name) for name in ("meshplane_agent_", "envoy_cluster", "app_first", "app_second")]
    assert order == sorted(order)


async def test_a_scrape_target_that_is_down_is_left_out_counted_and_logged_once(
    refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="controlplane.agent.status")
    async with (
        metrics_source(gauge_text("app_first", 1), "text/plain; version=0.0.4") as first_port,
        metrics_source(gauge_text("app_third", 3), "text/plain; version=0.0.4") as third_port,
        status_server(prometheus_annotations=targets_env(first_port, refused_port, third_port)) as (_, client, base),
    ):
        _, text = await scrape(client, base)
    samples = samples_of(text)
    assert (samples[("app_first", "")], samples[("app_third", "")]) == (1, 3)
    assert samples[("istio_agent_scrape_failures_total", "application")] == 1
    assert text.index("app_first") < text.index("app_third")
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert f'target "{refused_port}:/metrics"' in failures[0]


async def test_a_scrape_target_over_the_size_cap_is_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="controlplane.agent.status")
    big = gauge_text("app_big", 1) + b"".join(b'app_padding{i="%d"} 1\n' % i for i in range(200))
    assert len(big) > 2048
    async with (
        metrics_source(big, "text/plain; version=0.0.4") as big_port,
        metrics_source(gauge_text("app_small", 2), "text/plain; version=0.0.4") as small_port,
        status_server(
            prometheus_annotations=targets_env(big_port, small_port),
            max_app_metrics_bytes=2048,  # the 10 MiB cap, made small
        ) as (_, client, base),
    ):
        _, text = await scrape(client, base)
    samples = samples_of(text)
    assert samples[("app_small", "")] == 2
    assert "app_big" not in text and "app_padding" not in text
    assert samples[("istio_agent_scrape_failures_total", "application")] == 1
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert f'target "{big_port}:/metrics"' in failures[0]
    assert "larger than 2048 bytes" in failures[0]


async def test_openmetrics_scrape_targets_merge_into_one_exposition_with_a_single_eof() -> None:
    openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    async with (
        metrics_source(gauge_text("app_first", 1, openmetrics=True), openmetrics) as first_port,
        metrics_source(gauge_text("app_second", 2, openmetrics=True), openmetrics) as second_port,
        status_server(prometheus_annotations=targets_env(first_port, second_port)) as (_, client, base),
    ):
        content_type, text = await scrape(client, base)
    assert content_type == openmetrics
    assert text.count("# EOF") == 1
    assert text.endswith("app_second 2.0\n# EOF\n")
    assert text.index("app_first") < text.index("app_second")


async def test_mixed_text_and_openmetrics_targets_merge_as_text_without_eof() -> None:
    async with (
        metrics_source(gauge_text("app_first", 1), "text/plain; version=0.0.4") as first_port,
        metrics_source(gauge_text("app_second", 2, openmetrics=True), "application/openmetrics-text") as second_port,
        status_server(prometheus_annotations=targets_env(first_port, second_port)) as (_, client, base),
    ):
        content_type, text = await scrape(client, base)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "# EOF" not in text
    samples = samples_of(text)
    assert (samples[("app_first", "")], samples[("app_second", "")]) == (1, 2)


async def test_a_single_scrape_target_is_served_as_prometheus_io_port_and_path_are() -> None:
    openmetrics = "application/openmetrics-text; version=1.0.0"
    answers = []
    async with metrics_source(gauge_text("app_only", 1, openmetrics=True), openmetrics) as port:
        legacy = json.dumps({"scrape": "true", "path": "/metrics", "port": str(port)})
        for saved in (legacy, targets_env(port)):
            async with status_server(prometheus_annotations=saved) as (_, client, base):
                answers.append(await scrape(client, base))
    created = re.compile(r"^\S+_created .*\n", re.MULTILINE)  # when each registry was made
    (legacy_type, legacy_text), (target_type, target_text) = answers
    assert (target_type, created.sub("", target_text)) == (legacy_type, created.sub("", legacy_text))
    assert "# EOF" not in target_text and "app_only 1.0" in target_text


# -- certificates, lifecycle --------------------------------------------------------------------


async def test_debug_certs_serve_the_wiring_document() -> None:
    async with status_server() as (_, client, base), client.get(f"{base}/debug/certs") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        document = await response.json()
    assert document == {"identity": "spiffe://cluster.local/ns/default/sa/web", "rotations": 1}


async def test_a_port_in_use_is_an_error_naming_the_address() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        server = StatusServer(
            ready=Readiness(),
            probers={},
            app_host="127.0.0.1",
            registry=CollectorRegistry(),
            cert_info=dict,
            bind_address="127.0.0.1",
            port=port,
        )
        with pytest.raises(StatusError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            await server.start()
        await server.stop()
    finally:
        holder.close()


async def test_stop_closes_open_connections() -> None:
    async with status_server() as (server, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                         .split(b":")[1])  # fmt: skip
            await reader.readexactly(length)
            await server.stop()
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()
