"""Findings of the adversarial review of issue 20 ("Hostile containers, round 3"):
the ownership marker a container could write, checks an old agent's redirects
could carry, sidecar-shaped IDs, cloud metadata outside link-local, the status
endpoint's per-client cap, env-file paths in log lines, stop signals, header names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consul_reg.checks import CheckSettings, service_checks
from consul_reg.default_ids import is_sidecar_shaped
from consul_reg.json_checks import json_checks
from consul_reg.labels import KeyValue
from consul_reg.mapping import MappingSettings, map_container
from consul_reg.model import MARKER_INSTANCE_KEY, Owner, registered_form
from consul_reg.tags_meta import is_reserved_meta_key, service_meta
from consul_reg.validate import OwnEndpoints

CID = "c0ffee" * 10 + "abcd"


def container(labels: dict[str, str], ports: tuple[int, ...] = (80,)) -> dict[str, Any]:
    return {
        "Id": CID, "Name": "/web", "Created": "2026-01-01T00:00:00Z",
        "Config": {"Image": "web", "Env": [], "Labels": labels, "ExposedPorts": {f"{p}/tcp": {} for p in ports}},
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Ports": {f"{p}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(30000 + p)}]
                                      for p in ports},
                            "IPAddress": "172.17.0.9", "Networks": {"bridge": {"IPAddress": "172.17.0.9"}}},
    }


def keys(**values: str) -> dict[str, KeyValue]:
    return {k.lower(): KeyValue(v, "label", "SERVICE_" + k.upper()) for k, v in values.items()}


# -- 1. the ownership marker is the daemon's alone ----------------------------------------------------


@pytest.mark.parametrize("key", ["consul_reg_instance", "consul.reg.instance", "CONSUL.REG.INSTANCE",
                                 "consul_reg_sidecar_for", "consul.reg.sidecar.for", "Consul_Reg_Host",
                                 "consul-reg-x", "consul_reg_anything_new", "external-source", "External-Source",
                                 "consul-service"])
def test_reserved_meta_keys_are_judged_as_registered(key: str) -> None:
    warnings: list[str] = []
    meta = service_meta({key: KeyValue("x", "label", f"SERVICE_{key}")}, warnings)
    assert meta == {}
    assert any("is reserved, dropped" in w for w in warnings), warnings


@pytest.mark.parametrize("key", ["consul_registry", "consulreg_x", "external_source", "external-source-x", "my_consul_reg_"])
def test_near_misses_are_ordinary_meta(key: str) -> None:
    assert not is_reserved_meta_key(key)
    assert service_meta({key: KeyValue("v", "label", f"SERVICE_{key}")}, []) == {key: "v"}


@pytest.mark.parametrize("instance", ["", "blue"])
def test_a_container_cannot_write_the_marker_into_its_own_meta(instance: str) -> None:
    labels = {"SERVICE_CONSUL.REG.INSTANCE": "x", "SERVICE_CONSUL.REG.HOST": "elsewhere",
              "SERVICE_CONSUL.REG.SIDECAR.FOR": "payments", "SERVICE_CONSUL.REG.CONTAINER": "f" * 64,
              "SERVICE_CONSUL.REG.DIGEST": "0" * 16, "SERVICE_KEPT": "yes"}
    settings = MappingSettings(hostname="host1", default_address="10.0.0.5", instance=instance)
    records = map_container(container(labels), settings)
    [service] = records.services
    meta = service.meta_dict
    assert meta["consul_reg_host"] == "host1" and meta["consul_reg_container"] == CID and meta["kept"] == "yes"
    assert "consul_reg_sidecar_for" not in meta
    assert meta.get(MARKER_INSTANCE_KEY, "") == instance
    assert registered_form(service).owned_by(Owner("host1", instance))
    for written in ("SERVICE_CONSUL.REG.INSTANCE", "SERVICE_CONSUL.REG.SIDECAR.FOR"):
        assert any(f"key {written!r}: Meta key" in w and "is reserved, dropped" in w for w in records.warnings)


# -- 2. an agent that follows redirects gets GET and HEAD without a body only -------------------------

OLD, NEW = CheckSettings(agent_version=(1, 8)), CheckSettings(agent_version=(1, 12))


def key_checks(settings: CheckSettings, **values: str) -> tuple[dict[str, dict], list[str]]:
    warnings: list[str] = []
    checks = service_checks(keys(**values), "h:web:80", "web", "10.0.0.2", 8080, CID, settings, warnings)
    return {c.check_id: c.definition_dict for c in checks}, warnings


@pytest.mark.parametrize("values,key,sends", [
    ({"check_http_method": "POST"}, "SERVICE_CHECK_HTTP_METHOD", "sends POST"),
    ({"check_http_method": "options"}, "SERVICE_CHECK_HTTP_METHOD", "sends OPTIONS"),
    ({"check_http_body": "{}"}, "SERVICE_CHECK_HTTP_BODY", "sends GET with a body"),
    ({"check_http_method": "POST", "check_http_body": '{"Image": "evil"}'}, "SERVICE_CHECK_HTTP_BODY",
     "sends POST with a body"),
])
def test_a_key_check_that_a_redirect_could_carry_is_refused_on_an_old_agent(values, key, sends) -> None:
    checks, warnings = key_checks(OLD, check_http="/health", check_tcp="true", **values)
    assert list(checks) == ["service:h:web:80:tcp"]  # that one check only
    [warning] = warnings
    assert warning.startswith(f"key {key!r}=")
    assert "the HTTP check 'service:h:web:80:http'" in warning and sends in warning
    assert "follows the checked server's redirects" in warning and "1.12" in warning
    assert "--allow-check-redirects" in warning and warning.endswith("that check is dropped")
    newer, warnings = key_checks(NEW, check_http="/health", **values)
    assert newer["service:h:web:80:http"]["DisableRedirects"] is True and warnings == []
    accepted, warnings = key_checks(CheckSettings(agent_version=(1, 8), allow_check_redirects=True),
                                    check_http="/health", **values)
    assert "DisableRedirects" not in accepted["service:h:web:80:http"] and warnings == []


@pytest.mark.parametrize("values", [{}, {"check_http_method": "GET"}, {"check_http_method": "head"},
                                    {"check_https_body": "for https only"}, {"check_http_body": ""}])
def test_get_and_head_without_a_body_stay_on_an_old_agent(values) -> None:
    checks, warnings = key_checks(OLD, check_http="/health", **values)
    assert checks["service:h:web:80:http"]["HTTP"] == "http://10.0.0.2:8080/health" and warnings == []


def test_a_body_an_agent_before_1_7_never_gets_does_not_cost_the_check() -> None:
    checks, warnings = key_checks(CheckSettings(agent_version=(1, 6)), check_http="/", check_http_body="b")
    assert "Body" not in checks["service:h:web:80:http"]
    assert warnings == ["service 'h:web:80': the check field Body needs Consul 1.7 or later and this agent is 1.6: "
                        "left out"]


def json_built(definitions: list[dict], settings: CheckSettings) -> tuple[dict[str, dict], list[str]]:
    warnings: list[str] = []
    own = OwnEndpoints(host_pairs=frozenset({("10.0.0.5", 8000)}), chosen_addresses=frozenset({"10.0.0.5"}))
    checks = json_checks(KeyValue(json.dumps(definitions), "label", "SERVICE_CHECKS"), "h:web:80", "web",
                         "10.0.0.5", 8000, CID, settings, warnings, own, set())
    return {c.check_id: c.definition_dict for c in checks}, warnings


@pytest.mark.parametrize("definition,sends", [
    ({"HTTP": "/containers/create", "Method": "POST", "Body": "{}"}, "sends POST with a body"),
    ({"HTTP": "/", "Method": "POST"}, "sends POST"),
    ({"HTTP": "/", "Body": "x"}, "sends GET with a body"),
    ({"HTTP": "/", "Method": "OPTIONS"}, "sends OPTIONS"),
])
def test_a_json_check_that_a_redirect_could_carry_is_refused_on_an_old_agent(definition, sends) -> None:
    checks, warnings = json_built([{"HTTP": "/ok"}, definition], OLD)
    assert list(checks) == ["service:h:web:80:1"]
    [warning] = warnings
    assert warning.startswith("key 'SERVICE_CHECKS': check 2: the HTTP check 'http://10.0.0.5:8000/")
    assert sends in warning and "--allow-check-redirects" in warning and warning.endswith("that check is dropped")
    newer, warnings = json_built([definition], NEW)
    assert newer["service:h:web:80:1"]["DisableRedirects"] is True and warnings == []


def test_json_get_head_and_an_empty_body_stay_on_an_old_agent() -> None:
    checks, warnings = json_built([{"HTTP": "/"}, {"HTTP": "/", "Method": "head"}, {"HTTP": "/", "Body": ""}], OLD)
    assert len(checks) == 3 and warnings == []


# -- 3. the agent's sidecar IDs are nobody's to choose ------------------------------------------------


@pytest.mark.parametrize("value,shaped", [
    ("host2:victim:80-sidecar-proxy", True), ("web-sidecar-proxy", True), ("WEB-Sidecar-Proxy", True),
    ("web-sidecar-proxy-2", False), ("web-sidecar", False), ("sidecar-proxy", False), ("web_sidecar_proxy", False),
])
def test_what_is_shaped_like_a_sidecar_id(value: str, shaped: bool) -> None:
    assert is_sidecar_shaped(value) is shaped


@pytest.mark.parametrize("value", ["host2:victim:80-sidecar-proxy", "payments-SIDECAR-PROXY"])
def test_a_container_may_not_choose_a_sidecar_id(value: str) -> None:
    settings = MappingSettings(hostname="host1", default_address="10.0.0.5")
    records = map_container(container({"SERVICE_80_ID": value, "SERVICE_81_ID": "web-sidecar"}, (80, 81)), settings)
    assert [s.id for s in records.services] == ["web-sidecar"]
    assert any(f"key 'SERVICE_80_ID'={value!r}: IDs ending in '-sidecar-proxy' are the ones the agent gives "
               "sidecar proxies" in w and w.endswith("this service is skipped") for w in records.warnings), \
        records.warnings
