"""Proxyless mode: `meshplane agent` writes the gRPC xDS bootstrap and certificate files, and a
grpcio client using nothing else calls a mesh gRPC service over xDS-managed mTLS.

The backend is a gRPC server whose certificate (for its own SPIFFE identity) comes from the same
CA, requiring client certificates: the call succeeds only if the client presented the certificate
the agent wrote, and the server reads the client's identity from the TLS session.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from controlplane.agent.caclient import CaClient
from controlplane.agent.secrets import SecretManager
from tests.agent.conftest import pick_loopback
from tests.agent.test_agent_process import get
from tests.certs.test_e2e_serve import token
from tests.discovery import meshdata as m
from tests.e2e.envoyproxy import wait_for
from tests.helpers.serve import SERVER_NAME, Running, meshplane_cmd, start_serve

NS = "shop"
SERVICE_PORT = 7070
# Backends listen on a loopback address of their own (pick_loopback), so a fixed port is not contended;
# it is below the kernel's ephemeral range, so no port-0 socket anywhere can be holding it.
BACKEND_PORT = 9080
METHOD = "/meshplane.test.Echo/Who"

CLIENT = r"""
import sys, grpc, grpc.experimental
creds = grpc.xds_channel_credentials(fallback_credentials=grpc.experimental.insecure_channel_credentials())
with grpc.secure_channel(sys.argv[1], creds) as channel:
    call = channel.unary_unary(sys.argv[2], request_serializer=None, response_deserializer=None)
    print(call(b"", timeout=30).decode(), flush=True)
"""


@pytest.fixture
def workdir() -> Iterator[pathlib.Path]:
    path = pathlib.Path(tempfile.mkdtemp(prefix="mp-grpc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def backend_credential(running: Running, workdir: pathlib.Path) -> tuple[bytes, bytes]:
    """A certificate for the backend's identity from the mesh CA (the way an agent gets one)."""
    (workdir / "greeter.token").write_text(token(running, "--namespace", NS, "--service-account", "greeter"))
    manager = SecretManager(
        identity=f"spiffe://cluster.local/ns/{NS}/sa/greeter",
        client=CaClient(address=running.addr("secure-grpc"), server_name=SERVER_NAME),
        token_file=workdir / "greeter.token",
        root_file=running.root_cert,
    )

    async def once() -> None:
        task = asyncio.create_task(manager.run())
        await manager.wait_change(0)  # the first change is the first certificate (the roots load with it)
        task.cancel()

    asyncio.run(asyncio.wait_for(once(), 30))
    assert manager.credential is not None
    return manager.credential.key_pem, manager.credential.chain_pem


def start_proxyless_agent(
    running: Running, workdir: pathlib.Path, *, client_ip: str, bootstrap: pathlib.Path, log: pathlib.Path
) -> subprocess.Popen[bytes]:
    """`meshplane agent` in proxyless mode for client-1 (sa client), once its status port says ready."""
    (workdir / "client.token").write_text(token(running, "--namespace", NS, "--service-account", "client"))
    env = {**os.environ, "ISTIO_META_GENERATOR": "grpc", "ISTIO_META_INTERCEPTION_MODE": "NONE"}
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [
                *meshplane_cmd(), "agent", "proxy", "sidecar",
                "--pod-name", "client-1", "--pod-namespace", NS, "--instance-ip", client_ip,
                "--service-account", "client",
                "--discovery-address", running.addr("secure-grpc"), "--istiod-san", SERVER_NAME,
                "--token-file", str(workdir / "client.token"), "--root-cert", str(running.root_cert),
                "--labels-file", str(workdir / "none"), "--sds-socket", str(workdir / "sds.sock"),
                "--proxy-dir", str(workdir / "proxy"), "--bind-address", client_ip,
                "--grpc-xds-bootstrap", str(bootstrap), "--output-certs", str(workdir / "certs"),
            ],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_for(lambda: get(f"http://{client_ip}:15020/healthz/ready")[0] == 200, what="proxyless agent ready")
    except BaseException:
        agent.kill()
        agent.wait()
        raise
    return agent


def test_grpc_client_uses_the_agents_bootstrap_and_certificates_for_mtls(workdir: pathlib.Path) -> None:
    backend_ip, client_ip = pick_loopback(), pick_loopback()
    backend_port = BACKEND_PORT
    config = workdir / "config"
    config.mkdir()
    ports = [{"name": "grpc", "port": SERVICE_PORT, "targetPort": backend_port}]
    objects = [
        m.namespace(NS),
        m.service("greeter", NS, ports=ports, cluster_ip="10.96.70.7"),
        m.endpoint_slice("greeter", NS, ips=[backend_ip], port=backend_port, port_name="grpc"),
        m.pod("greeter-1", backend_ip, NS, app="greeter", sa="greeter"),
        m.pod("client-1", client_ip, NS, app="client", sa="client"),
    ]
    (config / "mesh.yaml").write_text(m.dump_yaml(objects))
    running = start_serve(workdir, "--config-dir", str(config), "--serving-hosts", "127.0.0.1")
    server = None
    agent = None
    try:
        key, chain = backend_credential(running, workdir)
        seen: list[str] = []

        def who(_request: bytes, context: grpc.ServicerContext) -> bytes:
            uris = context.auth_context().get("x509_subject_alternative_name", [])
            seen.extend(u.decode() for u in uris)
            return b"greeter"

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "meshplane.test.Echo",
            {"Who": grpc.unary_unary_rpc_method_handler(who, request_deserializer=None, response_serializer=None)},
        )
        server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=running.root_cert.read_bytes(), require_client_auth=True
        )
        server.add_secure_port(f"{backend_ip}:{backend_port}", creds)
        server.start()

        bootstrap = workdir / "grpc-bootstrap.json"
        log = workdir / "agent.log"
        agent = start_proxyless_agent(running, workdir, client_ip=client_ip, bootstrap=bootstrap, log=log)
        assert json.loads(bootstrap.read_text())["certificate_providers"]["default"]["plugin_name"] == "file_watcher"
        assert {p.name for p in (workdir / "certs").iterdir()} >= {"cert-chain.pem", "key.pem", "root-cert.pem"}
        assert not (workdir / "proxy" / "envoy-rev.json").exists()  # no Envoy in proxyless mode

        result = subprocess.run(
            [sys.executable, "-c", CLIENT, f"xds:///greeter.{NS}.svc.cluster.local:{SERVICE_PORT}", METHOD],
            env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:] + (workdir / "agent.log").read_text()[-3000:]
        assert result.stdout.strip() == "greeter"
        assert f"spiffe://cluster.local/ns/{NS}/sa/client" in seen
    finally:
        if agent is not None:
            agent.terminate()
            assert agent.wait(30) == 0, log.read_text()[-3000:]
        if server is not None:
            server.stop(0)
        running.stop()
