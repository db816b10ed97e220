"""The mesh ConfigMap's scalar settings: what is accepted, and what is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controlplane.model.fields import ObjectError
from controlplane.model.meshconfig import MeshConfig


def mesh(**settings: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": yaml.safe_dump(settings)},
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("1.5m", 90.0), ("1h", 3600.0), ("1s500ms", 1.5), ("1ms", 0.001)],
)
def test_a_connect_timeout_is_a_duration_in_seconds(text: str, seconds: float) -> None:
    assert MeshConfig.from_configmap(mesh(connectTimeout=text)).connect_timeout == seconds


def test_a_missing_connect_timeout_keeps_the_default() -> None:
    assert MeshConfig.from_configmap(mesh(trustDomain="example.org")).connect_timeout == MeshConfig().connect_timeout


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("10", "is not a duration like 10s or 500ms"),
        ("10 s", "is not a duration"),
        ("10s\n", "is not a duration"),  # `$` would have let the newline through
        ("\u0661\u0660s", "is not a duration"),  # `\d` takes other scripts' digits; Go's durations do not
        ("s", "is not a duration"),
        # Istio's range: Envoy refuses a connect_timeout of 0 (1e-10s rounds to it) and one past a
        # protobuf Duration's ~10,000 years on every cluster, and Python read 400 nines as infinity
        ("0s", "must be from 1ms to 1h"),
        ("0.0000000001s", "must be from 1ms to 1h"),
        ("2h", "must be from 1ms to 1h"),
        ("99999999999h", "is not a duration"),
        ("9" * 400 + "h", "is not a duration"),
        ("1.5ms", "must be whole milliseconds"),
    ],
)
def test_a_bad_connect_timeout_is_refused_naming_the_field(value: str, problem: str) -> None:
    with pytest.raises(ObjectError) as info:
        MeshConfig.from_configmap(mesh(connectTimeout=value))
    assert "data.mesh.connectTimeout" in str(info.value) and problem in str(info.value)
