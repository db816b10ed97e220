"""Admission webhooks through kubesim: real HTTPS webhooks, called as the API server calls them.

Each test runs a small aiohttp HTTPS webhook (certificate from `cryptography`) that records every
AdmissionReview and answers as the test says, then creates objects with kubectl or
kubernetes-asyncio and checks what the client sees and what was stored.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import pathlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.kube.client import KubeApi, KubeApiError
from tests.helpers.serve import closed_port, start_serve
from tests.kubesim.admission import Attributes, rule_matches
from tests.kubesim.fixtures import Kubectl
from tests.kubesim.podnet import NodeNetwork
from tests.kubesim.resources import RESOURCES
from tests.kubesim.server import KubeSim
from tests.kubesim.validation import DNS1035_HELP, SUBDOMAIN_HELP
from tests.kubesim.warning import Recorder

SERVICE_NAME = "hooks.hooks.svc"
Answer = Callable[[dict[str, Any]], Any]


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer: Any) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        sans = [x509.DNSName(SERVICE_NAME), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Webhook:
    """An HTTPS admission webhook: `answers[path]` turns a review's request into the response fields."""

    port: int
    ca_pem: bytes
    other_ca_pem: bytes
    answers: dict[str, Answer] = field(default_factory=dict)
    calls: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)  # (path, request, http headers)
    also_on: Callable[[str], Awaitable[int]] | None = None  # serve on another address too; its port

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca_pem).decode()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def requests(self, path: str) -> list[dict[str, Any]]:
        return [request for p, request, _ in self.calls if p == path]

    async def handle(self, http: web.Request) -> web.Response:
        review = await http.json()
        self.calls.append((http.path, review["request"], {**http.headers, "query": http.query_string}))
        respond: Answer = self.answers.get(http.path, lambda _: {"allowed": True})
        answer = respond(review["request"])
        if asyncio.iscoroutine(answer):
            answer = await answer
        response = {"uid": review["request"]["uid"], **answer}
        if "patch" in response:
            response["patch"] = base64.b64encode(json.dumps(response["patch"]).encode()).decode()
            response.setdefault("patchType", "JSONPatch")
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})


@pytest.fixture(name="webhook")
async def webhook_fixture(tmp_path: pathlib.Path) -> AsyncIterator[Webhook]:
    ca_key, other_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("webhook-ca", ca_key, None, ca_key)
    other = _cert("other-ca", other_key, None, other_key)
    leaf = _cert("webhook", leaf_key, ca, ca_key)
    (tmp_path / "tls.crt").write_bytes(_pem(leaf))
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "tls.key").write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    hook = Webhook(port=0, ca_pem=_pem(ca), other_ca_pem=_pem(other))
    app = web.Application()
    app.router.add_post("/{tail:.*}", hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    hook.port = int(runner.addresses[0][1])

    async def also_on(host: str) -> int:
        await web.TCPSite(runner, host, 0, ssl_context=context).start()
        return int(runner.addresses[-1][1])

    hook.also_on = also_on
    try:
        yield hook
    finally:
        await runner.cleanup()


@pytest.fixture(name="node_address")
async def node_address_fixture() -> AsyncIterator[str]:
    """An address of this host that an EndpointSlice may hold (the API server refuses loopback ones):
    the host's end of a pod network's link, where a webhook serves as a host-network pod's would."""
    if os.geteuid() != 0:
        pytest.skip("needs root for the pod network's namespace and veth")
    network = await NodeNetwork.create()
    try:
        yield network.host_ip
    finally:
        await network.close()


def configuration(kind: str, name: str, *hooks: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": list(hooks),
    }


def hook(name: str, client: dict[str, Any], *, resources: tuple[str, ...] = ("pods",), **extra: Any) -> dict[str, Any]:
    """A webhook on CREATE/UPDATE/DELETE of core `resources`; `extra` overrides any field."""
    spec: dict[str, Any] = {
        "name": name,
        "clientConfig": client,
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "resources": list(resources),
            }
        ],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }
    spec.update(extra)
    return spec


def url_client(webhook: Webhook, path: str) -> dict[str, Any]:
    return {"url": webhook.url(path), "caBundle": webhook.ca_bundle}


def pod(name: str = "", *, labels: dict[str, str] | None = None, generate: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": labels} if labels else {}
    if name:
        meta["name"] = name
    if generate:
        meta["generateName"] = generate
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }


async def create_pod(api: KubeApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return await api.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=body)


async def test_mutating_webhook_gets_the_api_servers_review_and_its_patch_is_stored(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    webhook.answers["/mutate"] = lambda _: {
        "allowed": True,
        "patch": [{"op": "add", "path": "/metadata/labels", "value": {"injected": "yes"}}],
    }
    kubesim.create_object(
        configuration("MutatingWebhookConfiguration", "m", hook("m.example.com", url_client(webhook, "/mutate")))
    )
    created = await create_pod(kube_api, "default", pod(generate="web-"))
    assert created["metadata"]["labels"] == {"injected": "yes"}
    assert created["metadata"]["name"].startswith("web-")
    stored = kubesim.get_object("pods", "default", created["metadata"]["name"])
    assert stored is not None and stored["metadata"]["labels"]["injected"] == "yes"
    [(_, request, headers)] = webhook.calls
    assert headers["query"] == "timeout=10s"
    assert "name" not in request  # a generateName create has no name yet
    assert request["namespace"] == "default" and request["operation"] == "CREATE"
    assert request["kind"] == request["requestKind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert request["resource"] == request["requestResource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert request["object"]["metadata"]["generateName"] == "web-" and request["oldObject"] is None
    assert request["dryRun"] is False and request["options"]["kind"] == "CreateOptions"
    assert request["userInfo"]["username"]


async def test_denial_reaches_kubectl_with_the_webhooks_message(
    kubesim: KubeSim, kubectl: Kubectl, webhook: Webhook
) -> None:
    webhook.answers["/deny"] = lambda _: {"allowed": False, "status": {"code": 403, "message": "pods need an owner"}}
    kubesim.create_object(
        configuration("ValidatingWebhookConfiguration", "v", hook("deny.example.com", url_client(webhook, "/deny")))
    )
    result = await kubectl.run("run", "lonely", "--image=app", check=False)
    assert result.returncode != 0
    assert 'admission webhook "deny.example.com" denied the request: pods need an owner' in result.stderr
    assert kubesim.get_object("pods", "default", "lonely") is None
    webhook.answers["/deny"] = lambda _: {"allowed": False}
    result = await kubectl.run("run", "lonely", "--image=app", check=False)
    assert 'admission webhook "deny.example.com" denied the request without explanation' in result.stderr


async def test_webhook_down_fails_the_create_unless_failure_policy_is_ignore(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    with closed_port() as port:  # bound, never listening: connections are refused
        down = {"url": f"https://127.0.0.1:{port}/inject", "caBundle": webhook.ca_bundle}
        kubesim.create_object(configuration("MutatingWebhookConfiguration", "down", hook("down.example.com", down)))
        with pytest.raises(KubeApiError) as failed:
            await create_pod(kube_api, "default", pod("p1"))
        assert failed.value.status == 500 and failed.value.reason == "InternalError"
        assert failed.value.message == (
            'Internal error occurred: failed calling webhook "down.example.com": failed to call webhook: '
            f'Post "https://127.0.0.1:{port}/inject?timeout=10s": '
            f"dial tcp 127.0.0.1:{port}: connect: connection refused"
        )
        config = kubesim.get_object("mutatingwebhookconfigurations", "", "down", group="admissionregistration.k8s.io")
        assert config is not None
        config["webhooks"][0]["failurePolicy"] = "Ignore"
        await kube_api.request(
            "PUT", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/down", body=config
        )
        created = await create_pod(kube_api, "default", pod("p1"))
        assert created["metadata"]["name"] == "p1"


async def test_a_certificate_the_ca_bundle_does_not_sign_is_a_call_failure(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    client = {"url": webhook.url("/x"), "caBundle": base64.b64encode(webhook.other_ca_pem).decode()}
    kubesim.create_object(configuration("MutatingWebhookConfiguration", "wrong-ca", hook("ca.example.com", client)))
    with pytest.raises(KubeApiError) as failed:
        await create_pod(kube_api, "default", pod("p"))
    assert "x509: certificate signed by unknown authority" in failed.value.message
    assert webhook.calls == []


async def test_a_slow_webhook_is_cut_off_at_its_timeout(kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook) -> None:
    async def slow(_: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {"allowed": True}

    webhook.answers["/slow"] = slow
    kubesim.create_object(
        configuration(
            "MutatingWebhookConfiguration",
            "slow",
            hook("slow.example.com", url_client(webhook, "/slow"), timeoutSeconds=1),
        )
    )
    with pytest.raises(KubeApiError) as failed:
        await create_pod(kube_api, "default", pod("p"))
    assert failed.value.message.endswith(f'Post "{webhook.url("/slow")}?timeout=1s": context deadline exceeded')


async def test_service_reference_resolves_through_the_services_endpointslice(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook, node_address: str
) -> None:
    kubesim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hooks"}})
    kubesim.create_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hooks", "namespace": "hooks"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 9443}]},
        }
    )
    client = {"service": {"namespace": "hooks", "name": "hooks", "path": "/svc"}, "caBundle": webhook.ca_bundle}
    kubesim.create_object(configuration("MutatingWebhookConfiguration", "svc", hook("svc.example.com", client)))
    with pytest.raises(KubeApiError) as failed:
        await create_pod(kube_api, "default", pod("early"))
    assert failed.value.message.endswith(
        'Post "https://hooks.hooks.svc:443/svc?timeout=10s": no endpoints available for service "hooks"'
    )
    assert webhook.also_on is not None
    port = await webhook.also_on(node_address)
    kubesim.create_object(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "hooks-1", "namespace": "hooks", "labels": {"kubernetes.io/service-name": "hooks"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [node_address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port}],
        }
    )
    await create_pod(kube_api, "default", pod("late"))
    [(path, request, headers)] = webhook.calls
    assert path == "/svc" and request["object"]["metadata"]["name"] == "late"
    assert headers["Host"] == "hooks.hooks.svc:443"  # and TLS was verified for hooks.hooks.svc


ISTIO_R = "canary"


def _istio_hooks(webhook: Webhook, revision: str, *, default: bool) -> list[dict[str, Any]]:
    """The selector table of ISTIO-FACTS.md for one revision (`namespace.`/`object.` for the default one)."""
    no_false = {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}
    rev_in = {"key": "istio.io/rev", "operator": "In", "values": [revision]}
    rev_absent = {"key": "istio.io/rev", "operator": "DoesNotExist"}
    legacy_absent = {"key": "istio-injection", "operator": "DoesNotExist"}
    table: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
        "rev.namespace": ([rev_in, legacy_absent], [no_false]),
        "rev.object": ([rev_absent, legacy_absent], [no_false, rev_in]),
    }
    if default:
        enabled = {"key": "istio-injection", "operator": "In", "values": ["enabled"]}
        inject_true = {"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]}
        table["namespace"] = ([enabled], [no_false])
        table["object"] = ([legacy_absent, rev_absent], [inject_true, rev_absent])
    return [
        hook(
            f"{prefix}.sidecar-injector.istio.io",
            url_client(webhook, f"/{revision}/{prefix}"),
            namespaceSelector={"matchExpressions": ns},
            objectSelector={"matchExpressions": obj},
            rules=[{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        )
        for prefix, (ns, obj) in table.items()
    ]


ISTIO_TABLE = [
    # namespace labels, pod labels, the webhooks that fire (revision/prefix)
    ({"istio-injection": "enabled"}, {}, ["default/namespace"]),
    ({"istio-injection": "enabled", "istio.io/rev": ISTIO_R}, {}, ["default/namespace"]),
    ({"istio.io/rev": ISTIO_R}, {}, [f"{ISTIO_R}/rev.namespace"]),
    ({"istio.io/rev": ISTIO_R}, {"istio.io/rev": "default"}, [f"{ISTIO_R}/rev.namespace"]),
    ({"istio.io/rev": ISTIO_R}, {"sidecar.istio.io/inject": "false"}, []),
    ({}, {"istio.io/rev": ISTIO_R}, [f"{ISTIO_R}/rev.object"]),
    ({}, {"sidecar.istio.io/inject": "true"}, ["default/object"]),
    ({}, {}, []),
    ({"istio-injection": "disabled"}, {"sidecar.istio.io/inject": "true"}, []),
    ({"istio-injection": "disabled"}, {"istio.io/rev": ISTIO_R}, []),
]


async def test_istio_injector_selectors_pick_one_webhook_per_label_combination(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    kind = "MutatingWebhookConfiguration"
    kubesim.create_object(
        configuration(kind, "istio-sidecar-injector", *_istio_hooks(webhook, "default", default=True))
    )
    kubesim.create_object(
        configuration(kind, f"istio-sidecar-injector-{ISTIO_R}", *_istio_hooks(webhook, ISTIO_R, default=False))
    )
    for i, (ns_labels, pod_labels, expected) in enumerate(ISTIO_TABLE):
        namespace = f"case-{i}"
        kubesim.create_object(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": ns_labels}}
        )
        webhook.calls.clear()
        await create_pod(kube_api, namespace, pod("app", labels=pod_labels))
        fired = [path.lstrip("/") for path, _, _ in webhook.calls]
        assert fired == expected, f"namespace {ns_labels}, pod {pod_labels}"


async def test_namespaces_match_by_their_own_labels_and_deletes_by_the_old_object(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    webhook.answers["/guard"] = lambda r: {
        "allowed": False,
        "status": {"code": 403, "message": f"{r['operation']} guarded"},
    }
    guarded = {"matchLabels": {"guard": "yes"}}
    kubesim.create_object(
        configuration(
            "ValidatingWebhookConfiguration",
            "guards",
            hook(
                "ns.guard.example.com",
                url_client(webhook, "/guard"),
                resources=("namespaces",),
                namespaceSelector=guarded,
            ),
            hook(
                "cm.guard.example.com", url_client(webhook, "/guard"), resources=("configmaps",), objectSelector=guarded
            ),
        )
    )
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "free"}}
    await kube_api.request("POST", "/api/v1/namespaces", body=namespace)
    namespace["metadata"] = {"name": "kept", "labels": {"guard": "yes"}}
    with pytest.raises(KubeApiError, match="CREATE guarded"):
        await kube_api.request("POST", "/api/v1/namespaces", body=namespace)
    kubesim.create_object(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"guard": "yes"}}}
    )
    with pytest.raises(KubeApiError, match="DELETE guarded") as denied:
        await kube_api.request("DELETE", "/api/v1/namespaces/default/configmaps/c")
    assert denied.value.status == 403
    [request] = [r for r in webhook.requests("/guard") if r["operation"] == "DELETE"]
    assert request["object"] is None and request["oldObject"]["metadata"]["name"] == "c"
    assert request["options"]["kind"] == "DeleteOptions"
    assert kubesim.get_object("configmaps", "default", "c") is not None


@pytest.mark.parametrize(
    ("resources", "subresource", "expected"),
    [
        (["pods"], "", True),
        (["pods"], "status", False),
        (["pods/status"], "status", True),
        (["pods/status"], "", False),
        (["pods/*"], "status", True),
        (["*"], "", True),
        (["*"], "status", False),
        (["*/*"], "status", True),
        (["*/status"], "status", True),
        (["services"], "", False),
    ],
)
def test_rule_resources_and_subresources(resources: list[str], subresource: str, expected: bool) -> None:
    pods = next(r for r in RESOURCES if r.plural == "pods")
    attrs = Attributes(
        resource=pods, operation="UPDATE", namespace="default", name="p", obj={}, subresource=subresource
    )
    rule = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": resources}
    assert rule_matches(rule, attrs, pods) is expected
    assert rule_matches({**rule, "scope": "Cluster"}, attrs, pods) is False
    assert rule_matches({**rule, "operations": ["CREATE"]}, attrs, pods) is False


async def test_if_needed_webhook_is_called_again_after_a_later_one_changed_the_object(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    def first(request: dict[str, Any]) -> dict[str, Any]:
        labels = request["object"]["metadata"].get("labels") or {}
        seen = ",".join(sorted(labels))
        return {
            "allowed": True,
            "patch": [{"op": "add", "path": "/metadata/annotations", "value": {"first-saw": seen}}],
        }

    webhook.answers["/first"] = first
    webhook.answers["/second"] = lambda _: {
        "allowed": True,
        "patch": [{"op": "add", "path": "/metadata/labels", "value": {"second": "done"}}],
    }
    kind = "MutatingWebhookConfiguration"
    kubesim.create_object(
        configuration(
            kind, "a", hook("first.example.com", url_client(webhook, "/first"), reinvocationPolicy="IfNeeded")
        )
    )
    kubesim.create_object(configuration(kind, "b", hook("second.example.com", url_client(webhook, "/second"))))
    created = await create_pod(kube_api, "default", pod("p"))
    assert [path for path, _, _ in webhook.calls] == ["/first", "/second", "/first"]
    assert created["metadata"]["annotations"] == {"first-saw": "second"}
    config = kubesim.get_object("mutatingwebhookconfigurations", "", "a", group="admissionregistration.k8s.io")
    assert config is not None
    config["webhooks"][0]["reinvocationPolicy"] = "Never"
    await kube_api.request("PUT", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/a", body=config)
    webhook.calls.clear()
    created = await create_pod(kube_api, "default", pod("q"))
    assert [path for path, _, _ in webhook.calls] == ["/first", "/second"]
    assert created["metadata"]["annotations"] == {"first-saw": ""}


async def test_validating_webhooks_see_the_mutated_object_and_a_bad_patch_names_its_webhook(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    webhook.answers["/mutate"] = lambda _: {
        "allowed": True,
        "patch": [{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}],
    }
    kubesim.create_object(
        configuration("MutatingWebhookConfiguration", "m", hook("m.example.com", url_client(webhook, "/mutate")))
    )
    kubesim.create_object(
        configuration("ValidatingWebhookConfiguration", "v", hook("v.example.com", url_client(webhook, "/validate")))
    )
    await create_pod(kube_api, "default", pod("p"))
    [checked] = webhook.requests("/validate")
    assert checked["object"]["metadata"]["labels"] == {"mutated": "yes"}
    webhook.answers["/mutate"] = lambda _: {"allowed": True, "patch": [{"op": "remove", "path": "/spec/nothing"}]}
    with pytest.raises(KubeApiError) as failed:
        await create_pod(kube_api, "default", pod("q"))
    assert failed.value.status == 500 and 'admission webhook "m.example.com"' in failed.value.message


async def test_a_webhook_reviews_the_decoded_object_not_the_body(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    """The review's object is the Pod struct the body decoded into, encoded: empty maps gone (so a patch adding to
    `/metadata/labels/...` finds no map), nulls as zero values, structs written though empty, quantities in their
    canonical text, and the creationTimestamp a zero Time, `null`, until the write stamps it."""
    kubesim.create_object(
        configuration("MutatingWebhookConfiguration", "m", hook("m.example.com", url_client(webhook, "/mutate")))
    )
    body = pod("decoded")
    body["metadata"].update(labels={}, annotations={"a": None})
    body["spec"]["containers"][0].update(args=[None], resources={"limits": {"cpu": "1000m"}})
    await create_pod(kube_api, "default", body)
    [request] = webhook.requests("/mutate")
    meta = request["object"]["metadata"]
    assert "labels" not in meta and meta["annotations"] == {"a": ""}
    assert "creationTimestamp" in meta and meta["creationTimestamp"] is None
    [container] = request["object"]["spec"]["containers"]
    assert container["args"] == [""]
    assert container["resources"] == {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}  # defaulted before the review


async def test_a_mutating_patch_that_breaks_a_fields_type_is_a_500_with_the_decoders_error(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    """The patched object is decoded into the kind's Go type again (the mutating dispatcher's
    `jsonSerializer.Decode`); what does not decode is an internal error."""
    webhook.answers["/mutate"] = lambda _: {
        "allowed": True,
        "patch": [{"op": "replace", "path": "/spec/containers/0/image", "value": 5}],
    }
    kubesim.create_object(
        configuration("MutatingWebhookConfiguration", "m", hook("m.example.com", url_client(webhook, "/mutate")))
    )
    with pytest.raises(KubeApiError) as failed:
        await create_pod(kube_api, "default", pod("p"))
    error = "json: cannot unmarshal number into Go struct field Container.spec.containers.image of type string"
    assert (failed.value.status, failed.value.message) == (500, f"Internal error occurred: {error}")
    assert kubesim.get_object("pods", "default", "p") is None


async def test_warnings_from_webhooks_are_printed_by_kubectl(
    kubesim: KubeSim, kubectl: Kubectl, webhook: Webhook
) -> None:
    webhook.answers["/warn"] = lambda _: {
        "allowed": True,
        "warnings": ["namespace labels conflict: istio-injection wins"],
    }
    kubesim.create_object(
        configuration("ValidatingWebhookConfiguration", "w", hook("warn.example.com", url_client(webhook, "/warn")))
    )
    result = await kubectl.run("run", "warned", "--image=app")
    assert "Warning: namespace labels conflict: istio-injection wins" in result.stderr
    assert kubesim.get_object("pods", "default", "warned") is not None


async def test_server_side_dry_run_reaches_side_effect_free_webhooks_only_as_dry_run(
    kubesim: KubeSim, kubectl: Kubectl, webhook: Webhook
) -> None:
    kubesim.create_object(
        configuration(
            "MutatingWebhookConfiguration",
            "m",
            hook("m.example.com", url_client(webhook, "/m"), sideEffects="NoneOnDryRun"),
        )
    )
    await kubectl.run("run", "rehearsal", "--image=app", "--dry-run=server")
    [request] = webhook.requests("/m")
    assert request["dryRun"] is True
    assert kubesim.get_object("pods", "default", "rehearsal") is None


async def test_webhook_configurations_are_validated_like_the_api_servers(kubectl: Kubectl, webhook: Webhook) -> None:
    bad = configuration(
        "ValidatingWebhookConfiguration",
        "bad",
        hook("bad.example.com", url_client(webhook, "/x"), resources=("*", "pods"), reinvocationPolicy="IfNeeded"),
    )
    result = await kubectl.run("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "strict decoding error: unknown field" in result.stderr and 'reinvocationPolicy"' in result.stderr
    result = await kubectl.run("apply", "-f", "-", "--validate=false", stdin=json.dumps(bad), check=False)
    assert "if '*' is present, must not specify other resources without subresources" in result.stderr


async def test_meshplanes_injector_injects_pods_created_through_the_api(
    kubesim: KubeSim, kube_api: KubeApi, tmp_path: pathlib.Path, node_address: str
) -> None:
    running = await asyncio.to_thread(start_serve, tmp_path, "--webhook-addr", f"{node_address}:0")
    try:
        for obj in (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}},
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "apps", "labels": {"istio-injection": "enabled"}},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "istiod", "namespace": "istio-system"},
                "spec": {"ports": [{"name": "https-webhook", "port": 443, "targetPort": 15017}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "istiod-1",
                    "namespace": "istio-system",
                    "labels": {"kubernetes.io/service-name": "istiod"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [node_address], "conditions": {"ready": True}}],
                "ports": [{"name": "https-webhook", "port": running.ports["webhook"]}],
            },
        ):
            kubesim.create_object(obj)
        client = {
            "service": {"namespace": "istio-system", "name": "istiod", "path": "/inject"},
            "caBundle": base64.b64encode(running.root_cert.read_bytes()).decode(),
        }
        selector = {"matchLabels": {"istio-injection": "enabled"}}
        kubesim.create_object(
            configuration(
                "MutatingWebhookConfiguration",
                "istio-sidecar-injector",
                hook("namespace.sidecar-injector.istio.io", client, namespaceSelector=selector, failurePolicy="Fail"),
            )
        )
        created = await create_pod(kube_api, "apps", pod(generate="web-"))
        containers = [c["name"] for c in created["spec"].get("initContainers", []) + created["spec"]["containers"]]
        assert "istio-proxy" in containers and "app" in containers
        assert "sidecar.istio.io/status" in created["metadata"]["annotations"]
    finally:
        await asyncio.to_thread(running.stop)


async def test_status_writes_reach_only_webhooks_whose_rules_name_the_subresource(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    kubesim.create_object(
        configuration(
            "ValidatingWebhookConfiguration",
            "status",
            hook("pods.example.com", url_client(webhook, "/pods")),
            hook("status.example.com", url_client(webhook, "/status"), resources=("pods/status",)),
        )
    )
    kubesim.create_object(pod("p"))
    body = {"status": {"phase": "Running"}}
    await kube_api.request(
        "PATCH", "/api/v1/namespaces/default/pods/p/status", body=body, content_type="application/merge-patch+json"
    )
    assert webhook.requests("/pods") == []
    [request] = webhook.requests("/status")
    assert request["subResource"] == request["requestSubResource"] == "status"
    assert request["object"]["status"]["phase"] == "Running" and request["operation"] == "UPDATE"


def apps_hook(name: str, client: dict[str, Any], *resources: str, **extra: Any) -> dict[str, Any]:
    """A webhook on UPDATE of apps/v1 `resources`."""
    rule = {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": list(resources)}
    return hook(name, client, rules=[rule], **extra)


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "app"}]}},
        },
    }


async def test_scale_writes_reach_webhooks_for_the_scale_subresource_as_scale_objects(
    kubesim: KubeSim, kubectl: Kubectl, webhook: Webhook
) -> None:
    webhook.answers["/bump"] = lambda r: {
        "allowed": True,
        "patch": [{"op": "replace", "path": "/spec/replicas", "value": r["object"]["spec"]["replicas"] + 1}],
    }
    webhook.answers["/limit"] = lambda r: {
        "allowed": r["object"]["spec"]["replicas"] <= 10,
        "status": {"code": 403, "message": "at most 10 replicas"},
    }
    kubesim.create_object(
        configuration(
            "MutatingWebhookConfiguration",
            "bump",
            apps_hook("bump.example.com", url_client(webhook, "/bump"), "deployments/scale"),
        )
    )
    kubesim.create_object(
        configuration(
            "ValidatingWebhookConfiguration",
            "limits",
            apps_hook("whole.example.com", url_client(webhook, "/whole"), "deployments"),
            apps_hook("limit.example.com", url_client(webhook, "/limit"), "*/scale"),
        )
    )
    kubesim.create_object(deployment("web", 1))
    await kubectl.run("scale", "deployment/web", "--replicas=3")
    stored = kubesim.get_object("deployments", "default", "web", group="apps")
    assert stored is not None and stored["spec"]["replicas"] == 4
    assert webhook.requests("/whole") == []  # a rule for `deployments` does not match `deployments/scale`
    [mutation] = webhook.requests("/bump")
    [validation] = webhook.requests("/limit")
    for request in (mutation, validation):
        assert request["kind"] == request["requestKind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}
        deployments = {"group": "apps", "version": "v1", "resource": "deployments"}
        assert request["resource"] == request["requestResource"] == deployments
        assert request["subResource"] == request["requestSubResource"] == "scale"
        assert (request["operation"], request["namespace"], request["name"]) == ("UPDATE", "default", "web")
        assert (request["object"]["apiVersion"], request["object"]["kind"]) == ("autoscaling/v1", "Scale")
        assert request["oldObject"]["kind"] == "Scale" and request["oldObject"]["spec"]["replicas"] == 1
        assert request["options"]["kind"] == "UpdateOptions"
    assert mutation["object"]["spec"]["replicas"] == 3 and validation["object"]["spec"]["replicas"] == 4

    denied = await kubectl.run("scale", "deployment/web", "--replicas=20", check=False)
    assert denied.returncode != 0
    assert 'admission webhook "limit.example.com" denied the request: at most 10 replicas' in denied.stderr
    stored = kubesim.get_object("deployments", "default", "web", group="apps")
    assert stored is not None and stored["spec"]["replicas"] == 4


async def test_pod_bindings_reach_webhooks_for_pods_binding_as_binding_creates(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    steer = [{"op": "replace", "path": "/target/name", "value": "node-b"}]
    webhook.answers["/steer"] = lambda r: {
        "allowed": True,
        **({"patch": steer} if r["object"]["target"]["name"] == "node-a" else {}),
    }
    webhook.answers["/fence"] = lambda r: {
        "allowed": r["object"]["target"]["name"] != "node-x",
        "status": {"code": 403, "message": "node-x is fenced"},
    }
    kubesim.create_object(
        configuration(
            "MutatingWebhookConfiguration",
            "steer",
            hook("steer.example.com", url_client(webhook, "/steer"), resources=("pods/*",)),
        )
    )
    kubesim.create_object(
        configuration(
            "ValidatingWebhookConfiguration",
            "fence",
            hook("pods.example.com", url_client(webhook, "/pods")),
            hook("fence.example.com", url_client(webhook, "/fence"), resources=("pods/binding",)),
        )
    )
    for name in ("p", "q"):
        kubesim.create_object(pod(name))

    def binding(name: str, node: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"name": node}}

    await kube_api.request("POST", "/api/v1/namespaces/default/pods/p/binding", body=binding("p", "node-a"))
    bound = kubesim.get_object("pods", "default", "p")
    assert bound is not None and bound["spec"]["nodeName"] == "node-b"
    assert webhook.requests("/pods") == []  # a rule for `pods` does not match `pods/binding`
    [mutation] = webhook.requests("/steer")
    [validation] = webhook.requests("/fence")
    for request in (mutation, validation):
        assert request["kind"] == request["requestKind"] == {"group": "", "version": "v1", "kind": "Binding"}
        assert request["resource"] == request["requestResource"] == {"group": "", "version": "v1", "resource": "pods"}
        assert request["subResource"] == request["requestSubResource"] == "binding"
        assert (request["operation"], request["namespace"], request["name"]) == ("CREATE", "default", "p")
        assert request["object"]["kind"] == "Binding" and request["oldObject"] is None
        assert request["options"]["kind"] == "CreateOptions"
    assert mutation["object"]["target"]["name"] == "node-a" and validation["object"]["target"]["name"] == "node-b"

    with pytest.raises(KubeApiError, match="node-x is fenced") as denied:
        await kube_api.request("POST", "/api/v1/namespaces/default/pods/q/binding", body=binding("q", "node-x"))
    assert denied.value.status == 403
    unbound = kubesim.get_object("pods", "default", "q")
    assert unbound is not None and "nodeName" not in unbound["spec"]


async def test_webhook_warnings_on_status_scale_and_binding_writes_are_warning_headers(
    kubesim: KubeSim, webhook: Webhook
) -> None:
    webhook.answers["/warn"] = lambda r: {"allowed": True, "warnings": [f"{r['subResource']} looked at"]}
    kubesim.create_object(
        configuration(
            "ValidatingWebhookConfiguration",
            "w",
            hook("warn.example.com", url_client(webhook, "/warn"), resources=("pods/status", "pods/binding")),
            apps_hook("scale.example.com", url_client(webhook, "/warn"), "deployments/scale"),
        )
    )
    kubesim.create_object(pod("p"))
    kubesim.create_object(deployment("web", 1))
    merge = {"Content-Type": "application/merge-patch+json"}
    writes = [
        ("PATCH", "/api/v1/namespaces/default/pods/p/status", {"status": {"message": "hi"}}, merge, "status"),
        ("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/scale", {"spec": {"replicas": 2}}, merge, "scale"),
        (
            "POST",
            "/api/v1/namespaces/default/pods/p/binding",
            {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"name": "node-a"}},
            {"Content-Type": "application/json"},
            "binding",
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, body, headers, sub in writes:
            async with session.request(method, f"{kubesim.url}{path}", data=json.dumps(body), headers=headers) as resp:
                assert resp.status in (200, 201), await resp.text()
                assert resp.headers.getall("Warning", []) == [f'299 - "{sub} looked at"']


async def test_deleting_a_collection_calls_delete_webhooks_per_object_until_one_denies(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    webhook.answers["/guard"] = lambda r: {
        "allowed": r["oldObject"]["metadata"]["name"] != "b",
        "status": {"code": 403, "message": "b is guarded"},
    }
    kubesim.create_object(
        configuration(
            "ValidatingWebhookConfiguration",
            "guard",
            hook("guard.example.com", url_client(webhook, "/guard"), resources=("configmaps",)),
        )
    )
    for name in ("a", "b", "c"):
        kubesim.create_object(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"batch": "1"}}}
        )
    with pytest.raises(KubeApiError) as denied:
        await kube_api.request("DELETE", "/api/v1/namespaces/default/configmaps", query=[("labelSelector", "batch=1")])
    assert denied.value.status == 403
    assert denied.value.message == 'admission webhook "guard.example.com" denied the request: b is guarded'
    requests = webhook.requests("/guard")
    assert [r["oldObject"]["metadata"]["name"] for r in requests] == ["a", "b"]
    for request in requests:
        assert request["operation"] == "DELETE" and request["object"] is None
        assert "name" not in request and request["namespace"] == "default"  # the collection's request: no name
        assert request["options"]["kind"] == "DeleteOptions"
    assert [kubesim.get_object("configmaps", "default", n) is None for n in "abc"] == [True, False, False]


async def test_webhook_urls_and_service_paths_are_validated(kubectl: Kubectl, webhook: Webhook) -> None:
    bad = configuration(
        "MutatingWebhookConfiguration",
        "urls",
        hook("plain.example.com", {"url": f"http://127.0.0.1:{webhook.port}/x?debug=1"}),
        hook("svc.example.com", {"service": {"namespace": "hooks", "name": "hooks", "path": "inject"}}),
    )
    result = await kubectl.run("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert (
        "webhooks[0].clientConfig.url: Invalid value: \"http\": 'https' is the only allowed URL scheme" in result.stderr
    )
    assert "query parameters are not permitted in the URL" in result.stderr
    assert "webhooks[1].clientConfig.service.path: Invalid value: \"inject\": must start with a '/'" in result.stderr


@pytest.mark.parametrize("kind", ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"])
async def test_webhook_names_are_fully_qualified_names_with_the_api_servers_texts(kube_api: KubeApi, kind: str) -> None:
    """A webhook's name is checked by `IsFullyQualifiedName`: first a DNS-1123 subdomain (at most 253 bytes,
    its problems in one cause), then at least three labels. A repeated name is a Duplicate, valid or not,
    reported after everything else about that webhook."""
    client = {"url": "https://hooks.example.com/x"}
    too_long = "a" * 250 + ".b.c"
    bad = configuration(
        kind,
        "names",
        hook("Hooks.Example.com", client),
        hook(too_long, client),
        hook("two.segments", client),
        hook("Hooks.Example.com", client, sideEffects="Some"),
    )
    path = f"/apis/admissionregistration.k8s.io/v1/{kind.lower()}s"
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", path, body=bad)
    assert (info.value.status, info.value.reason) == (422, "Invalid")
    assert info.value.message == (
        f'{kind}.admissionregistration.k8s.io "names" is invalid: ['
        f'webhooks[0].name: Invalid value: "Hooks.Example.com": {SUBDOMAIN_HELP}, '
        f'webhooks[1].name: Invalid value: "{too_long}": must be no more than 253 characters, '
        'webhooks[2].name: Invalid value: "two.segments": should be a domain with at least three segments '
        "separated by dots, "
        f'webhooks[3].name: Invalid value: "Hooks.Example.com": {SUBDOMAIN_HELP}, '
        'webhooks[3].sideEffects: Unsupported value: "Some": supported values: "None", "NoneOnDryRun", '
        'webhooks[3].name: Duplicate value: "Hooks.Example.com"]'
    )
    good = configuration(kind, "names", hook("hooks.example.com", client), hook("a" * 63 + ".b.c", client))
    created = await kube_api.request("POST", path, body=good)
    assert [h["name"] for h in created["webhooks"]] == ["hooks.example.com", "a" * 63 + ".b.c"]


@pytest.mark.parametrize("kind", ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"])
async def test_webhook_rules_and_review_versions_are_checked_in_the_api_servers_order(
    kube_api: KubeApi, kind: str
) -> None:
    """A rule's operations come before its API groups and versions (`validateRuleWithOperations`), a list
    given as the bad value printing as Go's `%#v`. Each admissionReviewVersion is a DNS-1035 label and a
    repeat a "duplicate version"; one of v1, v1beta1 must be among them."""
    client = {"url": "https://hooks.example.com/x"}
    rule = {"operations": ["*", "CREATE"], "apiGroups": ["*", "apps"], "apiVersions": [], "resources": ["pods"]}
    bad = configuration(
        kind,
        "rules",
        hook("a.example.com", client, rules=[rule], admissionReviewVersions=["v1", "v1", "V2"]),
        hook("b.example.com", client, admissionReviewVersions=["v2"]),
    )
    path = f"/apis/admissionregistration.k8s.io/v1/{kind.lower()}s"
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", path, body=bad)
    assert (info.value.status, info.value.reason) == (422, "Invalid")
    assert info.value.message == (
        f'{kind}.admissionregistration.k8s.io "rules" is invalid: ['
        'webhooks[0].rules[0].operations: Invalid value: []admissionregistration.OperationType{"*", "CREATE"}: '
        "if '*' is present, must not specify other operations, "
        'webhooks[0].rules[0].apiGroups: Invalid value: []string{"*", "apps"}: '
        "if '*' is present, must not specify other API groups, "
        "webhooks[0].rules[0].apiVersions: Required value, "
        'webhooks[0].admissionReviewVersions[1]: Invalid value: "v1": duplicate version, '
        f'webhooks[0].admissionReviewVersions[2]: Invalid value: "V2": {DNS1035_HELP}, '
        'webhooks[1].admissionReviewVersions: Invalid value: []string{"v2"}: must include at least one of v1, '
        "v1beta1]"
    )


async def test_only_the_given_one_of_a_webhooks_url_and_service_is_checked(kube_api: KubeApi) -> None:
    """`ValidateWebhookURL` or `ValidateWebhookService`, never both: with both given, only that one must be
    chosen is reported. A service's name comes before its namespace, each with its own text."""
    bad = configuration(
        "ValidatingWebhookConfiguration",
        "clients",
        hook("a.example.com", {"url": "http://hooks/x", "service": {"namespace": "n", "name": "s"}}),
        hook("b.example.com", {"url": "ftp://hooks/x"}),
        hook("c.example.com", {"service": {"path": "/ok//Bad"}}),
    )
    path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    with pytest.raises(KubeApiError) as info:
        await kube_api.request("POST", path, body=bad)
    assert (info.value.status, info.value.reason) == (422, "Invalid")
    assert [(c["field"], c["message"]) for c in info.value.body["details"]["causes"]] == [
        ("webhooks[0].clientConfig", "Required value: exactly one of url or service is required"),
        (
            "webhooks[1].clientConfig.url",
            "Invalid value: \"ftp\": 'https' is the only allowed URL scheme; desired format: https://host[/path]",
        ),
        ("webhooks[2].clientConfig.service.name", "Required value: service name is required"),
        ("webhooks[2].clientConfig.service.namespace", "Required value: service namespace is required"),
        ("webhooks[2].clientConfig.service.path", 'Invalid value: "/ok//Bad": segment[1] may not be empty'),
        ("webhooks[2].clientConfig.service.path", f'Invalid value: "/ok//Bad": segment[2]: {SUBDOMAIN_HELP}'),
    ]


async def warning_headers(sim: KubeSim, method: str, path: str, body: Any) -> tuple[int, list[str]]:
    """(status, the answer's `Warning` header values, one per header)."""
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=json.dumps(body), headers=headers) as resp,
    ):
        return resp.status, resp.headers.getall("Warning", [])


async def test_a_warning_text_is_sent_once_however_many_webhooks_give_it(kubesim: KubeSim, webhook: Webhook) -> None:
    webhook.answers["/a"] = lambda _: {"allowed": True, "warnings": ["shared", "from a"]}
    webhook.answers["/b"] = lambda _: {"allowed": True, "warnings": ["shared", "", 'say "hi" \\ café']}
    kubesim.create_object(
        configuration("MutatingWebhookConfiguration", "m", hook("a.example.com", url_client(webhook, "/a")))
    )
    kubesim.create_object(
        configuration("ValidatingWebhookConfiguration", "v", hook("b.example.com", url_client(webhook, "/b")))
    )
    status, warnings = await warning_headers(kubesim, "POST", "/api/v1/namespaces/default/pods", pod("p"))
    assert status == 201
    assert warnings == ['299 - "shared"', '299 - "from a"', '299 - "say \\"hi\\" \\\\ café"']


async def test_warnings_gathered_before_a_failure_are_sent_on_the_failed_answer(
    kubesim: KubeSim, webhook: Webhook
) -> None:
    webhook.answers["/look"] = lambda r: {"allowed": True, "warnings": [f"{r['operation']} {r['kind']['kind']} seen"]}
    kubesim.create_object(
        configuration(
            "MutatingWebhookConfiguration",
            "look",
            hook("look.example.com", url_client(webhook, "/look"), resources=("configmaps", "pods/binding")),
        )
    )
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad"}, "data": {"not a key": "x"}}
    status, warnings = await warning_headers(kubesim, "POST", "/api/v1/namespaces/default/configmaps", bad)
    assert (status, warnings) == (422, ['299 - "CREATE ConfigMap seen"'])
    kubesim.create_object(pod("p"))
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {}}
    status, warnings = await warning_headers(kubesim, "POST", "/api/v1/namespaces/default/pods/p/binding", binding)
    assert (status, warnings) == (422, ['299 - "CREATE Binding seen"'])


def test_warnings_past_4096_characters_are_cut_to_256_and_then_dropped() -> None:
    recorder = Recorder()
    recorder.extend(["short", "x" * 4000, "y" * 300, *(f"{i:03d}" + "z" * 297 for i in range(20)), "bad\ntext"])
    headers = recorder.headers()
    assert headers[:3] == ['299 - "short"', f'299 - "{"x" * 256}"', f'299 - "{"y" * 256}"']
    # 5 + 256 + 256 characters so far; each cut warning adds 256 until 4096 are reached
    assert len(headers) == 3 + 14 and headers[-1] == f'299 - "013{"z" * 253}"'
