"""The operator commands find and read kubeconfigs as kubectl does: `$KUBECONFIG`'s files merged,
missing ones skipped, `~/.kube/config` by default, relative paths relative to their file."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.cli import build_parser
from controlplane.kube import kubeconfig
from controlplane.kube.kubeconfig import KubeconfigFiles
from controlplane.settings import SettingsError
from tests.helpers.processes import run_process
from tests.kubesim.fixtures import KUBECTL, kubesim_fixture, secure_fixture  # noqa: F401
from tests.kubesim.server import KubeSim

MESHPLANE = pathlib.Path(sys.executable).parent / "meshplane"

FIRST = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "a",
    "clusters": [{"name": "c1", "cluster": {"server": "https://one:6443", "certificate-authority": "ca.pem"}}],
    "contexts": [{"name": "a", "context": {"cluster": "c1", "user": "u1", "namespace": "shop"}}],
}
SECOND = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "b",
    "clusters": [
        {"name": "c1", "cluster": {"server": "https://dup:6443"}},
        {"name": "c2", "cluster": {"server": "https://two:6443"}},
    ],
    "contexts": [
        {"name": "a", "context": {"cluster": "c2", "user": "u2"}},
        {"name": "b", "context": {"cluster": "c2", "user": "u1"}},
    ],
    "users": [
        {"name": "u1", "user": {"client-certificate": "certs/u1.crt", "client-key": "/etc/u1.key"}},
        {"name": "u2", "user": {"token": "abc"}},
    ],
}


def write(path: pathlib.Path, doc: dict[str, Any]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def environment(home: pathlib.Path, kubeconfig_env: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(home)
    if kubeconfig_env is not None:
        env["KUBECONFIG"] = kubeconfig_env
    return env


async def test_kubeconfig_files_merge_as_kubectl_merges_them(tmp_path: pathlib.Path) -> None:
    """The first file to set current-context, or to name a cluster, context or user, wins, whole; a
    missing file is skipped. The machine's kubectl merges the same list the same way."""
    first = write(tmp_path / "first.yaml", FIRST)
    second = write(tmp_path / "sub" / "second.yaml", SECOND)
    listed = os.pathsep.join([str(tmp_path / "missing"), str(first), str(second)])
    env = environment(tmp_path, listed)
    code, out, err = await run_process(KUBECTL, "config", "view", "--raw", "-o", "json", env=env)
    assert code == 0, err
    by_kubectl = json.loads(out)

    files = kubeconfig.locate(None, {"KUBECONFIG": listed, "HOME": str(tmp_path)})
    assert files is not None
    merged = kubeconfig.load(files)
    assert merged["current-context"] == by_kubectl["current-context"] == "a"
    for named in ("clusters", "contexts", "users"):
        assert [entry["name"] for entry in merged[named]] == [entry["name"] for entry in by_kubectl[named]]
    # kubectl shows paths as written; both resolve them against the file that wrote them
    assert merged["clusters"][0]["cluster"] == {
        "server": "https://one:6443",
        "certificate-authority": str(tmp_path / "ca.pem"),
    }
    assert by_kubectl["clusters"][0]["cluster"]["server"] == "https://one:6443"
    assert merged["contexts"] == by_kubectl["contexts"]
    assert merged["users"][0]["user"] == {
        "client-certificate": str(tmp_path / "sub" / "certs" / "u1.crt"),
        "client-key": "/etc/u1.key",
    }
    assert merged["users"][1] == by_kubectl["users"][1]
    assert kubeconfig.current_namespace(files) == "shop"


def test_where_the_files_come_from(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    assert kubeconfig.locate(None, {"HOME": str(home)}) is None  # then: in a pod, the service account
    default = write(home / ".kube" / "config", FIRST)
    assert kubeconfig.locate(None, {"HOME": str(home)}) == KubeconfigFiles((default,), "~/.kube/config")
    listed = {"HOME": str(home), "KUBECONFIG": f"a{os.pathsep}{os.pathsep}b{os.pathsep}a"}
    assert kubeconfig.locate(None, listed) == KubeconfigFiles((pathlib.Path("a"), pathlib.Path("b")), "$KUBECONFIG")
    assert kubeconfig.locate("x", listed) == KubeconfigFiles((pathlib.Path("x"),), "--kubeconfig")


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("$KUBECONFIG", "$KUBECONFIG: none of its files exists: {missing}, {other}"),
        ("--kubeconfig", "--kubeconfig: {missing} does not exist"),
    ],
)
def test_no_file_to_read_is_an_error_naming_them(tmp_path: pathlib.Path, origin: str, message: str) -> None:
    missing, other = tmp_path / "missing", tmp_path / "other"
    paths = (missing, other) if origin == "$KUBECONFIG" else (missing,)
    with pytest.raises(SettingsError) as refused:
        kubeconfig.load(KubeconfigFiles(paths, origin))
    assert str(refused.value) == message.format(missing=missing, other=other)


def test_a_merge_without_a_current_context_names_every_file(tmp_path: pathlib.Path) -> None:
    first = write(tmp_path / "first.yaml", {**FIRST, "current-context": ""})
    second = write(tmp_path / "second.yaml", {k: v for k, v in SECOND.items() if k != "current-context"})
    with pytest.raises(SettingsError) as refused:
        kubeconfig.load(KubeconfigFiles((first, second), "$KUBECONFIG"))
    assert str(refused.value) == f"$KUBECONFIG: {first}{os.pathsep}{second} has no current-context"


async def test_an_operator_command_uses_the_kubeconfig_kubectl_uses(secure: KubeSim, tmp_path: pathlib.Path) -> None:
    """A context in one file, its cluster (CA by a relative path) and user (token file, relative) in
    another, after a file that does not exist: kubectl reaches the API server, and so does `meshplane
    injector list`; then the same from `~/.kube/config` with no `$KUBECONFIG`. meshplane used to read
    only the first entry of `$KUBECONFIG`, and nothing from `~/.kube/config`."""
    contexts = write(
        tmp_path / "mine.yaml",
        {"current-context": "sim", "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "admin"}}]},
    )
    credentials = tmp_path / "shared"
    credentials.mkdir()
    (credentials / "ca.crt").write_bytes(secure.ca_pem)
    (credentials / "token").write_text(secure.admin_token)
    cluster = {"server": secure.url, "certificate-authority": "ca.crt"}
    write(
        credentials / "cluster.yaml",
        {
            "clusters": [{"name": "sim", "cluster": cluster}],
            "users": [{"name": "admin", "user": {"tokenFile": "token"}}],
        },
    )
    listed = os.pathsep.join([str(tmp_path / "gone.yaml"), str(contexts), str(credentials / "cluster.yaml")])
    env = environment(tmp_path / "home", listed)

    code, out, err = await run_process(KUBECTL, "get", "namespace", "default", "-o", "name", env=env)
    assert (code, out, err) == (0, "namespace/default\n", "")
    code, out, err = await run_process(str(MESHPLANE), "injector", "list", env=env)
    assert code == 0, err

    home = tmp_path / "home"
    merged = kubeconfig.load(KubeconfigFiles(tuple(pathlib.Path(p) for p in listed.split(os.pathsep)), "$KUBECONFIG"))
    write(home / ".kube" / "config", merged)
    code, out, err = await run_process(str(MESHPLANE), "injector", "list", env=environment(home, None))
    assert code == 0, err


def test_a_context_chosen_by_name_is_the_current_one(tmp_path: pathlib.Path) -> None:
    files = KubeconfigFiles(
        (write(tmp_path / "first.yaml", FIRST), write(tmp_path / "second.yaml", SECOND)), "$KUBECONFIG"
    )
    assert kubeconfig.load(files, "b")["current-context"] == "b"
    assert (kubeconfig.current_namespace(files), kubeconfig.current_namespace(files, "b")) == ("shop", None)
    with pytest.raises(SettingsError) as refused:
        kubeconfig.load(files, "nope")
    assert str(refused.value).endswith("has no context 'nope' (its contexts: a, b)")


async def test_context_picks_the_cluster_as_kubectls_does(kubesim: KubeSim, tmp_path: pathlib.Path) -> None:
    """`--context` reaches the cluster of the context it names, whatever the current one is."""
    config = yaml.safe_load(kubesim.write_kubeconfig(tmp_path / "sim.yaml").read_text())
    config["clusters"].append({"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}})
    config["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "kubesim"}})
    config["current-context"] = "gone"
    env = environment(tmp_path / "home", str(write(tmp_path / "both.yaml", config)))
    for tool in (KUBECTL, str(MESHPLANE)):
        command = ["get", "namespace", "default"] if tool == KUBECTL else ["injector", "list"]
        code, _, err = await run_process(tool, *command, env=env)
        assert code == 1 and "127.0.0.1:9" in err, (tool, err)
        code, _, err = await run_process(tool, *command, "--context", "kubesim", env=env)
        assert code == 0, (tool, err)
    code, _, err = await run_process(str(MESHPLANE), "injector", "list", "--context", "nope", env=env)
    assert code == 1 and "has no context 'nope' (its contexts: kubesim, gone)" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze"],
        ["injector", "list"],
        ["version"],
        ["proxy-status"],
        ["check-inject", "web"],
        ["tag", "list"],
    ],
)
def test_istioctls_short_flags_mean_what_they_mean_there(argv: list[str]) -> None:
    """istioctl's `-c` (kubeconfig), `--context` and, where a command has it, `-i`/`--istioNamespace`."""
    parser = build_parser(argv[:1])
    args = parser.parse_args([*argv, "-c", "/k", "--context", "prod"])
    assert (args.kubeconfig, args.context) == ("/k", "prod")
    if hasattr(args, "istio_namespace"):
        assert args.istio_namespace == "istio-system"
        assert parser.parse_args([*argv, "-i", "mesh"]).istio_namespace == "mesh"
        assert parser.parse_args([*argv, "--istioNamespace", "mesh"]).istio_namespace == "mesh"


@pytest.mark.parametrize(
    ("clusters", "problem"),
    [
        ("[5]", "clusters[0] must be a mapping with a name and a cluster"),
        ("[{name: 5, cluster: {server: 'https://x'}}]", "clusters[0].name must be a string"),
        ("[{name: c, cluster: [a]}]", "clusters[0].cluster must be a mapping"),
        ("{c: {server: 'https://x'}}", "clusters must be a list"),
    ],
)
async def test_entries_kubectl_cannot_decode_are_refused_naming_them(
    tmp_path: pathlib.Path, clusters: str, problem: str
) -> None:
    path = tmp_path / "config"
    path.write_text(f"apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters: {clusters}\n")
    code, _, err = await run_process(KUBECTL, "config", "view", env=environment(tmp_path, str(path)))
    assert code == 1 and "error loading config file" in err  # kubectl refuses it too
    with pytest.raises(SettingsError) as refused:
        kubeconfig.load(KubeconfigFiles((path,), "$KUBECONFIG"))
    assert str(refused.value) == f"$KUBECONFIG: {path}: {problem}"


names = st.sets(st.sampled_from(["a", "b", "c"]))
files = st.lists(
    st.one_of(st.none(), st.tuples(names, names, st.one_of(st.none(), st.sampled_from(["a", "b", "c", "z"])))),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None)
@given(listed=files)
def test_merges_agree_with_kubectls(listed: list[tuple[set[str], set[str], str | None] | None]) -> None:
    """Generated `$KUBECONFIG` lists (missing files; clusters, contexts and current contexts repeated
    across files): the merge names the same current context and takes each entry from the same file as
    `kubectl config view` does, or both refuse the list."""
    with tempfile.TemporaryDirectory() as home:
        paths: list[pathlib.Path] = []
        for index, spec in enumerate(listed):
            path = pathlib.Path(home, f"f{index}")
            paths.append(path)
            if spec is None:
                continue  # listed but missing
            clusters, contexts, current = spec
            doc: dict[str, Any] = {
                "clusters": [{"name": n, "cluster": {"server": f"https://f{index}-{n}"}} for n in sorted(clusters)],
                "contexts": [{"name": n, "context": {"cluster": f"f{index}", "user": "u"}} for n in sorted(contexts)],
            }
            if current is not None:
                doc["current-context"] = current
            write(path, doc)
        env = {**os.environ, "HOME": home, "KUBECONFIG": os.pathsep.join(map(str, paths))}
        result = subprocess.run(
            [KUBECTL, "config", "view", "-o", "json"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        try:
            ours: dict[str, Any] | None = kubeconfig.load(KubeconfigFiles(tuple(paths), "$KUBECONFIG"))
        except SettingsError:
            ours = None
    if ours is None:  # nothing to connect to: kubectl shows an empty view or the same lack
        theirs = json.loads(result.stdout) if result.returncode == 0 else {}
        assert not theirs.get("clusters") or not theirs.get("contexts") or not theirs.get("current-context")
        return
    theirs = json.loads(result.stdout)
    assert ours["current-context"] == theirs["current-context"]
    for named, body in (("clusters", "cluster"), ("contexts", "context")):
        assert {e["name"]: e[body] for e in ours[named]} == {e["name"]: e[body] for e in theirs[named] or []}
