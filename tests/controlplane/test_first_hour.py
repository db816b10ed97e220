"""What a new user meets in the first hour: mistakes are refused with a message that says what to do."""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
import urllib.request

from controlplane import cli
from controlplane.model.meshconfig import MeshConfig
from controlplane.model.store import ConfigStore
from controlplane.sources.files import FileSource
from tests.helpers.serve import Running, meshplane_cmd
from webhook.configparse import parse_injection_config


def meshplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*meshplane_cmd(), *args], capture_output=True, text=True, timeout=60, check=False)


def test_token_refuses_a_state_dir_without_the_servers_key(tmp_path: pathlib.Path) -> None:
    result = meshplane("token", "--namespace", "shop", "--service-account", "web", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"--state-dir: {tmp_path.resolve()} has no token-key.pem" in result.stderr
    assert "meshplane serve --config-dir" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "token-key.pem").exists(), "no key may be created behind the user's back"


def test_config_dir_and_kubeconfig_together_are_refused(tmp_path: pathlib.Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = meshplane("serve", "--config-dir", str(tmp_path), "--kubeconfig", str(kubeconfig))
    assert result.returncode == 2
    assert "--config-dir and --kubeconfig: choose one" in result.stderr


def test_inject_of_an_empty_file_fails_saying_so(tmp_path: pathlib.Path) -> None:
    for content in ("", "# only a comment\n---\n"):
        manifest = tmp_path / "empty.yaml"
        manifest.write_text(content)
        result = meshplane("inject", "-f", str(manifest))
        assert result.returncode == 1
        assert "holds no YAML document" in result.stderr
        assert result.stdout == ""


def test_help_texts_read_as_prose() -> None:
    token_help = meshplane("token", "--help").stdout
    assert "`" not in token_help
    assert "Print the version of meshplane." in meshplane("version", "--help").stdout


# Every command builds the whole parser, so every command's imports load at each start of a sidecar's
# agent or of a CLI command; the Kubernetes client alone took about half a second of CPU there.
_LOADED_BY_A_START = """
import contextlib, io, sys
from controlplane import cli
for command in ("agent", "serve", "iptables", "version"):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cli.main([command, "--help"])
import controlplane.server, controlplane.agent.cmd
print(sorted({name.split(".")[0] for name in sys.modules} & {"kubernetes_asyncio", "rich"}))
"""


def test_each_command_is_added_by_the_module_listed_for_it() -> None:
    """A run builds only its own command's parser, from the module `COMMANDS` names for it: a name listed
    with another command's module would make that command an invalid choice."""

    def names(parser: argparse.ArgumentParser) -> list[str]:
        [sub] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        return list(sub.choices)

    assert names(cli.build_parser()) == list(cli.COMMANDS)
    for command in cli.COMMANDS:
        assert names(cli.build_parser([command])) == [command]


def test_commands_that_need_no_cluster_start_without_loading_the_kubernetes_client() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED_BY_A_START], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_config_dir_problems_show_in_registryz_and_their_fix_is_logged(serve: Running) -> None:
    assert serve.config_dir is not None
    bad = serve.config_dir / "svc.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: 80}\n")

    def problems() -> list[str]:
        with urllib.request.urlopen(f"{serve.http_url}/debug/registryz", timeout=10) as resp:
            found: list[str] = json.load(resp)["problems"]
            return found

    deadline = time.monotonic() + 30
    while not any("svc.yaml" in p for p in problems()) or "config problem: svc.yaml" not in serve.logs():
        assert time.monotonic() < deadline, "the file's problem never reached registryz and the log"
        time.sleep(0.2)
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n"
    )
    while any("svc.yaml" in p for p in problems()):
        assert time.monotonic() < deadline + 30, "the fixed file's problem stayed in registryz"
        time.sleep(0.2)
    while "config file svc.yaml: its problems are resolved" not in serve.logs():
        assert time.monotonic() < deadline + 40, "the fix was not logged"
        time.sleep(0.2)


def test_the_readmes_curl_to_the_webhook_verifies_with_the_state_dirs_root(serve: Running) -> None:
    review = '{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}'
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(serve.root_cert), "-o", "/dev/null", "-w", "%{http_code}",
         "-H", "Content-Type: application/json", "--data", review, f"https://127.0.0.1:{serve.ports['webhook']}/inject"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr  # no certificate error
    assert result.stdout == "400"  # the review has no request: refused by meshplane, over verified TLS


def test_examples_mesh_has_one_document_of_each_kind_and_loads_cleanly() -> None:
    examples = pathlib.Path(__file__).resolve().parents[2] / "examples" / "mesh"
    store = ConfigStore()
    source = FileSource(examples, store)
    source.scan()
    assert source.problems == []
    for kind in ("Namespace", "ConfigMap", "Service", "EndpointSlice", "Pod", "PeerAuthentication"):
        assert store.list(kind), f"examples/mesh has no {kind}"
    configmaps = {obj["metadata"]["name"]: obj for obj in store.list("ConfigMap")}
    assert set(configmaps) == {"istio", "istio-sidecar-injector"}
    config = parse_injection_config(
        injector=configmaps["istio-sidecar-injector"]["data"], mesh=configmaps["istio"]["data"]
    )
    assert config.proxy_image == "docker.io/meshplane/proxyv2:0.1.0"
    assert MeshConfig.from_configmap(configmaps["istio"]).trust_domain == "cluster.local"
