"""Key material in Secrets (Kubernetes mode) through the SecretClient seam, with an in-memory fake."""

from __future__ import annotations

import datetime as dt
import pathlib

import pytest

from certs.authority import KeyMaterialError, now_utc
from certs.kubestore import PLUGIN_SECRET, SELF_SIGNED_SECRET, KubeSecretKeyStore
from certs.pem import generate_key, key_pem
from tests.certs.fakes import FakeSecrets
from tests.certs.test_keystore import write_cacerts

NS = "istio-system"


async def test_first_replica_creates_istio_ca_secret_with_istios_keys() -> None:
    secrets = FakeSecrets()
    authority = await KubeSecretKeyStore(secrets, namespace=NS).load_or_create()
    stored = secrets.secrets[(NS, SELF_SIGNED_SECRET)]
    assert set(stored.data) == {"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"}
    assert stored.data["root-cert.pem"] == authority.root_pem


async def test_a_restarted_replica_loads_the_existing_secret() -> None:
    secrets = FakeSecrets()
    first = await KubeSecretKeyStore(secrets, namespace=NS).load_or_create()
    second = await KubeSecretKeyStore(secrets, namespace=NS).load_or_create()
    assert second.cert == first.cert
    assert [c[0] for c in secrets.calls].count("create") == 1


async def test_losing_the_create_race_adopts_the_winners_root() -> None:
    winner_secrets = FakeSecrets()
    winner = await KubeSecretKeyStore(winner_secrets, namespace=NS).load_or_create()
    secrets = FakeSecrets(preempt_create=winner_secrets.secrets[(NS, SELF_SIGNED_SECRET)].data)
    loser = await KubeSecretKeyStore(secrets, namespace=NS).load_or_create()
    assert loser.cert == winner.cert


async def test_cacerts_takes_precedence_over_istio_ca_secret(tmp_path: pathlib.Path) -> None:
    root, intermediate = write_cacerts(tmp_path / "cacerts")
    secrets = FakeSecrets()
    await KubeSecretKeyStore(secrets, namespace=NS).load_or_create()  # an istio-ca-secret exists too
    secrets.put(NS, PLUGIN_SECRET, {p.name: p.read_bytes() for p in (tmp_path / "cacerts").iterdir()})
    authority = await KubeSecretKeyStore(secrets, namespace=NS).load_or_create()
    assert authority.plugin
    assert authority.cert == intermediate
    assert authority.chain[-1] == root.cert


async def test_a_broken_secret_is_named() -> None:
    secrets = FakeSecrets()
    secrets.put(NS, SELF_SIGNED_SECRET, {"ca-cert.pem": b"", "ca-key.pem": key_pem(generate_key())})
    with pytest.raises(KeyMaterialError, match=r"Secret istio-system/istio-ca-secret: key ca-cert.pem is missing"):
        await KubeSecretKeyStore(secrets, namespace=NS).load_or_create()


async def test_rotation_is_stored_and_a_concurrent_rotation_wins() -> None:
    secrets = FakeSecrets()
    store = KubeSecretKeyStore(secrets, namespace=NS)
    authority = await store.load_or_create()
    rotated = authority.with_rotated_root(now=now_utc())
    assert await store.save_rotated(previous=authority, rotated=rotated) is rotated
    assert secrets.secrets[(NS, SELF_SIGNED_SECRET)].data["root-cert.pem"] == rotated.root_pem

    # Another replica (stale resourceVersion) rotates too: it adopts what is stored.
    stale = KubeSecretKeyStore(secrets, namespace=NS)
    stale._resource_version = "0"
    mine = authority.with_rotated_root(now=now_utc() + dt.timedelta(seconds=1))
    adopted = await stale.save_rotated(previous=authority, rotated=mine)
    assert adopted.cert == rotated.cert
    assert adopted.roots[0] == rotated.cert
