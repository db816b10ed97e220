"""A TCP forwarder on loopback, for playing network faults and other client machines on one host.

`Relay(target_port=P)` forwards 127.0.0.1:`port` to 127.0.0.1:P. With `source="127.0.0.2"` it
connects to the target from that address, so the server sees another client machine. `cut()` aborts
every open connection (a reset); `down()` cuts and refuses new connections until `up()`, so nothing
the target writes meanwhile reaches a client. Runs on the event loop it is started on; `close()`
(or leaving `async with`) closes every connection it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class Relay:
    def __init__(self, *, target_port: int, source: str | None = None) -> None:
        self.target_port = target_port
        self.source = source
        self.port = 0
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def down(self) -> None:
        self.refusing = True
        self.cut()

    def up(self) -> None:
        self.refusing = False

    def cut(self) -> int:
        links = list(self._links)
        for client, upstream in links:
            client.transport.abort()
            upstream.transport.abort()
        return len(links)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.refusing:
                writer.transport.abort()
                return
            local = (self.source, 0) if self.source else None
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port, local_addr=local)
            except OSError:
                writer.transport.abort()  # the target is down: refuse as it would
                return
            link = (writer, up_writer)
            self._links.add(link)
            pipes = [asyncio.ensure_future(_pipe(reader, up_writer)), asyncio.ensure_future(_pipe(up_reader, writer))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                self._links.discard(link)
                writer.transport.abort()
                up_writer.transport.abort()
        finally:
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
