"""The sidecar's resource quantities (the `sidecar.istio.io/proxyCPU` family and the injector's `resources`) are
read as the API server reads them, with kubectl, which parses them with the same library, as the oracle.

meshplane refuses a request above its limit before the API server would refuse the injected pod, so it must
value each quantity as the pod will hold it: `ParseQuantity`, then rounded up to a thousandth by the API
server's defaulting of container resources. It refuses, by choice, three things the API server reads: a text
without a digit (`M` is 0 to it), a negative amount, and an exponent beyond -30..30.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers.injector import DEFAULT_PARAMS
from tests.helpers.kubectl_local import kubectl_quantities, quantity_texts
from tests.kubesim import canonical
from webhook.inject import InjectionError, inject_pod
from webhook.validate import parse_quantity

_NUMBER = re.compile(r"[+-]?[0-9]*(?:\.[0-9]*)?")
_EXPONENT = re.compile(r"[eE]([-+]?[0-9]+)")


def held(stored: str) -> Fraction:
    """The value of a quantity as the API server stored it, rounded up to a thousandth as a pod's resources are."""
    unscaled, scale, _, _ = canonical.parse_quantity(stored)
    return Fraction(math.ceil(Fraction(unscaled) * Fraction(10) ** scale * 1000), 1000)


def refused_by_choice(text: str, stored: str, problem: str) -> bool:
    """Whether meshplane's refusal of a quantity the API server takes is one of the three it makes on purpose."""
    matched = _NUMBER.match(text)
    number = matched[0] if matched else ""
    exponent = _EXPONENT.fullmatch(text[len(number) :])
    return (
        (canonical.parse_quantity(stored)[0] < 0 and "must not be negative" in problem)
        or (not any(ch.isdigit() for ch in number) and problem.startswith("not a Kubernetes quantity"))
        or (exponent is not None and abs(int(exponent[1])) > 30 and problem.startswith(f"exponent {int(exponent[1])}"))
    )


@settings(max_examples=15, deadline=None)
@given(texts=st.lists(quantity_texts, min_size=1, max_size=12))
@example(texts=["1.0001", "1.0006", "0.0000000001", "9Ei", "8Ei", "+.5Pi", "-0Ki", "1e30", "5.e-10", "1.5e3"])
@example(texts=["M", ".", "+", "-1", "1e31", "Pi", "1ki", "1m5", "1e-31"])
def test_quantities_are_valued_as_the_api_server_holds_them_or_refused_with_it(texts: list[str]) -> None:
    ours: dict[str, Fraction | str] = {}
    for text in texts:
        try:
            ours[text] = Fraction(parse_quantity(text))
        except ValueError as e:
            ours[text] = str(e)
    taken = [text for text in texts if isinstance(ours[text], Fraction)]
    stored = kubectl_quantities(taken)
    assert isinstance(stored, list), f"kubectl refuses what meshplane takes, among {taken}: {stored}"
    assert [ours[text] for text in taken] == [held(value) for value in stored], list(zip(taken, stored, strict=True))
    for text in texts:
        problem = ours[text]
        if isinstance(problem, str):
            theirs = kubectl_quantities([text])
            assert isinstance(theirs, str) or refused_by_choice(text, theirs[0], problem), (text, theirs, problem)


def injected_resources(annotations: dict[str, str]) -> Any:
    pod = {"metadata": {"name": "p", "annotations": annotations}, "spec": {"containers": [{"name": "a", "image": "a"}]}}
    out = inject_pod(pod, DEFAULT_PARAMS)
    spec = out["spec"]
    return next(c for c in spec["initContainers"] + spec["containers"] if c["name"] == "istio-proxy")["resources"]


@pytest.mark.parametrize(
    ("request_", "limit"),
    [
        ("1.0006", "1.0002"),  # both hold 1001m
        ("9Ei", "8Ei"),  # both hold 2^63-1
        ("0.0000000002", "0.0000000001"),  # both hold 1m
    ],
)
def test_a_request_above_its_limit_only_before_rounding_is_injected(request_: str, limit: str) -> None:
    """The API server takes these pods (tests/kubesim/test_defaults_rules.py), so injection must not refuse them."""
    annotations = {"sidecar.istio.io/proxyMemory": request_, "sidecar.istio.io/proxyMemoryLimit": limit}
    assert injected_resources(annotations) == {"limits": {"memory": limit}, "requests": {"memory": request_}}


def test_a_request_still_above_its_limit_once_rounded_is_refused() -> None:
    annotations = {"sidecar.istio.io/proxyCPU": "1.0011", "sidecar.istio.io/proxyCPULimit": "1.0002"}
    with pytest.raises(InjectionError, match=r'the request exceeds sidecar.istio.io/proxyCPULimit="1.0002"'):
        injected_resources(annotations)
