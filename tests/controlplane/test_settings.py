import io
import json
import logging

import pytest

from controlplane import logs
from controlplane.cli import build_parser, main, settings_from_args
from controlplane.settings import Address, Settings, SettingsError


def parse(*argv: str) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    return settings_from_args(args)


def test_defaults_are_istio_ports() -> None:
    s = parse()
    assert (s.grpc_addr.port, s.secure_grpc_addr.port, s.webhook_addr.port, s.monitoring_addr.port) == (
        15010,
        15012,
        15017,
        15014,
    )
    assert str(s.http_addr) == "127.0.0.1:8080"
    assert s.namespace == "istio-system" and s.trust_domain == "cluster.local"
    assert not s.local_mode


def test_env_var_sets_a_flag_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPLANE_REVISION", "canary")
    monkeypatch.setenv("MESHPLANE_WEBHOOK_ADDR", "127.0.0.1:9443")
    assert parse().revision == "canary"
    assert parse().webhook_addr == Address(host="127.0.0.1", port=9443)
    assert parse("--revision", "blue").revision == "blue"


def test_a_client_address_may_have_100_xds_streams_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse().max_streams_per_client == 100
    assert parse("--max-streams-per-client", "5000").max_streams_per_client == 5000
    monkeypatch.setenv("MESHPLANE_MAX_STREAMS_PER_CLIENT", "7")
    assert parse().max_streams_per_client == 7


def test_request_messages_are_at_most_4_mib_as_istio_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse().max_request_bytes == 4 * 1024 * 1024
    assert parse("--max-request-bytes", "16Mi").max_request_bytes == 16 * 1024 * 1024
    assert parse("--max-request-bytes", "2048KiB").max_request_bytes == 2 * 1024 * 1024
    monkeypatch.setenv("MESHPLANE_MAX_REQUEST_BYTES", "8388608")
    assert parse().max_request_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "--max-request-bytes: 'lots' is not a size (bytes, or a number with Ki or Mi)"),
        ("4Gi", "--max-request-bytes: '4Gi' is not a size (bytes, or a number with Ki or Mi)"),
        ("Mi", "--max-request-bytes: 'Mi' is not a size (bytes, or a number with Ki or Mi)"),
        ("512Ki", "--max-request-bytes: 512Ki must be from 1Mi to 256Mi"),
        ("257Mi", "--max-request-bytes: 257Mi must be from 1Mi to 256Mi"),
    ],
)
def test_a_bad_max_request_bytes_is_named(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse("--max-request-bytes", value)
    assert str(error.value) == message


def test_client_connections_age_out_after_30_minutes_as_istio_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse().max_connection_age == 1800
    assert parse("--max-connection-age", "1h").max_connection_age == 3600
    assert parse("--max-connection-age", "0").max_connection_age is None  # never
    monkeypatch.setenv("MESHPLANE_MAX_CONNECTION_AGE", "90s")
    assert parse().max_connection_age == 90
    with pytest.raises(SettingsError, match=r"--max-connection-age: 'soon' is not a duration"):
        parse("--max-connection-age", "soon")
    assert parse("--max-connection-age", "596h31m23.647s").max_connection_age == 2147483.647  # gRPC's int of ms
    for longer in ("596h31m23.648s", "720h", "9999999999999999h"):  # the last raised OverflowError
        with pytest.raises(SettingsError, match=r"--max-connection-age: '.*' (must be 0 \(for ever\)|is not a)"):
            parse("--max-connection-age", longer)
    with pytest.raises(SettingsError, match=r"--max-connection-age: '0.1ms' must be 0 \(for ever\) or from 1ms"):
        parse("--max-connection-age", "0.1ms")  # gRPC would get 0 ms


def test_client_connections_with_no_call_close_after_5_minutes_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse().max_connection_idle == 300
    assert parse("--max-connection-idle", "0").max_connection_idle is None  # never
    monkeypatch.setenv("MESHPLANE_MAX_CONNECTION_IDLE", "90s")
    assert parse().max_connection_idle == 90
    with pytest.raises(SettingsError, match=r"--max-connection-idle: 'soon' is not a duration"):
        parse("--max-connection-idle", "soon")


def test_xds_connections_are_capped_by_what_the_open_files_limit_allows_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse().max_xds_connections is None
    assert parse("--max-xds-connections", "auto").max_xds_connections is None
    assert parse("--max-xds-connections", "50000").max_xds_connections == 50000
    monkeypatch.setenv("MESHPLANE_MAX_XDS_CONNECTIONS", "300")
    assert parse().max_xds_connections == 300
    with pytest.raises(SettingsError, match=r"--max-xds-connections: 'many' is not a number of connections or auto"):
        parse("--max-xds-connections", "many")
    with pytest.raises(SettingsError, match=r"--max-xds-connections: 0 must be at least 1"):
        parse("--max-xds-connections", "0")


def test_revision_names_follow_istio() -> None:
    assert parse().istiod_service == "istiod"
    canary = parse("--revision", "canary")
    assert canary.istiod_service == "istiod-canary"
    assert canary.injector_configmap == "istio-sidecar-injector-canary"
    assert canary.discovery_address == "istiod-canary.istio-system.svc:15012"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--webhook-addr", "15017"], "--webhook-addr: '15017' is not host:port"),
        (["--grpc-addr", ":http"], "--grpc-addr: port 'http'"),
        (["--http-addr", ":70000"], "out of range"),
        (["--grace-period", "soon"], "--grace-period"),
        # float() and int() read more than numbers: "nan", "inf", "1_000", other scripts' digits.
        (["--grace-period", "nan"], "--grace-period: 'nan' is not a number of seconds"),
        (["--grace-period", "inf"], "--grace-period: 'inf' is not a number of seconds"),
        (["--grace-period", "1_0"], "--grace-period: '1_0' is not a number of seconds"),
        (["--grace-period", "\u0661\u0660"], "--grace-period: .* is not a number of seconds"),
        (["--grpc-addr", ":\u0661\u0665\u0660\u0661\u0660"], "--grpc-addr: port"),
        (["--max-streams-per-client", "1_000"], "--max-streams-per-client: '1_000' is not a number of streams"),
        (["--ca-workers", "\u0662"], "--ca-workers: .* is not a number of processes"),
        (["--revision", "Canary"], "--revision"),
        (["--max-streams-per-client", "many"], "--max-streams-per-client: 'many' is not a number of streams"),
        (["--max-streams-per-client", "0"], "--max-streams-per-client: 0 must be at least 1"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse(*argv)


def test_cli_reports_bad_flags_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--webhook-addr", "nope", "--config-dir", "."]) == 2
    assert "--webhook-addr" in capsys.readouterr().err


def test_serve_help_explains_env_vars(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "MESHPLANE_CONFIG_DIR" in out and "local mode" in out


def test_json_logs_carry_structured_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure(level="info", fmt="json")
    try:
        logging.getLogger("t").info("hello %s", "world", extra={"file": "a.yaml"})
        logging.getLogger("t").debug("hidden")
    finally:
        logs.configure(level="warning", fmt="text")
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["msg"] == "hello world" and entry["file"] == "a.yaml" and entry["level"] == "info"


def test_unknown_log_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="log level 'loud'"):
        logs.configure(level="loud")
