from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.helpers.serve import Running, start_serve


@pytest.fixture
def serve(tmp_path: pathlib.Path) -> Iterator[Running]:
    """A running `meshplane serve` in local mode with an empty config dir under tmp_path."""
    running = start_serve(tmp_path)
    try:
        yield running
    finally:
        running.stop()
