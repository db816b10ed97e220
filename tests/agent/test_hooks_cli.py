"""The command lines of `meshplane agent` / `pilot-agent`: Istio's forms parse; bad input is named, no traceback."""

from __future__ import annotations

import pytest

from controlplane import cli
from controlplane.agent import cmd


def parse(*argv: str) -> object:
    return cli.build_parser().parse_args(["agent", *argv])


def test_istios_proxy_args_and_flags_given_before_the_subcommand_both_count() -> None:
    args = parse("--pod-name", "web-1", "proxy", "router", "--domain", "shop.svc.cluster.local")
    assert (vars(args)["pod_name"], vars(args)["node_type"], vars(args)["domain"]) == (
        "web-1",
        "router",
        "shop.svc.cluster.local",
    )
    assert vars(parse())["node_type"] == "sidecar"  # no subcommand: the agent, as `proxy sidecar`
    assert vars(parse("proxy", "--proxyLogLevel=debug"))["proxy_log_level"] == "debug"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["wait", "--periodMillis=0"], "--periodMillis must be at least 1, got 0"),
        (["wait", "--timeoutSeconds=-1"], "--timeoutSeconds must be at least 0, got -1"),
        (["wait", "--url", "localhost:15021/healthz/ready"], "is not an http:// or https:// URL"),
        (["request", "--debug-port=8080", "GET", "/"], "--debug-port 8080 is not in the allowed list"),
    ],
)
def test_bad_hook_flags_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd.pilot_agent(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["request", "GET"], "the following arguments are required: PATH"), (["wait", "--periodMillis=x"], "invalid int")],
)
def test_unparsable_hook_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cmd.pilot_agent(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_kubesim_runs_a_proxy_image_command_of_pilot_agent_as_meshplane_agent() -> None:
    from tests.kubesim.kl_env import BIN_DIR, command_line

    container = {"image": "docker.io/istio/proxyv2:1.24.0", "command": ["pilot-agent"], "args": ["wait", "--url=$(U)"]}
    assert command_line(container, {"U": "http://localhost:15021/healthz/ready"}) == [
        str(BIN_DIR / "meshplane"),
        "agent",
        "wait",
        "--url=http://localhost:15021/healthz/ready",
    ]
    other = {"image": "busybox", "command": ["pilot-agent", "wait"]}  # only the proxy image maps the name
    assert command_line(other, {}) == ["pilot-agent", "wait"]
