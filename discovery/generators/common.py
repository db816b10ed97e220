"""Envoy building blocks shared by the generators: names, config sources, TLS contexts, filters."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from controlplane.literals import natural
from controlplane.model.services import Protocol

SDS_CLUSTER = "sds-grpc"  # the bootstrap's cluster to the agent's SDS socket
CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"

BLACKHOLE = "BlackHoleCluster"
PASSTHROUGH = "PassthroughCluster"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
INBOUND_PASSTHROUGH_BIND = "127.0.0.6"  # source of passthrough traffic, so iptables lets it through

TLS_MATCH = "envoy.transport_socket_match"
TLS_MODE_KEY = "tlsMode"


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


def inbound_cluster(port: int) -> str:
    return f"inbound|{port}||"


def parse_outbound(name: str) -> tuple[int, str, str] | None:
    """(port, subset, host) of an `outbound|port|subset|host` name, or None."""
    parts = name.split("|")
    port = natural(parts[1]) if len(parts) == 4 and parts[0] == "outbound" else None
    return None if port is None else (port, parts[2], parts[3])


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def typed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=2)


def socket_address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    source = config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=2,
            set_node_on_first_message_only=True,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
                )
            ],
        ),
        initial_fetch_timeout=duration(0),
        resource_api_version=2,
    )
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def _common_tls(*, alpn: Iterable[str], sans: Iterable[str] = ()) -> tls_pb2.CommonTlsContext:
    validation = common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=[
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(exact=san)
            )
            for san in sorted(sans)
        ]
    )
    return tls_pb2.CommonTlsContext(
        # TLS 1.2 to 1.3, as Istio's ISTIO_MUTUAL (Envoy's upstream default would stop at 1.2)
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
            tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        ),
        tls_certificate_sds_secret_configs=[_sds(CERT_SECRET)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=validation,
            validation_context_sds_secret_config=_sds(ROOT_SECRET),
        ),
        alpn_protocols=list(alpn),
    )


def alpn_for(protocol: Protocol) -> tuple[str, ...]:
    """ALPN offered on mesh mTLS: the HTTP version for HTTP ports (so the server's codec follows),
    `istio` for opaque TCP."""
    if protocol.is_http2:
        return ("h2",)
    if protocol.is_http:
        return ("http/1.1",)
    return ("istio",)


def upstream_mtls(*, sni: str, sans: Iterable[str], protocol: Protocol) -> base_pb2.TransportSocket:
    context = tls_pb2.UpstreamTlsContext(common_tls_context=_common_tls(alpn=alpn_for(protocol), sans=sans), sni=sni)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=typed(context))


PROVIDER_INSTANCE = "default"  # the certificate provider a proxyless client's bootstrap defines


def proxyless_upstream_mtls(*, sans: Iterable[str]) -> base_pb2.TransportSocket:
    """Mesh mTLS for a proxyless gRPC client (gRFC A29): certificate and trust bundle come from the
    bootstrap's certificate provider `default` (certificates `default` and `ROOTCA`), not SDS.

    gRPC rejects TLS parameters and SDS configs, and reads `match_subject_alt_names` (not the typed
    matchers); no SANs means it only verifies the chain. The deprecated provider-instance fields are
    sent too, for gRPC releases that predate `tls_certificate_provider_instance` (as Istio does)."""
    cert = common_pb2.CertificateProviderPluginInstance(instance_name=PROVIDER_INSTANCE, certificate_name=CERT_SECRET)
    root = common_pb2.CertificateProviderPluginInstance(instance_name=PROVIDER_INSTANCE, certificate_name=ROOT_SECRET)
    legacy = tls_pb2.CommonTlsContext.CertificateProviderInstance
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_provider_instance=cert,
            tls_certificate_certificate_provider_instance=legacy(
                instance_name=PROVIDER_INSTANCE, certificate_name=CERT_SECRET
            ),
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    ca_certificate_provider_instance=root,
                    match_subject_alt_names=[string_pb2.StringMatcher(exact=san) for san in sorted(sans)],
                ),
                validation_context_certificate_provider_instance=legacy(
                    instance_name=PROVIDER_INSTANCE, certificate_name=ROOT_SECRET
                ),
            ),
        )
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=typed(context))


def downstream_mtls() -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common_tls(alpn=("h2", "http/1.1", "istio")),
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=typed(context))


def http2_options() -> dict[str, any_pb2.Any]:
    """typed_extension_protocol_options for a cluster whose upstream speaks HTTP/2 (or gRPC)."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(options)}


def router_filter() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=typed(router_pb2.Router()))


def tcp_proxy(*, stat_prefix: str, cluster: str) -> listener_components_pb2.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=typed(proxy))


def hcm_filter(manager: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=typed(manager)
    )
