"""Every field newer than some agent is gated by the agent's version, and
nothing Consul 1.8.7 refuses is ever sent to it.

The lists of what 1.8.7 accepts were read off the real agent (each field
PUT on its own: `400 unknown field` or not); tests/integration/test_definitions.py
sends the fullest registration consul-reg can build to the real 1.8.7."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.consul.agent import registration_payload
from consul_reg.mapping.settings import CheckSettings
from consul_reg.mapping.versions import CHECK_FIELD_MIN_VERSION, SERVICE_FIELD_MIN_VERSION

# Each gated field and the first Consul version that knows it.
EXPECTED_CHECK_GATES = {
    "AliasService": (1, 3), "OutputMaxSize": (1, 6), "Body": (1, 7), "SuccessBeforePassing": (1, 7),
    "FailuresBeforeCritical": (1, 7), "H2PING": (1, 10), "TLSServerName": (1, 10), "H2PingUseTLS": (1, 11),
    "DisableRedirects": (1, 12), "UDP": (1, 13), "FailuresBeforeWarning": (1, 14), "OSService": (1, 14),
}
EXPECTED_SERVICE_GATES = {"Weights": (1, 3), "Connect": (1, 3), "TaggedAddresses": (1, 6), "Locality": (1, 17)}

# What the Consul 1.8.7 agent accepts in PUT /v1/agent/service/register (of what consul-reg sends).
ACCEPTED_1_8_SERVICE = {"ID", "Name", "Tags", "Address", "Meta", "Port", "Checks", "TaggedAddresses", "Weights",
                        "EnableTagOverride", "Connect"}
ACCEPTED_1_8_CHECK = {"CheckID", "Name", "Notes", "Status", "HTTP", "Method", "Header", "Body", "TLSSkipVerify", "TCP",
                      "GRPC", "GRPCUseTLS", "Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter",
                      "SuccessBeforePassing", "FailuresBeforeCritical", "OutputMaxSize", "AliasService", "Args",
                      "DockerContainerID", "Shell"}
REFUSED_BY_1_8 = {"H2PING", "H2PingUseTLS", "TLSServerName", "UDP", "OSService", "FailuresBeforeWarning",
                  "DisableRedirects", "Locality"}

EVERYTHING = {
    "SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_HTTPS": "/h", "SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_GRPC": "true",
    "SERVICE_CHECK_UDP": "true", "SERVICE_CHECK_H2PING": "true", "SERVICE_CHECK_TLS_SERVER_NAME": "web",
    "SERVICE_CHECK_HTTP_BODY": "{}", "SERVICE_CHECK_HTTP_METHOD": "POST", "SERVICE_CHECK_TTL": "30s",
    "SERVICE_CHECK_SCRIPT": "true", "SERVICE_CHECK_DOCKER": "true", "SERVICE_CHECK_SUCCESS_BEFORE_PASSING": "2",
    "SERVICE_CHECK_FAILURES_BEFORE_CRITICAL": "2", "SERVICE_CHECK_DEREGISTER_AFTER": "10m",
    "SERVICE_CHECK_NOTES": "n", "SERVICE_CHECK_INITIAL_STATUS": "passing", "SERVICE_CHECK_GRPC_USE_TLS": "true",
    "SERVICE_CHECK_TLS_SKIP_VERIFY": "true", "SERVICE_CHECK_HTTP_HEADER_X_A": "b",
    "SERVICE_WEIGHT": "3", "SERVICE_WEIGHT_WARNING": "2", "SERVICE_ENABLE_TAG_OVERRIDE": "true",
    "SERVICE_CONNECT": "sidecar", "SERVICE_CONNECT_UPSTREAMS": "db:19191", "SERVICE_TAGGED_ADDRESS_WAN": "1.2.3.4:5",
    "SERVICE_CHECKS": json.dumps([
        {"HTTP": "/", "Method": "POST", "Body": "x", "Header": {"A": "b"}, "TLSSkipVerify": True, "Timeout": "1s",
         "OutputMaxSize": 10, "SuccessBeforePassing": 1, "FailuresBeforeCritical": 1, "Notes": "n",
         "Status": "passing", "DeregisterCriticalServiceAfter": "10m", "Name": "n", "ID": "i"},
        {"TTL": "1m", "FailuresBeforeWarning": 1}, {"HTTP": "/", "TLSServerName": "x"},
        {"HTTP": "/", "DisableRedirects": True}, {"UDP": ":8000"},
        {"H2PING": ":8000", "H2PingUseTLS": True}, {"GRPC": "/s", "GRPCUseTLS": True}, {"TCP": ""},
        {"AliasService": "db"}, {"TTL": "1m"}, {"Args": ["true"]},
        {"Args": ["true"], "DockerContainerID": "f" * 64, "Shell": "/bin/sh"}]),
}


def payload_for(labels: dict[str, str], version: tuple[int, int],
                allow_check_redirects: bool = False) -> dict[str, Any] | None:
    container = {"Id": "f" * 64, "Name": "/web", "Config": {"Image": "web", "Labels": labels, "Env": []},
                 "HostConfig": {"NetworkMode": "default"},
                 "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"},
                                                          {"HostIp": "::", "HostPort": "8000"}]},
                                     "Networks": {"bridge": {"IPAddress": "172.17.0.2"}}}}
    settings = MappingSettings(hostname="h", default_address="10.0.0.5", host_ip6="fd00::5",
                               checks=CheckSettings(agent_version=version,
                                                    allow_check_redirects=allow_check_redirects))
    records = map_container(container, settings)
    return registration_payload(records.services[0]) if records.services else None


def fields_sent(payload: dict[str, Any]) -> tuple[set[str], set[str]]:
    return set(payload), {name for check in payload.get("Checks", []) for name in check}


def test_each_gated_field_and_its_minimum_version():
    assert CHECK_FIELD_MIN_VERSION == EXPECTED_CHECK_GATES
    assert SERVICE_FIELD_MIN_VERSION == EXPECTED_SERVICE_GATES
    assert all(CHECK_FIELD_MIN_VERSION.get(f, SERVICE_FIELD_MIN_VERSION.get(f, (0, 0))) > (1, 8)
               for f in REFUSED_BY_1_8)


def test_the_fullest_registration_for_1_8_holds_only_what_1_8_accepts():
    payload = payload_for(EVERYTHING, (1, 8), allow_check_redirects=True)  # else no POST nor Body on 1.8
    assert payload is not None
    service_fields, check_fields = fields_sent(payload)
    assert service_fields == ACCEPTED_1_8_SERVICE
    assert check_fields <= ACCEPTED_1_8_CHECK and not check_fields & REFUSED_BY_1_8
    assert {"Body", "AliasService", "OutputMaxSize", "DockerContainerID"} <= check_fields  # the 1.8 ones do go
    assert set(payload["Connect"]) == {"SidecarService"}


def test_a_newer_agent_gets_the_newer_fields():
    service_fields, check_fields = fields_sent(payload_for(EVERYTHING, (1, 14)) or {})
    assert {"H2PING", "UDP", "TLSServerName", "DisableRedirects", "FailuresBeforeWarning", "H2PingUseTLS"} <= \
        check_fields


def test_an_old_agent_gets_none_of_them():
    service_fields, check_fields = fields_sent(payload_for(EVERYTHING, (1, 2)) or {})
    assert not service_fields & set(EXPECTED_SERVICE_GATES)
    assert not check_fields & set(EXPECTED_CHECK_GATES)


KEYS = sorted(EVERYTHING)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), st.one_of(st.sampled_from(list(EVERYTHING.values())),
                                                         st.text(max_size=30)), max_size=len(KEYS)),
       st.sampled_from([(1, 7), (1, 8)]))
def test_whatever_a_container_sets_1_8_is_sent_nothing_it_refuses(labels, version):
    payload = payload_for(labels, version)
    if payload is None:
        return
    service_fields, check_fields = fields_sent(payload)
    assert service_fields <= ACCEPTED_1_8_SERVICE
    assert check_fields <= ACCEPTED_1_8_CHECK
