"""The machine's kubectl as an oracle, offline: what it makes of values it parses itself.

Nothing reaches a cluster (`--local`, an empty kubeconfig, a scratch HOME). `kubectl set resources --local`
parses each `--limits` quantity with `resource.ParseQuantity`, as the API server does when it decodes a pod,
and prints the pod again: each quantity as `Quantity.MarshalJSON` writes it, the text the API server would
store. `kubectl label --local -f` reads a manifest's objects as `kubectl apply` reads them.
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


def run_kubectl(*args: str, stdin: str = "", files: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of kubectl run offline with `args`, in a scratch HOME that also holds
    `files` (name -> text, written as given); `{home}` in an argument is that directory."""
    with tempfile.TemporaryDirectory() as home:
        for name, text in (files or {}).items():
            with open(os.path.join(home, name), "w", encoding="utf-8", newline="") as f:
                f.write(text)
        result = subprocess.run(
            [KUBECTL, *(arg.replace("{home}", home) for arg in args)],
            input=stdin,
            env={**os.environ, "HOME": home, "KUBECONFIG": os.devnull},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    return result.returncode, result.stdout, result.stderr.strip()


def kubectl_quantities(texts: list[str]) -> list[str] | str:
    """Each of `texts` as the API server would store it, in order; or kubectl's error when one does not parse.

    The texts must not hold `,` or `=`, which separate kubectl's `--limits` entries."""
    if not texts:
        return []
    if any("," in text or "=" in text for text in texts):
        raise ValueError("a quantity text for kubectl's --limits may not hold ',' or '='")
    limits = ",".join(f"example.com/q{i}={text}" for i, text in enumerate(texts))
    code, out, err = run_kubectl(
        "set", "resources", "--local", "-f", "-", "-o", "json", f"--limits={limits}", stdin=json.dumps(_POD)
    )
    if code != 0:
        return err
    stored = json.loads(out)["spec"]["containers"][0]["resources"]["limits"]
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
    code, text, err = run_kubectl(
        "label", "--local", "-f", "{home}/manifest.yaml", "oracle=read", "-o", "json", files={"manifest.yaml": manifest}
    )
    if code != 0:
        return err
    objects, decoder, at = [], json.JSONDecoder(), 0
    while text[at:].strip():  # one JSON object after another
        at = len(text) - len(text[at:].lstrip())
        obj, at = decoder.raw_decode(text, at)
        objects.append(obj)
    return objects
