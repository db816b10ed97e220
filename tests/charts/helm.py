"""Rendering charts/istiod with the pinned helm, for the chart tests."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib
from typing import Any

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "istiod"
HELM = pathlib.Path(sys.executable).parent / "helm"
REV = "asm-1233-2"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

# The value sets every chart-wide check runs over: helm arguments by case name.
CASES: dict[str, tuple[str, ...]] = {
    "default-values": (),
    "canary": ("--set", f"revision={REV}"),
    "canary-with-tags": ("--set", f"revision={REV}", "--set-json", 'revisionTags=["prod","default"]'),
    "autoscaling": (
        "--set",
        f"revision={REV}",
        "--set",
        "pilot.autoscaleEnabled=true",
        "--set",
        "pilot.autoscaleMin=2",
    ),
    "replicas": ("--set", f"revision={REV}", "--set", "pilot.replicaCount=3"),
}

requires_helm = pytest.mark.skipif(not HELM.exists(), reason=f"helm is not installed at {HELM} (run `make setup`)")

Obj = dict[str, Any]
Objects = dict[tuple[str, str], Obj]


def helm(home: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with its config, cache and data directories under `home` (nothing outside the test)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def render_text(home: pathlib.Path, *args: str, release: str = f"istiod-{REV}") -> str:
    return helm(home, "template", release, str(CHART), "--namespace", "istio-system", *args).stdout


def render(home: pathlib.Path, *args: str, release: str = f"istiod-{REV}") -> Objects:
    """The rendered objects keyed by (kind, name); fails on two objects with one key."""
    objects: dict[tuple[str, str], Obj] = {}
    for doc in yaml.safe_load_all(render_text(home, *args, release=release)):
        if not doc:
            continue
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in objects, f"{key} rendered twice"
        objects[key] = doc
    return objects
