"""kubesim decodes a quantity as the API server does: kubectl, which parses it with the same library, is the oracle.

A pod's quantity that `resource.ParseQuantity` refuses is refused with its error, and one it takes is stored as
`Quantity.MarshalJSON` writes it (`tests.kubesim.decoding.quantity_error`, `tests.kubesim.canonical.quantity`).
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers.kubectl_local import kubectl_quantities, quantity_texts
from tests.kubesim import canonical
from tests.kubesim.decoding import quantity_error


@settings(max_examples=15, deadline=None)
@given(texts=st.lists(quantity_texts, min_size=1, max_size=12))
@example(texts=["Pi", "+.Ei", ".e-10", "Ti", "0e-10", "+e-9"])  # no digit: zero on ParseQuantity's fast path only
@example(texts=["1.0001Ki", "8Ei", "0.5n", "1e-3", "5.", "1.5e3", "1024Mi", "1e4294967297"])
def test_quantities_are_refused_and_stored_as_kubectl_parses_them(texts: list[str]) -> None:
    problems = {text: quantity_error(text) for text in texts}
    taken = [text for text in texts if problems[text] is None]
    assert kubectl_quantities(taken) == [canonical.quantity(text) for text in taken], taken
    for text in texts:
        if problems[text] is not None:
            assert kubectl_quantities([text]) == f"error: {problems[text]}", text
