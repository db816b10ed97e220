"""The warning for a namespace carrying both injection labels, whichever value istio-injection has."""

from __future__ import annotations

import pytest

from webhook.service import label_conflict_warning


@pytest.mark.parametrize(
    ("legacy", "outcome"),
    [
        ("enabled", "the default revision injects this pod"),
        ("disabled", "istio-injection=disabled wins: the istio.io/rev=canary label is ignored"),
        ("anything", "istio-injection=anything wins"),
    ],
)
def test_both_labels_warn_naming_both_and_the_winner(legacy: str, outcome: str) -> None:
    warning = label_conflict_warning("shop", {"istio-injection": legacy, "istio.io/rev": "canary"}, revision="canary")
    assert warning is not None
    assert f"istio-injection={legacy}" in warning and "istio.io/rev=canary" in warning and "'shop'" in warning
    assert outcome in warning and "Remove one of the two labels" in warning


@pytest.mark.parametrize("labels", [{}, {"istio-injection": "enabled"}, {"istio.io/rev": "canary"}])
def test_one_label_or_none_gives_no_warning(labels: dict[str, str]) -> None:
    assert label_conflict_warning("shop", labels, revision="canary") is None
