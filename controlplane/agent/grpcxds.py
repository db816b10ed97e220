"""Proxyless mode: the gRPC xDS bootstrap and the certificate files grpcio's xDS client reads.

grpcio's xDS client (gRFC A27) reads `GRPC_XDS_BOOTSTRAP` once at start. The bootstrap points it
at the agent's xDS proxy (`unix://<proxy-dir>/XDS`, `channel_creds` type `insecure`: the socket is
local to the pod; the agent relays to the discovery address over mTLS, see xdsproxy.py), and
declares the `default` certificate provider (`file_watcher`) that clusters with xDS-managed mTLS use
(gRFC A29). The agent keeps the three certificate files fresh on every rotation; grpcio re-reads
them every `refresh_interval`.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

from controlplane.agent.secrets import SecretManager

CERT_CHAIN = "cert-chain.pem"
KEY = "key.pem"
ROOT = "root-cert.pem"


def render(
    *, node_id: str, metadata: Mapping[str, Any], xds_socket: pathlib.Path, cert_dir: pathlib.Path, refresh: int
) -> dict[str, Any]:
    files = {
        "certificate_file": str(cert_dir / CERT_CHAIN),
        "private_key_file": str(cert_dir / KEY),
        "ca_certificate_file": str(cert_dir / ROOT),
        "refresh_interval": f"{refresh}s",
    }
    return {
        "xds_servers": [
            {
                "server_uri": f"unix://{xds_socket.absolute()}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": node_id, "metadata": dict(metadata), "locality": {}},
        "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": files}},
    }


def write_atomically(path: pathlib.Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` whole (temp file + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_certificates(manager: SecretManager, cert_dir: pathlib.Path) -> bool:
    """Write the current chain, key and roots; False when there is no certificate yet."""
    cred, bundle = manager.credential, manager.bundle
    if cred is None or bundle is None:
        return False
    write_atomically(cert_dir / ROOT, bundle.pem)
    write_atomically(cert_dir / KEY, cred.key_pem, mode=0o600)
    write_atomically(cert_dir / CERT_CHAIN, cred.chain_pem)
    return True


def write_bootstrap(path: pathlib.Path, bootstrap: Mapping[str, Any]) -> None:
    write_atomically(path, json.dumps(bootstrap, indent=2, sort_keys=True).encode())
