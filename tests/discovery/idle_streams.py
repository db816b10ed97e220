"""Idle SotW streams from another process: `python -m tests.discovery.idle_streams TARGET COUNT`.

Opens COUNT streams to the ADS server at TARGET (one channel), each as a sidecar of its own pod that
asks for CDS, LDS, EDS of `web` and RDS `80`, and ACKs the first response of each type. Prints
`ready` once every stream has ACKed all four, then holds the streams until stdin closes. The tests
count what the server holds per idle stream without the clients' own objects in the count.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery.harness import WEB, SotwClient, node

SUBSCRIPTIONS = ((CLUSTER, ()), (LISTENER, ()), (ENDPOINT, (WEB,)), (ROUTE, ("80",)))


async def idle(channel: grpc.aio.Channel, index: int) -> SotwClient:
    client = SotwClient(channel, node(pod=f"idle-{index}", ip=f"10.2.{index // 250}.{index % 250 + 1}"))
    for type_url, names in SUBSCRIPTIONS:
        await client.request(type_url, names)
        await client.ack(await client.recv(), names)
    return client


async def main(target: str, count: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        clients = await asyncio.gather(*(idle(channel, i) for i in range(count)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for client in clients:
            await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
