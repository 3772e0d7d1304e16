"""The definitions of issue 12 from plain inspect dicts: dual stack and tagged
addresses, declared ports, weights, tag override, Connect, and the exact
registration body each produces (no Docker, no Consul)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import pytest

from consul_reg.app.cli import UsageError, parse_config
from consul_reg.app.explain import _print_service
from consul_reg.mapping.labels import collect
from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.core.records import Connect, Service, Upstream
from consul_reg.consul.agent import registration_payload
from consul_reg.mapping.settings import CheckSettings

CID = "c0ffee" * 10 + "abcd"
SETTINGS = MappingSettings(hostname="h", default_address="10.0.0.5")
BOTH = [{"HostIp": "0.0.0.0", "HostPort": "8000"}, {"HostIp": "::", "HostPort": "8000"}]
DUAL = {"shop": {"IPAddress": "172.30.0.2", "GlobalIPv6Address": "fd00:cafe::2"}}


def container(env: list[str] | None = None, ports: dict | None = None, exposed: dict | None = None,
              mode: str = "default", networks: dict | None = None, labels: dict | None = None) -> dict[str, Any]:
    return {"Id": CID, "Name": "/web", "Created": "2026-01-01T00:00:00Z",
            "Config": {"Image": "web:1", "Env": env or [], "Labels": labels or {}, "ExposedPorts": exposed or {}},
            "HostConfig": {"NetworkMode": mode},
            "NetworkSettings": {"Ports": ports or {}, "Networks": networks or {"bridge": {"IPAddress": "172.17.0.9"}}}}


def one(records) -> Service:
    assert len(records.services) == 1, (records.services, records.warnings, records.skipped_reason)
    return records.services[0]


def body(service: Service) -> dict[str, Any]:
    payload = registration_payload(service)
    del payload["Meta"]  # the marker, tested elsewhere
    return payload


# -- dual stack and tagged addresses ---------------------------------------------------


def test_internal_on_a_dual_stack_network_registers_the_ipv4_and_tags_both():
    records = map_container(container(exposed={"80/tcp": {}}, mode="shop", networks=DUAL),
                            MappingSettings(hostname="h", internal=True))
    assert body(one(records)) == {
        "ID": "h:web:80", "Name": "web", "Tags": [], "Address": "172.30.0.2", "Port": 80,
        "TaggedAddresses": {"lan_ipv4": {"Address": "172.30.0.2", "Port": 80},
                            "lan_ipv6": {"Address": "fd00:cafe::2", "Port": 80}}}
    assert records.warnings == []


def test_internal_on_an_ipv6_only_network_registers_the_ipv6_and_checks_it_in_brackets():
    records = map_container(container(env=["SERVICE_CHECK_HTTP=/h"], exposed={"80/tcp": {}}, mode="v6",
                                      networks={"v6": {"IPAddress": "", "GlobalIPv6Address": "fd00:cafe::7"}}),
                            MappingSettings(hostname="h", internal=True))
    service = one(records)
    assert service.address == "fd00:cafe::7" and service.tagged_addresses == ()
    assert service.checks[0].definition_dict["HTTP"] == "http://[fd00:cafe::7]:80/h"


@pytest.mark.parametrize("bogus", ["::1", "fe80::1", "::ffff:10.0.0.1", "not-an-ip", "::"])
def test_docker_reported_ipv6_that_is_not_a_global_address_is_not_used(bogus):
    networks = {"shop": {"IPAddress": "172.30.0.2", "GlobalIPv6Address": bogus}}
    service = one(map_container(container(exposed={"80/tcp": {}}, mode="shop", networks=networks),
                                MappingSettings(hostname="h", internal=True)))
    assert service.address == "172.30.0.2" and service.tagged_addresses == ()


def test_ip6_tags_a_port_published_on_both_families():
    settings = replace(SETTINGS, host_ip6="fd00::2")
    service = one(map_container(container(ports={"80/tcp": BOTH}), settings))
    assert body(service)["TaggedAddresses"] == {"lan_ipv4": {"Address": "10.0.0.5", "Port": 8000},
                                                "lan_ipv6": {"Address": "fd00::2", "Port": 8000},
                                                "wan_ipv6": {"Address": "fd00::2", "Port": 8000}}
    assert service.address == "10.0.0.5"


def test_ip6_alone_registers_a_port_published_on_ipv6_only():
    settings = replace(SETTINGS, host_ip6="fd00::2")
    service = one(map_container(container(ports={"80/tcp": [{"HostIp": "::", "HostPort": "8000"}]}), settings))
    assert service.address == "fd00::2"
    assert [t.name for t in service.tagged_addresses] == ["lan_ipv6", "wan_ipv6"]


def test_ip6_adds_nothing_to_a_port_published_on_ipv4_only_or_without_ip6():
    settings = replace(SETTINGS, host_ip6="fd00::2")
    ipv4_only = one(map_container(container(ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}),
                                  settings))
    assert ipv4_only.tagged_addresses == ()
    assert one(map_container(container(ports={"80/tcp": BOTH}), SETTINGS)).tagged_addresses == ()


def test_ip6_leaves_a_declared_address_alone():
    settings = replace(SETTINGS, host_ip6="fd00::2")
    service = one(map_container(container(env=["SERVICE_IP=192.0.2.9"], ports={"80/tcp": BOTH}), settings))
    assert service.address == "192.0.2.9" and service.tagged_addresses == ()


def test_service_ip_may_be_ipv6():
    service = one(map_container(container(env=["SERVICE_IP=[fd00::9]"], ports={"80/tcp": BOTH}), SETTINGS))
    assert service.address == "fd00::9"


def test_tagged_address_by_hand_and_its_refusals():
    env = ["SERVICE_TAGGED_ADDRESS_WAN=203.0.113.7:443", "SERVICE_TAGGED_ADDRESS_VIRTUAL=[fd00::7]",
           "SERVICE_TAGGED_ADDRESS_X/Y=1.2.3.4:1", "SERVICE_TAGGED_ADDRESS_BAD=1.2.3.4:99999",
           "SERVICE_TAGGED_ADDRESS_NL=a\nb:1", "SERVICE_80_TAGGED_ADDRESS_LAN=192.0.2.1:81"]
    records = map_container(container(env=env, ports={"80/tcp": BOTH}), SETTINGS)
    assert body(one(records))["TaggedAddresses"] == {"lan": {"Address": "192.0.2.1", "Port": 81},
                                                     "virtual": {"Address": "fd00::7", "Port": 8000},
                                                     "wan": {"Address": "203.0.113.7", "Port": 443}}
    assert len(records.warnings) == 3, records.warnings
    assert all("SERVICE_TAGGED_ADDRESS_" in w for w in records.warnings)
    assert not any("wan" in t.name for t in one(records).tagged_addresses if t.address != "203.0.113.7")


def test_tagged_addresses_are_bounded():
    env = [f"SERVICE_TAGGED_ADDRESS_T{i}=10.0.0.{i}:1" for i in range(40)]
    records = map_container(container(env=env, ports={"80/tcp": BOTH}), SETTINGS)
    assert len(one(records).tagged_addresses) == 16
    assert sum("at most 16 tagged addresses" in w for w in records.warnings) == 24


# -- declared ports ----------------------------------------------------------------------


def test_host_network_without_expose_declares_its_ports():
    records = map_container(container(env=["SERVICE_PORT=8080,9090/udp", "SERVICE_8080_NAME=api"], mode="host",
                                      networks={"host": {}}), SETTINGS)
    assert [(s.id, s.name, s.address, s.port) for s in records.services] == [
        ("h:web:8080", "api", "10.0.0.5", 8080), ("h:web:9090:udp", "web-9090", "10.0.0.5", 9090)]
    assert records.warnings == []


def test_declared_ports_replace_what_the_image_exposes():
    records = map_container(container(env=["SERVICE_PORT=8080"], exposed={"80/tcp": {}, "443/tcp": {}}),
                            replace(SETTINGS, internal=True))
    assert [(s.address, s.port) for s in records.services] == [("172.17.0.9", 8080)]


def test_a_declared_port_that_is_published_takes_its_binding():
    records = map_container(container(env=["SERVICE_PORT=80"], ports={"80/tcp": BOTH, "443/tcp": BOTH}), SETTINGS)
    assert [(s.id, s.port) for s in records.services] == [("h:web:80", 8000)]


def test_a_declared_port_that_cannot_be_reached_is_skipped_with_a_warning():
    records = map_container(container(env=["SERVICE_PORT=8080"]), SETTINGS)
    assert records.services == []
    assert any("8080/tcp is not published" in w and "-internal" in w for w in records.warnings)


def test_a_portless_worker_that_declares_a_port_is_an_ordinary_service():
    records = map_container(container(env=["SERVICE_NAME=worker", "SERVICE_PORT=9000"], mode="host",
                                      networks={"host": {}}), SETTINGS)
    service = one(records)
    assert (service.name, service.port) == ("worker", 9000)
    assert not any(c.check_id.endswith(":heartbeat") for c in service.checks)


@pytest.mark.parametrize("value,warning", [("abc", "'abc' is not a port"), ("0", "'0' is not a port"),
                                          ("70000", "is not a port"), ("٨٠", "is not a port"),
                                          ("80/xyz", "is not a port"), (",", "no usable port")])
def test_bad_declared_ports_are_warned_and_dockers_ports_apply(value, warning):
    records = map_container(container(env=[f"SERVICE_PORT={value}"], ports={"80/tcp": BOTH}), SETTINGS)
    assert one(records).port == 8000
    assert any(warning in w for w in records.warnings), records.warnings


def test_declared_ports_are_bounded():
    records = map_container(container(env=["SERVICE_PORT=" + ",".join(str(p) for p in range(1, 5000))],
                                      mode="host", networks={"host": {}}), SETTINGS)
    assert len(records.services) == 64
    assert any("--max-services-per-container" in w for w in records.warnings)


def test_port_scoped_port_key_is_ignored_with_a_warning():
    records = map_container(container(env=["SERVICE_80_PORT=90"], ports={"80/tcp": BOTH}), SETTINGS)
    assert one(records).port == 8000 and "port" not in one(records).meta_dict
    assert any("SERVICE_PORT is not port-scoped" in w for w in records.warnings)


# -- weights, tag override -----------------------------------------------------------------


@pytest.mark.parametrize("env,weights,warned", [
    (["SERVICE_WEIGHT=7"], (7, 1), False),
    (["SERVICE_WEIGHT=7", "SERVICE_WEIGHT_WARNING=2"], (7, 2), False),
    (["SERVICE_WEIGHT_WARNING=3"], (1, 3), False),
    (["SERVICE_WEIGHT=0"], None, True),  # the default: Consul's own 1/1
    (["SERVICE_WEIGHT=-3"], None, True),
    (["SERVICE_WEIGHT=99999"], None, True),
    (["SERVICE_WEIGHT=²"], None, True),
    ([], None, False),
])
def test_weights(env, weights, warned):
    records = map_container(container(env=env, ports={"80/tcp": BOTH}), SETTINGS)
    service = one(records)
    assert service.weights == weights
    assert bool(records.warnings) == warned
    assert ("Weights" in body(service)) == (weights is not None)
    assert "weight" not in service.meta_dict and "weight_warning" not in service.meta_dict


def test_port_scoped_weight_wins_on_its_port():
    records = map_container(container(env=["SERVICE_WEIGHT=2", "SERVICE_443_WEIGHT=9"],
                                      ports={"80/tcp": BOTH, "443/tcp": BOTH}), SETTINGS)
    assert {s.id: s.weights for s in records.services} == {"h:web:80": (2, 1), "h:web:443": (9, 1)}


@pytest.mark.parametrize("value,expected,warned", [("true", True, False), ("1", True, False),
                                                   ("false", False, False), ("maybe", False, True)])
def test_enable_tag_override(value, expected, warned):
    records = map_container(container(env=[f"SERVICE_ENABLE_TAG_OVERRIDE={value}"], ports={"80/tcp": BOTH}),
                            SETTINGS)
    assert one(records).enable_tag_override is expected
    assert ("EnableTagOverride" in body(one(records))) is expected
    assert bool(records.warnings) is warned


# -- Connect -----------------------------------------------------------------------------------


def test_connect_native():
    service = one(map_container(container(env=["SERVICE_CONNECT=native"], ports={"80/tcp": BOTH}), SETTINGS))
    assert body(service)["Connect"] == {"Native": True}


def test_connect_sidecar_with_upstreams_has_meta_of_its_own():
    env = ["SERVICE_CONNECT=Sidecar", "SERVICE_CONNECT_UPSTREAMS=db:19191, cache:19192"]
    service = one(map_container(container(env=env, ports={"80/tcp": BOTH}), SETTINGS))
    assert body(service)["Connect"] == {"SidecarService": {
        "Meta": {"external-source": "consul-reg", "consul_reg_sidecar_for": "h:web:80"},
        "Proxy": {"LocalServiceAddress": "10.0.0.5", "LocalServicePort": 8000,
                  "Upstreams": [{"DestinationName": "db", "LocalBindPort": 19191},
                                {"DestinationName": "cache", "LocalBindPort": 19192}]}}}


@pytest.mark.parametrize("env,connect,warning", [
    (["SERVICE_CONNECT=mesh"], None, "must be native or sidecar"),
    (["SERVICE_CONNECT_UPSTREAMS=db:1"], None, "needs SERVICE_CONNECT=sidecar"),
    (["SERVICE_CONNECT=native", "SERVICE_CONNECT_UPSTREAMS=db:1"], Connect(native=True), "belong to a sidecar"),
    (["SERVICE_CONNECT=sidecar", "SERVICE_CONNECT_UPSTREAMS=db:20001,db/x:2,:3,db:0,db:99999,db:20001"],
     Connect(sidecar=True, upstreams=(Upstream("db", 20001),)), "is not name:localport"),
    (["SERVICE_CONNECT=sidecar", "SERVICE_CONNECT_UPSTREAMS=db:8500,db:80,db:8600,db:20001"],
     Connect(sidecar=True, upstreams=(Upstream("db", 20001),)), "below 1024 or one of the Consul agent's"),
])
def test_connect_refusals_cost_the_field_only(env, connect, warning):
    records = map_container(container(env=env, ports={"80/tcp": BOTH}), SETTINGS)
    assert one(records).connect == connect
    assert any(warning in w for w in records.warnings), records.warnings


@pytest.mark.parametrize("env,internal", [
    (["SERVICE_IP=127.0.0.1", "SERVICE_PORT=8500"], True),  # the agent's API on the host
    (["SERVICE_IP=169.254.169.254", "SERVICE_PORT=80"], True),  # cloud metadata
    (["SERVICE_IP=192.0.2.1"], False),  # somewhere else entirely
])
def test_a_sidecar_never_forwards_beyond_the_container(env, internal):
    """The proxy runs beside the agent: a SERVICE_IP must not turn it into a pivot into the host."""
    settings = replace(SETTINGS, internal=internal)
    records = map_container(container(env=env + ["SERVICE_CONNECT=sidecar"], ports={"80/tcp": BOTH}), settings)
    assert one(records).connect is None
    assert any("the sidecar proxy would forward to" in w for w in records.warnings), records.warnings


def test_connect_needs_a_port():
    records = map_container(container(env=["SERVICE_NAME=w", "SERVICE_CONNECT=sidecar"]), SETTINGS)
    assert one(records).connect is None and any("needs a port" in w for w in records.warnings)


@pytest.mark.parametrize("env,ports,worked_out", [
    ([], {"80/tcp": BOTH}, 0),
    (["SERVICE_CONNECT=native", "SERVICE_TAGS=a"], {"80/tcp": BOTH}, 0),
    (["SERVICE_NAME=w", "SERVICE_TTL=30s"], {}, 0),  # a port-less worker: its heartbeat needs no target
    (["SERVICE_CHECK_TCP=true"], {"80/tcp": BOTH, "81/tcp": BOTH}, 1),  # once for both services
    (["SERVICE_81_CHECK_TCP=true"], {"80/tcp": BOTH, "81/tcp": BOTH}, 1),
    (['SERVICE_CHECKS=[{"TCP": ":80"}]'], {"80/tcp": BOTH}, 1),
    (["SERVICE_CONNECT=sidecar"], {"80/tcp": BOTH}, 1),
])
def test_a_containers_own_endpoints_are_worked_out_only_for_a_check_or_a_sidecar(env, ports, worked_out,
                                                                                 monkeypatch):
    """A third of a mapping's work, made only when a check's or a sidecar's target is judged."""
    from consul_reg.mapping import services

    calls: list[str] = []
    real = services.own_endpoints

    def counted(*args: Any) -> Any:
        calls.append(args[0]["Id"])
        return real(*args)
    monkeypatch.setattr(services, "own_endpoints", counted)
    records = map_container(container(env=env, ports=ports), SETTINGS)
    assert records.services, (records.warnings, records.skipped_reason)
    assert len(calls) == worked_out
    monkeypatch.setattr(services, "own_endpoints", real)
    assert map_container(container(env=env, ports=ports), SETTINGS).services == records.services


def test_a_check_on_the_containers_own_port_is_judged_by_its_endpoints_when_made_lazily():
    """Its own binding is allowed, another host port on the same address is refused: the
    endpoints worked out on first use are the container's, not an empty set."""
    env = ["SERVICE_CHECKS=[{\"TCP\": \"10.0.0.5:8000\"}, {\"TCP\": \"10.0.0.5:9000\"}]"]
    records = map_container(container(env=env, ports={"80/tcp": BOTH}), SETTINGS)
    assert [check.definition_dict.get("TCP") for check in one(records).checks] == ["10.0.0.5:8000"]
    assert any("10.0.0.5" in w and "9000" in w for w in records.warnings), records.warnings


@pytest.mark.parametrize("field", ["HostIp", "HostPort"])
def test_a_binding_field_nested_past_the_recursion_limit_is_mapped_without_raising(field):
    """Mapping never raises: str() of a value nested ~1,000 deep would (only dockerd writes
    these fields, but what it sends is never trusted to be flat)."""
    deep: object = "8000"
    for _ in range(5000):
        deep = [deep]
    odd = {**BOTH[0], field: deep}
    env = ["SERVICE_CHECK_TCP=true", "SERVICE_CONNECT=sidecar"]
    records = map_container(container(env=env, ports={"80/tcp": [odd, BOTH[1]], "81/tcp": [odd]}), SETTINGS)
    ids = [service.id for service in records.services]
    assert "h:web:80" in ids, (ids, records.warnings)  # published on :: all the same


# -- gates, digests, explain ----------------------------------------------------------------------


def test_service_fields_are_left_out_for_an_older_agent():
    old = replace(SETTINGS, checks=CheckSettings(agent_version=(1, 2)), host_ip6="fd00::2")
    env = ["SERVICE_WEIGHT=3", "SERVICE_CONNECT=native", "SERVICE_TAGGED_ADDRESS_WAN=1.2.3.4:5"]
    records = map_container(container(env=env, ports={"80/tcp": BOTH}), old)
    service = one(records)
    assert (service.weights, service.connect, service.tagged_addresses) == (None, None, ())
    assert sum("needs Consul" in w for w in records.warnings) == 3


def test_the_digest_of_a_service_without_the_new_fields_is_unchanged():
    """As computed by the code before these fields existed: an upgrade re-registers nothing."""
    from consul_reg.core.records import Check

    service = Service(id="h:web:80", name="web", address="10.0.0.5", port=8080, tags=("a", "b"), meta=(("x", "y"),),
                      checks=(Check("service:h:web:80:http", "n", (("HTTP", "http://10.0.0.5:8080/"),
                                                                  ("Interval", "10s"))),))
    assert service.digest == "0ddf68badb56e244"
    for changed in (replace(service, weights=(1, 1)), replace(service, enable_tag_override=True),
                    replace(service, connect=Connect(native=True))):
        assert changed.digest != service.digest


def test_new_keys_never_become_meta():
    env = ["SERVICE_WEIGHT=2", "SERVICE_PORT=80", "SERVICE_CONNECT=native", "SERVICE_CHECKS=[]",
           "SERVICE_ENABLE_TAG_OVERRIDE=true", "SERVICE_TAGGED_ADDRESS_WAN=1.2.3.4:1", "SERVICE_REGION=eu"]
    service = one(map_container(container(env=env, ports={"80/tcp": BOTH}), SETTINGS))
    assert {k for k in service.meta_dict if not k.startswith(("consul_reg", "external"))} == {"region"}


def test_explain_shows_the_new_fields_and_where_they_came_from():
    env = ["SERVICE_WEIGHT=7", "SERVICE_CONNECT=sidecar", "SERVICE_CONNECT_UPSTREAMS=db:19191",
           "SERVICE_ENABLE_TAG_OVERRIDE=true", "SERVICE_TAGGED_ADDRESS_WAN=203.0.113.7:443",
           'SERVICE_CHECKS=[{"HTTP": "/health", "ID": "deep"}]']
    settings = replace(SETTINGS, host_ip6="fd00::2")
    service = one(map_container(container(env=env, ports={"80/tcp": BOTH}), settings))
    out = io.StringIO()
    _print_service(service, collect(env, {}).general, parse_config(["--hostname", "h"]), out)
    text = out.getvalue()
    for expected in ("Tagged wan   203.0.113.7:443    <- env SERVICE_TAGGED_ADDRESS_WAN",
                     "Tagged lan_ipv6 fd00::2:8000    <- -ip6", "passing 7, warning 1    <- env SERVICE_WEIGHT",
                     "consul connect proxy -sidecar-for h:web:80", "db at 127.0.0.1:19191",
                     "<- env SERVICE_CONNECT + env SERVICE_CONNECT_UPSTREAMS", "TagOverride",
                     "Check service:h:web:80:deep", "<- run by the agent; env SERVICE_CHECKS"):
        assert expected in text, (expected, text)


def test_service_checks_are_bounded_per_container_and_parsed_once(monkeypatch):
    import consul_reg.mapping.services as mapping

    parses: list[str] = []
    real = mapping.parse_checks
    monkeypatch.setattr(mapping, "parse_checks", lambda entry: parses.append(entry.value) or real(entry))
    checks = [{"TTL": "1m", "ID": f"c{i}"} for i in range(30)]
    records = map_container(container(env=["SERVICE_PORT=" + ",".join(str(p) for p in range(1, 11)),
                                           "SERVICE_CHECKS=" + json.dumps(checks)], mode="host",
                                      networks={"host": {}}), SETTINGS)
    assert [len(s.checks) for s in records.services] == [30, 30, 30, 30, 8, 0, 0, 0, 0, 0]
    assert len(parses) == 1
    assert sum("at most 128 checks from SERVICE_CHECKS" in w for w in records.warnings) == 2  # each once


def test_ip6_flag_takes_an_ipv6_address_only():
    assert parse_config(["-ip", "1.2.3.4", "-ip6", "[fd00::1]"]).host_ip6 == "fd00::1"
    assert parse_config(["-ip6=fd00::2"]).host_ip is None  # -ip6 is not -ip
    for bad in ("1.2.3.4", "::ffff:1.2.3.4", "fe80::1%eth0", "x"):
        with pytest.raises(UsageError, match="not an IPv6 address"):
            parse_config(["-ip6", bad])
