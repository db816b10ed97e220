"""`PolicyIndex`: resolving a workload's mTLS from the index's candidates gives what resolving it
from every PeerAuthentication gives, for any policies and labels."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model.security import MtlsMode, PeerAuthentication, PolicyIndex, effective_mtls

NAMESPACES = ["istio-system", "shop", "pay"]
LABELS = st.dictionaries(st.sampled_from(["app", "version", "tier"]), st.sampled_from(["a", "b"]), max_size=3)


@st.composite
def policies(draw: st.DrawFn) -> list[PeerAuthentication]:
    count = draw(st.integers(min_value=0, max_value=12))
    out = []
    for index in range(count):
        selector = draw(st.one_of(st.none(), LABELS))
        ports = draw(st.dictionaries(st.sampled_from([80, 8080]), st.sampled_from(list(MtlsMode)), max_size=2))
        out.append(
            PeerAuthentication(
                name=f"pa-{index}",
                namespace=draw(st.sampled_from(NAMESPACES)),
                created=draw(st.sampled_from(["", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"])),
                selector=None if selector is None else MappingProxyType(selector),
                mode=draw(st.sampled_from(list(MtlsMode))),
                port_modes=MappingProxyType(ports if selector is not None else {}),
            )
        )
    return out


@settings(max_examples=400, deadline=None)
@given(found=policies(), namespace=st.sampled_from(NAMESPACES), labels=LABELS)
def test_the_candidates_resolve_as_every_policy_does(
    found: list[PeerAuthentication], namespace: str, labels: dict[str, str]
) -> None:
    index = PolicyIndex(found)
    candidates = index.candidates(namespace=namespace, labels=labels, root_namespace="istio-system")
    assert len(candidates) == len({id(p) for p in candidates})  # each policy at most once
    expected = effective_mtls(found, namespace=namespace, labels=labels, root_namespace="istio-system")
    got = effective_mtls(candidates, namespace=namespace, labels=labels, root_namespace="istio-system")
    assert got == expected


def test_every_policy_filed_under_one_label_pair_is_a_candidate() -> None:
    """Policies whose selectors share their first pair: the oldest, listed last, still wins."""

    def policy(name: str, created: str, selector: dict[str, str], mode: MtlsMode) -> PeerAuthentication:
        return PeerAuthentication(
            name=name, namespace="shop", created=created, selector=MappingProxyType(selector), mode=mode
        )

    found = [
        policy("new", "2026-03-01T00:00:00Z", {"app": "a"}, MtlsMode.DISABLE),
        policy("newer", "2026-04-01T00:00:00Z", {"app": "a", "version": "b"}, MtlsMode.PERMISSIVE),
        policy("old", "2026-01-01T00:00:00Z", {"app": "a", "tier": "x"}, MtlsMode.STRICT),
    ]
    index = PolicyIndex(found)
    labels = {"app": "a", "tier": "x", "version": "b"}
    candidates = index.candidates(namespace="shop", labels=labels, root_namespace="istio-system")
    assert effective_mtls(candidates, namespace="shop", labels=labels, root_namespace="istio-system").mode is (
        MtlsMode.STRICT
    )
