"""The mapping at the input boundary: what a hostile container declares is
refused with one warning naming the key, and never reaches beyond its own
services (plain dicts, no Docker, no Consul)."""

from __future__ import annotations

from typing import Any

import pytest

from consul_reg.mapping.labels import split_tags
from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.mapping.settings import CheckSettings
from consul_reg.mapping.validate import Limits
from consul_reg.mapping.check_targets import CheckPolicy, parse_allow_rule

SETTINGS = MappingSettings(hostname="host1", default_address="10.0.0.5")


def container(ports: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
              env: list[str] | None = None, exposed: dict | None = None, name: str = "/web",
              ip: str = "172.17.0.9", network_mode: str = "default") -> dict[str, Any]:
    return {
        "Id": "ab" * 32, "Name": name,
        "Config": {"Image": "team/web:1", "Env": env or [], "Labels": labels or {}, "ExposedPorts": exposed or {}},
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Ports": ports if ports is not None else {"80/tcp": published("32768")},
                            "Networks": {"bridge": {"IPAddress": ip}}},
    }


def published(port: str, host_ip: str = "0.0.0.0") -> list[dict[str, str]]:
    return [{"HostIp": host_ip, "HostPort": port}]


def warned(records, *parts: str) -> bool:
    return any(all(p in w for p in parts) for w in records.warnings)


# -- identifiers ---------------------------------------------------------------

HOSTILE_IDENTIFIERS = [
    ("ID", "../../leave"),
    ("ID", "../../maintenance"),
    ("ID", "x/../payments"),
    ("ID", "web\nINFO forged line"),
    ("ID", "vault/core/master"),
    ("ID", ".."),
    ("NAME", ".."),
    ("NAME", "."),
    ("NAME", "a/b"),
    ("NAME", "web\x1b[2J"),
    ("ID", "host1:other:80"),  # this host's default-ID namespace
    ("ID", "HOST1:other:80"),
]


@pytest.mark.parametrize("suffix,value", HOSTILE_IDENTIFIERS)
def test_refused_port_identifier_skips_only_that_service_with_one_warning(suffix, value):
    key = f"SERVICE_80_{suffix}"
    labels = {key: value, "SERVICE_81_NAME": "fine"}
    records = map_container(container({"80/tcp": published("1"), "81/tcp": published("2")}, labels), SETTINGS)
    assert [s.name for s in records.services] == ["fine"]  # the other port still registers
    mentions = [w for w in records.warnings if repr(key) in w]
    assert len(mentions) == 1 and repr(value) in mentions[0] and "this service is skipped" in mentions[0]
    assert all("\n" not in w and "\x1b" not in w for w in records.warnings)


@pytest.mark.parametrize("suffix,value", HOSTILE_IDENTIFIERS)
def test_refused_general_identifier_costs_one_warning(suffix, value):
    key = f"SERVICE_{suffix}"
    records = map_container(container(labels={key: value}), SETTINGS)
    assert records.services == []
    mentions = [w for w in records.warnings if repr(key) in w]
    assert len(mentions) == 1 and f"key {key!r}={value!r}: " in mentions[0], records.warnings
    other = map_container(container(labels={"SERVICE_NAME": "fine"}, name="/other"), SETTINGS)
    assert [s.id for s in other.services] == ["host1:other:80"]


def test_general_id_with_port_suffix_is_validated_after_the_suffix():
    records = map_container(container({"80/tcp": published("1"), "81/tcp": published("2")},
                                      {"SERVICE_ID": "x" * 126}), SETTINGS)
    assert records.services == [] and warned(records, "'SERVICE_ID'", "at most 128 characters")


def test_env_file_id_is_validated_too():
    extra = (("env file", [("SERVICE_ID", "../../leave")]),)
    records = map_container(container(), SETTINGS, extra_sources=extra)
    assert records.services == [] and warned(records, "key 'SERVICE_ID'='../../leave'")


def test_portless_worker_identifiers_are_validated():
    worker = container(ports={}, labels={"SERVICE_NAME": "jobs", "SERVICE_ID": "host1:jobs"})
    records = map_container(worker, SETTINGS)
    assert records.services == [] and warned(records, "'SERVICE_ID'", "this host's default IDs")
    ok = map_container(container(ports={}, labels={"SERVICE_NAME": "jobs"}), SETTINGS)
    assert [s.id for s in ok.services] == ["host1:web"]


def test_default_ids_keep_their_namespace():
    service = map_container(container(), SETTINGS).services[0]
    assert service.id == "host1:web:80"


def test_bad_container_name_refuses_the_default_id():
    records = map_container(container(name="/we b"), SETTINGS)
    assert records.services == [] and warned(records, "default service ID 'host1:we b:80'")


def test_bad_image_name_refuses_the_default_name():
    bad = container()
    bad["Config"]["Image"] = "team/..:1"
    records = map_container(bad, SETTINGS)
    assert records.services == [] and warned(records, "default service name '..'")


# -- addresses -------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1.2.3.4/evil?x", "a@169.254.169.254", "x y", "../../x", "2852039166"])
def test_declared_address_must_be_an_ip_or_a_host_name(value):
    records = map_container(container(labels={"SERVICE_IP": value}), SETTINGS)
    assert records.services == [] and warned(records, "key 'SERVICE_IP'", "this service is skipped")


def test_use_ip_from_label_value_is_validated():
    settings = MappingSettings(hostname="h", use_ip_from_label="ip")
    records = map_container(container(labels={"ip": "10.0.0.1:80/24"}), settings)
    assert records.services == [] and warned(records, "label 'ip'")


# -- bounds ------------------------------------------------------------------------

def test_expose_every_port_costs_64_services_and_two_warnings():
    exposed = {f"{p}/tcp": {} for p in range(1, 65536)}
    settings = MappingSettings(hostname="h", internal=True)
    records = map_container(container(ports={}, exposed=exposed), settings)
    assert [s.port for s in records.services] == list(range(1, 65))
    assert [w for w in records.warnings if "port" in w] == \
        ["it declares 65535 exposed port entries; only the first 4096 are looked at",
         "it has 4096 ports; only the lowest 64 become services (--max-services-per-container)"]


def test_services_cap_is_configurable():
    exposed = {f"{p}/tcp": {} for p in range(1, 11)}
    settings = MappingSettings(hostname="h", internal=True, limits=Limits(services_per_container=3))
    assert len(map_container(container(ports={}, exposed=exposed), settings).services) == 3


def test_tags_bounds():
    limits = Limits(tags_per_service=3, tag_length=5)
    settings = MappingSettings(hostname="h", force_tags=("op1", "op2"), limits=limits)
    records = map_container(container(labels={"SERVICE_TAGS": "a,b,toolong,c,d,e\x07"}), settings)
    assert records.services[0].tags == ("a", "b", "c", "op1", "op2")  # the operator's -tags are never cut
    assert warned(records, "'toolong'", "longer than 5")
    assert warned(records, "'e\\x07'", "control characters")
    assert warned(records, "4 tags, only the first 3 kept")


def test_oversized_values_are_ignored_with_a_warning():
    limits = Limits(value_length=100)
    settings = MappingSettings(hostname="h", limits=limits)
    records = map_container(container(labels={"SERVICE_NAME": "n" * 101, "SERVICE_REGION": "eu"}), settings)
    (service,) = records.services
    assert service.name == "web" and service.meta_dict["region"] == "eu"
    assert warned(records, "key 'SERVICE_NAME': its value of 101 characters is over the limit of 100")


def test_too_many_keys_and_too_long_keys_are_ignored():
    labels = {f"SERVICE_K{i:04d}": "v" for i in range(1100)}
    labels["SERVICE_" + "K" * 300] = "v"
    records = map_container(container(labels=labels), SETTINGS)
    assert records.services and warned(records, "more than 1024 SERVICE_* keys in the label")


def test_warnings_are_deduplicated_and_capped():
    labels = {f"SERVICE_BAD.{i}": "v" for i in range(500)}
    ports = {f"{p}/tcp": published(str(p)) for p in range(1, 11)}
    records = map_container(container(ports, labels), SETTINGS)
    assert len(records.services) == 10
    assert len(records.warnings) == 101 and records.warnings[-1].endswith("more warnings not shown")
    assert len(set(records.warnings)) == len(records.warnings)


@pytest.mark.parametrize("size,message", [
    (102400, "key 'SERVICE_TAGS': its value of 102400 characters is over the limit of 65536"),
    (40960, "key 'SERVICE_TAGS': 40960 characters, over the 32768 a tags value may hold"),
])
def test_a_huge_tags_value_is_not_split(size, message):
    """Before: the general SERVICE_TAGS value was split once per port (100 KiB x 1,000 ports: 28 s a pass).
    Now: once per container, and a value over the bounds is ignored with a warning."""
    exposed = {f"{p}/tcp": {} for p in range(1, 1001)}
    records = map_container(container(ports={}, exposed=exposed, labels={"SERVICE_TAGS": "a," * (size // 2)}),
                            MappingSettings(hostname="h", internal=True))
    assert len(records.services) == 64 and all(s.tags == () for s in records.services)
    assert warned(records, message)


def test_tags_under_the_bound_are_split_once_per_container(monkeypatch):
    from consul_reg.mapping import labels as labels_module

    calls: list[int] = []
    real = labels_module.split_tags
    monkeypatch.setattr(labels_module, "split_tags", lambda raw: calls.append(len(raw)) or real(raw))
    exposed = {f"{p}/tcp": {} for p in range(1, 11)}
    records = map_container(container(ports={}, exposed=exposed, labels={"SERVICE_TAGS": "x,y"}),
                            MappingSettings(hostname="h", internal=True))
    assert len(records.services) == 10 and all(s.tags == ("x", "y") for s in records.services)
    assert calls == [3]


def test_split_tags_is_linear():
    # Not a timing assertion: a structural one. The whole 1 MiB value is split by one regex pass.
    raw = "t\\," * 300_000 + ",x"
    assert split_tags(raw) == ["t," * 300_000, "x"]


# -- ASCII digits only ---------------------------------------------------------------

@pytest.mark.parametrize("labels", [
    {"SERVICE_CHECK_PORT": "²", "SERVICE_CHECK_TCP": "true"},
    {"SERVICE_CHECK_PORT": "٨٠", "SERVICE_CHECK_TCP": "true"},
    {"SERVICE_CHECK_FAILURES_BEFORE_CRITICAL": "²", "SERVICE_CHECK_TCP": "true"},
    {"SERVICE_CHECK_SUCCESS_BEFORE_PASSING": "9" * 5000, "SERVICE_CHECK_TCP": "true"},
    {"SERVICE_CHECK_INTERVAL": "١٠s", "SERVICE_CHECK_TCP": "true"},
    {"SERVICE_٨٠_NAME": "spoof"},
    {"SERVICE_HEARTBEAT_TTL": "³s"},
])
def test_unicode_digits_never_raise_and_never_count(labels):
    records = map_container(container({"80/tcp": published("1"), "²/tcp": published("2")}, labels), SETTINGS)
    assert [s.port for s in records.services] == [1]
    assert records.services[0].name == "web"
    definitions = [c.definition_dict for c in records.services[0].checks]
    assert all(not any(not ch.isascii() for ch in str(d)) for d in definitions)


def test_huge_durations_are_refused_and_ttls_never_use_exponents():
    records = map_container(container(labels={"SERVICE_CHECK_TTL": "99999999999h", "SERVICE_CHECK_TCP": "true"}),
                            SETTINGS)
    assert warned(records, "'SERVICE_CHECK_TTL'", "not a duration")
    worker = map_container(container(ports={}, labels={"SERVICE_NAME": "w", "SERVICE_HEARTBEAT_TTL": "500h"}),
                           SETTINGS)
    (check,) = worker.services[0].checks
    assert check.definition_dict["TTL"] == "1800000s"


# -- check targets in context --------------------------------------------------------

def checks_of(records) -> dict[str, dict]:
    return {c.check_id: c.definition_dict for s in records.services for c in s.checks}


def test_check_on_the_agent_api_is_refused():
    settings = MappingSettings(hostname="h", host_ip="127.0.0.1")
    records = map_container(container(labels={"SERVICE_CHECK_HTTP": "/v1/agent/self", "SERVICE_CHECK_PORT": "8500",
                                              "SERVICE_CHECK_INTERVAL": "1s"}), settings)
    assert len(records.services) == 1 and checks_of(records) == {}
    assert warned(records, "key 'SERVICE_CHECK_PORT'='8500'", "'127.0.0.1' port 8500", "Consul agent's own ports")


def test_check_on_cloud_metadata_is_refused():
    records = map_container(container(labels={"SERVICE_CHECK_HTTP": "/latest/meta-data/",
                                              "SERVICE_CHECK_ADDRESS": "169.254.169.254",
                                              "SERVICE_CHECK_TCP": "true"}), SETTINGS)
    assert checks_of(records) == {}
    assert sum("'SERVICE_CHECK_ADDRESS'='169.254.169.254'" in w and "link-local" in w for w in records.warnings) == 2


def test_service_ip_pointing_elsewhere_does_not_make_it_the_containers_own():
    records = map_container(container(labels={"SERVICE_IP": "10.9.9.9", "SERVICE_CHECK_HTTP": "/admin"}), SETTINGS)
    assert records.services[0].address == "10.9.9.9" and checks_of(records) == {}
    assert warned(records, "'SERVICE_CHECK_HTTP'", "not this container's address")
    own = map_container(container(labels={"SERVICE_IP": "10.0.0.5", "SERVICE_CHECK_HTTP": "/h"}), SETTINGS)
    assert checks_of(own)["service:host1:web:80:http"]["HTTP"] == "http://10.0.0.5:32768/h"


def test_default_checks_still_work():
    records = map_container(container(labels={"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_TCP": "true"}),
                            SETTINGS)
    assert checks_of(records)["service:host1:web:80:http"]["HTTP"] == "http://10.0.0.5:32768/health"
    internal = map_container(container(labels={"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_PORT": "81"},
                                       exposed={"81/tcp": {}}), MappingSettings(hostname="h", internal=True))
    assert {c["HTTP"] for c in checks_of(internal).values()} == {"http://172.17.0.9:81/health"}


def test_allow_rule_opens_a_check_target():
    policy = CheckPolicy(allow=(parse_allow_rule("127.0.0.1/32:9000-9100"),))
    settings = MappingSettings(hostname="h", checks=CheckSettings(policy=policy))
    records = map_container(container(labels={"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_ADDRESS": "127.0.0.1",
                                              "SERVICE_CHECK_PORT": "9050"}), settings)
    assert checks_of(records)["service:h:web:80:tcp"]["TCP"] == "127.0.0.1:9050"


@pytest.mark.parametrize("labels,message", [
    ({"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_HTTP_METHOD": "PUT"}, "only GET, HEAD, OPTIONS, POST"),
    ({"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_HTTP_HEADER_X": "a\r\nHost: evil"}, "CR, LF"),
    ({"SERVICE_CHECK_HTTP": "/a b"}, "whitespace or control"),
    ({"SERVICE_CHECK_HTTP": "/a\x00"}, "whitespace or control"),
    ({"SERVICE_CHECK_GRPC": "svc\nx"}, "whitespace or control"),
    ({"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_ADDRESS": "a@b"}, "not an IP address or a host name"),
])
def test_check_field_refusals(labels, message):
    records = map_container(container(labels=labels), SETTINGS)
    assert len(records.services) == 1 and checks_of(records) == {} and warned(records, message)


def test_operator_may_allow_more_methods():
    policy = CheckPolicy(methods=("GET", "HEAD", "OPTIONS", "POST", "PUT"))
    settings = MappingSettings(hostname="h", checks=CheckSettings(agent_version=(1, 12), policy=policy))
    records = map_container(container(labels={"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_HTTP_METHOD": "put"}),
                            settings)
    assert checks_of(records)["service:h:web:80:http"]["Method"] == "PUT"


# -- daemon-run exec checks ------------------------------------------------------------

@pytest.mark.parametrize("timing,interval,timeout,warnings", [
    ({"SERVICE_CHECK_INTERVAL": "1ms"}, 1.0, 1.0, ["runs at most once a second"]),
    ({"SERVICE_CHECK_INTERVAL": "5s", "SERVICE_CHECK_TIMEOUT": "1ns"}, 5.0, 1.0, ["gets at least 1s"]),
    ({"SERVICE_CHECK_INTERVAL": "2s", "SERVICE_CHECK_TIMEOUT": "30s"}, 2.0, 2.0, ["longer than the interval"]),
    ({"SERVICE_CHECK_DOCKER_INTERVAL": "100ms", "SERVICE_CHECK_TIMEOUT": "3s"}, 1.0, 1.0,
     ["'SERVICE_CHECK_DOCKER_INTERVAL'", "longer than the interval"]),
    ({}, 10.0, 10.0, []),
])
def test_exec_checks_run_by_the_daemon_are_clamped(timing, interval, timeout, warnings):
    settings = MappingSettings(hostname="h", checks=CheckSettings(exec_checks="daemon"))
    records = map_container(container(labels={"SERVICE_CHECK_DOCKER": "true", **timing}), settings)
    (check,) = records.services[0].checks
    assert (check.daemon_probe.interval, check.daemon_probe.timeout) == (interval, timeout)
    for part in warnings:
        assert warned(records, part), records.warnings
    if not warnings:
        assert records.warnings == []


def test_bracketed_ipv6_is_written_once_bracketed():
    settings = MappingSettings(hostname="h", checks=CheckSettings(policy=CheckPolicy(
        allow=(parse_allow_rule("::1"),))))
    records = map_container(container(labels={"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_HTTP": "/",
                                              "SERVICE_CHECK_ADDRESS": "[::1]"}), settings)
    assert {c["TCP"] if "TCP" in c else c["HTTP"] for c in checks_of(records).values()} == \
        {"[::1]:32768", "http://[::1]:32768/"}
    assert map_container(container(labels={"SERVICE_IP": "[::1]"}), SETTINGS).services[0].address == "::1"


def test_a_host_port_on_the_containers_own_ip_is_not_the_container():
    """Found by the property test: -internal picks the container IP; its published host port is not a port
    of the container's IP."""
    records = map_container(container({"80/tcp": published("32768", "127.0.0.1")},
                                      {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_PORT": "32768"}, ip="172.17.0.2"),
                            MappingSettings(hostname="h", internal=True))
    assert records.services[0].address == "172.17.0.2" and checks_of(records) == {}


# -- found in the adversarial pass ------------------------------------------------------

def test_docker_reported_loopback_or_link_local_is_never_the_containers_own():
    hostile = container({"80/tcp": published("1")}, {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_PORT": "8500"},
                        exposed={"8500/tcp": {}}, ip="127.0.0.1")
    records = map_container(hostile, MappingSettings(hostname="h", internal=True))
    assert checks_of(records) == {}


def test_ipv6_zones_are_not_addresses():
    records = map_container(container(labels={"SERVICE_CHECK_TCP": "true",
                                              "SERVICE_CHECK_ADDRESS": "2001:db8::1%eth0"}), SETTINGS)
    assert checks_of(records) == {} and warned(records, "'SERVICE_CHECK_ADDRESS'")


def test_a_host_ip_that_is_not_an_ip_is_not_used_as_the_address():
    records = map_container(container({"80/tcp": [{"HostIp": "evil/../x", "HostPort": "1"}]}), SETTINGS)
    assert records.services[0].address == "10.0.0.5"


def test_unicode_line_separators_count_as_control_characters():
    records = map_container(container(labels={"SERVICE_TAGS": "a\u2028INFO forged,b"}), SETTINGS)
    assert records.services[0].tags == ("b",)
