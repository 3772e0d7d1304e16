"""Findings of the adversarial review of issue 20 ("Hostile containers, round 3"):
the ownership marker a container could write, checks an old agent's redirects
could carry, sidecar-shaped IDs, cloud metadata outside link-local, the status
endpoint's per-client cap, env-file paths in log lines, stop signals, header names."""

from __future__ import annotations

import json
import select
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from consul_reg.mapping import env_file as envfile
from consul_reg.mapping.check_caps import header_name_problem
from consul_reg.mapping.checks import CheckSettings, service_checks
from consul_reg.app.config import Config
from consul_reg.mapping.default_ids import is_sidecar_shaped
from consul_reg.sync.desires import DesireBuilder, DesireUnavailable
from consul_reg.sync.drain import is_terminating, signal_number
from consul_reg.core.messages import EnvFileRead
from consul_reg.sync.env_files import EnvFileState, fold
from consul_reg.mapping.json_checks import json_checks
from consul_reg.mapping.labels import KeyValue, printable
from consul_reg.core.liveness import Liveness
from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.app.metrics import Metrics
from consul_reg.core.records import MARKER_INSTANCE_KEY, Owner, registered_form
from consul_reg.core.snapshot import Snapshot
from consul_reg.app.status import (
    MAX_CONNECTIONS_PER_CLIENT,
    REQUEST_TIMEOUT_SECONDS,
    StatusServer,
    StatusSources,
    client_key,
)
from consul_reg.mapping.tags_meta import is_reserved_meta_key, service_meta
from consul_reg.mapping.validate import parse_ip
from consul_reg.mapping.check_targets import CheckPolicy, OwnEndpoints, check_target_problem, parse_allow_rule
from tests.unit.sockets import ask_as, read_all

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
    assert warnings == [("service 'h:web:80': the check field Body needs Consul 1.7 or later and this agent is "
                         "1.6: left out")]


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


# -- 5. cloud metadata endpoints outside link-local -------------------------------------------------


@pytest.mark.parametrize("target", ["100.100.100.200", "::ffff:100.100.100.200", "[fd00:ec2::254]", "fd00:ec2::254",
                                    "fd00:ec2:0::254", "168.63.129.16"])
def test_metadata_endpoints_outside_link_local_need_a_rule_naming_them_alone(target: str) -> None:
    address = parse_ip(target)
    assert address is not None
    broad = ("0.0.0.0/0", "::/0", "100.64.0.0/10", "fd00::/8", "168.63.0.0/16", f"{address}/31"
             if address.version == 4 else f"{address}/127")
    for rule in broad:
        problem = check_target_problem(target, 80, OwnEndpoints(), CheckPolicy(allow=(parse_allow_rule(rule),)))
        assert problem is not None and "metadata endpoint" in problem and "/32 or /128" in problem, (rule, problem)
    exact = f"[{address}]:80" if address.version == 6 else f"{address}/32:80"
    policy = CheckPolicy(allow=(parse_allow_rule(exact),))
    assert check_target_problem(target, 80, OwnEndpoints(), policy) is None
    assert check_target_problem(target, 81, OwnEndpoints(), policy) is not None  # the rule's ports still apply


def test_a_container_check_on_alibabas_metadata_is_refused_even_under_a_broad_rule() -> None:
    policy = CheckPolicy(allow=(parse_allow_rule("100.64.0.0/10"),))
    settings = MappingSettings(hostname="h1", default_address="10.0.0.5", checks=CheckSettings(policy=policy))
    records = map_container(container({"SERVICE_CHECK_HTTP": "/latest/meta-data/",
                                       "SERVICE_CHECK_ADDRESS": "100.100.100.200", "SERVICE_CHECK_PORT": "80"}),
                            settings)
    assert [c.check_id for c in records.services[0].checks] == []
    assert any("100.100.100.200 is a cloud platform's metadata endpoint" in w for w in records.warnings)
    # Its neighbour is an ordinary address the operator's rule allows.
    records = map_container(container({"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_ADDRESS": "100.100.100.201",
                                       "SERVICE_CHECK_PORT": "80"}), settings)
    assert [c.check_id for c in records.services[0].checks] == ["service:h1:web:80:http"]


# -- 6. the status endpoint's clients ------------------------------------------------------------------


@pytest.mark.parametrize("host,key", [
    ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.9", "loopback"), ("192.0.2.7", "192.0.2.7"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"), ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"), ("fe80::1%eth0", "fe80::/64"), ("not an address", "not an address"),
])
def test_what_counts_as_one_status_client(host: str, key: str) -> None:
    assert client_key(host) == key


def _status_server() -> StatusServer:
    up = Liveness("x")
    up.ok()
    server = StatusServer("127.0.0.1:0", StatusSources(snapshot=lambda: Snapshot(), docker=up, agent=up,
                                                       mirrors=dict, metrics=Metrics(), hostname="h1"))
    server.start()
    return server


def test_many_loopback_addresses_hold_one_clients_share_of_the_status_slots() -> None:
    """The review: 20 idle connections from 127.0.0.2-6 (4 each) took all 16 slots."""
    server = _status_server()
    port = server.server.server_address[1]
    idle: list[socket.socket] = []
    try:
        for i in range(20):  # one at a time: the listen backlog (5) never overflows, no SYN is retried
            client = socket.create_connection(("127.0.0.1", port), timeout=5,
                                              source_address=(f"127.0.0.{2 + i // 4}", 0))
            idle.append(client)
            if i >= MAX_CONNECTIONS_PER_CLIENT:
                answer = read_all(client)
                assert answer.startswith(b"HTTP/1.1 503"), (i, answer)  # over loopback's share: told, closed at once
        still_open, _, _ = select.select(idle[:MAX_CONNECTIONS_PER_CLIENT], [], [], 0)
        assert still_open == []  # loopback's share, held (neither answered nor closed)
        for source in ("192.0.2.7", "::ffff:192.0.2.8", "2001:db8::1"):
            assert ask_as(server, source, REQUEST_TIMEOUT_SECONDS + 5).startswith(b"HTTP/1.1 200"), source
    finally:
        for client in idle:
            client.close()
        server.stop()


# -- 7. env-file paths in log lines ------------------------------------------------------------------------

BIDI_PATH = "/etc/\u202eelif.vne"  # shows as /etc/env.file
ZERO_WIDTH_PATH = "/etc/env\u200b.file"


@pytest.mark.parametrize("path", [BIDI_PATH, ZERO_WIDTH_PATH, "/etc/\u2066x\u2069", "/etc/\ufeffx"])
def test_an_env_file_path_with_format_characters_is_refused(path: str) -> None:
    assert "invisible format characters" in (envfile.path_problem(path) or "")
    chosen = envfile.env_file_path({"Config": {"Labels": {"SERVICE_ENV_FILE": path}}}, None)
    assert chosen.path == "" and "invisible format characters" in chosen.problem
    assert chosen.problem.isprintable()


@pytest.mark.parametrize("path", [BIDI_PATH, ZERO_WIDTH_PATH, "/etc/env\xa0file"])
def test_fold_warnings_show_the_path_escaped(path: str) -> None:
    state = EnvFileState(path, "web")
    _, _, unreadable = fold(state, EnvFileRead("c1", path, None, error="no such container"))
    _, _, malformed = fold(state, EnvFileRead("c1", path, "not a line\n"))
    assert unreadable and malformed
    for warning in unreadable + malformed:
        assert warning.isprintable() and f"env file {printable(path)}: " in warning, warning


def test_the_not_read_yet_line_shows_the_path_escaped() -> None:
    path = "/etc/env\xa0file"  # no control nor format character: path_problem lets it through
    assert envfile.path_problem(path) is None
    builder = DesireBuilder(Config(hostname="h1", registry_uris=("consul://127.0.0.1:8500",)).container_rules(), None,
                            MappingSettings(hostname="h1"))
    inspected = {**container({"SERVICE_ENV_FILE": path}), "State": {"Running": True}}
    with pytest.raises(DesireUnavailable) as raised:
        builder.build(inspected, None)
    assert str(raised.value) == "its env file /etc/env\\xa0file is not read yet"


# -- 8. a container's StopSignal ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,number", [
    ("15", 15), ("SIGTERM", 15), ("term", 15), (" SIGKILL ", 9), ("²", None), ("١٥", None), ("𝟗", None),
    ("9" * 5000, None), ("99999", None), ("__class__", None), ("SIG", None), ("", None), ("SIGRTMIN+3", None),
    ("Signals", None), ("SIG_DFL", None),
])
def test_signal_numbers_are_ascii_digits_or_signal_names(text: str, number: int | None) -> None:
    assert signal_number(text) == number


@given(st.text(max_size=64) | st.text(alphabet="0123456789²³¹٠١٢𝟗", max_size=5000))
@hyp_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_stop_signal_a_container_sets_raises(text: str) -> None:
    number = signal_number(text)
    assert number is None or isinstance(number, int)
    assert isinstance(is_terminating("15", text), bool) and isinstance(is_terminating(text, text), bool)


# -- 9. header names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["X-A\n", "X-A\r\n", "\nX-A", "X A", "X-Ä", ""])
def test_a_header_name_is_letters_digits_and_dashes_to_its_end(name: str) -> None:
    assert header_name_problem(name) is not None
    checks, warnings = json_built([{"HTTP": "/", "Header": {name: "v"}}], NEW)
    assert checks == {} and "Header name" in warnings[0]


def test_a_header_key_ending_in_a_newline_drops_its_check() -> None:
    checks, warnings = key_checks(NEW, check_http="/", **{"check_http_header_x_a\n": "v"})
    assert checks == {} and "a header needs a name" in warnings[0]
    assert header_name_problem("X-Api-Key") is None
