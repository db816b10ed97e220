"""Property: whatever the mesh, Envoy 1.40 accepts everything meshplane sends a sidecar.

Meshes are generated with Services that fight over cluster IPs and ports, sit on the sidecar's own
ports (15001, 15006, 15021, 15090), are headless or IPv6, carry many ports of mixed protocols, and
have odd names, valid (one character, 63 characters, digits) and invalid (a trailing newline,
upper case, 64 characters), with EndpointSlices; some select the sidecar's own pod, by number or
by container-port name, so its inbound side is generated too, under PeerAuthentications at mesh,
namespace and workload scope with port-level modes on any port (the sidecar's own included). Two
checks:

- many meshes, cheaply: every resource meshplane generates for a REDIRECT and a NONE-mode sidecar
  goes into one bootstrap as static resources (EDS clusters made STATIC with their generated
  assignments, RDS inlined into its connection manager) and `envoy --mode validate` must accept it;
- a few meshes, live: `meshplane serve` reads each from its config dir (one object per file, so
  an invalid object is refused alone) and a running Envoy (ADS, REDIRECT) must apply it with no
  `update_rejected`.
"""

from __future__ import annotations

import itertools
import pathlib
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.world import World, proxy
from tests.e2e.envoyproxy import ENVOY, Envoy, SdsServer, make_identity, wait_for
from tests.helpers.serve import Running, start_serve

NS = "gen"
OTHER_NS = "gen-b"
CLIENT_IP = "127.0.0.3"
NAMES = ["a", "web", "db", "9lives", "x" * 63, "web-v2", "nlsvc\n", "Upper", "y" * 64, "-lead"]
IPS = ["10.96.7.1", "10.96.7.2", "10.96.7.3", "None", "fd00::7", "fd00::7:80"]
PORTS = [80, 443, 8080, 9000, 3306, 15001, 15006, 15021, 15090, 1]
PREFIXES = ["http", "http2", "grpc", "grpc-web", "tcp", "https", "tls", "mongo", "redis", "mysql", "unnamed", ""]
CREATED = ["2024-01-01T00:00:00Z", "2024-03-01T00:00:00Z", "2024-06-01T00:00:00Z"]
MODES = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]
ROOT_NS = "istio-system"
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@st.composite
def service_ports(draw: st.DrawFn) -> list[dict[str, Any]]:
    numbers = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=6, unique=True))
    ports = []
    for index, number in enumerate(numbers):
        prefix = draw(st.sampled_from(PREFIXES))
        target = draw(st.sampled_from([number, 8080, 9090, *PORTS[5:9], "p8080", "p9090", "missing"]))
        port: dict[str, Any] = {"port": number, "targetPort": target}
        if prefix:
            port["name"] = f"{prefix}-{index}" if prefix != "unnamed" else f"p{index}"
        elif len(numbers) > 1:
            port["name"] = f"port{index}"
        if draw(st.integers(0, 9)) == 0:
            port["protocol"] = draw(st.sampled_from(["UDP", "SCTP"]))
        ports.append(port)
    return ports


@st.composite
def meshes(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Services (with EndpointSlices) in two namespaces, many of them in conflict; plus the client pod."""
    objects: list[dict[str, Any]] = [m.namespace(NS), m.namespace(OTHER_NS), m.namespace(ROOT_NS)]
    count = draw(st.integers(1, 8))
    seen: set[tuple[str, str]] = set()
    for _ in range(count):
        name, ns = draw(st.sampled_from(NAMES)), draw(st.sampled_from([NS, OTHER_NS]))
        if (name, ns) in seen:
            continue
        seen.add((name, ns))
        ports = draw(service_ports())
        selects_client = ns == NS and draw(st.booleans())  # the sidecar's own inbound ports
        app = "client" if selects_client else None
        service = m.service(name, ns, cluster_ip=draw(st.sampled_from(IPS)), ports=ports, app=app)
        service["metadata"]["creationTimestamp"] = draw(st.sampled_from(CREATED))
        objects.append(service)
        if draw(st.booleans()):
            first = ports[0]
            ips = draw(st.lists(st.sampled_from(["10.1.7.1", "10.1.7.2", CLIENT_IP]), min_size=1, max_size=3))
            target = first["targetPort"] if isinstance(first["targetPort"], int) else 8080
            slice_ = m.endpoint_slice(
                name, ns, ips=ips, port=target, port_name=first.get("name", ""), name=f"s{len(objects)}"
            )
            slice_["metadata"]["labels"]["kubernetes.io/service-name"] = name
            objects.append(slice_)
    pod_ports = draw(st.lists(st.sampled_from([*PORTS, 8080, 9090]), max_size=4, unique=True))
    objects.append(m.pod("client", CLIENT_IP, NS, app="client", sa="client", ports={f"p{p}": p for p in pod_ports}))
    objects.extend(draw(peer_authentications()))
    return objects


@st.composite
def peer_authentications(draw: st.DrawFn) -> list[dict[str, Any]]:
    """PeerAuthentications at every scope, port-level modes on any port (the sidecar's own too)."""
    found: list[dict[str, Any]] = []
    for index in range(draw(st.integers(0, 4))):
        scope = draw(st.sampled_from(["mesh", "namespace", "workload", "other-workload"]))
        ns = ROOT_NS if scope == "mesh" else NS
        selector = {"app": "client" if scope == "workload" else "other"} if scope.endswith("workload") else None
        policy = m.peer_authentication(f"pa-{index}", ns, draw(st.sampled_from(MODES)), selector=selector)
        policy["metadata"]["creationTimestamp"] = draw(st.sampled_from(CREATED))
        if selector is not None:
            numbers = draw(st.lists(st.sampled_from([*PORTS, 8080, 9090, 65535]), max_size=4, unique=True))
            if numbers:
                policy["spec"]["portLevelMtls"] = {str(n): {"mode": draw(st.sampled_from(MODES))} for n in numbers}
        found.append(policy)
    return found


def _service(name: str, ip: str, created: str, ports: list[tuple[str, int]], ns: str = NS) -> dict[str, Any]:
    service = m.service(name, ns, cluster_ip=ip, ports=[{"name": n, "port": p, "targetPort": p} for n, p in ports])
    service["metadata"]["creationTimestamp"] = created
    return service


# Every conflict class at once, so each run covers them whatever is drawn.
CONFLICTS = [
    m.namespace(NS),
    m.namespace(OTHER_NS),
    _service("web", "10.96.7.1", CREATED[0], [("http", 80)]),
    _service("web-v2", "10.96.7.1", CREATED[1], [("http", 80), ("tcp", 9000)]),
    _service("db", "10.96.7.2", CREATED[0], [("tcp", 9000)]),
    _service("db", "10.96.7.2", CREATED[1], [("tcp", 9000), ("http", 80)], ns=OTHER_NS),
    _service("a", "10.96.7.3", CREATED[2], [("http", 15001), ("tcp", 15006), ("http-x", 15021)]),
    m.pod("client", CLIENT_IP, NS, app="client", sa="client"),
]


# -- validate mode ---------------------------------------------------------------------------------


def _sds_cluster(name: str) -> cluster_pb2.Cluster:
    """A static HTTP/2 cluster on a Unix socket (validate mode never connects)."""
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.seconds = 1
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(options)
    address = address_pb2.Address(pipe=address_pb2.Pipe(path=f"/nonexistent/{name}.sock"))
    cluster.load_assignment.cluster_name = name
    cluster.load_assignment.endpoints.add().lb_endpoints.append(
        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
    )
    return cluster


def _inline_routes(listener: listener_pb2.Listener, routes: dict[str, route_pb2.RouteConfiguration]) -> set[str]:
    """Replace every connection manager's RDS by its generated route configuration; the names it asked for."""
    asked: set[str] = set()
    chains = [
        *listener.filter_chains,
        *([listener.default_filter_chain] if listener.HasField("default_filter_chain") else []),
    ]
    for chain in chains:
        for network_filter in chain.filters:
            if not network_filter.typed_config.type_url.endswith(HCM):
                continue
            manager = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            if manager.HasField("rds"):
                name = manager.rds.route_config_name
                asked.add(name)
                if name in routes:
                    manager.route_config.CopyFrom(routes[name])
                network_filter.typed_config.Pack(manager)
    return asked


def static_bootstrap(world: World, metadata: dict[str, str]) -> bootstrap_pb2.Bootstrap:
    """Everything `world` sends a sidecar with `metadata`, as the static resources of one bootstrap."""
    sidecar = proxy(pod="client", ip=CLIENT_IP, ns=NS, SERVICE_ACCOUNT="client", **metadata)
    clusters = world.generate(sidecar, CLUSTER)
    eds_names = sorted(n for n, c in clusters.items() if isinstance(c, cluster_pb2.Cluster) and c.type == c.EDS)
    assignments = world.generate(sidecar, ENDPOINT, eds_names) if eds_names else {}
    listeners = world.generate(sidecar, LISTENER)
    asked: set[str] = set()
    for listener in listeners.values():
        assert isinstance(listener, listener_pb2.Listener)
        asked |= _inline_routes(listener, {})
    routes = world.generate(sidecar, ROUTE, sorted(asked)) if asked else {}
    assert set(routes) == asked, f"routes asked for but not generated: {asked - set(routes)}"
    config = bootstrap_pb2.Bootstrap(node=base_pb2.Node(id=f"sidecar~{CLIENT_IP}~client.{NS}~{NS}.svc.cluster.local"))
    config.node.cluster = "gen"
    resources = config.static_resources
    for name, cluster in clusters.items():
        assert isinstance(cluster, cluster_pb2.Cluster)
        if cluster.type == cluster.EDS:
            cluster.type = cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            assignment = assignments.get(name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
            assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
            cluster.load_assignment.CopyFrom(assignment)
        resources.clusters.append(cluster)
    resources.clusters.extend([_sds_cluster("sds-grpc"), _sds_cluster("xds-grpc")])
    typed_routes = {n: r for n, r in routes.items() if isinstance(r, route_pb2.RouteConfiguration)}
    for listener in listeners.values():
        assert isinstance(listener, listener_pb2.Listener)
        _inline_routes(listener, typed_routes)
        resources.listeners.append(listener)
    ads = config.dynamic_resources.ads_config
    ads.api_type = config_source_pb2.ApiConfigSource.GRPC
    ads.transport_api_version = config_source_pb2.V3
    ads.grpc_services.append(
        grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name="xds-grpc"))
    )
    return config


@pytest.fixture(scope="module")
def workdir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="meshgen-") as path:
        yield pathlib.Path(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=meshes())
@example(objects=CONFLICTS)
def test_envoy_validates_everything_generated_for_any_mesh(
    workdir: pathlib.Path, objects: list[dict[str, Any]]
) -> None:
    world = World(*objects)
    for mode in ("REDIRECT", "NONE"):
        config = static_bootstrap(world, {"INTERCEPTION_MODE": mode})
        path = workdir / f"bootstrap-{mode.lower()}.pb"
        path.write_bytes(config.SerializeToString())
        result = subprocess.run(
            [str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "error", "--disable-hot-restart"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{mode}: Envoy rejected the generated config:\n{result.stdout[-3000:]}"
        assert {"BlackHoleCluster", "PassthroughCluster"} <= {c.name for c in config.static_resources.clusters}


# -- a live Envoy ----------------------------------------------------------------------------------


class LiveMesh:
    """`meshplane serve` on a config dir and one Envoy sidecar (REDIRECT, State of the World ADS) on it."""

    def __init__(self, root: pathlib.Path) -> None:
        self.config_dir = root / "config"
        self.config_dir.mkdir()
        self.serve: Running | None = None
        self.sds: SdsServer | None = None
        self.envoy: Envoy | None = None
        self.root = root
        self.markers = itertools.count(1)

    def start(self) -> LiveMesh:
        self.serve = start_serve(
            self.root,
            "--config-dir",
            str(self.config_dir),
            env={"PILOT_DEBOUNCE_AFTER": "0s", "PILOT_DEBOUNCE_MAX": "0s"},
        )
        self.sds = SdsServer(make_identity(f"spiffe://cluster.local/ns/{NS}/sa/client")).start()
        self.envoy = Envoy.start(
            self.root,
            name="meshgen",
            node_id=f"sidecar~{CLIENT_IP}~client.{NS}~{NS}.svc.cluster.local",
            metadata={"NAMESPACE": NS, "SERVICE_ACCOUNT": "client", "ISTIO_VERSION": "1.40.0"},
            xds_port=self.serve.ports["grpc"],
            sds_port=self.sds.port,
        )
        return self

    def stop(self) -> None:
        for part in (self.envoy, self.sds, self.serve):
            if part is not None:
                part.stop()

    def rejected(self) -> dict[str, int]:
        assert self.envoy is not None
        return {k: v for k, v in self.envoy.stats().items() if k.endswith("update_rejected") and v}

    def push(self, objects: list[dict[str, Any]]) -> None:
        """Replace the config dir's objects (one per file, so an invalid one is refused alone) and add a
        new marker Service last; return once Envoy holds the marker's cluster and route."""
        assert self.envoy is not None
        number = next(self.markers)
        marker = f"marker-{number}"
        service = m.service(marker, NS, cluster_ip=f"10.96.{200 + number // 250}.{number % 250 + 1}")
        for old in self.config_dir.glob("*.yaml"):
            old.unlink()
        for index, obj in enumerate([*objects, service]):
            staged = self.config_dir / f".{index}.new"
            staged.write_text(m.dump_yaml([obj]))
            staged.rename(self.config_dir / f"{number}-{index:03d}.yaml")
        host = f"{marker}.{NS}.svc.cluster.local"
        envoy = self.envoy
        cluster = f"outbound|80||{host}"
        wait_for(lambda: cluster in envoy.clusters(), timeout=20, what=f"Envoy to get {marker}'s cluster")
        wait_for(
            lambda: f'"{host}:80"' in str(envoy.get("/config_dump?resource=dynamic_route_configs", raw=True)),
            timeout=20,
            what=f"Envoy to get {marker}'s routes",
        )


@pytest.fixture(scope="module")
def live(workdir: pathlib.Path) -> Iterator[LiveMesh]:
    (workdir / "live").mkdir()
    mesh = LiveMesh(workdir / "live")
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=meshes())
@example(objects=CONFLICTS)
def test_a_live_envoy_applies_any_mesh_without_rejections(live: LiveMesh, objects: list[dict[str, Any]]) -> None:
    before = live.rejected()
    live.push(objects)
    assert live.rejected() == before, live.envoy.logs() if live.envoy else ""
