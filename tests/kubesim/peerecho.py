"""A TCP server that tells each client the address its connection came from, and a client that asks it.

`python -m tests.kubesim.peerecho serve [--bind ADDRESS] [--port PORT]` listens on ADDRESS:PORT (by
default 0.0.0.0 and a free port), prints the port on stdout, then answers every connection with the peer's
IP and a newline and closes it. `python -m tests.kubesim.peerecho ask HOST PORT` connects and prints the
answer; it exits 1 with the error on stderr when the connection fails or no answer comes within 5 s.

Tests run both inside network namespaces to see which source address a server gets, the calling pod's own
or one that masquerading put there: `async with echo_server(netns) as port` runs `serve` in `netns`, and
`await ask_from(netns, host, port)` returns the answer (None when the connection fails).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import socket
import sys
from collections.abc import AsyncIterator, Sequence

TIMEOUT = 5.0
ROOT = pathlib.Path(__file__).resolve().parents[2]


def serve(bind: str, port: int) -> None:
    """Answer connections until killed, one at a time (each answer is a single short write)."""
    with socket.create_server((bind, port)) as server:
        print(server.getsockname()[1], flush=True)
        while True:
            conn, (host, _) = server.accept()
            with conn:
                conn.sendall(f"{host}\n".encode())


def ask(host: str, port: int) -> str:
    """The address the server at host:port saw this connection come from."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
        answer = b""
        while chunk := conn.recv(64):
            answer += chunk
    return answer.decode().strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kubesim.peerecho", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="answer each connection with its peer's IP")
    serving.add_argument("--bind", default="0.0.0.0")
    serving.add_argument("--port", type=int, default=0)
    asking = commands.add_parser("ask", help="print the IP the server saw")
    asking.add_argument("host")
    asking.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.bind, args.port)
        return 0
    try:
        print(ask(args.host, args.port))
    except OSError as exc:
        print(f"peerecho: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _in_netns(netns: str | None, *args: str) -> tuple[str, ...]:
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    return (*prefix, sys.executable, "-m", "tests.kubesim.peerecho", *args)


@contextlib.asynccontextmanager
async def echo_server(netns: str | None, *, bind: str = "0.0.0.0") -> AsyncIterator[int]:
    """`serve` inside `netns` (None: this namespace) while the block runs; yields its port, kills it after."""
    proc = await asyncio.create_subprocess_exec(
        *_in_netns(netns, "serve", "--bind", bind),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line.strip().isdigit():
            raise RuntimeError(f"peerecho serve in {netns}: exit {await proc.wait()} before printing its port")
        yield int(line)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def ask_from(netns: str | None, host: str, port: int) -> str | None:
    """What the server at host:port saw, asked from inside `netns`; None when the connection failed."""
    proc = await asyncio.create_subprocess_exec(
        *_in_netns(netns, "ask", host, str(port)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 3 * TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode().strip() if proc.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
