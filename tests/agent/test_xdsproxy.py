"""The agent's local xDS proxy: a proxyless gRPC client stays connected to the agent while the control
plane is killed and restarted, and is SYNCED again as soon as the new control plane is up.

Over the real wire: a real `meshplane serve` (killed with SIGKILL and restarted on the same ports and
state dir), the agent's proxy on its Unix socket, and as clients a real grpcio xDS client or a raw ADS
stream that controls every nonce it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.agent.caclient import CaClient
from controlplane.agent.secrets import SecretManager
from controlplane.agent.xdsproxy import ADS_METHOD, ADS_SERVICE, XdsProxy, XdsProxyError, upstream_request
from controlplane.demo.status import get_json, syncz_by_proxy
from tests.agent.conftest import pick_loopback
from tests.agent.test_proxyless_agent import (
    BACKEND_PORT,
    METHOD,
    NS,
    SERVICE_PORT,
    backend_credential,
    start_proxyless_agent,
)
from tests.certs.test_e2e_serve import token
from tests.discovery import meshdata as m
from tests.discovery.pki import Leaf, MeshRoot
from tests.e2e.envoyproxy import wait_for
from tests.helpers.serve import SERVER_NAME, Running, restart_serve, start_serve

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = f"greeter.{NS}.svc.cluster.local:{SERVICE_PORT}"
CLUSTER = f"outbound|{SERVICE_PORT}||greeter.{NS}.svc.cluster.local"

# Calls the greeter every 0.2 s on one channel, one line per call: the answer, or the status code.
CLIENT = r"""
import sys, time, grpc, grpc.experimental
creds = grpc.xds_channel_credentials(fallback_credentials=grpc.experimental.insecure_channel_credentials())
with grpc.secure_channel(sys.argv[1], creds) as channel, open(sys.argv[3], "a") as out:
    call = channel.unary_unary(sys.argv[2], request_serializer=None, response_deserializer=None)
    while True:
        try:
            out.write(call(b"", timeout=10).decode() + "\n")
        except grpc.RpcError as exc:
            out.write(f"error {exc.code().name}\n")
        out.flush()
        time.sleep(0.2)
"""


# -- the control plane, killed and restarted -------------------------------------------------------


def mesh_config(config: pathlib.Path, *, client_ip: str, backend_ip: str, backend_port: int) -> None:
    ports = [{"name": "grpc", "port": SERVICE_PORT, "targetPort": backend_port}]
    objects = [
        m.namespace(NS),
        m.service("greeter", NS, ports=ports, cluster_ip="10.96.70.7"),
        m.endpoint_slice("greeter", NS, ips=[backend_ip], port=backend_port, port_name="grpc"),
        m.pod("greeter-1", backend_ip, NS, app="greeter", sa="greeter"),
        m.pod("client-1", client_ip, NS, app="client", sa="client"),
    ]
    tmp = config / ".mesh.yaml.new"
    tmp.write_text(m.dump_yaml(objects))
    os.replace(tmp, config / "mesh.yaml")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def kill(running: Running) -> None:
    """SIGKILL `meshplane serve`; wait until its signing workers have noticed and exited too."""
    workers = children_of(running.proc.pid)
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait()
    try:
        wait_for(lambda: not any(pathlib.Path(f"/proc/{pid}").exists() for pid in workers), what="workers to exit")
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def sync_state(running: Running, proxy: str) -> dict[str, str]:
    """{xDS type: SYNCED/STALE/NACKED/NOT SENT} of `proxy` in the control plane's /debug/syncz."""
    try:
        return syncz_by_proxy(get_json(f"{running.http_url}/debug/syncz")).get(proxy, {})
    except OSError:
        return {}


def all_synced(running: Running, proxy: str, types: set[str]) -> bool:
    state = sync_state(running, proxy)
    return set(state) == types and set(state.values()) == {"SYNCED"}


# -- 1. a real grpcio xDS client through a real agent --------------------------------------------


def test_proxyless_client_is_synced_again_after_the_control_plane_is_killed_and_restarted(
    workdir: pathlib.Path,
) -> None:
    client_ip, first_ip, second_ip = pick_loopback(), pick_loopback(), pick_loopback()
    backend_port = BACKEND_PORT
    config = workdir / "config"
    config.mkdir()
    mesh_config(config, client_ip=client_ip, backend_ip=first_ip, backend_port=backend_port)
    running = start_serve(workdir, "--config-dir", str(config), "--serving-hosts", "127.0.0.1")
    servers: list[grpc.Server] = []
    agent = client = None
    agent_log, answers = workdir / "agent.log", workdir / "answers.txt"
    try:
        key, chain = backend_credential(running, workdir)
        creds = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=running.root_cert.read_bytes(), require_client_auth=True
        )
        for ip, name in ((first_ip, b"greeter-1"), (second_ip, b"greeter-2")):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            handler = grpc.unary_unary_rpc_method_handler(
                lambda _req, _ctx, name=name: name, request_deserializer=None, response_serializer=None
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("meshplane.test.Echo", {"Who": handler}),)
            )
            server.add_secure_port(f"{ip}:{backend_port}", creds)
            server.start()
            servers.append(server)

        bootstrap = workdir / "grpc-bootstrap.json"
        agent = start_proxyless_agent(running, workdir, client_ip=client_ip, bootstrap=bootstrap, log=agent_log)
        xds_server = json.loads(bootstrap.read_text())["xds_servers"][0]
        assert xds_server["server_uri"] == f"unix://{workdir / 'proxy' / 'XDS'}"
        assert xds_server["channel_creds"] == [{"type": "insecure"}]
        assert stat.S_IMODE((workdir / "proxy" / "XDS").stat().st_mode) == 0o600

        target = f"xds:///greeter.{NS}.svc.cluster.local:{SERVICE_PORT}"
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, target, METHOD, str(answers)],
            env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)},
        )

        def lines() -> list[str]:
            return answers.read_text().splitlines() if answers.exists() else []

        def answered(name: str, after: int = 0) -> bool:
            return name in lines()[after:]

        types = {"LDS", "RDS", "CDS", "EDS"}
        wait_for(lambda: answered("greeter-1"), what="the gRPC client's first answer")
        wait_for(lambda: all_synced(running, "client-1.shop", types), what="the gRPC client SYNCED")

        kill(running)
        down = len(lines())
        wait_for(lambda: lines()[down:].count("greeter-1") >= 5, what="answers while the control plane is down")

        started = time.monotonic()
        running = restart_serve(running)
        ready = time.monotonic()
        wait_for(lambda: all_synced(running, "client-1.shop", types), what="the gRPC client SYNCED after the restart")
        print(f"\ncontrol plane ready {ready - started:.1f}s after the restart; "
              f"the gRPC client SYNCED {time.monotonic() - ready:.1f}s later")  # fmt: skip

        # the client really follows the new control plane: its endpoint moves to the second backend
        moved = len(lines())
        mesh_config(config, client_ip=client_ip, backend_ip=second_ip, backend_port=backend_port)
        wait_for(lambda: answered("greeter-2", moved), what="the gRPC client to follow the new endpoint")
        assert not [line for line in lines() if line.startswith("error")], lines()
        # what the agent waited for is logged once, not once per reconnection attempt
        assert agent_log.read_text().count("waiting for the xDS server") == 1, agent_log.read_text()[-3000:]
    finally:
        if client is not None:
            client.kill()
            client.wait()
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        for server in servers:
            server.stop(0)
        running.stop()
    assert agent is not None and agent.returncode == 0, agent_log.read_text()[-3000:]
    assert not (workdir / "proxy" / "XDS").exists()  # the agent removed its socket


# -- 2. the proxy in process, under a raw ADS stream ---------------------------------------------


class ControlPlane:
    """A `meshplane serve` that tests kill and restart; `running` is the current process."""

    def __init__(self, running: Running) -> None:
        self.running = running

    async def kill_and_restart(self, *, while_down: Any = None) -> None:
        await asyncio.to_thread(kill, self.running)
        if while_down is not None:
            await while_down
        self.running = await asyncio.to_thread(restart_serve, self.running)


@pytest.fixture
async def proxied(workdir: pathlib.Path) -> AsyncIterator[tuple[ControlPlane, XdsProxy]]:
    """A control plane, and an XdsProxy on workdir/XDS with a certificate for shop/client from its CA."""
    config = workdir / "config"
    config.mkdir()
    mesh_config(config, client_ip=pick_loopback(), backend_ip=pick_loopback(), backend_port=BACKEND_PORT)
    plane = ControlPlane(
        await asyncio.to_thread(start_serve, workdir, "--config-dir", str(config), "--serving-hosts", "127.0.0.1")
    )
    certificates: asyncio.Task[None] | None = None
    proxy: XdsProxy | None = None
    try:
        running = plane.running
        (workdir / "client.token").write_text(token(running, "--namespace", NS, "--service-account", "client"))
        secrets = SecretManager(
            identity=f"spiffe://cluster.local/ns/{NS}/sa/client",
            client=CaClient(address=running.addr("secure-grpc"), server_name=SERVER_NAME),
            token_file=workdir / "client.token",
            root_file=running.root_cert,
        )
        certificates = asyncio.create_task(secrets.run())
        proxy = XdsProxy(
            secrets=secrets, address=running.addr("secure-grpc"), server_name=SERVER_NAME, path=workdir / "XDS"
        )
        await proxy.start()
        yield plane, proxy
    finally:
        if proxy is not None:
            await proxy.stop()
        if certificates is not None:
            certificates.cancel()
            await asyncio.gather(certificates, return_exceptions=True)
        await asyncio.to_thread(plane.running.stop)


def node(*, service_account: str = "client") -> Any:
    n = discovery_pb2.DiscoveryRequest().node
    n.id = f"sidecar~127.0.0.1~client-1.{NS}~{NS}.svc.cluster.local"
    n.metadata.update({"NAMESPACE": NS, "SERVICE_ACCOUNT": service_account, "GENERATOR": "grpc"})
    return n


@contextlib.asynccontextmanager
async def ads(proxy: XdsProxy) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"unix:{proxy.path}") as channel:
        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        try:
            yield call
        finally:
            call.cancel()


def request(type_url: str, names: list[str], *, nonce: str = "", error: str = "", with_node: bool = False) -> Any:
    r = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names, response_nonce=nonce)
    if error:
        r.error_detail.message = error
    if with_node:
        r.node.CopyFrom(node())
    return r


async def responses(call: Any, count: int) -> dict[str, Any]:
    """The next `count` responses, by type URL (the later one wins)."""
    got: dict[str, Any] = {}
    for _ in range(count):
        response = await asyncio.wait_for(call.read(), 60)
        assert isinstance(response, discovery_pb2.DiscoveryResponse), response
        got[response.type_url] = response
    return got


async def test_stream_survives_a_restart_and_a_stale_nack_is_not_held_against_the_new_server(
    proxied: tuple[ControlPlane, XdsProxy],
) -> None:
    plane, proxy = proxied
    more = [CLUSTER, f"outbound|7071||greeter.{NS}.svc.cluster.local"]

    def synced(*types: str) -> bool:
        return all_synced(plane.running, "client-1.shop", set(types))

    async with ads(proxy) as call:
        await call.write(request(LDS, [LISTENER], with_node=True))
        old = (await responses(call, 1))[LDS]
        await call.write(request(LDS, [LISTENER], nonce=old.nonce))
        await asyncio.to_thread(wait_for, lambda: synced("LDS"), what="LDS SYNCED")

        await plane.kill_and_restart(while_down=call.write(request(CDS, [CLUSTER])))
        got = await responses(call, 2)  # on the same stream: the latest LDS request replayed, and the CDS one
        assert set(got) == {LDS, CDS} and old.nonce not in {r.nonce for r in got.values()}
        assert len(got[LDS].resources) == 1
        await call.write(request(LDS, [LISTENER], nonce=got[LDS].nonce))
        await call.write(request(CDS, [CLUSTER], nonce=got[CDS].nonce))

        # a NACK of the old server's response, then a CDS subscription change: once that is answered,
        # the new server has seen whatever the proxy sent before it
        await call.write(request(LDS, [LISTENER], nonce=old.nonce, error="rejected by the old server"))
        await call.write(request(CDS, more, nonce=got[CDS].nonce))
        barrier = (await responses(call, 1))[CDS]
        assert sync_state(plane.running, "client-1.shop")["LDS"] == "SYNCED"
        await call.write(request(CDS, more, nonce=barrier.nonce))
        await asyncio.to_thread(wait_for, lambda: synced("LDS", "CDS"), what="LDS and CDS SYNCED")
    # the gRPC client went away: so did the proxy's stream to the control plane
    await asyncio.to_thread(
        wait_for, lambda: not sync_state(plane.running, "client-1.shop"), what="the upstream stream to close"
    )


class FixedSecrets:
    """What XdsProxy reads from the SecretManager: one workload certificate and its root, never rotated."""

    def __init__(self, root: MeshRoot, leaf: Leaf) -> None:
        self.credential = type("Credential", (), {"key_pem": leaf.key_pem, "chain_pem": leaf.cert_pem})()
        self.bundle = type("Bundle", (), {"pem": root.pem})()
        self.version = 1

    async def wait_change(self, version: int) -> None:
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.INTERNAL, "Stream removed"),  # the TLS front end resets streams when the process dies
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed token reviews from client 10.1.1.1"),  # slow down
    ],
)
async def test_a_stream_reset_mid_response_is_retried_and_the_client_stream_stays_open(
    workdir: pathlib.Path, code: grpc.StatusCode, details: str
) -> None:
    root = MeshRoot()
    server_leaf = root.issue("spiffe://cluster.local/ns/istio-system/sa/istiod", dns="istiod.test")
    calls = 0

    async def upstream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        nonlocal calls
        calls += 1
        async for _ in requests:  # the replayed or first request
            break
        if calls == 1:  # a response, then the stream ends with `code`
            yield discovery_pb2.DiscoveryResponse(type_url=LDS, version_info="1", nonce="first")
            await context.abort(code, details)
        yield discovery_pb2.DiscoveryResponse(type_url=LDS, version_info="2", nonce="second")
        await asyncio.Event().wait()

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        upstream,
        request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
        response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ADS_SERVICE, {"StreamAggregatedResources": handler}),)
    )
    credentials = grpc.ssl_server_credentials(
        [(server_leaf.key_pem, server_leaf.cert_pem)], root_certificates=root.pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    client_leaf = root.issue(f"spiffe://cluster.local/ns/{NS}/sa/client")
    proxy = XdsProxy(
        secrets=FixedSecrets(root, client_leaf),  # type: ignore[arg-type]
        address=f"127.0.0.1:{port}",
        server_name="istiod.test",
        path=workdir / "XDS",
        backoff=(0.05, 0.1),
    )
    await proxy.start()
    try:
        async with ads(proxy) as call:
            await call.write(request(LDS, [LISTENER], with_node=True))
            first = await asyncio.wait_for(call.read(), 30)
            second = await asyncio.wait_for(call.read(), 30)  # not the reset: the proxy reconnected
            assert (first.nonce, second.nonce) == ("first", "second")
        assert calls == 2
    finally:
        await proxy.stop()
        await server.stop(0)


async def test_a_refused_stream_ends_with_the_servers_status(proxied: tuple[ControlPlane, XdsProxy]) -> None:
    _, proxy = proxied
    async with ads(proxy) as call:
        wrong = request(LDS, [LISTENER])
        wrong.node.CopyFrom(node(service_account="someone-else"))
        await call.write(wrong)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call.read(), 60)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not match the node's namespace 'shop' and service account 'someone-else'" in str(
        raised.value.details()
    )


async def test_the_socket_is_private_removed_on_stop_and_a_too_long_path_is_refused(workdir: pathlib.Path) -> None:
    secrets = SecretManager(
        identity="spiffe://cluster.local/ns/shop/sa/client",
        client=CaClient(address="127.0.0.1:1", server_name=SERVER_NAME),
        token_file=workdir / "token",
        root_file=workdir / "root.pem",
    )
    proxy = XdsProxy(secrets=secrets, address="127.0.0.1:1", server_name=SERVER_NAME, path=workdir / "XDS")
    await proxy.start()
    try:
        assert proxy.listening
        assert stat.S_IMODE((workdir / "XDS").stat().st_mode) == 0o600
    finally:
        await proxy.stop()
    assert not (workdir / "XDS").exists() and not proxy.listening

    long_path = workdir / ("d" * 100) / "XDS"
    with pytest.raises(XdsProxyError, match=r"longer than 107 bytes: choose a shorter --proxy-dir"):
        await XdsProxy(secrets=secrets, address="127.0.0.1:1", server_name=SERVER_NAME, path=long_path).start()


# -- 3. what goes upstream: pure decisions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("nonce", "names", "sent"),
    [
        ("", [LISTENER], "as is"),  # a first request, or one after a reconnect
        ("n2", [LISTENER], "as is"),  # the ACK of the current server's last response
        ("n1", [LISTENER], None),  # a nonce the current server did not send last, same names
        ("n1", [LISTENER, "other:80"], "without nonce"),  # ... that changes the names
    ],
)
def test_which_downstream_requests_go_upstream(nonce: str, names: list[str], sent: str | None) -> None:
    down = request(LDS, names, nonce=nonce, error="bad" if nonce == "n1" else "")
    out = upstream_request(down, nonces={LDS: "n2"}, names={LDS: (LISTENER,)})
    if sent is None or sent == "as is":
        assert out is (down if sent else None)
    else:
        assert out is not None and out.response_nonce == "" and not out.HasField("error_detail")
        assert list(out.resource_names) == names
