"""`meshplane serve`: wires all shared state, starts every server as a named task, stops cleanly.

Start order: config source (first full view) → CA and serving certificate → HTTPS webhook →
health/debug and metrics HTTP. `/ready` turns 200 only when the config source has synced and
every listener is bound. SIGTERM (or SIGINT) stops accepting, lets in-flight requests finish
within the grace period, and exits 0.

Once every listener is bound, `<state-dir>/listening.json` names the address each one really got
(`{"pid": ..., "listeners": {"grpc": "127.0.0.1:15010", ...}}`, keyed like the `--*-addr` flags),
so a port given as 0 can be found; it is written atomically, removed at start-up and on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import pathlib
import signal
import socket
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from certs.authenticate.issuerkeys import IssuerKeys
from certs.authenticate.kubejwt import TokenReview, TokenReviewUnavailable
from certs.authority import KeyMaterialError
from certs.kubestore import Secret, SecretConflict, SecretExists
from certs.pem import write_atomic
from certs.rootdist import ConfigMapExists, ConfigMapMissing, RootConfigMapReconciler
from certs.rootsync import RootConfigMapController
from certs.runtime import CaRuntime, kube_ca, local_ca
from certs.service import CaError, CertificateService
from certs.serving import serving_names
from controlplane import __version__
from controlplane.aio import TaskGroup
from controlplane.grpcserver import CONNECTION_AGE_GRACE, GrpcServers
from controlplane.httpserver import InflightTracker, OffLoop, health_app, metrics_app
from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.configmaps import KubeConfigMaps
from controlplane.kube.issuerkeys import KubeIssuerKeys
from controlplane.kube.leader import LeaderElector, holder_identity, lease_duration_from_env, lease_name
from controlplane.kube.secrets import KubeSecrets
from controlplane.kube.source import KubeSource
from controlplane.kube.tokenreview import KubeTokenReviewer
from controlplane.kube.watching import Backoff
from controlplane.kube.webhooks import CaBundlePatcher
from controlplane.listeners import CappedSite, ConnectionBudget, open_files_note, raise_open_files_limit
from controlplane.model.meshconfig import MeshConfig
from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore
from controlplane.settings import Address, Settings, SettingsError
from controlplane.sources.files import FileSource
from discovery.connection import StreamLimits
from discovery.server import AdsServer, Identify
from discovery.service import DiscoveryService, debounce_from_env
from discovery.stream import StreamRefused
from webhook.app import webhook_app
from webhook.configwatch import InjectionConfigWatcher
from webhook.limits import Limits
from webhook.listener import WebhookSite
from webhook.service import Injector

log = logging.getLogger(__name__)


class ControlPlane:
    """One revision's control plane process. Construct, `await start()`, later `await stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ConfigStore()
        self.tasks = TaskGroup()
        self._runners: dict[str, web.AppRunner] = {}
        self._bound: dict[str, bool] = {}
        self.listening: dict[str, Address] = {}  # listener name -> the address it really bound
        self._listening_written = False
        self._inflight = InflightTracker()
        self.file_source: FileSource | None = None
        self.kube: KubeApi | None = None
        self.kube_source: KubeSource | None = None
        self.elector: LeaderElector | None = None
        self._election: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._unpublish_listening()  # a previous run's file must not be read as this one's
        self._plan_connections()
        if s.config_dir is None:
            await self._start_kube_source()
        else:
            self.file_source = FileSource(s.config_dir, self.store)
            try:
                # fail fast on a missing directory, before binding any port; a large directory is
                # parsed on every usable core, since nothing is served until it is read
                await self.file_source.load(workers=len(os.sched_getaffinity(0)))
            except FileNotFoundError as exc:
                raise SettingsError(f"--config-dir: {exc}") from None
            self.store.mark_synced()
            self.tasks.start("config-dir-watch", self.file_source.watch())

        # local mode: also the names a user on this machine dials (the README's `curl https://127.0.0.1:15017`)
        local = () if self.kube is not None else ("localhost", "127.0.0.1", "::1")
        bound = tuple(a.host for a in (s.webhook_addr, s.secure_grpc_addr) if a.host not in ("", "0.0.0.0", "::"))
        hosts = serving_names(service=s.istiod_service, namespace=s.namespace, extra=(*s.serving_hosts, *local, *bound))
        try:
            if self.kube is None:
                # Key material (state dir; `cacerts/` plug-in if present), <state-dir>/root-cert.pem, the CA service.
                self.ca = await local_ca(
                    state_dir=s.state_dir,
                    trust_domain=s.trust_domain,
                    serving_hosts=hosts,
                    max_ttl=dt.timedelta(seconds=s.max_workload_cert_ttl),
                    workers=s.ca_workers,
                    key_algorithm=s.ca_key_algorithm,
                    allow_new_root=s.allow_new_root,
                )
            else:
                self.ca = await self._start_kube_ca(self.kube, hosts)
                self._start_leader_election(self.kube, self.ca)
        except KeyMaterialError as exc:
            raise SettingsError(str(exc)) from None
        except OSError as exc:
            if exc.filename is None:  # not a file of the state dir (e.g. a signing worker that cannot start)
                raise
            raise SettingsError(f"--state-dir {s.state_dir}: {exc.filename}: {exc.strerror or exc}") from None
        self.serving = self.ca.serving
        for name, task in self.ca.tasks().items():
            self.tasks.start(name, task)

        watcher = InjectionConfigWatcher(
            self.store,
            namespace=s.namespace,
            injector_configmap=s.injector_configmap,
            mesh_configmap=s.mesh_configmap,
        )
        self.tasks.start("injection-config", watcher.run())
        self.injector = Injector(
            store=self.store,
            config=watcher,
            revision=s.revision,
            discovery_address=s.discovery_address,
            trust_domain=s.trust_domain,
            cluster_id=s.cluster_id,
        )

        self._start_discovery()
        self._log_connections()
        self.grpc = GrpcServers(
            plaintext_addr=s.grpc_addr,
            secure_addr=s.secure_grpc_addr,
            serving=self.serving,
            max_request_bytes=s.max_request_bytes,
            max_connection_age=s.max_connection_age,
            max_connection_idle=s.max_connection_idle,
            max_connections=self.budget.xds,
        )
        # gRPC services register on the shared servers here, before they start. The secure port's TLS
        # front end (Envoy) forwards the verified client certificate with each call; the CA and xDS read it there.
        self.ca.service.peer_certificate = self.grpc.peer_certificates.for_context
        self.ca.service.peer_name = self.grpc.peer_certificates.client_of
        self.grpc.add(self.ca.service.register, plaintext=False, secure=True)
        self.grpc.add(AdsServer(self.discovery, secure=False).register, plaintext=True, secure=False)
        secure_ads = AdsServer(
            self.discovery,
            secure=True,
            identify=_identify_or_refuse(self.ca.service),
            peer_name=self.grpc.peer_certificates.client_of,
            max_age=s.max_connection_age,  # Envoy keeps a connection with an open stream: end the stream
            grace=CONNECTION_AGE_GRACE,
        )
        self.grpc.add(secure_ads.register, plaintext=False, secure=True)
        await self.grpc.start()
        self._bound["grpc"] = True
        if self.grpc.plaintext_port is not None:
            self.listening["grpc"] = Address(host=s.grpc_addr.bind_host, port=self.grpc.plaintext_port)
        if self.grpc.front is not None:
            self.listening["secure-grpc"] = Address(host=s.secure_grpc_addr.bind_host, port=self.grpc.front.port)

        webhook = webhook_app(self.injector, limits=self._webhook_limits)
        await self._serve("webhook", webhook, s.webhook_addr, tls=True, site_type=WebhookSite)
        await self._serve(
            "http", health_app(self._readiness, self._debug_handlers()), s.http_addr, cap=self.budget.http
        )
        await self._serve("monitoring", metrics_app(), s.monitoring_addr, cap=self.budget.monitoring)
        self._publish_listening()
        log.info(
            "meshplane %s serving revision %s",
            __version__,
            s.revision,
            extra={"mode": "local" if s.local_mode else "kubernetes", "namespace": s.namespace},
        )

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests (bounded by the grace period), stop tasks."""
        grace = self.settings.grace_period
        if self._listening_written:
            self._unpublish_listening()
        if self._election is not None:  # first: stop the singletons and release the Lease for a successor
            self._election.cancel()
            await asyncio.wait([self._election])
        for name, runner in self._runners.items():
            self._bound[name] = False
            for site in list(runner.sites):
                await site.stop()  # no new connections; open ones keep being served
        grpc_stopped = None
        if getattr(self, "grpc", None) is not None:
            self._bound["grpc"] = False
            grpc_stopped = asyncio.ensure_future(self.grpc.stop(grace))
        if not await self._inflight.wait_idle(within=grace):
            log.warning("%d HTTP requests still running after the %.0fs grace period", self._inflight.count, grace)
        for runner in reversed(self._runners.values()):
            await runner.cleanup()
        if grpc_stopped is not None:
            await grpc_stopped
        await self.tasks.cancel_all()
        if self.kube is not None:
            await self.kube.close()
            self.kube = None

    # -- pieces --------------------------------------------------------------------------------
    def _plan_connections(self) -> None:
        """Raise the open-files limit and give each listener its share (`controlplane.listeners`); a share
        that does not fit is a SettingsError before anything starts."""
        self._open_files = raise_open_files_limit()
        self._webhook_limits = Limits.from_env(os.environ)
        self.budget = ConnectionBudget.plan(
            self._open_files[1], webhook=self._webhook_limits.max_connections, xds=self.settings.max_xds_connections
        )

    def _log_connections(self) -> None:
        before, after = self._open_files
        log.info(
            "open files: %s; connections at most: gRPC %d on each port, webhook %d, /ready %d, /metrics %d",
            open_files_note(before, after),
            self.budget.xds,
            self.budget.webhook,
            self.budget.http,
            self.budget.monitoring,
            extra={"open_files": after},
        )

    async def _serve(
        self,
        name: str,
        app: web.Application,
        addr: Address,
        *,
        tls: bool = False,
        site_type: type[WebhookSite] | None = None,
        cap: int = 0,
    ) -> None:
        """Serve `app` on `addr`: with `site_type`, or else at most `cap` connections open at once."""
        app.middlewares.append(self._inflight.middleware)
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        ssl_context = self.serving.ssl_context() if tls else None
        site: web.BaseSite
        if site_type is not None:
            site = site_type(runner, addr.bind_host, addr.port, ssl_context=ssl_context, reuse_address=True)
        else:
            site = CappedSite(
                runner, addr.bind_host, addr.port, listener=name, cap=cap, ssl_context=ssl_context, reuse_address=True
            )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SettingsError(f"cannot listen on {addr} for {name}: {exc.strerror or exc}") from exc
        self._runners[name] = runner
        self._bound[name] = True
        host, port = runner.addresses[0][:2]
        self.listening[name] = Address(host=host, port=port)
        log.info("%s listening on %s%s", name, self.listening[name], " (TLS)" if tls else "")

    @property
    def listening_file(self) -> pathlib.Path:
        return self.settings.state_dir / "listening.json"

    def _publish_listening(self) -> None:
        """Write `<state-dir>/listening.json` (see the module docstring) and log the same addresses.

        A state dir that cannot take the file costs a warning only: every listener serves regardless.
        """
        listeners = {name: str(addr) for name, addr in self.listening.items()}
        log.info("listening: %s", ", ".join(f"{k} {v}" for k, v in listeners.items()), extra={"listeners": listeners})
        data = json.dumps({"pid": os.getpid(), "listeners": listeners}, indent=2) + "\n"
        try:
            write_atomic(self.listening_file, data.encode())
            self._listening_written = True
        except OSError as exc:
            log.warning("cannot write %s: %s", self.listening_file, exc.strerror or exc)

    def _unpublish_listening(self) -> None:
        """Remove `listening.json` (a stale one at start-up, this process's on stop); never fails."""
        with contextlib.suppress(OSError):
            self.listening_file.unlink(missing_ok=True)
        self._listening_written = False

    async def _start_kube_source(self) -> None:
        """Kubernetes mode: connect (SettingsError for a bad kubeconfig) and start mirroring the cluster.

        The store turns synced (and so `/ready` 200) once every watched kind has listed once.
        """
        s = self.settings
        self.kube = await KubeApi.connect(kubeconfig=s.kubeconfig)
        self.kube_source = KubeSource(self.kube, self.store, namespace=s.namespace, mesh_configmap=s.mesh_configmap)
        self.tasks.start("kube-source", self.kube_source.run())
        log.info("Kubernetes mode: API server %s (%s)", self.kube.host, self.kube.description)

    async def _start_kube_ca(self, api: KubeApi, hosts: tuple[str, ...]) -> CaRuntime:
        """Kubernetes mode's CA: Secrets `cacerts` / `istio-ca-secret` in --namespace and TokenReview.

        While the API server is unreachable or answers 429/5xx, waits with backoff (like the watches);
        another error status (e.g. 403: no RBAC for Secrets) raises SettingsError naming it.
        """
        s = self.settings
        issuer_keys = KubeIssuerKeys(api, parse=IssuerKeys.from_jwks)
        self.tasks.start("issuer-keys", issuer_keys.run())
        backoff = Backoff()
        while True:
            try:
                runtime = await kube_ca(
                    secrets=KubeSecrets(
                        api,
                        make=lambda data, rv: Secret(data=data, resource_version=rv),
                        exists=SecretExists,
                        conflict=SecretConflict,
                    ),
                    reviewer=KubeTokenReviewer(api, make=TokenReview, unavailable=TokenReviewUnavailable),
                    issuer_keys=issuer_keys,
                    namespace=s.namespace,
                    trust_domain=s.trust_domain,
                    cluster_id=s.cluster_id,
                    serving_hosts=hosts,
                    state_dir=s.state_dir,
                    max_ttl=dt.timedelta(seconds=s.max_workload_cert_ttl),
                    workers=s.ca_workers,
                    key_algorithm=s.ca_key_algorithm,
                )
                break
            except KubeApiError as exc:
                if exc.status != 429 and exc.status < 500:
                    raise SettingsError(f"CA key material: Secrets in namespace {s.namespace}: {exc}") from None
                delay = exc.retry_after if exc.retry_after is not None else backoff.next_delay()
                log.warning("CA key material: Secrets in %s: %s; retrying in %.1fs", s.namespace, exc, delay)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("CA key material: API server unreachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
        log.info("Kubernetes mode: CA key material in Secrets of namespace %s", s.namespace)
        return runtime

    def _start_leader_election(self, api: KubeApi, runtime: CaRuntime) -> None:
        """Kubernetes mode's singletons, run only while this process holds its revision's Lease: the
        `istio-ca-root-cert` publisher and the injection webhooks' caBundle patcher.

        Raises SettingsError for a malformed MESHPLANE_LEASE_DURATION.
        """
        s = self.settings
        try:
            duration = lease_duration_from_env(os.environ)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        ca = runtime.ca
        root_configmaps = RootConfigMapController(
            store=self.store,
            ca=ca,
            reconciler=RootConfigMapReconciler(KubeConfigMaps(api, exists=ConfigMapExists, missing=ConfigMapMissing)),
        )
        patcher = CaBundlePatcher(api, revision=s.revision, ca_bundle=lambda: ca.current.root_pem)
        ca.subscribe(lambda _: patcher.root_changed())
        self.elector = LeaderElector(
            api,
            namespace=s.namespace,
            name=lease_name(s.revision),
            identity=holder_identity(os.environ),
            lease_duration=duration,
        )
        singletons = {"root-configmaps": root_configmaps.run, "webhook-cabundle": patcher.run}
        self._election = self.tasks.start("leader-election", self.elector.run(singletons))

    def _start_discovery(self) -> None:
        """The service registry over the config store, and the xDS push pipeline on top of it."""
        s = self.settings
        try:
            quiet, most = debounce_from_env(os.environ)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        self.registry = Registry(
            self.store,
            mesh_namespace=s.namespace,
            mesh_configmap=s.mesh_configmap,
            mesh_defaults=MeshConfig(trust_domain=s.trust_domain, root_namespace=s.namespace),
        )
        self.discovery = DiscoveryService(
            self.registry,
            debounce_quiet=quiet,
            debounce_max=most,
            control_plane_id=f"{s.istiod_service}-{socket.gethostname()}",
            version=__version__,
            limits=StreamLimits(streams_per_client=s.max_streams_per_client),
        )
        self.tasks.start("xds-push", self.discovery.run())

    def _readiness(self) -> Mapping[str, bool]:
        checks = {f"{name} server": bound for name, bound in self._bound.items()}
        if "grpc" in self._bound:  # the secure port's TLS front end must be accepting too
            checks["grpc server"] = self._bound["grpc"] and self.grpc.listening
        checks["config sync"] = self.store.synced
        for name in ("grpc", "webhook", "http", "monitoring"):
            checks.setdefault(f"{name} server", False)
        return checks

    def _debug_handlers(self) -> dict[str, Any]:
        def configz(_: web.Request) -> Any:
            keys = list(self.store._objects)  # a copy: sorting and naming 60,000 keys is for the worker
            problems = [str(p) for p in (self.file_source.problems if self.file_source else [])]
            watches = self.kube_source.describe() if self.kube_source else {}
            return OffLoop(
                lambda: {"objects": [str(k) for k in sorted(keys)], "problems": problems, "watches": watches}
            )

        def registryz(_: web.Request) -> Any:
            """The registry, with every config problem in one list: the config dir's files first."""
            describe = self.discovery.registryz()
            files = [str(p) for p in (self.file_source.problems if self.file_source else [])]

            def build() -> dict[str, Any]:
                found = describe()
                return {**found, "problems": files + list(found["problems"])}

            return OffLoop(build)

        def injectz(_: web.Request) -> Any:
            return self.injector.describe()

        def config_dump(request: web.Request) -> Any:
            proxy = request.query.get("proxyID", "")
            if not proxy:
                return web.json_response({"error": "query parameter proxyID is required"}, status=400)
            dump = self.discovery.config_dump(proxy)
            if dump is None:
                return web.json_response({"error": f"proxy {proxy!r} is not connected"}, status=404)
            return OffLoop(dump)

        return {
            "configz": configz,
            "injectz": injectz,
            "syncz": lambda _: self.discovery.syncz(),
            "config_dump": config_dump,
            "registryz": registryz,
        }


async def run(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until a server task fails (exit 1)."""
    plane = ControlPlane(settings)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_signal(signum: int) -> None:
        log.info(
            "received %s; shutting down (grace %.0fs)",
            signal.Signals(signum).name,
            settings.grace_period,
        )
        if not stop.done():
            stop.set_result(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            await plane.start()
        except SettingsError:
            await plane.stop()
            raise
        # What start-up built (modules, protos, config) lives as long as the process: keep it out of the
        # collector's full passes, which otherwise walk it on the event loop for 100-400 ms each (bench/soak).
        # A cluster's config arrives after start-up: its first complete view is kept out too, once it is in.
        gc.freeze()
        plane.store.when_synced(gc.freeze)
        await plane.tasks.wait_first(stop)
        failed = not stop.done()
        await plane.stop()
        log.info("stopped")
        return 1 if failed else 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _identify_or_refuse(ca: CertificateService) -> Identify:
    """The secure xDS port's `identify`: the CA's verdict on the caller. When the CA cannot decide now
    (TokenReview unavailable, the client's review budget spent), the stream ends with that status and
    reason instead of "no identity", so an agent retries instead of giving up."""

    async def identify(context: Any) -> list[str]:
        try:
            return await ca.identities_of(context)
        except CaError as exc:
            raise StreamRefused(exc.code, str(exc)) from None

    return identify
