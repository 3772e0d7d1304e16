"""Relative check targets (`:PORT`) name the container's own ports, sent where
the agent reaches them (issue 22): the published binding, the container's IP
with -internal, the host's address on the host network. From inspect dicts."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from consul_reg.mapping.check_ports import PortReach, relative_target, split_relative
from consul_reg.mapping.services import MappingSettings, map_container
from hypothesis import given, settings
from hypothesis import strategies as st

SETTINGS = MappingSettings(hostname="host1", default_address="10.0.0.5")
CONTAINER_IP = "172.17.0.9"


def container(env: list[str], ports: dict[str, Any], exposed: tuple[str, ...] = (),
              network_mode: str = "default") -> dict[str, Any]:
    return {
        "Id": "c0ffee" * 10 + "abcd", "Name": "/web.0", "Created": "2026-01-01T00:00:00Z",
        "Config": {"Image": "web:1", "Env": env, "Labels": {}, "ExposedPorts": {p: {} for p in exposed}},
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Ports": ports, "IPAddress": CONTAINER_IP,
                            "Networks": {"bridge": {"IPAddress": CONTAINER_IP}}},
    }


def bound(host_port: str, host_ip: str = "0.0.0.0") -> list[dict[str, str]]:
    return [{"HostIp": host_ip, "HostPort": host_port}]


# `docker run -P` of an image exposing 80 and 9090: random host ports.
DASH_P = {"80/tcp": bound("32768"), "9090/tcp": bound("32769")}


def service_for(env: list[str], ports: dict[str, Any] = DASH_P, settings: MappingSettings = SETTINGS,
                exposed: tuple[str, ...] = ("80/tcp", "9090/tcp"), network_mode: str = "default"):
    ignore = ["SERVICE_9090_IGNORE=1"] if "9090/tcp" in ports or network_mode == "host" else []
    records = map_container(container([*ignore, *env], ports, exposed, network_mode), settings)
    assert len(records.services) == 1, records
    return records.services[0], records.warnings


def definitions(service) -> list[dict[str, object]]:
    return [check.definition_dict for check in service.checks]


def test_dash_p_json_http_and_tcp_reach_the_container_port_through_its_random_binding():
    checks = json.dumps([{"HTTP": ":9090/metrics"}, {"TCP": ":9090"}])
    service, warnings = service_for([f"SERVICE_80_CHECKS={checks}"])
    assert warnings == []
    found = definitions(service)
    assert found[0]["HTTP"] == "http://10.0.0.5:32769/metrics"
    assert found[1]["TCP"] == "10.0.0.5:32769"
    assert "container's port 9090, published at 10.0.0.5:32769" in service.checks[0].reading


def test_dash_p_single_keys_http_tcp_grpc():
    for key, field, expected in (("SERVICE_80_CHECK_HTTP", "HTTP", "http://10.0.0.5:32769/metrics"),
                                 ("SERVICE_80_CHECK_TCP", "TCP", "10.0.0.5:32769"),
                                 ("SERVICE_80_CHECK_GRPC", "GRPC", "10.0.0.5:32769/my.Health")):
        value = {"HTTP": ":9090/metrics", "TCP": ":9090", "GRPC": ":9090/my.Health"}[field]
        service, warnings = service_for([f"{key}={value}"])
        assert warnings == [], (key, warnings)
        assert definitions(service)[0][field] == expected


def test_internal_reads_the_container_ip():
    checks = json.dumps([{"HTTP": ":9090/metrics"}, {"TCP": ":9090"}])
    service, warnings = service_for([f"SERVICE_80_CHECKS={checks}"], settings=replace(SETTINGS, internal=True))
    assert warnings == []
    assert service.address == CONTAINER_IP
    assert [d.get("HTTP") or d.get("TCP") for d in definitions(service)] == \
        [f"http://{CONTAINER_IP}:9090/metrics", f"{CONTAINER_IP}:9090"]
    assert "-internal" in service.checks[0].reading


def test_host_network_reads_the_host_address_and_the_port_itself():
    service, warnings = service_for(["SERVICE_80_CHECK_TCP=:9090"], ports={}, network_mode="host")
    assert warnings == []
    assert definitions(service)[0]["TCP"] == f"{service.address}:9090"


def test_a_host_port_of_the_container_keeps_working_as_before():
    """The README's `-p 8080:80` with {"TCP": ":8080"}: 8080 is no container port but its host port."""
    checks = json.dumps([{"TCP": ":8080"}])
    service, warnings = service_for([f"SERVICE_CHECKS={checks}"], ports={"80/tcp": bound("8080")},
                                    exposed=("80/tcp",))
    assert warnings == []
    assert definitions(service)[0]["TCP"] == "10.0.0.5:8080"
    assert "host port" in service.checks[0].reading


def test_a_container_port_that_is_not_published_is_refused_with_a_clear_message():
    checks = json.dumps([{"TCP": ":9090"}, {"HTTP": "/health"}])
    service, warnings = service_for([f"SERVICE_80_CHECKS={checks}"], ports={"80/tcp": bound("8000")})
    assert [d.get("HTTP") for d in definitions(service)] == ["http://10.0.0.5:8000/health"]  # the other stays
    assert len(warnings) == 1
    assert "check 1" in warnings[0] and "9090/tcp is not published" in warnings[0]


def test_a_port_that_is_none_of_the_containers_is_refused_by_the_target_rule():
    service, warnings = service_for(["SERVICE_80_CHECK_TCP=:22"])
    assert service.checks == ()
    assert len(warnings) == 1 and "port 22" in warnings[0]


def test_crossed_publication_still_refused_a_container_port_never_becomes_another_ports_binding():
    """`-p 9090:80 -p 32768:9090`: `:9090` is the container's 9090 (at host 32768),
    never host port 9090 (which is the container's port 80)."""
    ports = {"80/tcp": bound("9090"), "9090/tcp": bound("32768")}
    service, warnings = service_for(["SERVICE_80_CHECK_TCP=:9090"], ports=ports)
    assert warnings == []
    assert definitions(service)[0]["TCP"] == "10.0.0.5:32768"


def test_a_binding_on_one_host_address_is_probed_there():
    ports = {"80/tcp": bound("8000"), "9090/tcp": bound("19090", "10.0.0.7")}
    service, warnings = service_for(["SERVICE_80_CHECK_TCP=:9090"], ports=ports)
    assert warnings == []
    assert definitions(service)[0]["TCP"] == "10.0.0.7:19090"


def test_a_loopback_binding_stays_refused_by_the_target_rule():
    ports = {"80/tcp": bound("8000"), "9090/tcp": bound("19090", "127.0.0.1")}
    service, warnings = service_for(["SERVICE_80_CHECK_TCP=:9090"], ports=ports)
    assert service.checks == ()
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0] and "dropped" in warnings[0]


def test_check_address_keeps_the_port_literal():
    service, warnings = service_for(["SERVICE_80_CHECK_TCP=:9090", "SERVICE_80_CHECK_ADDRESS=10.0.0.5"])
    assert definitions(service) == [] and warnings  # 10.0.0.5:9090 is none of this container's endpoints


def test_not_a_port_is_refused():
    assert isinstance(split_relative(":http"), str)
    assert isinstance(split_relative(":0"), str)
    assert isinstance(split_relative(":65536/x"), str)
    assert split_relative("/health") is None
    assert split_relative(":9090/metrics") == (9090, "metrics")


@given(port=st.integers(1, 65535), host_port=st.integers(1, 65535), other=st.integers(1, 65535))
def test_a_relative_target_is_always_one_of_the_containers_own_endpoints(port, host_port, other):
    """Whatever the numbers: the target is the binding of the named container port,
    or the named number itself at the service's address, never another port's binding
    unless the number is no container port but that host port."""
    reach = PortReach("published", frozenset({(port, "tcp"), (other, "tcp")}),
                      ((port, "tcp", "0.0.0.0", host_port), (other, "tcp", "0.0.0.0", port + 0)))
    target = relative_target(port, "tcp", "10.0.0.5", reach)
    assert target.problem == ""
    assert (target.address, target.port) == ("10.0.0.5", host_port)


@given(port=st.integers(1, 65535), published=st.integers(1, 65535))
def test_an_unpublished_container_port_is_refused_unless_it_is_a_host_port(port, published):
    reach = PortReach("published", frozenset({(port, "tcp"), (80, "tcp")}), ((80, "tcp", "0.0.0.0", published),))
    target = relative_target(port, "tcp", "10.0.0.5", reach)
    if port == 80:
        assert (target.port, target.problem) == (published, "")
    elif port == published:
        assert (target.port, target.problem) == (port, "")  # the host port, read as before
    else:
        assert "not published" in target.problem


HOSTS = ["", "0.0.0.0", "::", "127.0.0.1", "10.0.0.5", "10.0.0.7", "127.0.0.2"]
PORTS = [80, 8080, 8500, 9090, 2375, 32768]


@settings(max_examples=300, deadline=None)
@given(bindings=st.lists(st.tuples(st.sampled_from(PORTS), st.sampled_from(HOSTS), st.sampled_from(PORTS)),
                         min_size=1, max_size=4),
       target=st.sampled_from(PORTS), json_form=st.booleans(), internal=st.booleans())
def test_a_relative_target_through_map_container_is_one_of_the_containers_own_endpoints(
        bindings, target, json_form, internal):
    """End to end through map_container (from the adversarial review): whatever the bindings (any
    host address, crossed or shared ports), a `:PORT` TCP check reaches an exact (address, port) pair
    the container publishes on a routable address, or its own IP and port with -internal; never a
    loopback or IPv6-only binding, another host address's port, nor the agent's port."""
    ports: dict[str, list[dict[str, str]]] = {}
    for container_port, host_ip, host_port in bindings:
        ports.setdefault(f"{container_port}/tcp", []).append({"HostIp": host_ip, "HostPort": str(host_port)})
    env = [f"SERVICE_CHECKS={json.dumps([{'TCP': f':{target}'}])}" if json_form
           else f"SERVICE_CHECK_TCP=:{target}"]
    records = map_container(container(env, ports, tuple(ports)), replace(SETTINGS, internal=internal))
    allowed = {("10.0.0.5", host_port) if host_ip in ("", "0.0.0.0") else (host_ip, host_port)
               for _, host_ip, host_port in bindings if host_ip not in ("::", "127.0.0.1", "127.0.0.2")}
    container_ports = {container_port for container_port, _, _ in bindings}
    for service in records.services:
        for check in service.checks:
            tcp = check.definition_dict.get("TCP")
            if not tcp:
                continue
            host, _, port = str(tcp).rpartition(":")
            if internal:
                assert host == CONTAINER_IP and int(port) in container_ports, (tcp, bindings)
            else:
                assert (host, int(port)) in allowed and int(port) != 8500, (tcp, bindings, target)
