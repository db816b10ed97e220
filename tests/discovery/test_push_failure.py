"""A push that fails ends its own stream with an error status, and costs no other stream anything.

A push is sent by a task of the stream that exists only while pushes are pending (`discovery.stream`);
what ends that task must still end the stream, free its place and reach the client as a status.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from discovery.generators import SIDECAR
from discovery.xdstypes import CLUSTER
from tests.discovery import meshdata as m
from tests.discovery.harness import API, cluster_names, node, web_alone
from tests.discovery.test_bounds import refusal, until


async def test_a_push_that_fails_ends_only_its_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    async with web_alone() as xds:
        doomed = xds.sotw(node(pod="doomed", ip="10.1.0.7"))
        healthy = xds.sotw(node(pod="healthy", ip="10.1.0.8"))
        for client in (doomed, healthy):
            await client.request(CLUSTER)
            await client.ack(await client.recv())

        generator = SIDECAR[CLUSTER]
        generate = type(generator).generate

        def failing(self: Any, ctx: Any, watched: Any) -> Any:
            if ctx.request is not None and ctx.view.proxy.pod_name == "doomed":
                raise RuntimeError("generator broke")
            return generate(self, ctx, watched)

        monkeypatch.setattr(type(generator), "generate", failing)
        xds.apply(m.service("api", cluster_ip="10.96.0.2"))

        error = await refusal(doomed.recv)
        assert error.code() is grpc.StatusCode.UNKNOWN
        push = await healthy.recv()
        assert API in cluster_names(push)
        await healthy.ack(push)
        await until(lambda: len(xds.service.streams) == 1 and xds.service.open_streams.of("127.0.0.1") == 1)
        [stream] = xds.service.streams.values()
        assert stream.conn is not None and stream.conn.proxy.pod_name == "healthy"
