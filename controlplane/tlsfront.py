"""A TLS front end that asks for, but does not require, a client certificate.

grpcio's Python API can either not request a client certificate or require one; the secure gRPC
port (:15012) needs the mode in between, so that a caller may prove itself with a mesh client
certificate *or* with a bearer token. `TlsFrontEnd` owns that port: it terminates TLS with
Python's `ssl` module (`CERT_OPTIONAL`, trust = the mesh roots, ALPN `h2`), and for each accepted
connection opens a plaintext TCP connection to an internal gRPC server on 127.0.0.1 and pipes the
bytes both ways.

Identity crosses the hop through `PeerCertificates`: before forwarding the first byte, the front
end records `(host, port)` of its outgoing connection -> the client's verified leaf certificate
(PEM), and removes the entry before that connection's socket is closed. A service on the internal
server finds the certificate with `PeerCertificates.for_context(context)` (the gRPC peer string is
that same `ipv4:127.0.0.1:<port>`). A connection the front end did not make has no entry, so it
carries no certificate (token authentication only): only what the front end verified can ever
become an identity.

Handshake rules: no client certificate is fine; one that does not verify against the trust of the
context provider fails the handshake: the connection is dropped before any byte is forwarded
(asyncio sends no TLS alert, so the client sees a reset or an unexpected EOF; gRPC reports
UNAVAILABLE). A handshake that takes longer than `handshake_timeout` is dropped the same way.

Piping: reads are paused on one side while the other side's write buffer is above `buffer_limit`
(backpressure), so memory per connection stays bounded. A clean end of either side closes the
other after flushing what is buffered (the client's end reaches the internal server as a FIN); a
reset aborts the other side. asyncio's TLS transport cannot half-close, so an internal-server FIN
ends the client connection (gRPC does not use TCP half-close).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from asyncio import sslproto
from collections.abc import Callable
from typing import Any, Protocol

from controlplane import metrics

log = logging.getLogger(__name__)

Address = tuple[str, int]


class _HasPeer(Protocol):
    def peer(self) -> str: ...


def parse_peer(peer: str) -> Address | None:
    """`ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` (also `%5B...%5D`) -> (host, port); None for anything else."""
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return None
    host, sep, port_text = rest.replace("%5B", "[").replace("%5D", "]").rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    return host.strip("[]"), int(port_text)


def _grpc_peer_name(address: object) -> str:
    """`(host, port[, ...])` as gRPC names a peer: `ipv4:1.2.3.4:5` or `ipv6:[::1]:5`; "" if unknown."""
    if not isinstance(address, tuple) or len(address) < 2:
        return ""
    host, port = str(address[0]), address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class _LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a 32 KiB read buffer instead of its default 256 KiB.

    asyncio preallocates that buffer for every TLS connection; with thousands of sidecars on the
    secure port it dominated the front end's memory. TLS records are at most 16 KiB, so 32 KiB
    reads cost no extra system calls. With `_do_write` below, bench/xds --secure went from 1,656 to
    748 MiB RSS at 2,000 proxies.
    """

    max_size = 32 * 1024

    def _do_write(self) -> None:
        """Encrypt the pending application data in pieces of `_WRITE_PIECE`, handing each piece's
        ciphertext to the socket transport before the next. asyncio's own loop encrypts the whole
        backlog first, and OpenSSL's memory BIO keeps the largest size it ever held for the life of
        the connection: a 300 KB CDS push would pin ~300 KB on every sidecar connection."""
        state: Any = self  # asyncio's private TLS state (typeshed describes the pre-3.11 class)
        try:
            while state._write_backlog:
                data = state._write_backlog[0]
                size = len(data)
                count = state._sslobj.write(memoryview(data)[:_WRITE_PIECE])
                if count < size:
                    state._write_backlog[0] = memoryview(data)[count:]
                    state._write_buffer_size -= count
                else:
                    del state._write_backlog[0]
                    state._write_buffer_size -= size
                state._process_outgoing()
        except sslproto.SSLAgainErrors:  # as asyncio's own loop: retried on the next write or read
            pass
        state._process_outgoing()


_WRITE_PIECE = 64 * 1024


async def _start_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    *,
    handshake_timeout: float,
) -> asyncio.Transport:
    """`loop.start_tls(..., server_side=True)` with `_LeanSSLProtocol` (same steps as asyncio's own)."""
    waiter: asyncio.Future[None] = loop.create_future()
    tls = _LeanSSLProtocol(
        loop, protocol, context, waiter, server_side=True,
        ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]  # float seconds work; typeshed says int
        call_connection_made=False,
    )  # fmt: skip
    transport.pause_reading()  # so no data reaches the TLS protocol before connection_made
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return tls._app_transport


def _handshake_failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


class PeerCertificates:
    """Which internal connection carries which verified client certificate.

    Keys are the front end's outgoing `(host, port)` as the internal server sees it; values are the
    client's leaf certificate (PEM) as verified during the TLS handshake. Only `TlsFrontEnd` adds
    entries; connections without a client certificate get none.
    """

    def __init__(self) -> None:
        self._by_address: dict[Address, bytes] = {}
        self._clients: dict[Address, str] = {}

    def register(self, address: Address, leaf_pem: bytes | None, *, client: str = "") -> None:
        """Record the internal connection `address`: the client's certificate (if any) and the
        client's own address as gRPC would name it (`ipv4:10.1.2.3:5000`), for logs and status."""
        if leaf_pem is not None:
            self._by_address[address] = leaf_pem
        if client:
            self._clients[address] = client

    def remove(self, address: Address) -> None:
        """Forget `address` (no error if it was not registered)."""
        self._by_address.pop(address, None)
        self._clients.pop(address, None)

    def client_of(self, context: _HasPeer) -> str:
        """The real client address behind the call's connection; the gRPC peer itself if unknown."""
        peer = context.peer()
        address = parse_peer(peer)
        return self._clients.get(address, peer) if address is not None else peer

    def for_peer(self, peer: str) -> bytes | None:
        """The certificate of the connection named by a gRPC peer string; None if unknown or unparsable."""
        address = parse_peer(peer)
        return None if address is None else self._by_address.get(address)

    def for_context(self, context: _HasPeer) -> bytes | None:
        """The verified client leaf certificate (PEM) of the call's connection, or None."""
        return self.for_peer(context.peer())

    def __len__(self) -> int:
        return len(self._by_address)


class _Pipe:
    """One accepted client: the TLS side (`down`) and the connection to the internal server (`up`)."""

    def __init__(self, front: TlsFrontEnd) -> None:
        self.front = front
        self.down: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.address: Address | None = None
        self.pending: list[bytes] = []  # client bytes received before `up` was connected
        self.down_done = False
        self.up_done = False
        self.finished = asyncio.get_running_loop().create_future()

    # -- client side ----------------------------------------------------------------------------
    def from_down(self, data: bytes) -> None:
        if self.up is None:
            self.pending.append(data)
            if self.down is not None:
                self.down.pause_reading()
            return
        self.up.write(data)

    def down_eof(self) -> None:
        if self.up is not None and not self.up.is_closing() and self.up.can_write_eof():
            self.up.write_eof()

    def down_lost(self, exc: Exception | None) -> None:
        self.down_done = True
        if self.up is not None:
            self._forget()  # before the outgoing socket closes, so its port cannot be reused while registered
            if exc is None:
                self.up.close()
            else:
                _reset(self.up)
        self._check_finished()

    # -- internal-server side -------------------------------------------------------------------
    def from_up(self, data: bytes) -> None:
        if self.down is not None:
            self.down.write(data)

    def up_lost(self, exc: Exception | None) -> None:
        self.up_done = True
        self._forget()
        if self.down is not None and not self.down_done:
            if exc is None:
                self.down.close()
            else:
                _reset(self.down)
        self._check_finished()

    # -- flow control ---------------------------------------------------------------------------
    def pause_up_reads(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_up_reads(self) -> None:
        if self.up is not None and not self.up.is_closing():
            self.up.resume_reading()

    def pause_down_reads(self) -> None:
        if self.down is not None:
            self.down.pause_reading()

    def resume_down_reads(self) -> None:
        if self.down is not None and not self.down.is_closing() and self.up is not None:
            self.down.resume_reading()

    def _forget(self) -> None:
        if self.address is not None:
            self.front.peers.remove(self.address)
            self.address = None

    def _check_finished(self) -> None:
        if self.down_done and (self.up_done or self.up is None) and not self.finished.done():
            self.finished.set_result(None)

    def abort(self) -> None:
        self._forget()
        for transport in (self.up, self.down):
            if transport is not None:
                transport.abort()


def _reset(transport: asyncio.Transport) -> None:
    """Close with a TCP RST (linger 0), so a reset on one side reaches the other as a reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Down(asyncio.Protocol):
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # nothing is read before the TLS layer takes over
        self.pipe.front._accepted(self.pipe, transport, self)

    def data_received(self, data: bytes) -> None:
        self.pipe.from_down(data)

    def eof_received(self) -> bool:
        self.pipe.down_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.down_lost(exc)

    def pause_writing(self) -> None:
        self.pipe.pause_up_reads()

    def resume_writing(self) -> None:
        self.pipe.resume_up_reads()


class _Up(asyncio.Protocol):
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def data_received(self, data: bytes) -> None:
        self.pipe.from_up(data)

    def eof_received(self) -> bool:
        return False  # close; `up_lost` then closes the client side after flushing

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.up_lost(exc)

    def pause_writing(self) -> None:
        self.pipe.pause_down_reads()

    def resume_writing(self) -> None:
        self.pipe.resume_down_reads()


class TlsFrontEnd:
    """Terminates TLS on a public address and pipes each connection to `backend_port` on 127.0.0.1.

    `contexts()` is called for every new handshake and returns the server `SSLContext` to use (so
    a reissued serving certificate or a new trust bundle reaches new handshakes while open
    connections keep theirs). Construct, `await start(host, port)`, later `close()` and
    `await wait_closed(within=...)`.
    """

    def __init__(
        self,
        *,
        contexts: Callable[[], ssl.SSLContext],
        backend_port: int,
        peers: PeerCertificates,
        handshake_timeout: float = 10.0,
        buffer_limit: int = 256 * 1024,
    ) -> None:
        self.contexts = contexts
        self.backend_port = backend_port
        self.peers = peers
        self.handshake_timeout = handshake_timeout
        self.buffer_limit = buffer_limit
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def connections(self) -> int:
        return len(self._pipes)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port and return the bound port. Raises OSError if the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Down(_Pipe(self)), host or None, port, reuse_address=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop accepting; open connections carry on."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self, *, within: float) -> None:
        """Wait up to `within` seconds for open connections to end, then abort the rest."""
        pending = [p.finished for p in self._pipes]
        if pending:
            await asyncio.wait(pending, timeout=within)
        for task in list(self._tasks):
            task.cancel()
        for pipe in list(self._pipes):
            pipe.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- per connection --------------------------------------------------------------------------
    def _accepted(self, pipe: _Pipe, raw: asyncio.Transport, protocol: _Down) -> None:
        self._pipes.add(pipe)
        pipe.finished.add_done_callback(lambda _: self._pipes.discard(pipe))
        task = asyncio.get_running_loop().create_task(self._connect(pipe, raw, protocol))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, pipe: _Pipe, raw: asyncio.Transport, protocol: _Down) -> None:
        loop = asyncio.get_running_loop()
        client = raw.get_extra_info("peername")
        try:
            tls = await _start_tls(loop, raw, protocol, self.contexts(), handshake_timeout=self.handshake_timeout)
        except (OSError, TimeoutError, RuntimeError) as exc:  # ssl.SSLError and resets are OSErrors
            reason = _handshake_failure_reason(exc)
            metrics.tls_handshake_failures_total.labels(reason=reason).inc()
            log.debug("TLS handshake from %s failed (%s): %s", client, reason, exc)
            raw.abort()
            pipe.down_done = True
            pipe._check_finished()
            return
        if tls is None:  # the client went away during the handshake
            pipe.down_done = True
            pipe._check_finished()
            return
        tls.pause_reading()  # until the internal connection is up and its certificate registered
        pipe.down = tls
        tls.set_write_buffer_limits(high=self.buffer_limit)
        ssl_object = tls.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            up, _ = await loop.create_connection(lambda: _Up(pipe), "127.0.0.1", self.backend_port)
        except OSError as exc:
            log.error("secure gRPC front end cannot reach the internal server: %s", exc)
            tls.abort()
            return
        if pipe.down_done:  # the client left while we were connecting
            up.close()
            pipe.up = up
            return
        assert isinstance(up, asyncio.Transport)
        up.set_write_buffer_limits(high=self.buffer_limit)
        host, port = up.get_extra_info("sockname")[:2]
        pipe.address = (host, port)
        leaf = ssl.DER_cert_to_PEM_cert(der).encode("ascii") if der else None
        self.peers.register(pipe.address, leaf, client=_grpc_peer_name(client))
        pipe.up = up  # from here on, client bytes flow
        for chunk in pipe.pending:
            up.write(chunk)
        pipe.pending.clear()
        if not up.is_closing():
            tls.resume_reading()
