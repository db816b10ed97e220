"""The Envoy bootstrap: Istio's names and shape, validation of its inputs, and real Envoy's verdict on it."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest

from controlplane.agent.bootstrap import render, write
from controlplane.agent.cmd import options_for
from controlplane.agent.options import OptionsError, delta_xds, parse_duration
from tests.agent.conftest import ENVOY, params
from tests.helpers.injected import DOWNWARD

SAN = "istiod.istio-system.svc"


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def endpoint(cluster: dict[str, Any]) -> dict[str, Any]:
    address: dict[str, Any] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    return address


def route(listener: dict[str, Any]) -> tuple[str, str]:
    hcm = listener["filter_chains"][0]["filters"][0]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    (only,) = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    return only["match"]["prefix"], only["route"]["cluster"]


def envoy_validate(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_node_admin_and_ads(tmp_path: pathlib.Path) -> None:
    p = params("127.0.0.1", tmp_path, metadata={"NAMESPACE": "shop", "LABELS": {"app": "web"}, "INSTANCE_IPS": "x"})
    config = render(p)
    assert config["node"] == {
        "id": "sidecar~127.0.0.1~app-1.shop~shop.svc.cluster.local",
        "cluster": "app.shop",
        "metadata": {"NAMESPACE": "shop", "LABELS": {"app": "web"}, "INSTANCE_IPS": "x"},
    }
    admin = config["admin"]
    assert admin["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}
    assert admin["access_log"][0]["typed_config"]["path"] == "/dev/null"
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC" and ads["transport_api_version"] == "V3"  # Istio's default
    assert ads["set_node_on_first_message_only"] is True
    (service,) = ads["grpc_services"]
    assert service["envoy_grpc"]["cluster_name"] == "xds-grpc"
    # a restarted control plane sees its proxies back within seconds, not Envoy's default 30 s backoff
    assert service["envoy_grpc"]["retry_policy"]["retry_back_off"]["max_interval"] == "3s"
    for kind in ("cds_config", "lds_config"):
        assert config["dynamic_resources"][kind] == {
            "ads": {},
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3",
        }


def test_xds_cluster_verifies_the_discovery_server_with_sds_secrets(tmp_path: pathlib.Path) -> None:
    clusters = by_name(
        render(params("127.0.0.1", tmp_path, discovery_address=f"{SAN}:15012"))["static_resources"]["clusters"]
    )
    xds = clusters["xds-grpc"]
    assert xds["type"] == "STRICT_DNS"
    assert endpoint(xds) == {"socket_address": {"address": SAN, "port_value": 15012}}
    http = xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]
    tls = xds["transport_socket"]
    assert tls["name"] == "envoy.transport_sockets.tls"
    context = tls["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext") and context["sni"] == SAN
    common = context["common_tls_context"]
    (certificate,) = common["tls_certificate_sds_secret_configs"]
    validation = common["combined_validation_context"]
    assert certificate["name"] == "default"
    assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": SAN}}
    ]
    for secret in (certificate, validation["validation_context_sds_secret_config"]):
        source = secret["sds_config"]["api_config_source"]
        assert source["api_type"] == "GRPC" and source["transport_api_version"] == "V3"
        assert source["grpc_services"] == [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]


@pytest.mark.parametrize(("address", "host"), [("10.1.2.3:15012", "10.1.2.3"), ("[fd00::1]:15012", "fd00::1")])
def test_xds_cluster_to_an_ip_is_static(tmp_path: pathlib.Path, address: str, host: str) -> None:
    clusters = by_name(render(params("127.0.0.1", tmp_path, discovery_address=address))["static_resources"]["clusters"])
    assert clusters["xds-grpc"]["type"] == "STATIC"
    assert endpoint(clusters["xds-grpc"]) == {"socket_address": {"address": host, "port_value": 15012}}


def test_sds_agent_and_prometheus_clusters(tmp_path: pathlib.Path) -> None:
    p = params("127.0.0.7", tmp_path, sds_socket="/var/run/secrets/workload-spiffe-uds/socket")
    clusters = by_name(render(p)["static_resources"]["clusters"])
    assert set(clusters) == {"xds-grpc", "sds-grpc", "agent", "prometheus_stats"}
    assert endpoint(clusters["sds-grpc"]) == {"pipe": {"path": "/var/run/secrets/workload-spiffe-uds/socket"}}
    assert "typed_extension_protocol_options" in clusters["sds-grpc"]  # gRPC needs HTTP/2
    assert endpoint(clusters["agent"]) == {"socket_address": {"address": "127.0.0.7", "port_value": 15020}}
    assert endpoint(clusters["prometheus_stats"]) == {"socket_address": {"address": "127.0.0.7", "port_value": 15000}}


def test_agent_is_reached_on_loopback_when_bound_to_every_address(tmp_path: pathlib.Path) -> None:
    p = params("127.0.0.1", tmp_path, bind_address="0.0.0.0", loopback_address="127.0.0.6")
    clusters = by_name(render(p)["static_resources"]["clusters"])
    assert endpoint(clusters["agent"]) == {"socket_address": {"address": "127.0.0.6", "port_value": 15020}}


def test_readiness_and_prometheus_listeners(tmp_path: pathlib.Path) -> None:
    listeners = by_name(render(params("127.0.0.8", tmp_path, bind_address="0.0.0.0"))["static_resources"]["listeners"])
    assert set(listeners) == {"0.0.0.0_15021", "0.0.0.0_15090"}
    assert listeners["0.0.0.0_15021"]["address"] == {"socket_address": {"address": "0.0.0.0", "port_value": 15021}}
    assert route(listeners["0.0.0.0_15021"]) == ("/healthz/ready", "agent")
    assert route(listeners["0.0.0.0_15090"]) == ("/stats/prometheus", "prometheus_stats")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"discovery_address": "istiod.istio-system.svc"}, "discovery_address 'istiod.istio-system.svc' has no port"),
        ({"discovery_address": "istiod:http"}, "discovery_address 'istiod:http' has port 'http', not one of 1-65535"),
        ({"discovery_address": "istiod:70000"}, "has port '70000', not one of 1-65535"),
        ({"discovery_address": "fd00::1:15012"}, "needs brackets around an IPv6 address"),
        ({"discovery_address": "bad host:15012"}, "has host 'bad host', neither an IP address nor a DNS name"),
        ({"istiod_san": ""}, "istiod_san is empty"),
        ({"istiod_san": "https://istiod"}, "istiod_san 'https://istiod' is not a DNS name"),
        ({"node_id": " "}, "node_id is empty"),
        ({"sds_socket": ""}, "sds_socket is empty"),
        ({"sds_socket": "/" + "s" * 120}, "Unix socket paths are limited to 107 bytes"),
        ({"loopback_address": "localhost"}, "loopback_address 'localhost' is not an IP address"),
        ({"loopback_address": "0.0.0.0"}, "loopback_address '0.0.0.0' is a wildcard"),
        ({"bind_address": "*"}, "bind_address '*' is not an IP address"),
        ({"readiness_port": 0}, "readiness_port 0 is not a port number"),
        ({"prometheus_port": 15021}, "ports must differ"),
        ({"metadata": {"x": object()}}, "metadata is not a JSON object"),
    ],
)
def test_bad_input_is_refused_naming_the_field(tmp_path: pathlib.Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        params("127.0.0.1", tmp_path, **overrides)
    assert message in str(caught.value)
    field = next(iter(overrides))
    assert str(caught.value).startswith(field) or field.endswith("_port")


def test_write_replaces_the_file_atomically(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "proxy" / "envoy-rev.json"
    first = params("127.0.0.1", tmp_path, cluster="one.shop")
    write(first, path)
    assert json.loads(path.read_text()) == render(first)
    second = params("127.0.0.1", tmp_path, cluster="two.shop")
    write(second, path)
    assert json.loads(path.read_text())["node"]["cluster"] == "two.shop"
    assert [p.name for p in path.parent.iterdir()] == ["envoy-rev.json"]  # no temporary file left


@pytest.mark.parametrize(
    "overrides",
    [
        {"discovery_address": "istiod.istio-system.svc:15012"},
        {"discovery_address": "10.96.0.10:15012", "bind_address": "0.0.0.0"},
        {"discovery_address": "[fd00::1]:15012", "bind_address": "::", "loopback_address": "::1"},
    ],
)
def test_real_envoy_accepts_the_bootstrap(tmp_path: pathlib.Path, overrides: dict[str, Any]) -> None:
    path = tmp_path / "envoy-rev.json"
    write(params("127.0.0.1", tmp_path, **overrides), path)
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_real_envoy_validation_is_not_a_rubber_stamp(tmp_path: pathlib.Path) -> None:
    config = render(params("127.0.0.1", tmp_path))
    config["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["sni_typo"] = "x"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(config))
    result = envoy_validate(path)
    assert result.returncode != 0
    assert "sni_typo" in result.stdout + result.stderr


@pytest.mark.parametrize(("env", "api_type"), [({}, "DELTA_GRPC"), ({"ISTIO_DELTA_XDS": "False"}, "GRPC")])
def test_istio_delta_xds_chooses_incremental_or_state_of_the_world_ads(
    tmp_path: pathlib.Path, env: dict[str, str], api_type: str
) -> None:
    config = render(params("127.0.0.1", tmp_path, delta=delta_xds(env)))
    assert config["dynamic_resources"]["ads_config"]["api_type"] == api_type
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    checked = envoy_validate(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_istio_delta_xds_must_be_true_or_false() -> None:
    assert delta_xds({"ISTIO_DELTA_XDS": " TRUE "}) is True
    for text, value in (("1", True), ("t", True), ("0", False), ("F", False), ("False", False)):  # Go's ParseBool
        assert delta_xds({"ISTIO_DELTA_XDS": text}) is value
    for text in ("yes", "TrUe", "2"):
        with pytest.raises(OptionsError, match=f"env ISTIO_DELTA_XDS: '{text}' is not true or false"):
            delta_xds({"ISTIO_DELTA_XDS": text})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2", 2.0), ("0.5", 0.5), ("1500us", 0.0015)],
)
def test_a_duration_is_seconds_or_go_units(text: str, seconds: float) -> None:
    assert parse_duration(text, name="--drain-duration") == seconds


# float() would read "nan", "inf", "1_0" and other scripts' digits; Go's durations are none of those.
# Nor is a duration longer than Go's ~292 years (float() makes 400 nines infinity).
@pytest.mark.parametrize(
    "text", ["nan", "inf", "1_0", "\u0664\u0665", "\u0664\u0665s", "1d", "-1", "5 m", "2562048h", "9" * 400 + "h"]
)
def test_a_bad_duration_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(OptionsError, match=r"--drain-duration: .* is not a duration"):
        parse_duration(text, name="--drain-duration")


def test_zero_is_a_duration_only_where_it_means_something() -> None:
    with pytest.raises(OptionsError, match=r"--cert-ttl: '0s' must be positive"):
        parse_duration("0s", name="--cert-ttl")
    with pytest.raises(OptionsError, match=r"--drain-duration: '-1s' must be 0 or more"):
        parse_duration("-1s", name="--drain-duration", zero=True)
    assert parse_duration("0s", name="--drain-duration", zero=True) == 0


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        # int() raised a traceback for the first and read the second (Arabic-Indic digits) as 15020
        (["--status-port", "abc"], {}, "--status-port (env MESHPLANE_STATUS_PORT): 'abc' is not a port 1-65535"),
        (["--status-port", "\u0661\u0665\u0660\u0662\u0660"], {}, "--status-port (env MESHPLANE_STATUS_PORT): '"),
        ([], {"PROXY_CONFIG": "[" * 100_000}, "PROXY_CONFIG: not JSON (nests 100000 levels deep"),  # RecursionError
        # Envoy refuses a worker count beyond its range; the agent names it instead of restarting Envoy for ever
        ([], {"PROXY_CONFIG": '{"concurrency": 99999999999}'}, "PROXY_CONFIG concurrency: 99999999999 is not a"),
        ([], {"PROXY_CONFIG": '{"concurrency": "two"}'}, 'PROXY_CONFIG concurrency: "two" is not a whole number'),
        (["--cert-ttl", "9" * 400 + "h"], {}, "--cert-ttl (env SECRET_TTL): '999"),  # float() reads it as infinity
        # argparse checks the choices of a flag given, not of a default read from the environment: a traceback
        ([], {"MESHPLANE_LOG_LEVEL": "loud"}, "--log-level (env MESHPLANE_LOG_LEVEL): 'loud' is not one of debug"),
        ([], {"MESHPLANE_KEY_ALGORITHM": "dsa"}, "--key-algorithm (env MESHPLANE_KEY_ALGORITHM): 'dsa' is not"),
        (["--log-level", "loud"], {}, "argument --log-level: invalid choice: 'loud'"),
        (["proxy", "sidecar", "--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["wait"], {}, "'wait' does not run the agent"),
        # meshplane's istio-init has no TPROXY rules, and the inbound listener is not transparent
        ([], {"ISTIO_META_INTERCEPTION_MODE": "TPROXY"}, "'TPROXY' is not one of REDIRECT, NONE (TPROXY is not"),
        # the node id and metadata the control plane refuses, so the sidecar connected and was refused for ever
        ([], {"POD_NAME": "web~1"}, "--pod-name (env POD_NAME): 'web~1' is not a DNS-1123 subdomain"),
        ([], {"ISTIO_META_CLUSTER_ID": '{"name": "east"}'}, 'env ISTIO_META_CLUSTER_ID: \'{"name": "east"}\' is JSON'),
    ],
)
def test_bad_options_are_refused_naming_the_field(args: list[str], env: dict[str, str], message: str) -> None:
    """In-process, as `meshplane agent` reads them before it prints the error and exits 2
    (`tests/agent/test_agent_process.py` runs that path)."""
    with pytest.raises(OptionsError) as caught:
        options_for(args, {**DOWNWARD, **env})
    assert message in str(caught.value)
