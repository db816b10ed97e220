from __future__ import annotations

import os

# Before anything imports gRPC: tests start children (some with preexec_fn, so fork+exec) while gRPC
# runs in this process; see controlplane/__init__.py for why fork support must be off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pathlib
from collections.abc import Iterator

import pytest

from tests.helpers.serve import Running, start_serve


@pytest.fixture
def serve(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    """A running `meshplane serve` in local mode with an empty config dir under tmp_path, with the flags
    of the test's `serve_args` mark if it has one."""
    marker = request.node.get_closest_marker("serve_args")
    running = start_serve(tmp_path, *(marker.args if marker else ()))
    try:
        yield running
    finally:
        running.stop()
