"""Swarm task containers, from plain dicts shaped as Docker 20.10 shows them
(recorded from a single-node swarm: an ingress-published replicated task and
a host-published global task)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consul_reg.mapping import swarm
from consul_reg.mapping.services import MappingSettings, map_container

SETTINGS = MappingSettings(hostname="host1", default_address="10.0.0.5")
SERVICE_ID = "b1zaxn8p2ryrfctvw51shnlk6"


def task(name: str = "web.2.upbwt9porvxoe05vbi9qrf07t", labels: dict[str, str] | None = None,
         ports: dict[str, Any] | None = None, env: list[str] | None = None,
         networks: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "Id": "7a" * 32,
        "Name": f"/{name}",
        "Config": {"Image": "registry.example:5000/team/busybox:1.36", "Env": env or ["PATH=/bin"], "Labels": {
            "com.docker.swarm.node.id": "q3p2cdwkpq5m66npcx4td5zjb", swarm.SERVICE_ID_LABEL: SERVICE_ID,
            swarm.SERVICE_NAME_LABEL: name.split(".", 1)[0], "com.docker.swarm.task": "",
            "com.docker.swarm.task.id": name.rsplit(".", 1)[-1], swarm.TASK_NAME_LABEL: name, **(labels or {})},
            "ExposedPorts": None},
        "HostConfig": {"NetworkMode": "default", "PortBindings": {}},
        "NetworkSettings": {"Ports": ports if ports is not None else {}, "IPAddress": "",
                            "Networks": networks or {"ingress": {"IPAddress": "10.0.0.5"}}},
    }


SERVICE = {"ID": SERVICE_ID, "Endpoint": {
    "Spec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 18080,
                                       "PublishMode": "ingress"}]},
    "Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 18080, "PublishMode": "ingress"},
              {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 30053, "PublishMode": "ingress"},
              {"Protocol": "tcp", "TargetPort": 8081, "PublishedPort": 18081, "PublishMode": "host"}],
    "VirtualIPs": [{"NetworkID": "ipgaac1wbjjizqky96mhfo0ra", "Addr": "10.0.0.3/24"}]}}


def test_labels_give_service_name_and_id():
    assert swarm.service_name(task()) == "web" and swarm.service_id(task()) == SERVICE_ID
    plain = {"Config": {"Labels": {"a": "b"}}}
    assert swarm.service_name(plain) == "" and swarm.service_id(plain) == ""
    # An ID not shaped like Swarm's is never looked up (it would go into a URL).
    assert swarm.service_id(task(labels={swarm.SERVICE_ID_LABEL: "../../containers/x"})) == ""


def test_endpoint_ports_as_assigned():
    assert swarm.endpoint_ports(SERVICE) == (
        swarm.SwarmPort(8080, 18080, "tcp", "ingress"), swarm.SwarmPort(53, 30053, "udp", "ingress"),
        swarm.SwarmPort(8081, 18081, "tcp", "host"))
    assert swarm.endpoint_ports({"Endpoint": {"Spec": {}}}) == ()  # nothing published


def test_ingress_task_registers_under_the_service_name_at_the_published_port():
    original = task()
    kept = copy.deepcopy(original)
    records = map_container(swarm.with_ingress_ports(original, swarm.endpoint_ports(SERVICE)), SETTINGS)
    assert original == kept  # the inspect data itself is untouched
    by_id = {s.id: s for s in records.services}
    assert set(by_id) == {"host1:web.2.upbwt9porvxoe05vbi9qrf07t:8080", "host1:web.2.upbwt9porvxoe05vbi9qrf07t:53:udp"}
    web = by_id["host1:web.2.upbwt9porvxoe05vbi9qrf07t:8080"]
    assert (web.name, web.address, web.port) == ("web-8080", "10.0.0.5", 18080)
    # Host-mode ports come from the task's own bindings, never from the endpoint.
    assert not [s for s in records.services if s.port == 18081]


def test_each_task_gets_its_own_id():
    ports = swarm.endpoint_ports({"Endpoint": {"Ports": SERVICE["Endpoint"]["Ports"][:1]}})
    ids = {map_container(swarm.with_ingress_ports(task(name), ports), SETTINGS).services[0].id
           for name in ("web.1.3ufaqcb50qngvc6g043zf7r95", "web.2.upbwt9porvxoe05vbi9qrf07t",
                        "web.1.ayt9mi8h8vnruwpntcm3avegl")}
    assert len(ids) == 3


def test_service_keys_from_container_labels_and_env_win():
    host_task = task("agent.q3p2cdwkpq5m66npcx4td5zjb.me3k8c2ymumzrpeymljerj6tj",
                     labels={"SERVICE_NAME": "edge", "SERVICE_TAGS": "swarm"}, env=["SERVICE_VERSION=2"],
                     ports={"8081/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18081"},
                                         {"HostIp": "::", "HostPort": "18081"}]},
                     networks={"bridge": {"IPAddress": "10.213.78.2"}})
    service = map_container(host_task, SETTINGS).services[0]
    assert (service.name, service.port, service.tags, dict(service.meta)["version"]) == ("edge", 18081, ("swarm",),
                                                                                         "2")
    assert service.id == "host1:agent.q3p2cdwkpq5m66npcx4td5zjb.me3k8c2ymumzrpeymljerj6tj:8081"


def test_internal_registers_the_target_port_at_the_task_address():
    ports = swarm.endpoint_ports({"Endpoint": {"Ports": SERVICE["Endpoint"]["Ports"][:1]}})
    internal = MappingSettings(hostname="host1", default_address="10.0.0.5", internal=True)
    service = map_container(swarm.with_ingress_ports(task(labels={"SERVICE_NETWORK": "backend"}, networks={
        "ingress": {"IPAddress": "10.0.0.5"}, "backend": {"IPAddress": "10.0.1.7"}}), ports), internal).services[0]
    assert (service.name, service.address, service.port) == ("web", "10.0.1.7", 8080)


def test_a_task_without_readable_ports_is_not_registered_unless_named():
    assert map_container(task(), SETTINGS).services == []
    worker = map_container(task(labels={"SERVICE_NAME": "jobs"}), SETTINGS).services[0]
    assert (worker.name, worker.port, worker.id) == ("jobs", None, "host1:web.2.upbwt9porvxoe05vbi9qrf07t")


def test_an_existing_binding_is_kept():
    bound = task(ports={"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9000"}]})
    augmented = swarm.with_ingress_ports(bound, swarm.endpoint_ports(SERVICE))
    assert augmented["NetworkSettings"]["Ports"]["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "9000"}]


hostile = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                    max_size=4), max_leaves=20)


@given(service=hostile, container=hostile)
def test_hostile_shapes_never_raise(service, container):
    ports = swarm.endpoint_ports(service)
    swarm.service_name(container), swarm.service_id(container)
    if isinstance(container, dict):
        swarm.with_ingress_ports(container, ports)


@given(entries=st.lists(st.fixed_dictionaries({}, optional={
    "TargetPort": st.integers(-5, 70000) | st.text(max_size=5), "PublishedPort": st.integers(-5, 70000),
    "Protocol": st.sampled_from(["tcp", "UDP", "sctp", "icmp", ""]), "PublishMode": st.sampled_from(
        ["ingress", "host", "other"])}), max_size=5))
def test_only_valid_ports_are_kept(entries):
    for port in swarm.endpoint_ports({"Endpoint": {"Ports": entries}}):
        assert 0 < port.target < 65536 and 0 < port.published < 65536
        assert port.protocol in ("tcp", "udp", "sctp") and port.mode in ("ingress", "host")
