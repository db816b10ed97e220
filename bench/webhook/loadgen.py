"""Load generator: POSTs one AdmissionReview body over HTTPS as fast as the server answers.

Runs as its own process (`python -m bench.webhook.loadgen ...`) and prints one JSON line with the
latency of every request, so the measuring process never shares a core with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time

import aiohttp


async def _worker(
    *,
    session: aiohttp.ClientSession,
    server_name: str,
    url: str,
    body: bytes,
    deadline: float,
    lat: list[float],
    errors: list[str],
) -> None:
    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        async with session.post(url, data=body, headers=headers, server_hostname=server_name) as resp:
            payload = await resp.read()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}: {payload[:200]!r}")
                continue
        lat.append(time.perf_counter() - start)


async def run(
    url: str, body: bytes, *, cafile: str, server_name: str, concurrency: int, seconds: float, warmup: float
) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=cafile)
    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm: list[float] = []
        await asyncio.gather(
            *(
                _worker(
                    session=session,
                    server_name=server_name,
                    url=url,
                    body=body,
                    deadline=time.perf_counter() + warmup,
                    lat=warm,
                    errors=[],
                )
                for _ in range(concurrency)
            )
        )
        lat: list[float] = []
        errors: list[str] = []
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(
                _worker(
                    session=session,
                    server_name=server_name,
                    url=url,
                    body=body,
                    deadline=deadline,
                    lat=lat,
                    errors=errors,
                )
                for _ in range(concurrency)
            )
        )
        elapsed = time.perf_counter() - started
    return {"latencies": lat, "elapsed": elapsed, "errors": errors[:5], "error_count": len(errors)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True, help="file with the AdmissionReview JSON")
    p.add_argument("--cafile", required=True)
    p.add_argument("--server-name", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    a = p.parse_args()
    with open(a.body, "rb") as f:
        body = f.read()
    result = asyncio.run(
        run(
            a.url,
            body,
            cafile=a.cafile,
            server_name=a.server_name,
            concurrency=a.concurrency,
            seconds=a.seconds,
            warmup=a.warmup,
        )
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
