"""Wiring of `meshplane agent`: one asyncio process, named tasks, an orderly stop.

Start order: status server (15020) and SDS socket first, so Envoy finds them; then the certificate
loop, then Envoy (sidecar mode) or the xDS proxy and the gRPC bootstrap writer (proxyless mode).
SIGTERM/SIGINT: drain Envoy, then stop everything in reverse order and exit 0. `POST /drain` on the
status port (the native sidecar's preStop hook) starts Envoy's drain ahead of SIGTERM and fails
readiness; the SIGTERM that follows then stops Envoy without waiting again. The agent exits
non-zero only when nothing can be served: the SDS socket, the xDS proxy socket, the status port or
the Envoy binary cannot be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
from collections.abc import Mapping
from typing import Any

from controlplane import __version__
from controlplane.agent import grpcxds, metrics
from controlplane.agent.bootstrap import BootstrapParams
from controlplane.agent.bootstrap import write as write_bootstrap
from controlplane.agent.caclient import CaClient
from controlplane.agent.envoy import EnvoyError, EnvoySupervisor
from controlplane.agent.options import ADMIN_PORT, AgentOptions
from controlplane.agent.probes import parse_probers
from controlplane.agent.sds import SdsError, SdsServer
from controlplane.agent.secrets import SecretManager
from controlplane.agent.status import ReadyState, StatusError, StatusServer
from controlplane.agent.xdsproxy import XdsProxy, XdsProxyError
from controlplane.aio import TaskGroup
from controlplane.listeners import open_files_note, raise_open_files_limit

log = logging.getLogger("meshplane.agent")

_LABEL_LINE = re.compile(r'^([^=\s]+)=(".*")$')


def read_labels(text: str) -> dict[str, str]:
    """Pod labels from the downward API file (`key="value"` lines, Go-quoted values)."""
    labels: dict[str, str] = {}
    for line in text.splitlines():
        match = _LABEL_LINE.match(line.strip())
        if not match:
            continue
        try:
            labels[match.group(1)] = str(json.loads(match.group(2)))
        except ValueError:
            labels[match.group(1)] = match.group(2).strip('"')
    return labels


def node_metadata(options: AgentOptions, labels: Mapping[str, str]) -> dict[str, Any]:
    """The node metadata Istio's agent sends, plus every ISTIO_META_* and meshplane's LOOPBACK_ADDRESS."""
    meta: dict[str, Any] = dict(options.meta)
    meta.update(
        {
            "NAME": options.pod_name,
            "NAMESPACE": options.namespace,
            "SERVICE_ACCOUNT": options.service_account,
            "LABELS": dict(labels),
            "INSTANCE_IPS": options.instance_ip,
            "INTERCEPTION_MODE": options.interception_mode,
            "ISTIO_VERSION": __version__,
            "CLUSTER_ID": str(options.meta.get("CLUSTER_ID") or "Kubernetes"),
            "LOOPBACK_ADDRESS": options.loopback_address,
        }
    )
    if options.proxy_config:
        meta["PROXY_CONFIG"] = dict(options.proxy_config)
    if options.proxyless:
        meta["GENERATOR"] = "grpc"
    return meta


def node_cluster(options: AgentOptions, labels: Mapping[str, str]) -> str:
    name = (
        labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or str(options.meta.get("WORKLOAD_NAME") or "")
        or options.pod_name
    )
    return f"{name}.{options.namespace}"


class Agent:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        labels: dict[str, str] = {}
        try:
            labels = read_labels(options.labels_file.read_text())
        except OSError:
            log.info("no labels file at %s: the proxy reports no pod labels", options.labels_file)
        self.labels = labels
        self.metadata = node_metadata(options, labels)
        self.secrets = SecretManager(
            identity=options.identity,
            client=CaClient(
                address=options.ca_address, server_name=options.istiod_san, cluster_id=self.metadata["CLUSTER_ID"]
            ),
            token_file=options.token_file,
            root_file=options.root_cert,
            key_algorithm=options.key_algorithm,
            ttl_seconds=options.cert_ttl,
        )
        self.sds = SdsServer(self.secrets, options.sds_socket)
        self.envoy: EnvoySupervisor | None = None
        self.xds_proxy: XdsProxy | None = None
        self.grpc_ready = False
        self.drained = False
        admin = f"http://{_host(options.loopback_address)}:{ADMIN_PORT}"
        self.status = StatusServer(
            bind_address=options.bind_address,
            port=options.status_port,
            ready=self.ready,
            probers=parse_probers(options.app_probers),
            app_host=options.instance_ip,
            envoy_stats_url=None if options.proxyless else f"{admin}/stats/prometheus",
            prometheus_annotations="" if options.node_type == "router" else options.prometheus_annotations,
            # with iptables capture, 127.0.0.6 is the source the rules let reach the app unredirected
            source_address="127.0.0.6" if options.interception_mode == "REDIRECT" else None,
            registry=metrics.REGISTRY,
            cert_info=self.secrets.info,
            drain=self.drain,
        )
        if not options.proxyless:
            self.envoy = EnvoySupervisor(
                binary=options.envoy,
                bootstrap=options.proxy_dir / "envoy-rev.json",
                admin_url=admin,
                log_level=options.proxy_log_level,
                component_log_level=options.proxy_component_log_level,
                drain_duration=options.drain_duration,
                concurrency=options.concurrency,
                on_restart=metrics.ENVOY_RESTARTS.inc,
            )
        else:
            self.xds_proxy = XdsProxy(
                secrets=self.secrets,
                address=options.discovery_address,
                server_name=options.istiod_san,
                path=options.xds_socket,
            )

    async def drain(self) -> None:
        """`POST /drain`: readiness fails from now on; Envoy's listeners drain (in-flight requests finish).

        Raises EnvoyAdminError when Envoy's admin API does not answer. Proxyless, there is nothing to drain.
        """
        self.drained = True
        if self.envoy is not None:
            await self.envoy.drain()

    async def ready(self) -> ReadyState:
        if self.drained:
            return ReadyState(ready=False, reason="draining: the pod is shutting down")
        if self.secrets.credential is None:
            return ReadyState(ready=False, reason=f"no certificate yet: waiting for {self.secrets.waiting_for}")
        if self.envoy is None:
            if self.xds_proxy is None or not self.xds_proxy.listening:
                return ReadyState(ready=False, reason=f"xDS proxy not listening on {self.options.xds_socket}")
            if not self.grpc_ready:
                return ReadyState(ready=False, reason="gRPC xDS bootstrap not written yet")
            return ReadyState(ready=True, reason="")
        ok, reason = await self.envoy.ready()
        return ReadyState(ready=ok, reason=reason)

    def write_envoy_bootstrap(self) -> None:
        o = self.options
        params = BootstrapParams(
            node_id=o.node_id,
            cluster=node_cluster(o, self.labels),
            metadata=self.metadata,
            discovery_address=o.discovery_address,
            istiod_san=o.istiod_san,
            sds_socket=str(o.sds_socket),
            loopback_address=o.loopback_address,
            bind_address=o.bind_address,
            status_port=o.status_port,
            delta=o.delta_xds,
        )
        write_bootstrap(params, o.proxy_dir / "envoy-rev.json")

    async def keep_grpc_files(self) -> None:
        """Proxyless: write the certificate files on every change, the bootstrap once they exist."""
        o = self.options
        seen = -1
        while True:
            seen = await self.secrets.wait_change(seen)
            if not grpcxds.write_certificates(self.secrets, o.output_certs):
                continue
            if not self.grpc_ready:
                refresh = max(1, min(300, int(o.cert_ttl / 10)))
                bootstrap = grpcxds.render(
                    node_id=o.node_id,
                    metadata=self.metadata,
                    xds_socket=o.xds_socket,
                    cert_dir=o.output_certs,
                    refresh=refresh,
                )
                grpcxds.write_bootstrap(o.grpc_bootstrap, bootstrap)
                log.info("wrote the gRPC xDS bootstrap %s and certificates in %s", o.grpc_bootstrap, o.output_certs)
                self.grpc_ready = True


async def run(options: AgentOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        agent = Agent(options)
    except ValueError as exc:  # a bad ISTIO_KUBE_APP_PROBERS or Prometheus annotation
        log.error("%s", exc)
        return 2
    # Envoy holds a descriptor per connection of the application's traffic; a soft limit of 1,024 (some
    # container runtimes' default) is too few for a busy pod. Go programs such as pilot-agent raise it.
    before, after = raise_open_files_limit()
    log.info(
        "agent for %s (%s) starting: discovery %s, CA %s, %s; open files %s",
        options.identity, options.node_id, options.discovery_address, options.ca_address,
        "proxyless" if options.proxyless else "Envoy", open_files_note(before, after),
    )  # fmt: skip
    tasks = TaskGroup()
    code = 0
    try:
        await agent.status.start()
        await agent.sds.start()
        tasks.start("certificates", agent.secrets.run())
        if agent.envoy is not None:
            agent.envoy.check_binary()
            agent.options.proxy_dir.mkdir(parents=True, exist_ok=True)
            agent.write_envoy_bootstrap()
            tasks.start("envoy", agent.envoy.run())
        elif agent.xds_proxy is not None:
            await agent.xds_proxy.start()
            tasks.start("grpc-files", agent.keep_grpc_files())
        stopping = asyncio.ensure_future(stop.wait())
        await tasks.wait_first(stopping)
        if not stop.is_set():
            code = 1  # a task ended by itself: Envoy cannot run (logged by the task group)
        stopping.cancel()
    except (SdsError, StatusError, EnvoyError, XdsProxyError, OSError) as exc:
        log.error("cannot start: %s", exc)
        code = 1
    finally:
        if agent.envoy is not None:
            with contextlib.suppress(Exception):
                await agent.envoy.drain_and_stop()
        await tasks.cancel_all()
        if agent.xds_proxy is not None:
            await agent.xds_proxy.stop()
        await agent.sds.stop()
        await agent.status.stop()
    log.info("agent stopped")
    return code


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
