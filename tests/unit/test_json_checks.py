"""SERVICE_CHECKS: several checks of any kind in Consul's field names, each
validated like the SERVICE_CHECK_* keys; a bad check costs that check only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consul_reg.mapping.json_checks import json_checks
from consul_reg.mapping.labels import KeyValue
from consul_reg.mapping.settings import CheckSettings
from consul_reg.mapping.check_targets import CheckPolicy, OwnEndpoints, parse_allow_rule

CID = "ab" * 32
OWN = OwnEndpoints(container_addresses=frozenset({"172.17.0.9"}), container_ports=frozenset({80, 9090}),
                   host_pairs=frozenset({("10.0.0.5", 8000), ("10.0.0.5", 9000)}),
                   chosen_addresses=frozenset({"10.0.0.5"}))


def build(definitions: Any, settings: CheckSettings = CheckSettings(), address: str = "10.0.0.5",
          port: int | None = 8000, taken: set[str] | None = None) -> tuple[dict[str, dict], list[str]]:
    warnings: list[str] = []
    raw = definitions if isinstance(definitions, str) else json.dumps(definitions)
    checks = json_checks(KeyValue(raw, "label", "SERVICE_CHECKS"), "h:web:80", "web", address, port, CID,
                         settings, warnings, OWN, set() if taken is None else taken)
    return {c.check_id: {"Name": c.name, **c.definition_dict} for c in checks}, warnings


def test_two_http_checks_with_their_own_intervals_and_a_post_body():
    checks, warnings = build([
        {"HTTP": "/health", "Interval": "5s", "Method": "post", "Body": '{"ping": 1}', "Header": {"X-A": "b"}},
        {"HTTP": ":9000/metrics", "Interval": "30s", "Timeout": "2s", "ID": "metrics", "Name": "metrics"}],
        CheckSettings(allow_check_redirects=True))  # the operator accepts a POST on an agent following redirects
    assert checks == {
        "service:h:web:80:1": {"Name": "Service 'web' check 1", "HTTP": "http://10.0.0.5:8000/health",
                               "Interval": "5s", "Method": "POST", "Body": '{"ping": 1}', "Header": {"X-A": ["b"]}},
        "service:h:web:80:metrics": {"Name": "metrics", "HTTP": "http://10.0.0.5:9000/metrics", "Interval": "30s",
                                     "Timeout": "2s"}}
    assert warnings == []


@pytest.mark.parametrize("definition,field,expected", [
    ({"TCP": ""}, "TCP", "10.0.0.5:8000"),
    ({"TCP": ":9000"}, "TCP", "10.0.0.5:9000"),
    ({"TCP": "172.17.0.9:80"}, "TCP", "172.17.0.9:80"),
    ({"GRPC": "/my.Health", "GRPCUseTLS": True}, "GRPC", "10.0.0.5:8000/my.Health"),
    ({"GRPC": ":9000"}, "GRPC", "10.0.0.5:9000"),
    ({"HTTP": "https:///secure", "TLSSkipVerify": True}, "HTTP", "https://10.0.0.5:8000/secure"),
    ({"HTTP": "https://:9000/x?y=1"}, "HTTP", "https://10.0.0.5:9000/x?y=1"),
    ({"HTTP": "http://172.17.0.9:80/"}, "HTTP", "http://172.17.0.9:80/"),
    ({"http": "/lower", "interval": "1s"}, "HTTP", "http://10.0.0.5:8000/lower"),
    ({"deregister_critical_service_after": "5m", "TTL": "30s"}, "DeregisterCriticalServiceAfter", "5m"),
    ({"TTL": "30s", "Status": "Passing"}, "Status", "passing"),
    ({"AliasService": "db"}, "AliasService", "db"),
    ({"HTTP": "/", "OutputMaxSize": 100, "SuccessBeforePassing": 2, "FailuresBeforeCritical": 3},
     "OutputMaxSize", 100),
])
def test_targets_relative_to_the_service_and_fields(definition, field, expected):
    checks, warnings = build([definition])
    assert warnings == []
    (check,) = checks.values()
    assert check[field] == expected


@pytest.mark.parametrize("definition,reason", [
    ({"HTTP": "/", "Bogus": 1}, "unknown field 'Bogus'"),
    ({"HTTP": "/", "FailuresBeforeWarning": 1}, "FailuresBeforeWarning needs Consul 1.14"),
    ({"HTTP": "/", "TLSServerName": "x"}, "TLSServerName needs Consul 1.10"),
    ({"UDP": ":53"}, "UDP needs Consul 1.13"),
    ({"H2PING": ":8000"}, "H2PING needs Consul 1.10"),
    ({"HTTP": "/", "DisableRedirects": True}, "DisableRedirects needs Consul 1.12"),
    ({"TTL": "10s", "ServiceID": "payments"}, "a check belongs to the service it is declared on"),
    ({"AliasNode": "n1"}, "may alias a service, not a node"),
    ({"HTTP": "/", "HTTP ": "/"}, "unknown field"),
    ({"HTTP": "/", "http": "/x"}, "written twice"),
    ({"HTTP": "/", "TCP": ":80"}, "exactly one of"),
    ({"Interval": "10s"}, "exactly one of"),
    ({"TTL": "10s", "Interval": "1s"}, "has no Interval"),
    ({"TTL": "banana"}, "not a duration"),
    ({"TTL": 10}, "not a duration"),
    ({"HTTP": "/", "Interval": "1e3s"}, "not a duration"),
    ({"HTTP": "/", "SuccessBeforePassing": True}, "whole number"),
    ({"HTTP": "/", "OutputMaxSize": 1e99}, "whole number"),
    ({"HTTP": "/", "OutputMaxSize": -1}, "whole number"),
    ({"HTTP": "/", "Method": "PUT"}, "only GET, HEAD, OPTIONS, POST"),
    ({"HTTP": "/", "Method": "GET\r\nX: y"}, "not an HTTP method"),
    ({"HTTP": "/", "Header": {"X-A": "b\r\nHost: evil"}}, "without CR, LF"),
    ({"HTTP": "/", "Header": {"X A": "b"}}, "letters, digits and -"),
    ({"HTTP": "/", "Header": ["X-A"]}, "Header must be an object"),
    ({"HTTP": "/", "Body": "a\x00b"}, "control characters"),
    ({"HTTP": "/", "Body": "x" * 20000}, "at most 16384"),
    ({"HTTP": "/a b"}, "without spaces"),
    ({"HTTP": "http://169.254.169.254/latest/meta-data"}, "link-local"),
    ({"HTTP": "http://127.0.0.1:8500/v1/agent/leave"}, "Consul agent's own ports"),
    ({"HTTP": "http://user@172.17.0.9:80/"}, "no user, password"),
    ({"HTTP": "ftp://172.17.0.9/"}, "http:// or https://"),
    ({"HTTP": "http://192.0.2.1/"}, "not this container's address"),
    ({"HTTP": ":70000/x"}, "not :port/path"),
    ({"TCP": "10.0.0.5:22"}, "not a port of this container"),
    ({"GRPC": "/"}, "service name after /"),
    ({"AliasService": "../../leave"}, "AliasService must be a service ID"),
    ({"HTTP": "/", "DisableRedirects": False}, "DisableRedirects needs Consul 1.12"),
    ({"TCP": ":8000", "Method": "GET"}, "Method does not apply to a TCP check"),
    ({"TTL": "10s", "Timeout": "1s"}, "Timeout does not apply to a TTL check"),
    ({"HTTP": "/", "ID": "a/b"}, "ID must be"),
    # service:h:web:80 + ":" + "web:81:http" would be service:h:web:81:http, another service's check
    ({"TTL": "1h", "ID": "web:81:http"}, "no ':', which could name a check of another service"),
    ({"HTTP": "/", "Name": "x\ny"}, "without control characters"),
    ("not a definition", "must be a JSON object"),
])
def test_a_bad_check_is_dropped_alone_with_a_warning_naming_the_field(definition, reason):
    checks, warnings = build([definition, {"TTL": "30s", "ID": "ok"}])
    assert list(checks) == ["service:h:web:80:ok"]
    assert len(warnings) == 1 and reason in warnings[0], warnings
    assert warnings[0].startswith("key 'SERVICE_CHECKS': check 1: ")


def test_gated_fields_are_sent_to_an_agent_that_knows_them():
    newer = CheckSettings(agent_version=(1, 14))
    checks, warnings = build([{"HTTP": "/", "FailuresBeforeWarning": 1, "TLSServerName": "web"},
                              {"UDP": ":9000"}], newer)
    assert warnings == []
    assert checks["service:h:web:80:1"]["DisableRedirects"] is True  # always, where the agent can
    assert checks["service:h:web:80:2"]["UDP"] == "10.0.0.5:9000"
    checks, warnings = build([{"HTTP": "/", "DisableRedirects": False}], newer)
    assert checks == {} and "may only be true" in warnings[0]


@pytest.mark.parametrize("raw,reason", [
    ("{", "not JSON"), ("[" * 100000 + "]" * 100000, "not JSON"), ('{"HTTP": "/"}', "JSON array"),
    ("[1" + "0" * 5000 + "]", "not JSON"), ("null", "JSON array"),
])
def test_a_value_that_is_not_an_array_of_checks_costs_one_warning(raw, reason):
    checks, warnings = build(raw)
    assert checks == {} and len(warnings) == 1 and reason in warnings[0]


def test_ids_are_stable_and_made_unique_under_the_service():
    taken = {"service:h:web:80:http"}
    checks, warnings = build([{"TTL": "1m", "ID": "http"}, {"TTL": "1m", "ID": "x"}, {"TTL": "1m", "ID": "x"},
                              {"TTL": "1m"}], taken=taken)
    assert list(checks) == ["service:h:web:80:http-2", "service:h:web:80:x", "service:h:web:80:x-2",
                            "service:h:web:80:4"]
    assert len(warnings) == 2 and all("is taken by another check" in w for w in warnings)
    assert set(checks) <= taken  # the caller's set grows: no later check can take these


def test_checks_are_bounded():
    checks, warnings = build([{"TTL": "1m"}] * 100)
    assert len(checks) == 32 and "only the first 32" in warnings[0]


def test_script_and_docker_checks_obey_the_script_policy():
    script = {"Args": ["/bin/check", "$SERVICE_IP", "$SERVICE_PORT"], "Interval": "10s"}
    docker = {"Args": ["pgrep", "x"], "DockerContainerID": CID[:12], "Interval": "10s"}
    checks, warnings = build([script, docker])
    assert checks["service:h:web:80:1"]["Args"] == ["/bin/check", "10.0.0.5", "8000"]
    assert checks["service:h:web:80:2"]["DockerContainerID"] == CID
    assert checks["service:h:web:80:2"]["Shell"] == "/bin/sh"
    for settings, reason in ((CheckSettings(refuse_script_checks=True), "--no-script-checks"),
                             (CheckSettings(agent_runs_scripts=False), "script checks disabled")):
        checks, warnings = build([script], settings)
        assert checks == {} and reason in warnings[0]
    checks, warnings = build([docker], CheckSettings(exec_checks="daemon"))
    assert checks == {} and "use SERVICE_CHECK_DOCKER" in warnings[0]
    for other in ("cd" * 32, CID[:6], 12):
        checks, warnings = build([{**docker, "DockerContainerID": other}])
        assert checks == {} and "only name this container itself" in warnings[0]


def test_a_portless_service_needs_ports_written_out():
    checks, warnings = build([{"HTTP": "/h"}, {"TCP": "172.17.0.9:80"}], address="172.17.0.9", port=None)
    assert list(checks) == ["service:h:web:80:2"] and "has no port" in warnings[0]


def test_an_allow_rule_opens_a_json_check_target():
    policy = CheckPolicy(allow=(parse_allow_rule("192.0.2.0/24:443"),))
    checks, warnings = build([{"HTTP": "https://192.0.2.7/health"}], CheckSettings(policy=policy))
    assert checks["service:h:web:80:1"]["HTTP"] == "https://192.0.2.7:443/health" and warnings == []


def test_ipv6_targets_are_bracketed():
    own = OwnEndpoints(container_addresses=frozenset({"fd00:cafe::2"}), container_ports=frozenset({80}))
    warnings: list[str] = []
    checks = json_checks(KeyValue('[{"HTTP": "/h"}, {"TCP": ":80"}, {"TCP": "[fd00:cafe::2]:80"}]', "label",
                                  "SERVICE_CHECKS"), "s", "web", "fd00:cafe::2", 80, CID, CheckSettings(), warnings,
                         own, set())
    assert [c.definition_dict.get("HTTP") or c.definition_dict.get("TCP") for c in checks] == [
        "http://[fd00:cafe::2]:80/h", "[fd00:cafe::2]:80", "[fd00:cafe::2]:80"]
    assert warnings == []
