"""The pure mapping, from plain inspect dicts (no Docker, no Consul)."""

from __future__ import annotations

from typing import Any

import pytest

from consul_reg.consul.agent import registration_payload
from consul_reg.mapping.services import MappingSettings, default_service_name, map_container, published_ports

SETTINGS = MappingSettings(hostname="host1", default_address="10.0.0.5")


def container(ports: dict[str, Any] | None = None, env: list[str] | None = None, labels: dict | None = None,
              image: str = "redis:7", name: str = "/redis.0", network_mode: str = "default",
              exposed: dict | None = None, networks: dict | None = None) -> dict[str, Any]:
    return {
        "Id": "c0ffee" * 10 + "abcd",
        "Name": name,
        "Created": "2026-01-01T00:00:00Z",
        "Config": {"Image": image, "Env": env or [], "Labels": labels or {}, "ExposedPorts": exposed or {}},
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Ports": ports or {}, "IPAddress": "172.17.0.9",
                            "Networks": networks or {"bridge": {"IPAddress": "172.17.0.9"}}},
    }


def published(host_port: str, host_ip: str = "0.0.0.0") -> list[dict[str, str]]:
    return [{"HostIp": host_ip, "HostPort": host_port}]


def only(records):
    assert len(records.services) == 1, records
    return records.services[0]


def test_single_port_defaults():
    service = only(map_container(container({"6379/tcp": published("10000")}), SETTINGS))
    assert (service.id, service.name, service.port, service.address) == ("host1:redis.0:6379", "redis", 10000,
                                                                          "10.0.0.5")
    assert service.tags == ()
    assert service.meta_dict["external-source"] == "consul-reg"


def test_ipv4_and_ipv6_bindings_are_one_service():
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}, {"HostIp": "::", "HostPort": "8000"}]}
    assert only(map_container(container(ports), SETTINGS)).port == 8000


def test_documented_two_port_example():
    env = ["SERVICE_443_NAME=https", "SERVICE_443_ID=https.12345", "SERVICE_443_SNI=enabled",
           "SERVICE_80_NAME=http", "SERVICE_TAGS=www"]
    records = map_container(container({"443/tcp": published("4443"), "80/tcp": published("8000")}, env=env,
                                      name="/nginx.0", image="nginx"), SETTINGS)
    by_id = {s.id: s for s in records.services}
    assert by_id["https.12345"].name == "https" and by_id["https.12345"].port == 4443
    assert by_id["https.12345"].meta_dict["sni"] == "enabled"
    assert by_id["host1:nginx.0:80"].name == "http" and by_id["host1:nginx.0:80"].tags == ("www",)
    assert "sni" not in by_id["host1:nginx.0:80"].meta_dict


def test_group_names_get_port_suffix_even_with_general_name():
    records = map_container(container({"80/tcp": published("1"), "443/tcp": published("2")},
                                      env=["SERVICE_NAME=web"]), SETTINGS)
    assert sorted(s.name for s in records.services) == ["web-443", "web-80"]


@pytest.mark.parametrize("image,expected", [
    ("registry.example.com:5000/team/web:1.2", "web"),
    ("web@sha256:" + "a" * 64, "web"),
    ("team/web:1.2@sha256:" + "a" * 64, "web"),
    ("web", "web"),
])
def test_image_base_name(image, expected):
    assert default_service_name(container(image=image), "ctr") == expected


def test_image_by_bare_id_uses_compose_service_or_container_name():
    by_id = "sha256:" + "b" * 64
    assert default_service_name(container(image=by_id, labels={"com.docker.compose.service": "api"}), "c") == "api"
    assert default_service_name(container(image=by_id), "my-ctr") == "my-ctr"


def test_udp_gets_suffix_and_tag():
    service = only(map_container(container({"53/udp": published("5353")}, env=["SERVICE_TAGS=dns"]), SETTINGS))
    assert service.id == "host1:redis.0:53:udp"
    assert service.tags == ("dns", "udp")


def test_tags_merge_general_port_and_forced_in_order_without_duplicates():
    settings = MappingSettings(hostname="h", force_tags=("forced", "a"))
    service = only(map_container(container({"80/tcp": published("1")},
                                           env=["SERVICE_TAGS=b,a", "SERVICE_80_TAGS=c,b"]), settings))
    assert service.tags == ("b", "a", "c", "forced")


def test_escaped_comma_stays_in_tag():
    rule = r"traefik.http.routers.web.rule=Host(`a.example.com`\,`b.example.com`)"
    service = only(map_container(container({"80/tcp": published("1")}, labels={"SERVICE_TAGS": rule}), SETTINGS))
    assert service.tags == ("traefik.http.routers.web.rule=Host(`a.example.com`,`b.example.com`)",)


def test_label_wins_over_env_and_port_key_over_general():
    records = map_container(container({"80/tcp": published("1")}, env=["SERVICE_NAME=env", "SERVICE_80_ZONE=a"],
                                      labels={"SERVICE_NAME": "label", "SERVICE_ZONE": "general"}), SETTINGS)
    service = only(records)
    assert service.name == "label"
    assert service.meta_dict["zone"] == "a"


@pytest.mark.parametrize("value,ignored", [("true", True), ("1", True), ("yes", True), ("false", False),
                                           ("0", False), ("no", False), ("", False)])
def test_ignore_values(value, ignored):
    records = map_container(container({"80/tcp": published("1")}, env=[f"SERVICE_IGNORE={value}"]), SETTINGS)
    assert (records.services == []) is ignored


def test_port_ignore_and_explicit():
    ports = {"80/tcp": published("1"), "443/tcp": published("2")}
    records = map_container(container(ports, env=["SERVICE_443_IGNORE=1"]), SETTINGS)
    assert [s.id for s in records.services] == ["host1:redis.0:80"]
    explicit = MappingSettings(hostname="host1", explicit=True)
    assert map_container(container(ports), explicit).services == []
    named = map_container(container(ports, env=["SERVICE_80_NAME=web"]), explicit)
    assert [s.name for s in named.services] == ["web"]


def test_daemon_keys_never_become_meta():
    env = ["SERVICE_NAME=a", "SERVICE_ID=b", "SERVICE_TAGS=c", "SERVICE_IP=1.2.3.4", "SERVICE_NETWORK=n",
           "SERVICE_ENV_FILE=/f", "SERVICE_CHECK_HTTP=/", "SERVICE_HEARTBEAT_TTL=3s", "SERVICE_VERSION=7"]
    service = only(map_container(container({"80/tcp": published("1")}, env=env), SETTINGS))
    assert {k: v for k, v in service.meta_dict.items() if not k.startswith(("consul_reg", "external"))} == \
        {"version": "7"}


def test_invalid_meta_is_fixed_or_dropped_with_warnings():
    env = ["SERVICE_OK=1", "SERVICE_BAD.KEY=2", "SERVICE_BIG=" + "x" * 600, "SERVICE_consul-x=3",
           "SERVICE_" + "K" * 200 + "=4"]
    records = map_container(container({"80/tcp": published("1")}, env=env), SETTINGS)
    meta = only(records).meta_dict
    assert meta["ok"] == "1" and meta["bad_key"] == "2"
    assert "big" not in meta and "consul-x" not in meta
    assert len(records.warnings) == 4


def test_at_most_64_meta_pairs():
    env = [f"SERVICE_K{i:03d}=v" for i in range(100)]
    records = map_container(container({"80/tcp": published("1")}, env=env), SETTINGS)
    assert len(registration_payload(only(records))["Meta"]) == 64  # the digest is the 64th
    assert any("64 Meta pairs" in w for w in records.warnings)


def test_address_rules_in_order():
    ports = {"80/tcp": published("1", "127.0.0.1")}
    assert only(map_container(container(ports), SETTINGS)).address == "127.0.0.1"
    assert only(map_container(container(ports), MappingSettings(hostname="h", host_ip="9.9.9.9"))).address == \
        "9.9.9.9"
    labelled = container(ports, labels={"ip": "10.1.1.1/24"})
    settings = MappingSettings(hostname="h", host_ip="9.9.9.9", use_ip_from_label="ip")
    assert only(map_container(labelled, settings)).address == "10.1.1.1"
    explicit = container(ports, labels={"ip": "10.1.1.1/24", "SERVICE_IP": "10.2.2.2"})
    assert only(map_container(explicit, settings)).address == "10.2.2.2"


def test_container_network_mode_takes_peer_ip():
    peer = container(networks={"bridge": {"IPAddress": "172.17.0.42"}})
    shared = container({"80/tcp": published("1")}, network_mode="container:abc")
    assert only(map_container(shared, SETTINGS, network_peer=peer)).address == "172.17.0.42"


def test_internal_uses_exposed_port_and_named_network():
    networks = {"front": {"IPAddress": "10.5.0.2"}, "back": {"IPAddress": "10.6.0.2"}}
    internal = MappingSettings(hostname="h", internal=True)
    on_front = container({"8080/tcp": None}, network_mode="front", networks=networks)
    service = only(map_container(on_front, internal))
    assert (service.address, service.port) == ("10.5.0.2", 8080)
    picked = container({"8080/tcp": None}, env=["SERVICE_NETWORK=back"], network_mode="front", networks=networks)
    assert only(map_container(picked, internal)).address == "10.6.0.2"


def test_host_network_registers_exposed_ports_as_host_ports():
    host_mode = container(network_mode="host", exposed={"9090/tcp": {}})
    service = only(map_container(host_mode, SETTINGS))
    assert service.port == 9090


def test_unpublished_ports_are_skipped_unless_internal():
    assert published_ports(container({"80/tcp": None}), internal=False) == []
    assert len(published_ports(container({"80/tcp": None}), internal=True)) == 1


def test_bad_keys_warn_and_rest_registers():
    env = ["SERVICE_NAME=", "SERVICE_9999_NAME=x", "SERVICE_99999_NAME=y", "SERVICE_HTTP_NAME=z", "SERVICE_=1",
           "SERVICE_REGION=eu"]
    records = map_container(container({"80/tcp": published("1")}, env=env), SETTINGS)
    service = only(records)
    assert service.name == "redis" and service.meta_dict["region"] == "eu"
    warned = " ".join(records.warnings)
    for key in ("SERVICE_NAME", "SERVICE_9999_NAME", "SERVICE_99999_NAME", "SERVICE_HTTP_NAME", "SERVICE_"):
        assert f"'{key}'" in warned, key


def test_garbage_inspect_data_maps_to_nothing():
    for garbage in ({}, {"Config": None}, {"NetworkSettings": {"Ports": {"x": 1, "80/tcp": "nope"}}}, []):
        assert map_container(garbage, SETTINGS).services == []  # type: ignore[arg-type]
