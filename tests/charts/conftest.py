"""Fixtures of the chart tests: a private helm home and the canary revision rendered once."""

from __future__ import annotations

import pathlib

import pytest

from tests.charts.helm import REV, Objects, render


@pytest.fixture(name="helm_home", scope="session")
def helm_home_fixture(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """helm's config, cache and data directories, so nothing is written outside the test's temp dir."""
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(name="canary", scope="session")
def canary_fixture(helm_home: pathlib.Path) -> Objects:
    """Revision asm-1233-2 with the chart's default values."""
    return render(helm_home, "--set", f"revision={REV}")
