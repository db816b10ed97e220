"""The process's two gRPC servers, shared by every gRPC service (xDS, CA).

- plaintext on `--grpc-addr` (:15010);
- TLS on `--secure-grpc-addr` (:15012) with meshplane's serving certificate. The TLS server *asks
  for* a client certificate but does not require one: a caller proves itself with a mesh client
  certificate (verified against the mesh roots, both of them during a root rotation) or with a
  bearer token. A presented certificate that does not verify fails the handshake.

grpcio's Python API can only either not request a client certificate or require one, so the
secure port is an Envoy child process (`controlplane.tlsfront.EnvoyFrontEnd`) that terminates TLS
and forwards each call to an internal plaintext gRPC server on a Unix socket, carrying exactly the
services registered with `secure=True`. The socket, Envoy's SDS socket (serving certificate and
trust, `controlplane.frontsds`) and its admin socket live in a private directory (0700, sockets
0600): nothing but the front end reaches the internal server, and it takes no TCP port. Services
find the verified client certificate with `peer_certificates.for_context(context)` (never
`context.auth_context()`, which is empty there): Envoy forwards it in `x-forwarded-client-cert`,
replacing whatever a client sent.

The private directory records its owner in `owner.pid`. A process killed without a chance to clean
up (SIGKILL, OOM) leaves its directory behind; the next start removes every `meshplane-secure-*`
directory of the same temp dir whose owner is no longer running (see `sweep_orphaned_private_dirs`).

After `ServingCertificate.reissue()` (which also follows a new trust bundle), new handshakes get the
new certificate and trust moments later (Envoy gets it over SDS, which checks every 0.2 s); open
connections carry on. `/ready` counts the secure port as up only while the front end serves
(`listening`).

Services register with `add(register, plaintext=..., secure=...)` before `start()`, where
`register` is a generated `add_XServicer_to_server`-style callable taking the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from certs.serving import ServingCertificate
from controlplane.frontsds import FrontEndSecrets
from controlplane.settings import Address, SettingsError
from controlplane.tlsfront import EnvoyFrontEnd, ForwardedPeers, FrontEndError, FrontTuning, setup_timeout

log = logging.getLogger(__name__)

Register = Callable[[grpc.aio.Server], None]

PRIVATE_PREFIX = "meshplane-secure-"
OWNER_FILE = "owner.pid"
#: A private directory without an owner file is being created (or predates owner files): it is
#: only taken for orphaned once it is older than this.
UNOWNED_GRACE = 60.0

#: The largest request message either gRPC port takes (Istio's default, `ISTIO_GPRC_MAXRECVMSGSIZE`).
#: gRPC lets a message that says it is this large in before the handler sees it, so each open stream
#: can hold this much: with `--max-streams-per-client` 100, one client address at most ~400 MiB (at
#: 16 MiB a message it made the server hold 1.7 GB). The largest request meshplane takes is ~2 MiB:
#: a node of at most 1 MiB and 10,000 resource names.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024

#: After its maximum age a connection is asked to go (GOAWAY); one whose streams are still open this many
#: seconds later is closed (Istio's MaxServerConnectionAgeGrace). An xDS stream never ends by itself, so a
#: proxy moves to a new connection, maybe another replica's, at the latest then.
CONNECTION_AGE_GRACE = 10.0

# Responses: full CDS/EDS responses for large meshes exceed gRPC's 4 MiB default.
_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


class GrpcServers:
    def __init__(
        self,
        *,
        plaintext_addr: Address | None,
        secure_addr: Address | None,
        serving: ServingCertificate,
        front_tuning: FrontTuning | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_connections: int | None = None,
        max_connection_age: float | None = None,
        max_connection_idle: float | None = None,
    ) -> None:
        """`max_connections`: the most each port holds open (None: no cap); a connection beyond it is
        closed as soon as it is accepted (`controlplane.listeners`; Envoy's overload manager on the
        secure port). `max_connection_age`: seconds before a client connection to either port is asked
        to go (gRPC and Envoy add jitter; None: never). `max_connection_idle`: seconds a client
        connection is kept with no call open on it (None: for ever)."""
        self.serving = serving
        self.front_tuning = front_tuning or FrontTuning()
        self.plaintext_addr = plaintext_addr
        self.secure_addr = secure_addr
        options = [*_OPTIONS, ("grpc.max_receive_message_length", max_request_bytes)]
        self.max_connection_age = max_connection_age
        self.max_connection_idle = max_connection_idle
        self.max_connections = max_connections
        # Only client connections age: the internal server's clients are the front end's few connections,
        # each carrying the streams of many proxies; the front end ages the proxies' own connections.
        # A client connection must send its preface and SETTINGS within the setup time (gRPC's default, 120 s,
        # let connections that sent nothing hold a place for minutes), as the front end's TLS handshake must.
        clients = [*options, ("grpc.server_handshake_timeout_ms", round(setup_timeout(max_connection_idle) * 1000))]
        if max_connections is not None:
            clients.append(("grpc.max_allowed_incoming_connections", max_connections))
        if max_connection_age is not None:
            clients.append(("grpc.max_connection_age_ms", round(max_connection_age * 1000)))  # gRPC adds ±10%
            clients.append(("grpc.max_connection_age_grace_ms", round(CONNECTION_AGE_GRACE * 1000)))
        if max_connection_idle is not None:
            clients.append(("grpc.max_connection_idle_ms", round(max_connection_idle * 1000)))
        self.plaintext = grpc.aio.server(options=clients) if plaintext_addr else None
        # The services of the secure port live on this internal server, reached only through the front end.
        self.secure = grpc.aio.server(options=options) if secure_addr else None
        self.peer_certificates = ForwardedPeers()
        self.front: EnvoyFrontEnd | None = None
        self.secrets: grpc.aio.Server | None = None
        self.private_dir: Path | None = None
        self.plaintext_port: int | None = None  # the bound port once started (useful with port 0)
        self.started = False

    def add(self, register: Register, *, plaintext: bool, secure: bool) -> None:
        if plaintext and self.plaintext is not None:
            register(self.plaintext)
        if secure and self.secure is not None:
            register(self.secure)

    @property
    def listening(self) -> bool:
        """Every configured port is accepting (the secure one through its TLS front end)."""
        return self.started and (self.front is None or self.front.listening)

    async def start(self) -> None:
        """Bind and start. Raises SettingsError naming the address when a port cannot be bound."""
        if self.plaintext is not None and self.plaintext_addr is not None:
            self.plaintext_port = self._bind(self.plaintext.add_insecure_port, self.plaintext_addr, "grpc")
            await self.plaintext.start()
        if self.secure is not None and self.secure_addr is not None:
            await self._start_secure(self.secure, self.secure_addr)
        self.started = True

    @staticmethod
    def _bind(add: Callable[[str], int], addr: Address, name: str) -> int:
        target = f"{addr.bind_host if ':' not in addr.bind_host else '[' + addr.bind_host + ']'}:{addr.port}"
        try:
            port = add(target)
        except RuntimeError as exc:
            raise SettingsError(f"cannot listen on {addr} for {name}: {exc}") from exc
        if port == 0:
            raise SettingsError(f"cannot listen on {addr} for {name}: address in use or not available")
        log.info("%s listening on %s", name, f"{addr.bind_host}:{port}")
        return port

    async def _start_secure(self, internal_server: grpc.aio.Server, addr: Address) -> None:
        """The internal server and SDS on Unix sockets in a fresh private directory, then Envoy in front."""
        parent = Path(tempfile.gettempdir())
        for removed in sweep_orphaned_private_dirs(parent):
            log.info("removed %s, left by a secure port whose process is gone", removed)
        private = self.private_dir = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=parent))  # mode 0700
        (private / OWNER_FILE).write_text(f"{os.getpid()}\n")
        internal, sds = private / "grpc.sock", private / "sds.sock"
        internal_server.add_insecure_port(f"unix:{internal}")
        await internal_server.start()
        self.secrets = grpc.aio.server()
        FrontEndSecrets(self.serving).register(self.secrets)
        self.secrets.add_insecure_port(f"unix:{sds}")
        await self.secrets.start()
        for path in (internal, sds):
            os.chmod(path, 0o600)
        self.front = EnvoyFrontEnd(
            host=addr.bind_host,
            port=addr.port,
            workdir=private,
            internal=internal,
            sds=sds,
            tuning=self.front_tuning,
            max_connection_age=self.max_connection_age,
            age_grace=CONNECTION_AGE_GRACE,
            max_connection_idle=self.max_connection_idle,
            max_connections=self.max_connections,
        )
        try:
            await self.front.start()
        except FrontEndError as exc:
            raise SettingsError(f"cannot listen on {addr} for secure grpc: {exc}") from None
        log.info(
            "secure grpc listening on %s:%d (TLS by Envoy, client certificate optional)",
            addr.bind_host,
            self.front.port,
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting; let open RPCs finish for up to `grace` seconds, then close what is left."""
        if self.front is not None:
            await self.front.close()
        await asyncio.gather(*(server.stop(grace) for server in (self.secure, self.plaintext) if server is not None))
        if self.front is not None:
            # The internal server has ended its streams; Envoy has relayed their ends by now.
            await self.front.stop(within=min(grace, 5.0) if grace > 0 else 0.5)
        if self.secrets is not None:
            await self.secrets.stop(0)
        if self.private_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.private_dir)
        self.started = False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_orphaned_private_dirs(parent: Path, *, now: float | None = None) -> list[Path]:
    """Remove the secure-port private directories under `parent` whose owner process has exited.

    Only this user's directories are looked at; a directory whose owner is running (or whose owner
    file cannot be read as a pid while it is younger than UNOWNED_GRACE) is kept. Returns what was
    removed. Never raises: a directory that cannot be removed is left for the next start.
    """
    removed: list[Path] = []
    now = time.time() if now is None else now
    uid = os.getuid()
    try:
        candidates = sorted(parent.glob(f"{PRIVATE_PREFIX}*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                continue
            try:
                owner = int((path / OWNER_FILE).read_text().strip())
            except (OSError, ValueError):
                if now - info.st_mtime < UNOWNED_GRACE:
                    continue
            else:
                if owner == os.getpid() or _running(owner):
                    continue
            shutil.rmtree(path)
        except OSError:
            continue
        removed.append(path)
    return removed
