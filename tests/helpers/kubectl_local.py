"""The machine's kubectl as an oracle, offline: what it makes of values it parses itself.

`kubectl set resources --local` parses each `--limits` quantity with `resource.ParseQuantity`, as the API server
does when it decodes a pod, and prints the pod again: each quantity as `Quantity.MarshalJSON` writes it, the
text the API server would store. Nothing reaches a cluster (`--local`, an empty kubeconfig, a scratch HOME).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

from hypothesis import strategies as st

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}


def kubectl_quantities(texts: list[str]) -> list[str] | str:
    """Each of `texts` as the API server would store it, in order; or kubectl's error when one does not parse.

    The texts must not hold `,` or `=`, which separate kubectl's `--limits` entries."""
    if not texts:
        return []
    if any("," in text or "=" in text for text in texts):
        raise ValueError("a quantity text for kubectl's --limits may not hold ',' or '='")
    limits = ",".join(f"example.com/q{i}={text}" for i, text in enumerate(texts))
    with tempfile.TemporaryDirectory() as home:
        result = subprocess.run(
            [KUBECTL, "set", "resources", "--local", "-f", "-", "-o", "json", f"--limits={limits}"],
            input=json.dumps(_POD),
            env={**os.environ, "HOME": home, "KUBECONFIG": os.devnull},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        return result.stderr.strip()
    stored = json.loads(result.stdout)["spec"]["containers"][0]["resources"]["limits"]
    return [stored[f"example.com/q{i}"] for i in range(len(texts))]


_SUFFIXES = ["", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
_exponents = st.builds(
    "{}{}{}".format, st.sampled_from("eE"), st.sampled_from(["", "+", "-"]), st.integers(0, 40).map(str)
)
_near_suffixes = st.sampled_from(["e", "ki", "K", "i", "m5", "Ki5", "e+", "Mi.", "ee3", "1e3", "E-"])
_numbers = st.builds(
    "{}{}{}".format,
    st.sampled_from(["", "", "+", "-"]),
    st.text("0123456789", max_size=22),
    st.one_of(st.just(""), st.text("0123456789", max_size=12).map(".{}".format)),
)
# Quantities as people write them, at the edges ParseQuantity cares about (18 digits, nano, binary sizes, no
# digit at all, exponents around int32), and texts from its alphabet that mostly do not parse.
quantity_texts = st.one_of(
    st.builds(str.__add__, _numbers, st.one_of(st.sampled_from(_SUFFIXES), _exponents, _near_suffixes)),
    st.text("0123456789.+-eEinumkKMGTP", min_size=1, max_size=8),
)


def kubectl_objects(manifest: str) -> list[dict[str, Any]] | str:
    """The objects kubectl reads from a multi-document manifest (lists flattened, each labelled `oracle=read`,
    which is what `kubectl label --local` changes; it prints them one after another), in order; or kubectl's
    error when it refuses the file."""
    with tempfile.TemporaryDirectory() as home:
        path = os.path.join(home, "manifest.yaml")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(manifest)
        result = subprocess.run(
            [KUBECTL, "label", "--local", "-f", path, "oracle=read", "-o", "json"],
            env={**os.environ, "HOME": home, "KUBECONFIG": os.devnull},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        return result.stderr.strip()
    objects, decoder, text, at = [], json.JSONDecoder(), result.stdout, 0
    while text[at:].strip():  # one JSON object after another
        at = len(text) - len(text[at:].lstrip())
        obj, at = decoder.raw_decode(text, at)
        objects.append(obj)
    return objects
