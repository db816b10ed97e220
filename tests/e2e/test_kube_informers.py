"""Kubernetes informers end to end: the model ends equal to the API server's state through every kind of outage.

Objects are created, changed and deleted while the watches are cut mid-stream (a TCP forwarder in
front of kubesim aborts its connections), while history is compacted (resumed watches answer
`410 Gone` and relist), and while the API server is stopped and started again on the same port with
its data kept. Then the full sets are compared: in process, the ConfigStore's objects against
kubesim's storage, object by object; through a `meshplane serve` subprocess, `/debug/configz` and
`/debug/registryz` against what the server holds. A ledger on the store checks that no object
state is applied twice or out of order (each key's resourceVersions only increase).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pathlib
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import aiohttp
import pytest
import yaml

from controlplane.kube.client import KubeApi
from controlplane.kube.source import KubeSource
from controlplane.kube.watching import Backoff
from controlplane.model.store import ConfigEvent, ConfigStore, Object, ObjectKey
from controlplane.model.workloads import pod_fields_read
from tests.helpers.relay import Relay
from tests.helpers.serve import Running, start_serve
from tests.kubesim.fixtures import (  # noqa: F401
    eventually,
    kube_api_fixture,
    kubeconfig_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

CP_NS = "istio-system"
ROOT_CONFIGMAP = "istio-ca-root-cert"
APP_NAMESPACES = ("apps-0", "apps-1", "apps-2")
MERGE = "application/merge-patch+json"
# (plural, group) of what the source mirrors in full (the control plane's ConfigMaps are added separately).
MIRRORED = (("namespaces", ""), ("services", ""), ("endpointslices", "discovery.k8s.io"), ("pods", ""))


def kubeconfig_through(kubeconfig: pathlib.Path, sim: KubeSim, breaker: Relay, target: pathlib.Path) -> pathlib.Path:
    """A copy of `kubeconfig` whose server is the breaker (same scheme and credentials)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = cluster["cluster"]["server"].replace(f":{sim.port}", f":{breaker.port}")
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o600)
    return target


@pytest.fixture
async def breaker(kubesim: KubeSim) -> AsyncIterator[Relay]:
    forwarder = Relay(target_port=kubesim.port)
    await forwarder.start()
    try:
        yield forwarder
    finally:
        await forwarder.close()


# -- the workload that changes under the watches ------------------------------------------------


class Churn:
    """Seeded random creates, changes and deletes of Services, EndpointSlices, Pods and ConfigMaps.

    Online steps go through `api` (straight to kubesim, never through the breaker); offline steps
    (while the API server is stopped) write kubesim's storage directly, like another API server
    replica writing the same etcd.
    """

    def __init__(self, sim: KubeSim, api: KubeApi, *, seed: int) -> None:
        self.sim = sim
        self.api = api
        self.rng = random.Random(seed)
        self.serial = 0
        self.writes = 0

    def setup(self) -> None:
        for ns in (CP_NS, *APP_NAMESPACES):
            if self.sim.get_object("namespaces", "", ns) is None:
                self.sim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    def _pick(self, plural: str, group: str = "", *, namespaces: Sequence[str] = APP_NAMESPACES) -> Any:
        resource = self.sim.resource(plural, group)
        found = [o for o in self.sim.storage.items(resource) if o["metadata"]["namespace"] in namespaces]
        found = [o for o in found if o["metadata"]["name"] not in ("kubernetes", "kube-root-ca.crt")]
        return self.rng.choice(found) if found else None

    def _new_objects(self) -> list[dict[str, Any]]:
        """A Pod (with its IP in status, as a kubelet reports it), its Service and EndpointSlice, in that order."""
        self.serial += 1
        ns, name, ip = (
            self.rng.choice(APP_NAMESPACES),
            f"app-{self.serial}",
            f"10.9.{self.serial // 250}.{self.serial % 250 + 1}",
        )
        return [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-s", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": name}}
                ],
            },
        ]

    def _changes(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(plural, group, path-in-api, merge patch) candidates for one change."""
        options: list[tuple[str, str, str, dict[str, Any]]] = []
        svc = self._pick("services")
        if svc is not None:
            port = self.rng.randint(1000, 2000)
            options.append(
                (
                    "services",
                    "",
                    _path("services", svc),
                    {"spec": {"ports": [{"name": "http", "port": port, "targetPort": 8080}]}},
                )
            )
        slc = self._pick("endpointslices", "discovery.k8s.io")
        if slc is not None:
            ip = f"10.8.{self.rng.randint(0, 250)}.{self.rng.randint(1, 250)}"
            options.append(
                (
                    "endpointslices",
                    "discovery.k8s.io",
                    _path("endpointslices", slc, "discovery.k8s.io"),
                    {"endpoints": [{"addresses": [ip], "conditions": {"ready": self.rng.random() < 0.7}}]},
                )
            )
        pod = self._pick("pods")
        if pod is not None:
            options.append(
                ("pods", "", _path("pods", pod), {"metadata": {"labels": {"rev": str(self.rng.randint(0, 9))}}})
            )
        cm = self._pick("configmaps", namespaces=(CP_NS,))
        if cm is not None:
            options.append(("configmaps", "", _path("configmaps", cm), {"data": {"value": str(self.rng.random())}}))
        return options

    async def step(self) -> None:
        """One online create, change or delete."""
        roll = self.rng.random()
        self.writes += 1
        if roll < 0.3:
            for obj in self._new_objects():
                plural = {"Service": "services", "EndpointSlice": "endpointslices", "Pod": "pods"}[obj["kind"]]
                group = "discovery.k8s.io" if plural == "endpointslices" else ""
                path = _collection(plural, obj["metadata"]["namespace"], group)
                await self.api.request("POST", path, body=obj)
                if plural == "pods":
                    status = {"status": obj["status"]}
                    name = obj["metadata"]["name"]
                    await self.api.request("PATCH", f"{path}/{name}/status", body=status, content_type=MERGE)
        elif roll < 0.4:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{self.serial}", "namespace": CP_NS},
                "data": {"value": "0"},
            }
            self.serial += 1
            await self.api.request("POST", _collection("configmaps", CP_NS), body=body)
        elif roll < 0.8 and (options := self._changes()):
            _, _, path, patch = self.rng.choice(options)
            await self.api.request("PATCH", path, body=patch, content_type=MERGE)
        else:
            victim = self._victim()
            if victim is not None:
                await self.api.request("DELETE", _path(*victim))

    def offline_step(self) -> None:
        """One create, change or delete written to storage while the API server is stopped."""
        roll = self.rng.random()
        self.writes += 1
        if roll < 0.3:
            for obj in self._new_objects():
                created = self.sim.create_object(obj)
                if obj["kind"] == "Pod":
                    created["status"] = obj["status"]
                    self.sim.storage.write(self.sim.resource("pods"), created, event_type="MODIFIED")
        elif roll < 0.7 and (options := self._changes()):
            plural, group, path, patch = self.rng.choice(options)
            name, ns = path.rsplit("/", 1)[1], path.split("/namespaces/")[1].split("/")[0]
            resource = self.sim.resource(plural, group)
            current = copy.deepcopy(self.sim.storage.get(resource, ns, name))
            _merge(current, patch)
            self.sim.storage.write(resource, current, event_type="MODIFIED")
        else:
            victim = self._victim()
            if victim is not None:
                plural, obj, group = victim
                self.sim.storage.delete(
                    self.sim.resource(plural, group), obj["metadata"]["namespace"], obj["metadata"]["name"]
                )

    def _victim(self) -> tuple[str, dict[str, Any], str] | None:
        plural, group = self.rng.choice(
            [("services", ""), ("endpointslices", "discovery.k8s.io"), ("pods", ""), ("configmaps", "")]
        )
        namespaces = (CP_NS,) if plural == "configmaps" else APP_NAMESPACES
        obj = self._pick(plural, group, namespaces=namespaces)
        return (plural, obj, group) if obj is not None else None


def _collection(plural: str, ns: str, group: str = "") -> str:
    base = f"/apis/{group}/v1" if group else "/api/v1"
    return f"{base}/namespaces/{ns}/{plural}"


def _path(plural: str, obj: dict[str, Any], group: str = "") -> str:
    return f"{_collection(plural, obj['metadata']['namespace'], group)}/{obj['metadata']['name']}"


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


# -- comparing the full sets ---------------------------------------------------------------------


def _plain(obj: Object) -> dict[str, Any]:
    """The object as the source stores it: a Pod's fields the model reads; the rest without managedFields."""
    if obj.get("kind") == "Pod":
        return copy.deepcopy(pod_fields_read(obj))
    plain = copy.deepcopy(dict(obj))
    plain["metadata"] = {k: v for k, v in plain["metadata"].items() if k != "managedFields"}
    return plain


def server_state(sim: KubeSim) -> dict[ObjectKey, dict[str, Any]]:
    """What the source must mirror: every mirrored kind, plus the control plane's ConfigMaps but the root one."""
    objects: list[dict[str, Any]] = []
    for plural, group in MIRRORED:
        objects.extend(sim.storage.items(sim.resource(plural, group)))
    objects.extend(
        cm for cm in sim.storage.items(sim.resource("configmaps"), CP_NS) if cm["metadata"]["name"] != ROOT_CONFIGMAP
    )
    objects.extend(
        cm for cm in sim.storage.items(sim.resource("configmaps")) if cm["metadata"]["name"] == ROOT_CONFIGMAP
    )
    return {ObjectKey.of(obj): _plain(obj) for obj in objects}


def store_state(store: ConfigStore) -> dict[ObjectKey, dict[str, Any]]:
    kinds = ("Namespace", "Service", "EndpointSlice", "Pod", "ConfigMap", "PeerAuthentication")
    return {ObjectKey.of(obj): _plain(obj) for kind in kinds for obj in store.list(kind)}


class Ledger:
    """A store listener: every key's applied resourceVersions must only increase (nothing stale, nothing twice).

    Pods are stored without their resourceVersion (only what the model reads), so they are left out
    here; the final comparison with the server still covers their contents."""

    def __init__(self) -> None:
        self.events = 0
        self.last: dict[ObjectKey, int] = {}
        self.violations: list[str] = []

    def __call__(self, events: Sequence[ConfigEvent]) -> None:
        for event in events:
            self.events += 1
            if event.new is None or event.key.kind == "Pod":
                continue
            rv = int(event.new["metadata"]["resourceVersion"])
            if rv <= self.last.get(event.key, 0):
                self.violations.append(f"{event.key}: {event.type.value} at {rv} after {self.last[event.key]}")
            self.last[event.key] = rv


def _diff(want: dict[ObjectKey, Any], have: dict[ObjectKey, Any]) -> str:
    missing = sorted(str(k) for k in want.keys() - have.keys())
    extra = sorted(str(k) for k in have.keys() - want.keys())
    stale = sorted(str(k) for k in want.keys() & have.keys() if want[k] != have[k])
    return f"missing {missing[:5]}, extra {extra[:5]}, stale {stale[:5]}"


async def converged(sim: KubeSim, source: KubeSource, store: ConfigStore, *, what: str) -> None:
    def equal() -> bool:
        return store_state(store) == server_state(sim)

    try:
        await eventually(equal, within=30, what=what)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: {_diff(server_state(sim), store_state(store))}; watches {source.describe()}; "
            f"server at {sim.storage.rv}, open watches {sim.watch_count}"
        ) from None


def lists(source: KubeSource) -> int:
    return sum(entry["lists"] for entry in source.describe().values())


async def churn_for(churn: Churn, steps: int, *, during: Any = None) -> None:
    """`steps` online steps; `during()` (sync) runs halfway, while the writes keep coming."""
    for index in range(steps):
        await churn.step()
        if index == steps // 2 and during is not None:
            during()
        await asyncio.sleep(0.005)


async def restart_api_server(sim: KubeSim, breaker: Relay, churn: Churn, *, offline_steps: int) -> None:
    """Stop kubesim, write while it is down, start it again on the same port with its data.

    The breaker goes down first, so no client reaches the server while it shuts down (a real API
    server's connections reset at once when its process ends).
    """
    host, port = sim.host, sim.port
    breaker.down()
    await sim.stop()
    for _ in range(offline_steps):
        churn.offline_step()
    await asyncio.sleep(0.5)  # the watchers find the server gone and back off
    await sim.start(host=host, port=port)
    breaker.up()


def expire(sim: KubeSim, breaker: Relay, churn: Churn, *, offline_steps: int) -> None:
    """While no client can reach the server, change objects and compact the history: resumed watches get 410."""
    breaker.down()
    for _ in range(offline_steps):
        churn.offline_step()
    sim.compact()
    breaker.up()


# -- in process: the ConfigStore against kubesim's storage ----------------------------------------


@pytest.fixture
async def mirrored(
    kubesim: KubeSim, kubeconfig: pathlib.Path, breaker: Relay, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[KubeSource, ConfigStore, Ledger]]:
    api = await KubeApi.connect(kubeconfig=kubeconfig_through(kubeconfig, kubesim, breaker, tmp_path / "via-breaker"))
    store = ConfigStore()
    ledger = Ledger()
    store.subscribe(ledger)
    source = KubeSource(api, store, namespace=CP_NS, backoff=lambda: Backoff(base=0.05, cap=0.5), timeout_seconds=30)
    task = asyncio.create_task(source.run())
    try:
        yield source, store, ledger
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


async def test_the_model_equals_the_server_after_cut_streams_410_and_a_restart(
    kubesim: KubeSim, kube_api: KubeApi, breaker: Relay, mirrored: tuple[KubeSource, ConfigStore, Ledger]
) -> None:
    source, store, ledger = mirrored
    churn = Churn(kubesim, kube_api, seed=8)
    churn.setup()
    await eventually(lambda: store.synced, what="first sync")
    await churn_for(churn, 40)
    await converged(kubesim, source, store, what="the first churn")

    before = lists(source)
    cuts: list[int] = []
    await churn_for(churn, 60, during=lambda: cuts.append(breaker.cut()))
    await converged(kubesim, source, store, what="churn across watches cut mid-stream")
    assert cuts[0] >= sum(1 for k in source.kinds if not k.optional)  # every watch was cut, not only idle ones
    assert lists(source) == before  # the watches resumed where they were: no relist

    # Changes only a relist can see: the history that recorded them is compacted before anyone reconnects.
    await churn_for(churn, 40, during=lambda: expire(kubesim, breaker, churn, offline_steps=5))
    await converged(kubesim, source, store, what="churn across 410 Gone")
    assert lists(source) > before

    before = lists(source)
    await churn_for(churn, 20)
    await restart_api_server(kubesim, breaker, churn, offline_steps=15)
    await churn_for(churn, 20)
    await converged(kubesim, source, store, what="churn across an API server restart")
    assert lists(source) == before  # the server kept its history: the watches resumed
    assert ledger.violations == []
    assert churn.writes >= 200


async def test_a_relist_after_410_applies_only_what_changed(
    kubesim: KubeSim, kube_api: KubeApi, breaker: Relay, mirrored: tuple[KubeSource, ConfigStore, Ledger]
) -> None:
    source, store, ledger = mirrored
    churn = Churn(kubesim, kube_api, seed=410)
    churn.setup()
    await churn_for(churn, 30)
    await converged(kubesim, source, store, what="the initial state")
    applied, before = ledger.events, lists(source)

    breaker.down()
    resource = kubesim.resource("configmaps")
    kubesim.create_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fresh", "namespace": CP_NS}})
    gone = next(o for o in kubesim.storage.items(kubesim.resource("pods")) if o["metadata"]["namespace"] != CP_NS)
    kubesim.storage.delete(kubesim.resource("pods"), gone["metadata"]["namespace"], gone["metadata"]["name"])
    kubesim.compact()
    breaker.up()
    await converged(kubesim, source, store, what="the relist after 410")
    assert lists(source) > before
    assert ledger.events - applied == 2  # one ADDED, one DELETED: the unchanged objects were not re-applied
    assert store.get(ObjectKey("ConfigMap", CP_NS, "fresh")) == _plain(
        kubesim.storage.get(resource, CP_NS, "fresh") or {}
    )
    assert ledger.violations == []


# -- a meshplane serve subprocess, read through its debug endpoints ------------------------------


async def _debug(running: Running, page: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"{running.http_url}/debug/{page}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def expected_keys(sim: KubeSim) -> set[str]:
    return {str(key) for key in server_state(sim)}


def expected_services(sim: KubeSim, namespaces: Iterable[str] | None = None) -> dict[str, Any]:
    """hostname -> (clusterIP, ports, sorted (address, port, pod service account)) from the server state."""
    pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in sim.storage.items(sim.resource("pods"))}
    slices = sim.storage.items(sim.resource("endpointslices", "discovery.k8s.io"))
    out: dict[str, Any] = {}
    for svc in sim.storage.items(sim.resource("services")):
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        if namespaces is not None and ns not in namespaces:
            continue
        endpoints = set()
        for slc in slices:
            if (
                slc["metadata"]["namespace"] != ns
                or slc["metadata"].get("labels", {}).get("kubernetes.io/service-name") != name
            ):
                continue
            for ep in slc.get("endpoints") or []:
                pod = pods.get((ns, (ep.get("targetRef") or {}).get("name", "")))
                account = pod["spec"]["serviceAccountName"] if pod is not None else ""
                for port in slc.get("ports") or []:
                    endpoints.add((ep["addresses"][0], port["port"], account))
        ports = sorted((p.get("name", ""), p["port"]) for p in svc["spec"]["ports"])
        out[f"{name}.{ns}.svc.cluster.local"] = (svc["spec"].get("clusterIP", ""), ports, sorted(endpoints))
    return out


def registry_services(registry: dict[str, Any]) -> dict[str, Any]:
    return {
        svc["hostname"]: (
            svc["cluster_ip"],
            sorted((p["name"], p["port"]) for p in svc["ports"]),
            sorted((e["address"], e["port"], e["service_account"]) for e in svc["endpoints"]),
        )
        for svc in registry["services"]
    }


async def serve_converged(running: Running, sim: KubeSim, *, what: str) -> None:
    async def equal() -> bool:
        configz = await _debug(running, "configz")
        registry = await _debug(running, "registryz")
        return set(configz["objects"]) == expected_keys(sim) and registry_services(registry) == expected_services(sim)

    try:
        await eventually(equal, within=45, what=what)
    except AssertionError as exc:
        keys = set((await _debug(running, "configz"))["objects"])
        services = registry_services(await _debug(running, "registryz"))
        want = expected_services(sim)
        keys_wanted = expected_keys(sim)
        differing = [(h, want.get(h), services.get(h)) for h in sorted(want.keys() | services.keys())]
        raise AssertionError(
            f"{exc}: keys missing {sorted(keys_wanted - keys)[:5]}, extra {sorted(keys - keys_wanted)[:5]}; "
            f"services differing {[d for d in differing if d[1] != d[2]][:2]}"
        ) from None


@pytest.fixture
async def serve_via_breaker(
    kubesim: KubeSim, kubeconfig: pathlib.Path, breaker: Relay, tmp_path: pathlib.Path
) -> AsyncIterator[Running]:
    kubesim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CP_NS}})
    config = kubeconfig_through(kubeconfig, kubesim, breaker, tmp_path / "via-breaker")
    running = await asyncio.to_thread(start_serve, tmp_path, "--kubeconfig", str(config))
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def test_meshplane_serve_ends_equal_to_the_server_through_every_outage(
    kubesim: KubeSim, kube_api: KubeApi, breaker: Relay, serve_via_breaker: Running
) -> None:
    churn = Churn(kubesim, kube_api, seed=4)
    churn.setup()
    await churn_for(churn, 30)
    await serve_converged(serve_via_breaker, kubesim, what="the first churn in /debug/configz and /debug/registryz")

    await churn_for(churn, 40, during=breaker.cut)
    await serve_converged(serve_via_breaker, kubesim, what="the model after watches cut mid-stream")

    await churn_for(churn, 30, during=lambda: expire(kubesim, breaker, churn, offline_steps=5))
    await serve_converged(serve_via_breaker, kubesim, what="the model after 410 Gone")

    await restart_api_server(kubesim, breaker, churn, offline_steps=10)
    await churn_for(churn, 20)
    await serve_converged(serve_via_breaker, kubesim, what="the model after an API server restart")
    assert "Traceback" not in serve_via_breaker.logs()


# -- discoverySelectors through meshplane serve ----------------------------------------------------


def _mesh(selectors: list[dict[str, Any]] | None) -> dict[str, Any]:
    text = yaml.safe_dump({"discoverySelectors": selectors}) if selectors is not None else ""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": CP_NS},
        "data": {"mesh": text},
    }


async def test_discovery_selectors_scope_the_registry_of_meshplane_serve_live(
    kubesim: KubeSim, kube_api: KubeApi, breaker: Relay, serve_via_breaker: Running
) -> None:
    churn = Churn(kubesim, kube_api, seed=7)
    churn.setup()
    await churn_for(churn, 30)
    await kube_api.request(
        "PATCH", "/api/v1/namespaces/apps-0", body={"metadata": {"labels": {"mesh": "on"}}}, content_type=MERGE
    )
    await kube_api.request(
        "POST", f"/api/v1/namespaces/{CP_NS}/configmaps", body=_mesh([{"matchLabels": {"mesh": "on"}}])
    )

    async def registry_matches(namespaces: set[str]) -> bool:
        return registry_services(await _debug(serve_via_breaker, "registryz")) == expected_services(kubesim, namespaces)

    await eventually(lambda: registry_matches({"apps-0"}), within=30, what="only apps-0 (mesh=on) in registryz")
    await kube_api.request(
        "PATCH", "/api/v1/namespaces/apps-1", body={"metadata": {"labels": {"mesh": "on"}}}, content_type=MERGE
    )
    await eventually(lambda: registry_matches({"apps-0", "apps-1"}), within=30, what="apps-1 relabelled into scope")

    edited = _mesh(
        [{"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["apps-2"]}]}]
    )
    await kube_api.request("PUT", f"/api/v1/namespaces/{CP_NS}/configmaps/istio", body=edited)
    await eventually(lambda: registry_matches({"apps-2"}), within=30, what="the edited selectors (apps-2 only)")

    broken = _mesh([{"matchLabels": {"mesh": "on"}, "matchExpression": []}])
    await kube_api.request("PUT", f"/api/v1/namespaces/{CP_NS}/configmaps/istio", body=broken)
    field = "data.mesh.discoverySelectors[0].matchExpression"

    async def reported() -> bool:
        return any(field in p for p in (await _debug(serve_via_breaker, "registryz"))["problems"])

    await eventually(reported, within=30, what="the invalid selector reported in registryz")
    assert await registry_matches({"apps-2"})  # the last good selectors still decide
