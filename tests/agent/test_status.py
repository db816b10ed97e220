"""The status server over real HTTP: readiness, application probes, merged metrics, certificates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from controlplane.agent.probes import parse_probers
from controlplane.agent.status import ReadyState, StatusError, StatusServer, app_metrics_url
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
    ("text", "url"),
    [
        ("", None),
        ('{"scrape":"","path":"","port":""}', None),
        ('{"scrape":"false","path":"/m","port":"9090"}', None),
        ('{"scrape":"true","path":"","port":"9080"}', "http://10.1.2.3:9080/metrics"),
        ('{"scrape":"true","path":"/metrics","port":"9102"}', "http://10.1.2.3:9102/metrics"),
        ('{"scrape":"true","path":"stats","port":""}', "http://10.1.2.3:80/stats"),
    ],
)
def test_app_metrics_location_follows_the_saved_annotations(text: str, url: str | None) -> None:
    assert app_metrics_url(text, host="10.1.2.3") == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('"x"', "must be a JSON object"),
        ('{"scrape":"true","port":"http"}', "port 'http' is not a port number"),
        ('{"scrape":"true","port":"15020"}', "port 15020 is the sidecar's own (agent status)"),
        ('{"scrape":"true","port":"15090"}', "port 15090 is the sidecar's own (Envoy Prometheus)"),
        ('{"scrape":true,"port":"9090"}', "scrape must be a string"),
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
