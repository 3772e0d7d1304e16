"""Check translation edge cases, as pure functions."""

from __future__ import annotations

from consul_reg.mapping.checks import CheckSettings, parse_duration, parse_version, service_checks
from consul_reg.mapping.labels import KeyValue
from consul_reg.mapping.check_targets import CheckPolicy, parse_allow_rule


def keys(**values: str) -> dict[str, KeyValue]:
    return {k.lower(): KeyValue(v, "label", "SERVICE_" + k.upper()) for k, v in values.items()}


# The operator's --allow-check-redirects: bodies and POST on a 1.8 agent (which follows redirects).
REDIRECTS_ACCEPTED = CheckSettings(allow_check_redirects=True)


def build(settings: CheckSettings = CheckSettings(), port: int | None = 8080, **values: str):
    warnings: list[str] = []
    checks = service_checks(keys(**values), "h:web:80", "web", "10.0.0.2", port, "abc123", settings, warnings)
    return {c.check_id: c.definition_dict for c in checks}, warnings


def test_durations():
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    for bad in ("banana", "", "10", "-1s", "1 s"):
        assert parse_duration(bad) is None


def test_versions():
    assert parse_version("1.8.7") == (1, 8)
    assert parse_version("v1.13.0-dev") == (1, 13)


def test_http_defaults_and_overrides():
    checks, warnings = build(REDIRECTS_ACCEPTED, check_http="health", check_http_method="post", check_timeout="2s")
    assert checks["service:h:web:80:http"] == {"HTTP": "http://10.0.0.2:8080/health", "Method": "POST",
                                               "Interval": "10s", "Timeout": "2s"}
    assert warnings == []


def test_kind_specific_interval_wins():
    checks, _ = build(check_tcp="true", check_http="/", check_interval="5s", check_tcp_interval="1s")
    assert checks["service:h:web:80:tcp"]["Interval"] == "1s"
    assert checks["service:h:web:80:http"]["Interval"] == "5s"


def test_headers_and_tls_skip_for_https():
    checks, _ = build(check_https="/", check_http_header_x_api_key="k", check_tls_skip_verify="true")
    https = checks["service:h:web:80:https"]
    assert https["Header"] == {"X-Api-Key": ["k"]} and https["TLSSkipVerify"] is True
    assert https["HTTP"].startswith("https://")


def test_header_without_name_drops_the_check():
    checks, warnings = build(check_http="/", check_http_header_="v")
    assert checks == {} and "needs a name" in warnings[0]


def test_script_interpolation_and_shell():
    checks, _ = build(check_script="nc $SERVICE_IP $SERVICE_PORT | grep OK")
    assert checks["service:h:web:80:script"]["Args"] == ["/bin/sh", "-c", "nc 10.0.0.2 8080 | grep OK"]


def test_script_refused_and_agent_without_scripts():
    _, warnings = build(CheckSettings(refuse_script_checks=True), check_script="true")
    assert "--no-script-checks" in warnings[0]
    checks, warnings = build(CheckSettings(agent_runs_scripts=False), check_script="true", check_docker="true")
    assert list(checks) == ["service:h:web:80:docker"] and "TTL" in checks["service:h:web:80:docker"]
    assert "enable_script_checks" in warnings[0]


def test_docker_check_for_the_agent():
    checks, _ = build(check_docker="pgrep worker")
    assert checks["service:h:web:80:docker"] == {"DockerContainerID": "abc123", "Shell": "/bin/sh",
                                                 "Args": ["/bin/sh", "-c", "pgrep worker"], "Interval": "10s"}


def test_app_ttl_keeps_consul_default_id():
    checks, _ = build(check_ttl="30s", check_initial_status="PASSING")
    assert checks["service:h:web:80"] == {"TTL": "30s", "Status": "passing"}


def test_bad_values_drop_one_check_or_field():
    checks, warnings = build(check_http="/", check_http_interval="banana", check_tcp="true",
                             check_initial_status="green", check_failures_before_critical="x")
    assert list(checks) == ["service:h:web:80:tcp"]
    assert "Status" not in checks["service:h:web:80:tcp"]
    assert len(warnings) == 3


def test_fields_newer_than_the_agent_are_left_out():
    checks, warnings = build(CheckSettings(agent_version=(1, 8)), check_https="/", check_tls_server_name="x",
                             check_h2ping="true")
    assert "TLSServerName" not in checks["service:h:web:80:https"]
    assert "service:h:web:80:h2ping" not in checks
    assert any("TLSServerName needs Consul 1.10" in w for w in warnings)
    newer, _ = build(CheckSettings(agent_version=(1, 13)), check_udp="true", check_https="/",
                     check_tls_server_name="x")
    assert newer["service:h:web:80:udp"]["UDP"] == "10.0.0.2:8080"
    assert newer["service:h:web:80:https"]["TLSServerName"] == "x"


def test_network_check_needs_a_port_and_honours_address_override():
    checks, warnings = build(port=None, check_tcp="true")
    assert checks == {} and "no port" in warnings[0]
    # Behaviour changed on purpose: an address that is not the container's needs the operator's rule.
    allowed = CheckSettings(policy=CheckPolicy(allow=(parse_allow_rule("[::1]:9000"),)))
    checks, _ = build(allowed, port=None, check_tcp="true", check_address="::1", check_port="9000")
    assert checks["service:h:web:80:tcp"]["TCP"] == "[::1]:9000"
    checks, warnings = build(port=None, check_tcp="true", check_address="::1", check_port="9000")
    assert checks == {} and "::1 is this host's own address (loopback)" in warnings[0]


def test_grpc_service_name_and_tls():
    checks, _ = build(check_grpc="my.Health", check_grpc_use_tls="true", check_tls_skip_verify="1")
    assert checks["service:h:web:80:grpc"]["GRPC"] == "10.0.0.2:8080/my.Health"
    assert checks["service:h:web:80:grpc"]["GRPCUseTLS"] is True


def test_http_checks_do_not_follow_redirects_where_the_agent_can():
    newer, warnings = build(CheckSettings(agent_version=(1, 12)), check_http="/", check_https="/")
    assert newer["service:h:web:80:http"]["DisableRedirects"] is True
    assert newer["service:h:web:80:https"]["DisableRedirects"] is True and warnings == []
    older, warnings = build(CheckSettings(agent_version=(1, 11)), check_http="/")
    assert "DisableRedirects" not in older["service:h:web:80:http"] and warnings == []


def test_http_body_goes_with_the_simple_http_check():
    checks, warnings = build(REDIRECTS_ACCEPTED, check_http="/", check_http_method="POST",
                             check_http_body='{"a": 1}\n')
    assert checks["service:h:web:80:http"]["Body"] == '{"a": 1}\n' and warnings == []
    checks, _ = build(REDIRECTS_ACCEPTED, check_https="/", check_https_body="b", check_http_body="not for https")
    assert checks["service:h:web:80:https"]["Body"] == "b"


def test_a_bad_http_body_drops_that_check_and_an_old_agent_gets_none():
    for body, reason in (("a\x00b", "control characters"), ("x" * 16385, "at most 16384")):
        checks, warnings = build(check_http="/", check_tcp="true", check_http_body=body)
        assert list(checks) == ["service:h:web:80:tcp"] and reason in warnings[0]
    checks, warnings = build(CheckSettings(agent_version=(1, 6)), check_http="/", check_http_body="b")
    assert "Body" not in checks["service:h:web:80:http"]
    assert warnings == ["service 'h:web:80': the check field Body needs Consul 1.7 or later and this agent is 1.6: "
                        "left out"]
