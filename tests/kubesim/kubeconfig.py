"""Write a kubeconfig that points kubectl and kubernetes-asyncio at a kubesim server."""

from __future__ import annotations

import os
import pathlib

import yaml


def write_kubeconfig(path: str | os.PathLike[str], *, server: str, namespace: str = "default") -> pathlib.Path:
    """Write a one-context kubeconfig (`kubesim`) for `server` (plain http) to `path`; return the path."""
    target = pathlib.Path(path)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubesim", "cluster": {"server": server}}],
        "users": [{"name": "kubesim", "user": {"token": "kubesim-admin"}}],
        "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": "kubesim", "namespace": namespace}}],
        "current-context": "kubesim",
        "preferences": {},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    target.chmod(0o600)
    return target
