"""Write a kubeconfig that points kubectl, helm and kubernetes-asyncio at a kubesim server."""

from __future__ import annotations

import base64
import os
import pathlib

import yaml


def write_kubeconfig(
    path: str | os.PathLike[str],
    *,
    server: str,
    namespace: str = "default",
    token: str = "kubesim-admin",
    ca_pem: bytes | None = None,
) -> pathlib.Path:
    """Write a one-context kubeconfig (`kubesim`) for `server` to `path` (mode 0600); return the path.

    `token` is the user's bearer token; `ca_pem` (for an https server) goes in as
    `certificate-authority-data`, so clients verify the serving certificate.
    """
    target = pathlib.Path(path)
    cluster: dict[str, str] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode("ascii")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubesim", "cluster": cluster}],
        "users": [{"name": "kubesim", "user": {"token": token}}],
        "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": "kubesim", "namespace": namespace}}],
        "current-context": "kubesim",
        "preferences": {},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    target.chmod(0o600)
    return target
