"""Key material on disk: the self-signed root in the state dir and the plug-in `cacerts/` directory."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.authority import Authority, KeyMaterialError, random_serial, self_signed_root, signature_hash
from certs.keystore import FileKeyStore, PluginDirStore, check_state_dir, local_keystore
from certs.pem import cert_pem, generate_key, key_pem
from tests.certs.helpers import make_csr, openssl_verify, spiffe, write_pem


async def test_first_start_creates_a_p256_root_with_a_private_key_file(tmp_path: pathlib.Path) -> None:
    store = FileKeyStore(tmp_path / "ca")
    authority = await store.load_or_create()
    assert isinstance(authority.key, ec.EllipticCurvePrivateKey)
    assert authority.key.curve.name == "secp256r1"
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca-key.pem").st_mode) == 0o600
    assert authority.cert.not_valid_after_utc - authority.cert.not_valid_before_utc > dt.timedelta(days=3649)
    assert authority.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("algorithm", ["rsa-2048", "rsa-3072"])
async def test_rsa_roots_are_selectable(tmp_path: pathlib.Path, algorithm: str) -> None:
    authority = await FileKeyStore(tmp_path / "ca", algorithm=algorithm).load_or_create()
    assert authority.key.key_size == int(algorithm[4:])


async def test_restart_reuses_the_same_root(tmp_path: pathlib.Path) -> None:
    first = await FileKeyStore(tmp_path / "ca").load_or_create()
    again = await FileKeyStore(tmp_path / "ca").load_or_create()
    assert again.cert == first.cert
    assert again.roots == (first.cert,)


async def test_a_key_readable_by_others_is_refused_with_the_fix(tmp_path: pathlib.Path) -> None:
    await FileKeyStore(tmp_path / "ca").load_or_create()
    (tmp_path / "ca" / "ca-key.pem").chmod(0o644)
    with pytest.raises(KeyMaterialError, match=r"ca-key.pem has mode 644.*chmod 600"):
        await FileKeyStore(tmp_path / "ca").load_or_create()


async def test_a_missing_half_of_the_pair_is_named(tmp_path: pathlib.Path) -> None:
    await FileKeyStore(tmp_path / "ca").load_or_create()
    (tmp_path / "ca" / "ca-cert.pem").unlink()
    with pytest.raises(KeyMaterialError, match=r"ca-cert.pem is missing"):
        await FileKeyStore(tmp_path / "ca").load_or_create()


async def test_a_certificate_not_matching_the_key_is_refused(tmp_path: pathlib.Path) -> None:
    await FileKeyStore(tmp_path / "ca").load_or_create()
    other = generate_key()
    (tmp_path / "ca" / "ca-cert.pem").write_bytes(cert_pem(self_signed_root(other, org="x")))
    with pytest.raises(KeyMaterialError, match="does not match the CA key"):
        await FileKeyStore(tmp_path / "ca").load_or_create()


async def test_garbage_key_file_is_named(tmp_path: pathlib.Path) -> None:
    await FileKeyStore(tmp_path / "ca").load_or_create()
    (tmp_path / "ca" / "ca-key.pem").write_text("not a key")
    with pytest.raises(KeyMaterialError, match=r"ca-key.pem: cannot parse the CA key"):
        await FileKeyStore(tmp_path / "ca").load_or_create()


# -- plug-in CA ---------------------------------------------------------------------------------


def _intermediate(root: Authority, *, org: str = "intermediate") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, signature_hash(root.key))
    )
    return key, cert


def write_cacerts(directory: pathlib.Path, *, chain_includes_root: bool = True) -> tuple[Authority, x509.Certificate]:
    """An operator's plug-in CA: a root and an intermediate signed by it. Returns (root authority, intermediate)."""
    root_key = generate_key()
    root_cert = self_signed_root(root_key, org="operator-root")
    root = Authority(key=root_key, cert=root_cert, roots=(root_cert,))
    key, cert = _intermediate(root)
    directory.mkdir(parents=True)
    write_pem(directory / "ca-cert.pem", cert)
    (directory / "ca-key.pem").write_bytes(key_pem(key))
    (directory / "ca-key.pem").chmod(0o600)
    write_pem(directory / "cert-chain.pem", cert, *((root_cert,) if chain_includes_root else ()))
    write_pem(directory / "root-cert.pem", root_cert)
    return root, cert


@pytest.mark.parametrize("chain_includes_root", [True, False])
async def test_plugin_ca_signs_as_the_intermediate_and_returns_the_full_chain(
    tmp_path: pathlib.Path, chain_includes_root: bool
) -> None:
    root, intermediate = write_cacerts(tmp_path / "cacerts", chain_includes_root=chain_includes_root)
    store = local_keystore(tmp_path)
    assert isinstance(store, PluginDirStore)
    authority = await store.load_or_create()
    assert authority.plugin
    pem, _ = make_csr()
    from certs.signing import SigningPolicy, check_csr, sign

    chain = sign(
        authority, check_csr(pem, policy=SigningPolicy()), identities=(spiffe("a", "b"),), ttl=dt.timedelta(hours=1)
    )
    assert chain[1:] == [intermediate, root.cert]
    openssl_verify(
        tmp_path, ca_file=tmp_path / "cacerts" / "root-cert.pem", chain=[cert_pem(c).decode() for c in chain]
    )


async def test_plugin_ca_missing_files_are_listed(tmp_path: pathlib.Path) -> None:
    write_cacerts(tmp_path / "cacerts")
    (tmp_path / "cacerts" / "cert-chain.pem").unlink()
    (tmp_path / "cacerts" / "root-cert.pem").unlink()
    with pytest.raises(KeyMaterialError, match=r"missing cert-chain.pem, root-cert.pem"):
        await local_keystore(tmp_path).load_or_create()


async def test_plugin_chain_not_reaching_the_given_root_is_refused(tmp_path: pathlib.Path) -> None:
    write_cacerts(tmp_path / "cacerts", chain_includes_root=False)
    write_pem(tmp_path / "cacerts" / "root-cert.pem", self_signed_root(generate_key(), org="someone-else"))
    with pytest.raises(KeyMaterialError, match=r"cert-chain.pem: does not end in a root from root-cert.pem"):
        await local_keystore(tmp_path).load_or_create()


async def test_plugin_ca_cert_that_is_not_a_ca_is_refused(tmp_path: pathlib.Path) -> None:
    root, _ = write_cacerts(tmp_path / "cacerts")
    leaf_key = generate_key()
    leaf = root.issue(public_key=leaf_key.public_key(), ttl=dt.timedelta(hours=1))[0]
    write_pem(tmp_path / "cacerts" / "ca-cert.pem", leaf)
    (tmp_path / "cacerts" / "ca-key.pem").write_bytes(key_pem(leaf_key))
    with pytest.raises(KeyMaterialError, match="not a CA certificate"):
        await local_keystore(tmp_path).load_or_create()


async def test_plugin_ca_is_never_rotated(tmp_path: pathlib.Path) -> None:
    write_cacerts(tmp_path / "cacerts")
    store = local_keystore(tmp_path)
    authority = await store.load_or_create()
    with pytest.raises(KeyMaterialError, match="never rotated"):
        await store.save_rotated(previous=authority, rotated=authority)
    with pytest.raises(KeyMaterialError, match="only a self-signed root is rotated"):
        authority.with_rotated_root(now=dt.datetime.now(dt.UTC))


async def test_without_cacerts_the_state_dir_holds_a_self_signed_root(tmp_path: pathlib.Path) -> None:
    store = local_keystore(tmp_path)
    assert isinstance(store, FileKeyStore)
    assert store.directory == tmp_path / "ca"


async def test_a_lost_key_next_to_its_trust_bundle_is_refused_naming_the_files_and_the_flag(
    tmp_path: pathlib.Path,
) -> None:
    await FileKeyStore(tmp_path / "ca").load_or_create()
    bundle = (tmp_path / "ca" / "root-cert.pem").read_bytes()
    (tmp_path / "ca" / "ca-key.pem").unlink()
    (tmp_path / "ca" / "ca-cert.pem").unlink()
    with pytest.raises(KeyMaterialError, match=r"ca-key.pem and .*ca-cert.pem are missing.*--allow-new-root"):
        await FileKeyStore(tmp_path / "ca").load_or_create()
    assert (tmp_path / "ca" / "root-cert.pem").read_bytes() == bundle
    assert not (tmp_path / "ca" / "ca-key.pem").exists()


async def test_a_lost_ca_dir_with_a_published_bundle_is_refused_unless_a_new_root_is_allowed(
    tmp_path: pathlib.Path,
) -> None:
    old = await local_keystore(tmp_path).load_or_create()
    (tmp_path / "root-cert.pem").write_bytes(old.root_pem)  # what `meshplane serve` publishes
    for path in (tmp_path / "ca").iterdir():
        path.unlink()
    (tmp_path / "ca").rmdir()
    with pytest.raises(KeyMaterialError, match=str(tmp_path / "root-cert.pem")):
        await local_keystore(tmp_path).load_or_create()
    assert not (tmp_path / "ca").exists()
    new = await local_keystore(tmp_path, allow_new_root=True).load_or_create()
    assert new.cert != old.cert
    again = await local_keystore(tmp_path).load_or_create()  # the new root is kept from now on
    assert again.cert == new.cert


def test_a_state_dir_that_cannot_be_created_is_named_with_the_reason(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(KeyMaterialError, match=r"state directory .*file/state is not usable: Not a directory"):
        check_state_dir(tmp_path / "file" / "state")
    with pytest.raises(KeyMaterialError, match=r"state directory .*file is not a directory"):
        check_state_dir(tmp_path / "file")
    check_state_dir(tmp_path / "new" / "state")
    assert (tmp_path / "new" / "state").is_dir() and list((tmp_path / "new" / "state").iterdir()) == []
