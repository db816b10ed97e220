"""Where the CA's key material lives, behind one small Protocol.

- `FileKeyStore` (local mode): a self-signed root in a directory (`ca-key.pem` mode 0600,
  `ca-cert.pem`, and `root-cert.pem`, the trust bundle), created on first start and reused after.
  A trust bundle without its key (a lost or wiped `ca/`) is refused unless a new root is allowed:
  a silently created root would make every certificate issued so far stop verifying.
- `PluginDirStore` (local mode): operator-supplied material in `<state-dir>/cacerts/` with Istio's
  four files; meshplane signs as that intermediate and returns the full chain.
- `certs.kubestore.KubeSecretKeyStore` (Kubernetes mode): Secrets `cacerts` / `istio-ca-secret`.

`local_keystore(state_dir)` picks the plug-in directory when it exists, else the self-signed store;
`check_state_dir(state_dir)` creates the state directory and proves it writable.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs.authority import ORGANIZATION, ROOT_LIFETIME, Authority, KeyMaterialError, now_utc, self_signed_root
from certs.pem import (
    PrivateKey,
    cert_pem,
    chain_pem,
    generate_key,
    key_algorithm,
    key_pem,
    load_certificates,
    load_key,
    write_atomic,
)

log = logging.getLogger(__name__)

PLUGIN_FILES = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")


class KeyStore(Protocol):
    """Loads (creating if needed) the CA's key material and persists a rotated root."""

    async def load_or_create(self) -> Authority:
        """The authority to sign with. Raises KeyMaterialError when stored material is unusable."""
        ...

    async def save_rotated(self, *, previous: Authority, rotated: Authority) -> Authority:
        """Persist a rotated root; return the authority now in effect.

        That is `rotated`, unless another writer stored a different rotation first, in which case
        the stored one is returned so that every replica converges on one root.
        """
        ...


def check_key_matches(key: PrivateKey, cert: x509.Certificate, *, source: str) -> None:
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise KeyMaterialError(f"{source}: the CA certificate does not match the CA key")


def plugin_authority(files: Mapping[str, bytes], *, source: str, now: dt.datetime | None = None) -> Authority:
    """Build an authority from Istio's plug-in CA files (ca-cert, ca-key, cert-chain, root-cert).

    `cert-chain.pem` may or may not start with `ca-cert.pem` and may or may not end with the root;
    the result's chain always runs from the signer's issuer up to the root. Every link is checked.
    Raises KeyMaterialError naming `source` and the file for anything missing, unparseable,
    mismatched, expired, or not chaining to a root in `root-cert.pem`.
    """
    now = now or now_utc()
    missing = [name for name in PLUGIN_FILES if not files.get(name)]
    if missing:
        raise KeyMaterialError(
            f"{source}: plug-in CA is missing {', '.join(missing)} (needs {', '.join(PLUGIN_FILES)})"
        )
    try:
        key = load_key(files["ca-key.pem"])
    except ValueError as exc:
        raise KeyMaterialError(f"{source}/ca-key.pem: cannot parse the CA key: {exc}") from None
    try:
        cert = load_certificates(files["ca-cert.pem"], source=f"{source}/ca-cert.pem")[0]
        chain = load_certificates(files["cert-chain.pem"], source=f"{source}/cert-chain.pem")
        roots = load_certificates(files["root-cert.pem"], source=f"{source}/root-cert.pem")
    except ValueError as exc:
        raise KeyMaterialError(str(exc)) from None
    check_key_matches(key, cert, source=f"{source}/ca-cert.pem")
    constraints = _basic_constraints(cert)
    if constraints is None or not constraints.ca:
        raise KeyMaterialError(f"{source}/ca-cert.pem: not a CA certificate (BasicConstraints CA:TRUE missing)")
    if cert.not_valid_after_utc <= now:
        raise KeyMaterialError(f"{source}/ca-cert.pem: expired at {cert.not_valid_after_utc.isoformat()}")
    if chain and chain[0] == cert:
        chain = chain[1:]
    top = chain[-1] if chain else cert
    if top.issuer != top.subject:
        issuers = [r for r in roots if r.subject == top.issuer]
        if not issuers:
            raise KeyMaterialError(f"{source}/cert-chain.pem: does not end in a root from root-cert.pem")
        chain.append(issuers[0])
    links = [cert, *chain]
    for child, parent in itertools.pairwise(links):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise KeyMaterialError(
                f"{source}/cert-chain.pem: {child.subject.rfc4514_string()!r} is not signed by "
                f"{parent.subject.rfc4514_string()!r}: {str(exc) or 'signature does not verify'}"
            ) from None
    if links[-1] not in roots:
        raise KeyMaterialError(f"{source}/root-cert.pem: does not hold the root that cert-chain.pem ends in")
    ordered_roots = (links[-1], *(r for r in roots if r != links[-1]))
    return Authority(key=key, cert=cert, chain=tuple(chain) if chain else (), roots=ordered_roots, plugin=True)


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _check_key_mode(path: pathlib.Path) -> None:
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise KeyMaterialError(f"{path} has mode {mode:o}; a CA key must not be readable by others (chmod 600)")


class FileKeyStore:
    """A self-signed root persisted in a directory (local mode). Satisfies `KeyStore`."""

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        org: str = ORGANIZATION,
        algorithm: str = "ecdsa-p256",
        lifetime: dt.timedelta | None = None,
        published: Sequence[pathlib.Path] = (),
        allow_new_root: bool = False,
    ) -> None:
        """`published`: other copies of the trust bundle (e.g. `<state-dir>/root-cert.pem`); like the
        directory's own `root-cert.pem`, their presence without the key means a root was lost."""
        self.directory = directory
        self.org = org
        self.algorithm = algorithm
        self.lifetime = lifetime
        self.published = tuple(published)
        self.allow_new_root = allow_new_root

    @property
    def key_path(self) -> pathlib.Path:
        return self.directory / "ca-key.pem"

    @property
    def cert_path(self) -> pathlib.Path:
        return self.directory / "ca-cert.pem"

    @property
    def root_cert_path(self) -> pathlib.Path:
        """The trust bundle: the current root first, then older roots still in their overlap."""
        return self.directory / "root-cert.pem"

    async def load_or_create(self) -> Authority:
        """Load the root, or create one when the directory holds none.

        Raises KeyMaterialError for unusable files, for one of `ca-key.pem` / `ca-cert.pem` without
        the other, and, unless `allow_new_root`, for a trust bundle whose key is gone (naming the
        missing files and the bundles found). OSError propagates when the directory is not writable.
        """
        if self.key_path.exists() or self.cert_path.exists():
            return self._load()
        bundles = [path for path in (self.root_cert_path, *self.published) if path.exists()]
        if bundles and not self.allow_new_root:
            raise KeyMaterialError(
                f"{self.key_path} and {self.cert_path} are missing, but a trust bundle of an earlier root exists "
                f"({', '.join(map(str, bundles))}): a new root would make every certificate issued under it stop "
                "verifying. Restore the missing files from a backup, or start with --allow-new-root to create a "
                "new root (every workload then needs a new certificate)"
            )
        if bundles:
            log.warning(
                "the root CA key is missing; creating a new root as allowed. Certificates issued under the old "
                "root (trust bundle %s) stop verifying until their workloads get new ones",
                ", ".join(map(str, bundles)),
            )
        key = generate_key(self.algorithm)
        cert = self_signed_root(key, org=self.org, lifetime=self.lifetime or ROOT_LIFETIME)
        write_atomic(self.key_path, key_pem(key), mode=0o600)
        write_atomic(self.root_cert_path, cert_pem(cert))
        write_atomic(self.cert_path, cert_pem(cert))
        log.info(
            "created self-signed root CA",
            extra={"dir": str(self.directory), "not_after": cert.not_valid_after_utc.isoformat()},
        )
        return Authority(key=key, cert=cert, roots=(cert,))

    async def save_rotated(self, *, previous: Authority, rotated: Authority) -> Authority:
        # The bundle first: a reader that sees the new ca-cert.pem always finds it in the bundle.
        write_atomic(self.root_cert_path, rotated.root_pem)
        write_atomic(self.cert_path, cert_pem(rotated.cert))
        return rotated

    def _load(self) -> Authority:
        for path in (self.key_path, self.cert_path):
            if not path.exists():
                raise KeyMaterialError(
                    f"{path} is missing but its pair exists; restore it (or remove both and start with "
                    "--allow-new-root for a new CA)"
                )
        _check_key_mode(self.key_path)
        try:
            key = load_key(self.key_path.read_bytes())
        except ValueError as exc:
            raise KeyMaterialError(f"{self.key_path}: cannot parse the CA key: {exc}") from None
        try:
            cert = load_certificates(self.cert_path.read_bytes(), source=str(self.cert_path))[0]
            bundle = (
                load_certificates(self.root_cert_path.read_bytes(), source=str(self.root_cert_path))
                if self.root_cert_path.exists()
                else []
            )
        except ValueError as exc:
            raise KeyMaterialError(str(exc)) from None
        check_key_matches(key, cert, source=str(self.cert_path))
        if key_algorithm(key) != self.algorithm:
            log.warning(
                "the existing root CA key is %s, not the configured %s; the configured algorithm only applies "
                "when a new root is created (remove %s to create one)",
                key_algorithm(key),
                self.algorithm,
                self.directory,
            )
        now = now_utc()
        roots = (cert, *(r for r in bundle if r != cert and r.not_valid_after_utc > now))
        if list(roots) != bundle:
            write_atomic(self.root_cert_path, chain_pem(list(roots)))
        log.info(
            "loaded root CA",
            extra={"dir": str(self.directory), "not_after": cert.not_valid_after_utc.isoformat()},
        )
        return Authority(key=key, cert=cert, roots=roots)


class PluginDirStore:
    """Operator-supplied CA material in a directory (`cacerts/`, Istio's four files). Satisfies `KeyStore`.

    Never rotated by meshplane: `save_rotated` refuses.
    """

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory

    async def load_or_create(self) -> Authority:
        files: dict[str, bytes] = {}
        for name in PLUGIN_FILES:
            path = self.directory / name
            if path.exists():
                files[name] = path.read_bytes()
        if "ca-key.pem" in files:
            _check_key_mode(self.directory / "ca-key.pem")
        authority = plugin_authority(files, source=str(self.directory))
        log.info(
            "loaded plug-in CA",
            extra={"dir": str(self.directory), "not_after": authority.not_after.isoformat()},
        )
        return authority

    async def save_rotated(self, *, previous: Authority, rotated: Authority) -> Authority:
        raise KeyMaterialError(f"{self.directory}: plug-in CA material is never rotated by meshplane")


def local_keystore(
    state_dir: pathlib.Path, *, org: str = ORGANIZATION, algorithm: str = "ecdsa-p256", allow_new_root: bool = False
) -> FileKeyStore | PluginDirStore:
    """`<state_dir>/cacerts/` when present (plug-in CA), else the self-signed root in `<state_dir>/ca/`,
    which treats the published `<state_dir>/root-cert.pem` as a bundle of its root (see `FileKeyStore`)."""
    plugin = state_dir / "cacerts"
    if plugin.is_dir():
        return PluginDirStore(plugin)
    return FileKeyStore(
        state_dir / "ca",
        org=org,
        algorithm=algorithm,
        published=(state_dir / "root-cert.pem",),
        allow_new_root=allow_new_root,
    )


def check_state_dir(state_dir: pathlib.Path) -> None:
    """Create `state_dir` if needed and prove that files can be created in it.

    Raises KeyMaterialError naming the directory and the operating system's reason (permission
    denied, read-only file system, a path component that is a file, ...).
    """
    if state_dir.exists() and not state_dir.is_dir():
        raise KeyMaterialError(f"state directory {state_dir} is not a directory; choose another --state-dir")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir, prefix=".write-check."):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise KeyMaterialError(
            f"state directory {state_dir} is not usable: {reason}; choose another --state-dir or fix its permissions"
        ) from None
