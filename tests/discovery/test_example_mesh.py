"""The example mesh that `make run` serves loads without problems and means what its comments say."""

from __future__ import annotations

import pathlib

from controlplane.model.endpoints import Health
from controlplane.model.registry import Registry
from controlplane.model.security import MtlsMode
from controlplane.model.store import ConfigStore
from controlplane.sources.files import FileSource

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "mesh"


def test_example_mesh_loads_cleanly() -> None:
    store = ConfigStore()
    source = FileSource(EXAMPLE, store)
    source.scan()
    problems = [p for p in source.problems if "is not read by meshplane" not in p.message]
    assert problems == []
    registry = Registry(store)
    snapshot = registry.snapshot()
    assert registry.problems == []
    assert {"web.shop.svc.cluster.local", "ledger-db.payments.svc.cluster.local"} <= set(snapshot.services)
    reviews = snapshot.endpoints_for("reviews.shop.svc.cluster.local").endpoints
    assert {e.health for e in reviews} == {Health.HEALTHY, Health.DRAINING}
    catalog = snapshot.endpoints_for("catalog.shop.svc.cluster.local").endpoints
    assert [e.sidecar for e in catalog] == [False]
    assert snapshot.mtls_for(namespace="payments", labels={}).mode is MtlsMode.STRICT
    assert snapshot.mtls_for(namespace="shop", labels={}).mode is MtlsMode.PERMISSIVE
