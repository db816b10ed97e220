"""An injected sidecar whose agent would exit at start is refused at admission, naming the variable.

`proxyMetadata` sets any variable of the injected `istio-proxy` container, the agent's own among them.
Before, `proxyMetadata: {ISTIO_DELTA_XDS: maybe}` (or an INSTANCE_IP that is no address, a SECRET_TTL of
0s, ...) was injected, and the agent then exited 2 at every start: a pod admitted that never became
ready. The same held for a mesh `defaultConfig`, for every pod, and for a template.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from controlplane.agent.cmd import options_for
from controlplane.agent.options import OptionsError
from tests.helpers.injected import DOWNWARD, agent_options
from tests.helpers.injector import DEFAULT_PARAMS, default_injector
from webhook.configparse import ConfigError, parse_injection_config
from webhook.inject import inject_pod
from webhook.sidecarcheck import SidecarWouldNotStart


def pod(proxy_config: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    annotations = {"proxy.istio.io/config": json.dumps(proxy_config)} if proxy_config else {}
    return {
        "metadata": {"generateName": "web-", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "a"}], **spec},
    }


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("ISTIO_DELTA_XDS", "maybe", "env ISTIO_DELTA_XDS: 'maybe' is not true or false"),
        ("DISABLE_ENVOY", "yes", "env DISABLE_ENVOY: 'yes' is not true or false"),
        ("INSTANCE_IP", "10.0.0.300", "--instance-ip (env INSTANCE_IP): "),
        ("POD_NAMESPACE", "Shop", "--pod-namespace (env POD_NAMESPACE): 'Shop' is not a DNS-1123 label"),
        ("SECRET_TTL", "0s", "--cert-ttl (env SECRET_TTL): '0s' must be positive"),
        ("CA_ADDR", "istiod", "--ca-addr (env CA_ADDR): 'istiod'"),
        ("MESHPLANE_STATUS_PORT", "70000", "--status-port (env MESHPLANE_STATUS_PORT): '70000' is not a port"),
        ("MESHPLANE_LOG_LEVEL", "loud", "--log-level (env MESHPLANE_LOG_LEVEL): 'loud' is not one of"),
        ("MESHPLANE_KEY_ALGORITHM", "dsa", "--key-algorithm (env MESHPLANE_KEY_ALGORITHM): 'dsa' is not one of"),
        ("MESHPLANE_BIND_ADDRESS", "*", "--bind-address (env MESHPLANE_BIND_ADDRESS): "),
        ("ISTIO_META_LOOPBACK_ADDRESS", "localhost", "--loopback-address (env ISTIO_META_LOOPBACK_ADDRESS)"),
        ("PROXY_CONFIG", "[]", "env PROXY_CONFIG: must be a JSON object"),
        # both reach the control plane in the node, which refused them when the sidecar connected
        ("POD_NAME", "Web_1", "--pod-name (env POD_NAME): 'Web_1' is not a DNS-1123 subdomain"),
        ("ISTIO_META_GENERATOR", '["grpc"]', "env ISTIO_META_GENERATOR: '[\"grpc\"]' is JSON; the control plane"),
    ],
)
def test_a_proxy_metadata_variable_the_agent_refuses_is_refused_at_admission(
    variable: str, value: str, problem: str
) -> None:
    admission = default_injector().admit(pod({"proxyMetadata": {variable: value}}), namespace="shop")
    assert not admission.allowed
    assert admission.error is not None
    assert admission.error.startswith("the injected istio-proxy container would not start: ")
    assert problem in admission.error
    assert admission.error.endswith(
        f"(proxyMetadata {variable}, from proxy.istio.io/config or the mesh's defaultConfig)"
    )


def test_proxy_metadata_the_agent_starts_with_is_injected_as_written() -> None:
    metadata = {"ISTIO_DELTA_XDS": "f", "SECRET_TTL": "12h", "INSTANCE_IP": "fd00::7", "MY_FEATURE": "on"}
    injected = inject_pod(pod({"proxyMetadata": metadata}), DEFAULT_PARAMS)
    options = agent_options(injected)
    assert (options.delta_xds, options.cert_ttl, options.instance_ip) == (False, 12 * 3600, "fd00::7")


def test_a_sidecar_override_with_its_own_command_is_not_checked() -> None:
    """It runs something else than the agent (a debug shell, say): what its variables mean is its own."""
    override = {"name": "istio-proxy", "image": "auto", "command": ["sleep", "infinity"]}
    override["env"] = [{"name": "ISTIO_DELTA_XDS", "value": "maybe"}]
    injected = inject_pod(pod(containers=[{"name": "app", "image": "a"}, override]), DEFAULT_PARAMS)
    proxy = next(c for c in injected["spec"]["initContainers"] if c["name"] == "istio-proxy")
    assert proxy["command"] == ["sleep", "infinity"]
    with pytest.raises(SidecarWouldNotStart, match="ISTIO_DELTA_XDS"):
        without_command = copy.deepcopy(override)
        del without_command["command"]
        inject_pod(pod(containers=[{"name": "app", "image": "a"}, without_command]), DEFAULT_PARAMS)


def test_a_mesh_default_config_the_agent_refuses_is_refused_at_load_naming_the_variable() -> None:
    mesh = {"mesh": "defaultConfig:\n  proxyMetadata:\n    ISTIO_DELTA_XDS: maybe\n"}
    with pytest.raises(ConfigError) as caught:
        parse_injection_config(injector=None, mesh=mesh)
    assert (caught.value.key, caught.value.field) == ("mesh", "defaultConfig.proxyMetadata.ISTIO_DELTA_XDS")
    assert "env ISTIO_DELTA_XDS: 'maybe' is not true or false" in str(caught.value)


def test_a_template_that_writes_a_variable_the_agent_refuses_is_refused_at_load() -> None:
    template = "spec:\n  initContainers:\n  - name: istio-proxy\n    env:\n    - {name: SECRET_TTL, value: forever}\n"
    injector = {"config": json.dumps({"templates": {"ttl": template}, "defaultTemplates": ["sidecar", "ttl"]})}
    with pytest.raises(ConfigError) as caught:
        parse_injection_config(injector=injector, mesh=None)
    assert (caught.value.key, caught.value.field) == ("config", "templates.ttl")
    assert "--cert-ttl (env SECRET_TTL): 'forever' is not a duration" in str(caught.value)
    assert str(caught.value).endswith("(as the injection template writes it)")


def test_a_service_account_with_dots_which_kubernetes_allows_gets_a_sidecar_that_starts() -> None:
    """A service account name is a DNS-1123 subdomain, as the CA takes it; the agent took a label only,
    so such a pod's sidecar exited 2 at every start (and this check would have refused the pod)."""
    admission = default_injector().admit(pod(serviceAccountName="web.v1"), namespace="shop")
    assert admission.allowed, admission.error
    options = options_for([], {**DOWNWARD, "SERVICE_ACCOUNT": "web.v1"})
    assert options.identity == "spiffe://cluster.local/ns/shop/sa/web.v1"
    with pytest.raises(OptionsError, match=r"'web\.V1' is not a DNS-1123 subdomain"):
        options_for([], {**DOWNWARD, "SERVICE_ACCOUNT": "web.V1"})


def test_a_service_account_the_api_server_refuses_is_left_to_it() -> None:
    """The API server validates the pod after admission, naming `spec.serviceAccountName`; the
    injector does not blame its template for it."""
    admission = default_injector().admit(pod(serviceAccountName="Web"), namespace="shop")
    assert admission.allowed, admission.error


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["istio-iptables", "-p", "15001", "-b", "70000"], "70000"),
        (["istio-iptables", "-p", "15001", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["iptables-setup", "-p", "15001"], "unexpected argument 'iptables-setup'"),
    ],
)
def test_a_template_that_writes_istio_init_args_it_refuses_is_refused_at_load(args: list[str], problem: str) -> None:
    template = json.dumps({"spec": {"initContainers": [{"name": "istio-init", "args": args}]}})
    injector = {"config": json.dumps({"templates": {"init": template}, "defaultTemplates": ["sidecar", "init"]})}
    with pytest.raises(ConfigError) as caught:
        parse_injection_config(injector=injector, mesh=None)
    assert (caught.value.key, caught.value.field) == ("config", "templates.init")
    message = str(caught.value)
    assert "the injected istio-init container would not start: " in message
    assert problem in message
    assert message.endswith("(as the injection template writes it)")


def test_an_istio_init_with_its_own_command_is_not_checked() -> None:
    override = {"name": "istio-init", "image": "auto", "command": ["/bin/true"], "args": ["--no-such-flag"]}
    injected = inject_pod(pod(initContainers=[override]), DEFAULT_PARAMS)
    init = next(c for c in injected["spec"]["initContainers"] if c["name"] == "istio-init")
    assert init["command"] == ["/bin/true"]
