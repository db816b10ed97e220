"""grpcio's built-in xDS client against `meshplane serve`: resolve, balance, follow endpoint removal,
and mesh mTLS from xDS (gRFC A29) with certificates from the bootstrap's file_watcher provider.

The client runs in its own process (the xDS client is a process-wide singleton configured from
GRPC_XDS_BOOTSTRAP) and prints which backend answered each call; the backends are real gRPC
servers in this process, on 127.0.0.x addresses.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import queue
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from tests.discovery import meshdata as m
from tests.discovery.pki import MeshRoot
from tests.e2e.envoyproxy import wait_for
from tests.helpers.serve import Running, start_serve

METHOD = "/meshplane.test.Echo/Who"
TARGET_PORT = 7070

CLIENT = r"""
import sys, time, grpc
channel = grpc.insecure_channel(sys.argv[1])
call = channel.unary_unary(sys.argv[2], request_serializer=None, response_deserializer=None)
while True:
    try:
        print(call(b"", timeout=10).decode(), flush=True)
    except grpc.RpcError as exc:
        print("error:" + exc.code().name + ":" + (exc.details() or ""), flush=True)
        time.sleep(0.1)
    time.sleep(0.01)
"""


def backend(host: str, name: str, *, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    """A gRPC server on `host` and a port the kernel picks, answering `name`, followed by the caller's URI
    SANs when the caller sent a certificate; returns the started server and its port."""

    def who(_request: bytes, context: grpc.ServicerContext) -> bytes:
        sans = context.auth_context().get("x509_subject_alternative_name", [])
        return " ".join([name, *(san.decode() for san in sans)]).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "meshplane.test.Echo",
        {"Who": grpc.unary_unary_rpc_method_handler(who, request_deserializer=None, response_serializer=None)},
    )
    server.add_generic_rpc_handlers((handler,))
    if credentials is None:
        port = server.add_insecure_port(f"{host}:0")
    else:
        port = server.add_secure_port(f"{host}:0", credentials)
    assert port, f"cannot listen on {host}"
    server.start()
    return server, port


def mesh(endpoints: dict[str, int]) -> str:
    """Service `echo` with one EndpointSlice per {ip: port} of `endpoints`."""
    return m.dump_yaml(
        [
            m.service("echo", ports=[{"name": "grpc", "port": TARGET_PORT}], cluster_ip="10.96.7.7"),
            *(
                m.endpoint_slice("echo", ips=[ip], port=port, port_name="grpc", name=f"echo-{n}")
                for n, (ip, port) in enumerate(endpoints.items())
            ),
        ]
    )


class Client:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def take(self, count: int, *, timeout: float = 30.0) -> list[str]:
        return [self.lines.get(timeout=timeout) for _ in range(count)]


@pytest.fixture
def running(tmp_path: pathlib.Path) -> Iterator[tuple[Running, pathlib.Path, dict[str, int]]]:
    """Backends `backend-a` on 127.0.0.1 and `backend-b` on 127.0.0.2, both endpoints of `echo`, and serve."""
    config = tmp_path / "config"
    config.mkdir()
    with contextlib.ExitStack() as cleanup:
        endpoints: dict[str, int] = {}
        for ip, name in (("127.0.0.1", "backend-a"), ("127.0.0.2", "backend-b")):
            server, endpoints[ip] = backend(ip, name)
            cleanup.callback(server.stop, 0)
        (config / "echo.yaml").write_text(mesh(endpoints))
        serve = start_serve(tmp_path, "--config-dir", str(config), env={"PILOT_DEBOUNCE_AFTER": "0s"})
        cleanup.callback(serve.stop)
        yield serve, config, endpoints


def bootstrap(path: pathlib.Path, xds_port: int, *, certificates: pathlib.Path | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": "sidecar~127.0.0.9~client-0.default~default.svc.cluster.local",
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "ISTIO_VERSION": "1.40.0"},
            "locality": {},
        },
    }
    if certificates is not None:  # what the agent writes in proxyless mode (OUTPUT_CERTS)
        data["certificate_providers"] = {
            "default": {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": str(certificates / "cert-chain.pem"),
                    "private_key_file": str(certificates / "key.pem"),
                    "ca_certificate_file": str(certificates / "root-cert.pem"),
                    "refresh_interval": "900s",
                },
            }
        }
    path.write_text(json.dumps(data))
    return data


def test_grpc_xds_client_balances_and_drops_a_removed_backend(
    tmp_path: pathlib.Path, running: tuple[Running, pathlib.Path, dict[str, int]]
) -> None:
    serve, config, endpoints = running
    boot = tmp_path / "grpc-bootstrap.json"
    bootstrap(boot, serve.ports["grpc"])
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, f"xds:///echo.default.svc.cluster.local:{TARGET_PORT}", METHOD],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"GRPC_XDS_BOOTSTRAP": str(boot), "PATH": "/usr/bin:/bin"},
    )
    try:
        client = Client(proc)
        seen = Counter(wait_for(lambda: _both(client), timeout=60, what="calls to reach both backends"))
        assert set(seen) == {"backend-a", "backend-b"}, seen

        (config / "echo.yaml").write_text(mesh({"127.0.0.1": endpoints["127.0.0.1"]}))
        wait_for(lambda: set(client.take(20)) == {"backend-a"}, timeout=60, what="backend-b to be dropped")
        assert set(client.take(30)) == {"backend-a"}

        syncz = json.loads(_get(f"{serve.http_url}/debug/syncz"))
        (entry,) = [p for p in syncz if p["proxy"] == "client-0.default"]
        assert entry["generator"] == "grpc"
        assert {t: v["status"] for t, v in entry["types"].items()} == {
            "CDS": "SYNCED",
            "EDS": "SYNCED",
            "LDS": "SYNCED",
            "RDS": "SYNCED",
        }
    finally:
        proc.kill()
        proc.wait()


def _both(client: Client) -> list[str] | None:
    batch = client.take(20)
    errors = [line for line in batch if line.startswith("error:")]
    if errors and len(errors) == len(batch):
        return None
    return batch if {"backend-a", "backend-b"} <= set(batch) else None


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


XDS_CLIENT = r"""
import sys, time, grpc, grpc.experimental
credentials = grpc.xds_channel_credentials(fallback_credentials=grpc.experimental.insecure_channel_credentials())
calls = [
    (target, grpc.secure_channel("xds:///" + target, credentials).unary_unary(sys.argv[1]))
    for target in sys.argv[2:]
]
while True:
    for target, call in calls:
        try:
            print(target + " " + call(b"", timeout=10).decode(), flush=True)
        except grpc.RpcError as exc:
            print(target + " error:" + exc.code().name + ":" + (exc.details() or ""), flush=True)
    time.sleep(0.05)
"""

SECURE_ID = "spiffe://cluster.local/ns/default/sa/secure"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SECURE, PLAIN, IMPOSTOR = (
    f"{name}.default.svc.cluster.local:{TARGET_PORT}" for name in ("secure", "plain", "impostor")
)


MTLS_IPS = {"secure": "127.0.0.1", "plain": "127.0.0.2", "impostor": "127.0.0.3"}


def mtls_mesh(ports: dict[str, int]) -> str:
    """`secure` and `impostor` run sidecars (tlsMode: istio); `plain` has no pod the mesh knows."""
    objects: list[dict[str, Any]] = []
    for name, ip in MTLS_IPS.items():
        objects += [
            m.service(name, ports=[{"name": "grpc", "port": TARGET_PORT, "targetPort": ports[name]}], cluster_ip=None),
            m.endpoint_slice(name, ips=[ip], port=ports[name], port_name="grpc"),
        ]
        if name != "plain":
            objects.append(m.pod(f"{name}-0", ip, app=name, sa=name))
    return m.dump_yaml(objects)


def test_grpc_xds_client_uses_mesh_mtls_for_sidecar_endpoints_and_plaintext_otherwise(tmp_path: pathlib.Path) -> None:
    root = MeshRoot()
    certs = tmp_path / "certs"
    certs.mkdir()
    client_leaf = root.issue("spiffe://cluster.local/ns/default/sa/client")
    (certs / "cert-chain.pem").write_bytes(client_leaf.cert_pem)
    (certs / "key.pem").write_bytes(client_leaf.key_pem)
    (certs / "root-cert.pem").write_bytes(root.pem)

    def server_credentials(spiffe: str) -> grpc.ServerCredentials:
        leaf = root.issue(spiffe)
        return grpc.ssl_server_credentials(
            [(leaf.key_pem, leaf.cert_pem)], root_certificates=root.pem, require_client_auth=True
        )

    config = tmp_path / "config"
    config.mkdir()
    with contextlib.ExitStack() as cleanup:
        ports: dict[str, int] = {}
        for name, identity in (
            ("secure", SECURE_ID),
            ("plain", None),
            # Trusted root, but not the identity the mesh knows for `impostor`'s pod: the client must refuse it.
            ("impostor", SECURE_ID),
        ):
            credentials = server_credentials(identity) if identity else None
            server, ports[name] = backend(MTLS_IPS[name], name, credentials=credentials)
            cleanup.callback(server.stop, 0)
        (config / "mesh.yaml").write_text(mtls_mesh(ports))
        serve = start_serve(tmp_path, "--config-dir", str(config), env={"PILOT_DEBOUNCE_AFTER": "0s"})
        cleanup.callback(serve.stop)
        boot = tmp_path / "grpc-bootstrap.json"
        bootstrap(boot, serve.ports["grpc"], certificates=certs)
        proc = subprocess.Popen(
            [sys.executable, "-c", XDS_CLIENT, METHOD, SECURE, PLAIN, IMPOSTOR],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={"GRPC_XDS_BOOTSTRAP": str(boot), "PATH": "/usr/bin:/bin"},
        )
        cleanup.callback(proc.wait)
        cleanup.callback(proc.kill)
        client = Client(proc)
        answers = wait_for(lambda: _answered(client), timeout=60, what="calls to the secure and plain backends")
        assert answers[SECURE] == f"secure {CLIENT_ID}"  # mTLS, and the server saw the client's identity
        assert answers[PLAIN] == "plain"  # no sidecar: plaintext, no client certificate
        assert answers[IMPOSTOR].startswith("error:UNAVAILABLE:"), answers
        assert "SANs from certificate did not match" in answers[IMPOSTOR], answers

        syncz = json.loads(_get(f"{serve.http_url}/debug/syncz"))  # gRPC keeps one xDS client per target
        entries = [p for p in syncz if p["proxy"] == "client-0.default"]
        assert entries and all({v["status"] for v in e["types"].values()} == {"SYNCED"} for e in entries), syncz


def _answered(client: Client) -> dict[str, str] | None:
    """The latest answer per target, once the secure and plain backends both answered."""
    answers: dict[str, str] = {}
    for line in client.take(30):
        target, _, answer = line.partition(" ")
        answers[target] = answer
    good = answers.get(SECURE, "").startswith("secure") and answers.get(PLAIN) == "plain"
    return answers if good and IMPOSTOR in answers else None
