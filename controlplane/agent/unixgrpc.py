"""gRPC servers on a Unix socket, as the agent serves SDS to Envoy and xDS to proxyless clients.

The socket is local to the pod: plaintext, mode 0600. A socket left by a killed agent is replaced;
every failure raises the caller's error class with a message naming the socket and what to do.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable

import grpc

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL


async def start_unix_server(
    path: pathlib.Path,
    *,
    what: str,
    register: Callable[[grpc.aio.Server], None],
    error: type[Exception],
    hint: str = "choose a shorter one",
) -> grpc.aio.Server:
    """A started server on `path` with the services `register` adds. Raises `error`."""
    _prepare(path, what=what, error=error, hint=hint)
    server = grpc.aio.server()
    register(server)
    try:
        server.add_insecure_port(f"unix:{path}")
    except RuntimeError as exc:
        raise error(f"cannot listen on {what} socket {path}: {exc}") from None
    await server.start()
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return server


async def stop_unix_server(server: grpc.aio.Server | None, path: pathlib.Path, *, grace: float = 1.0) -> None:
    """Stop `server` (if started) and remove its socket."""
    if server is not None:
        await server.stop(grace)
    with contextlib.suppress(OSError):
        os.unlink(path)


def _prepare(path: pathlib.Path, *, what: str, error: type[Exception], hint: str) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise error(f"{what} socket path {path} is longer than {MAX_SOCKET_PATH} bytes: {hint}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()  # left by an agent that was killed; nobody serves it any more
    except OSError as exc:
        raise error(f"cannot prepare {what} socket {path}: {exc.strerror}") from None
