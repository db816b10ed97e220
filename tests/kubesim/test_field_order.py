"""The order of an answer's fields: the API server decodes a built-in object into its Go struct and encodes it
again, so `encoding/json` writes each struct's fields in the order its type declares them (`kind` and
`apiVersion` first, then `metadata`, `spec`, `status`) and each map's keys sorted, whatever order the body had.
A custom resource is held as unstructured JSON, so every object in it is written with its keys sorted.

kubectl's `-o json` cannot show this: it decodes the answer into an unstructured map and prints that with its
keys sorted. `kubectl get --raw` prints the answer as the server wrote it; here it is read with an HTTP client
too, as bytes, each object's keys in the order they come."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.kubesim.fixtures import Kubectl
from tests.kubesim.server import KubeSim

CORE = "/api/v1/namespaces/default"
APPS = "/apis/apps/v1/namespaces/default"

# The JSON names of the fields in the order k8s.io/api and apimachinery v0.32 declare them.
TOP = "kind apiVersion metadata spec status"
OBJECT_META = (
    "name generateName namespace selfLink uid resourceVersion generation creationTimestamp deletionTimestamp "
    "deletionGracePeriodSeconds labels annotations ownerReferences finalizers managedFields"
)
POD_SPEC = (
    "volumes initContainers containers ephemeralContainers restartPolicy terminationGracePeriodSeconds "
    "activeDeadlineSeconds dnsPolicy nodeSelector serviceAccountName serviceAccount automountServiceAccountToken "
    "nodeName hostNetwork hostPID hostIPC shareProcessNamespace securityContext imagePullSecrets hostname "
    "subdomain affinity schedulerName tolerations hostAliases priorityClassName priority dnsConfig readinessGates "
    "runtimeClassName enableServiceLinks preemptionPolicy overhead topologySpreadConstraints setHostnameAsFQDN os "
    "hostUsers schedulingGates resourceClaims resources"
)
CONTAINER = (
    "name image command args workingDir ports envFrom env resources resizePolicy restartPolicy volumeMounts "
    "volumeDevices livenessProbe readinessProbe startupProbe lifecycle terminationMessagePath "
    "terminationMessagePolicy imagePullPolicy securityContext stdin stdinOnce tty"
)
PROBE = (  # ProbeHandler's fields in its place
    "exec httpGet tcpSocket grpc initialDelaySeconds timeoutSeconds periodSeconds successThreshold "
    "failureThreshold terminationGracePeriodSeconds"
)
POD_STATUS = (
    "phase conditions message reason nominatedNodeName hostIP hostIPs podIP podIPs startTime initContainerStatuses "
    "containerStatuses qosClass ephemeralContainerStatuses resize resourceClaimStatuses"
)
SERVICE_SPEC = (
    "ports selector clusterIP clusterIPs type externalIPs sessionAffinity loadBalancerIP loadBalancerSourceRanges "
    "externalName externalTrafficPolicy healthCheckNodePort publishNotReadyAddresses sessionAffinityConfig "
    "ipFamilies ipFamilyPolicy allocateLoadBalancerNodePorts loadBalancerClass internalTrafficPolicy "
    "trafficDistribution"
)
DEPLOYMENT_SPEC = (
    "replicas selector template strategy minReadySeconds revisionHistoryLimit paused progressDeadlineSeconds"
)


async def raw(sim: KubeSim, method: str, path: str, body: Any = None, *, content_type: str = "") -> tuple[int, str]:
    """The status and the text of one answer."""
    headers = {"Content-Type": content_type or "application/json"}
    data = None if body is None else body if isinstance(body, str) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{sim.url}{path}", data=data, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def create_and_get(sim: KubeSim, path: str, body: Any) -> list[Any]:
    """The create's answer (201) and a GET's, each read as sent: every object's keys in the answer's order."""
    status, text = await raw(sim, "POST", path, body)
    assert status == 201, text
    answer = json.loads(text)
    status, got = await raw(sim, "GET", f"{path}/{answer['metadata']['name']}")
    assert status == 200, got
    return [answer, json.loads(got)]


def in_order(obj: Any, declared: str) -> bool:
    """Whether `obj`'s keys are fields of the declaration `declared`, in its order."""
    return list(obj) == [field for field in declared.split() if field in obj]


def all_sorted(value: Any) -> bool:
    """Whether every object in `value` has its keys sorted."""
    if isinstance(value, dict):
        return list(value) == sorted(value) and all(all_sorted(item) for item in value.values())
    if isinstance(value, list):
        return all(all_sorted(item) for item in value)
    return True


def scrambled_pod(name: str) -> dict[str, Any]:
    """A pod whose every object lists its fields out of Go's order, its maps' keys unsorted."""
    probe = {"periodSeconds": 5, "httpGet": {"port": 8080, "path": "/ready"}}
    container = {
        "readinessProbe": probe,
        "resources": {"requests": {"memory": "64Mi", "cpu": "100m"}, "limits": {"memory": "128Mi", "cpu": "1"}},
        "env": [{"value": "1", "name": "B"}],
        "ports": [{"protocol": "TCP", "containerPort": 8080, "name": "http"}],
        "image": "app",
        "name": "app",
    }
    return {
        "spec": {"nodeSelector": {"zone": "a", "disk": "ssd"}, "restartPolicy": "Always", "containers": [container]},
        "metadata": {"annotations": {"y": "1", "b": "2"}, "labels": {"z": "1", "a": "2", "M": "3"}, "name": name},
        "apiVersion": "v1",
        "kind": "Pod",
    }


def check_pod(pod: Any) -> None:
    """The pod `scrambled_pod` made, as the server writes it. The resourceVersion of a new object is not looked
    at: kubesim's storage stamps it on the encoded object, at the end of its metadata."""
    assert in_order(pod, TOP), list(pod)
    meta = pod["metadata"]
    assert in_order(meta, OBJECT_META), list(meta)
    assert list(meta["labels"]) == ["M", "a", "z"]  # bytes compared: upper case first
    assert list(meta["annotations"]) == ["b", "y"]
    spec = pod["spec"]
    assert in_order(spec, POD_SPEC), list(spec)
    assert list(spec["nodeSelector"]) == ["disk", "zone"]
    [container] = spec["containers"]
    assert in_order(container, CONTAINER), list(container)
    assert list(container["ports"][0]) == ["name", "containerPort", "protocol"]
    assert list(container["env"][0]) == ["name", "value"]
    assert list(container["resources"]) == ["limits", "requests"]
    assert list(container["resources"]["limits"]) == list(container["resources"]["requests"]) == ["cpu", "memory"]
    assert in_order(container["readinessProbe"], PROBE), list(container["readinessProbe"])
    assert list(container["readinessProbe"]["httpGet"])[:2] == ["path", "port"]
    assert in_order(pod["status"], POD_STATUS), list(pod["status"])


async def test_a_pod_is_written_in_its_go_types_order_whatever_the_body_had(kubesim: KubeSim) -> None:
    """Struct fields in declaration order (a probe's handler, an embedded struct, in its place), map keys
    sorted: in the create's answer, a dry run's and what a GET reads back."""
    status, text = await raw(kubesim, "POST", f"{CORE}/pods?dryRun=All", scrambled_pod("ordered"))
    assert status == 201, text
    for pod in [json.loads(text), *await create_and_get(kubesim, f"{CORE}/pods", scrambled_pod("ordered"))]:
        check_pod(pod)


async def test_kubectl_get_raw_prints_the_servers_order_and_o_json_sorts_it(kubesim: KubeSim, kubectl: Kubectl) -> None:
    """`get --raw` prints the answer's bytes as they came; `-o json` prints kubectl's unstructured copy of it."""
    await create_and_get(kubesim, f"{CORE}/pods", scrambled_pod("raw"))
    printed = await kubectl.run("get", "--raw", f"{CORE}/pods/raw")
    check_pod(json.loads(printed.stdout))
    assert printed.stdout.startswith('{"kind":"Pod","apiVersion":"v1","metadata":{"name":"raw","namespace":"default"')
    assert all_sorted(await kubectl.json("get", "pod", "raw"))  # kubectl's own order, an unstructured map's


async def test_a_config_map_and_a_service_are_written_in_go_order(kubesim: KubeSim) -> None:
    config = {
        "binaryData": {"z": "AA==", "x": "AQ=="},
        "data": {"b": "1", "a": "2", "C": "3"},
        "immutable": False,
        "metadata": {"name": "ordered"},
        "kind": "ConfigMap",
        "apiVersion": "v1",
    }
    for answer in await create_and_get(kubesim, f"{CORE}/configmaps", config):
        assert list(answer) == ["kind", "apiVersion", "metadata", "immutable", "data", "binaryData"]
        assert (list(answer["data"]), list(answer["binaryData"])) == (["C", "a", "b"], ["x", "z"])
    service = {
        "spec": {
            "type": "ClusterIP",
            "selector": {"tier": "web", "app": "shop"},
            "ports": [{"targetPort": 8080, "port": 80, "protocol": "TCP", "name": "http"}],
        },
        "metadata": {"name": "ordered"},
        "apiVersion": "v1",
        "kind": "Service",
    }
    for answer in await create_and_get(kubesim, f"{CORE}/services", service):
        assert in_order(answer, TOP), list(answer)
        spec = answer["spec"]
        assert in_order(spec, SERVICE_SPEC), list(spec)
        assert list(spec)[:5] == ["ports", "selector", "clusterIP", "clusterIPs", "type"]
        assert list(spec["selector"]) == ["app", "tier"]
        assert list(spec["ports"][0]) == ["name", "protocol", "port", "targetPort"]


async def test_an_update_and_a_patch_are_written_in_go_order(kubesim: KubeSim) -> None:
    """A replaced object (its resourceVersion given, so in its place in the metadata) and a patched one: what a
    merge patch adds is written where its type declares it, not after what was there."""
    body = {
        "spec": {
            "template": {
                "spec": {"containers": [{"image": "app", "name": "app"}]},
                "metadata": {"labels": {"app": "web"}},
            },
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}, "type": "RollingUpdate"},
            "selector": {"matchLabels": {"app": "web"}},
            "replicas": 2,
        },
        "metadata": {"name": "web"},
        "kind": "Deployment",
        "apiVersion": "apps/v1",
    }
    created, _ = await create_and_get(kubesim, f"{APPS}/deployments", body)
    replaced = {**body, "metadata": {"labels": {"b": "1", "a": "2"}, **created["metadata"]}}
    status, text = await raw(kubesim, "PUT", f"{APPS}/deployments/web", replaced)
    assert status == 200, text
    status, got = await raw(kubesim, "GET", f"{APPS}/deployments/web")
    assert status == 200, got
    for answer in (json.loads(text), json.loads(got)):
        assert in_order(answer, TOP), list(answer)
        meta = answer["metadata"]
        assert in_order(meta, OBJECT_META), list(meta)
        assert list(meta)[:5] == ["name", "namespace", "uid", "resourceVersion", "generation"]
        assert list(meta["labels"]) == ["a", "b"]
        spec = answer["spec"]
        assert in_order(spec, DEPLOYMENT_SPEC), list(spec)
        assert list(spec["template"]) == ["metadata", "spec"]
        assert list(spec["strategy"]) == ["type", "rollingUpdate"]
        assert list(spec["strategy"]["rollingUpdate"]) == ["maxUnavailable", "maxSurge"]
    patch = {"spec": {"paused": True, "minReadySeconds": 3}, "metadata": {"labels": {"0": "x"}}}
    status, text = await raw(
        kubesim, "PATCH", f"{APPS}/deployments/web", patch, content_type="application/merge-patch+json"
    )
    assert status == 200, text
    patched = json.loads(text)
    assert list(patched["metadata"]["labels"]) == ["0", "a", "b"]
    assert list(patched["spec"]) == [
        "replicas",
        "selector",
        "template",
        "strategy",
        "minReadySeconds",
        "revisionHistoryLimit",
        "paused",
        "progressDeadlineSeconds",
    ]


SHOP_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "shops.example.io"},
    "spec": {
        "group": "example.io",
        "names": {"kind": "Shop", "plural": "shops"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "apiVersion": {"type": "string"},
                        },
                    }
                },
            }
        ],
    },
}


async def test_a_custom_resource_has_every_objects_keys_sorted_and_its_crd_its_go_order(kubesim: KubeSim) -> None:
    """A custom resource is unstructured JSON: its keys sorted at every level, its metadata too (a map once the
    schema coercer puts it back). The CRD is a built-in: its schema's `properties` is a map, its keys sorted."""
    [crd, _] = await create_and_get(kubesim, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", SHOP_CRD)
    assert in_order(crd, TOP), list(crd)
    assert list(crd["spec"]) == ["group", "names", "scope", "versions", "conversion"]
    [version] = crd["spec"]["versions"]
    assert list(version) == ["name", "served", "storage", "schema"]
    assert list(version["schema"]["openAPIV3Schema"]) == ["type", "properties"]
    assert list(version["schema"]["openAPIV3Schema"]["properties"]) == ["apiVersion", "spec"]
    shop = {
        "spec": {"zones": [{"weight": 1, "name": "a"}], "owner": {"team": "x", "email": "e"}, "Size": 3},
        "metadata": {"name": "corner", "labels": {"z": "1", "a": "2"}, "namespace": "default"},
        "kind": "Shop",
        "apiVersion": "example.io/v1",
    }
    path = "/apis/example.io/v1/namespaces/default/shops"
    for answer in await create_and_get(kubesim, path, shop):
        assert list(answer) == ["apiVersion", "kind", "metadata", "spec"]
        assert list(answer["spec"]) == ["Size", "owner", "zones"]
        assert all_sorted(answer), answer
    changed = {**shop, "metadata": {**answer["metadata"], "annotations": {"b": "1", "a": "2"}}}
    status, text = await raw(kubesim, "PUT", f"{path}/corner", changed)
    assert status == 200, text
    status, got = await raw(kubesim, "GET", f"{path}/corner")
    assert status == 200, got
    for replaced in (json.loads(text), json.loads(got)):
        assert all_sorted(replaced), replaced
        assert list(replaced["metadata"])[-3:] == ["namespace", "resourceVersion", "uid"]
