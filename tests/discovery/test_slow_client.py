"""A client that never reads costs one merged pending push, and does not hold up anyone else."""

from __future__ import annotations

import asyncio

from discovery.xdstypes import CLUSTER
from tests.discovery import meshdata as m
from tests.discovery.harness import XdsHarness, node


async def test_stuck_client_keeps_one_merged_push_and_others_stay_current() -> None:
    xds = XdsHarness(send_timeout=0.2)
    xds.apply(*m.mesh_objects(500, endpoints_per_service=1))
    await xds.start()
    try:
        stuck = xds.sotw(node(pod="stuck", ip="10.200.0.1"))
        await stuck.request(CLUSTER)  # and never reads again
        healthy = xds.sotw(node(pod="healthy", ip="10.200.0.2"))
        await healthy.request(CLUSTER)
        await healthy.ack(await healthy.recv())

        stream = next(s for s in xds.service.streams.values() if s.conn and s.conn.proxy.pod_name == "stuck")
        for n in range(150):
            xds.apply(m.service(f"extra-{n}", cluster_ip=f"10.97.{n // 250}.{n % 250 + 1}"))
            response = await healthy.recv()  # every change reaches the healthy client
            assert response.type_url == CLUSTER
            await healthy.ack(response)
            await asyncio.sleep(0)
        clusters = {r.value for r in response.resources}
        assert len(clusters) >= 500 + 150  # the last push carried every service

        assert stream.conn is not None and not stream.closed
        assert stream.conn.pushes < 150  # the stuck stream did not get (or buffer) every push
        pending = stream._pending
        assert pending is not None and pending.merged > 1  # later changes merged into one request
        assert len(xds.service.queue) <= len(xds.service.streams)
    finally:
        await xds.stop()
