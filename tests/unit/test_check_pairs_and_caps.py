"""Issue 20: check targets and sidecar forwards are the container's own exact
(address, port) pairs, never the agent's own ports; every spelling of a check
has the same caps; a service's registration, and a container's, are bounded;
sidecars per container are capped; a re-read that maps to the same services
reuses them (and their digests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consul_reg.app.config import Config
from consul_reg.app.daemon import Daemon
from consul_reg.sync.desires import DesireBuilder
from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.mapping.registration import registration_bytes, registration_payload
from consul_reg.consul.agent import agent_listeners
from consul_reg.core.records import AgentInfo
from consul_reg.mapping.settings import CheckSettings
from consul_reg.mapping.validate import Limits
from consul_reg.mapping.check_targets import CheckPolicy, parse_allow_rule

CONTAINER_IP = "172.17.0.9"


def container(ports: dict[str, Any], labels: dict[str, str], network_mode: str = "default",
              exposed: dict | None = None) -> dict[str, Any]:
    return {"Id": "c0ffee" * 10 + "abcd", "Name": "/evil", "Created": "2026-01-01T00:00:00Z",
            "State": {"Running": True},
            "Config": {"Image": "busybox", "Labels": labels, "ExposedPorts": exposed or {k: {} for k in ports}},
            "HostConfig": {"NetworkMode": network_mode},
            "NetworkSettings": {"Ports": ports, "Networks": {"bridge": {"IPAddress": CONTAINER_IP}}
                                if network_mode != "host" else {}}}


def checks_and_warnings(records) -> tuple[dict[str, dict], list[str]]:
    return ({c.check_id: c.definition_dict for s in records.services for c in s.checks}, records.warnings)


# -- pairs ----------------------------------------------------------------------------------------------------

# The attack: 80 published on 127.0.0.1:18080, 81 on 127.0.0.2 with the port number of a
# loopback-only service (a Docker API on 127.0.0.1:2375).
CROSSED = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}],
           "81/tcp": [{"HostIp": "127.0.0.2", "HostPort": "2375"}]}


@pytest.mark.parametrize("labels", [
    {"SERVICE_81_CHECK_HTTP": "/containers/json", "SERVICE_81_CHECK_ADDRESS": "127.0.0.1"},
    {"SERVICE_81_CHECKS": json.dumps([{"HTTP": "http://127.0.0.1:2375/containers/create", "Method": "POST",
                                       "Body": "{}"}])},
    {"SERVICE_80_CHECKS": json.dumps([{"TCP": "127.0.0.1:2375"}])},
    {"SERVICE_80_CHECK_TCP": "true", "SERVICE_80_CHECK_PORT": "2375"},
])
@pytest.mark.parametrize("host_ip", [None, "127.0.0.1"])
def test_a_crossed_publication_never_reaches_a_loopback_service(labels, host_ip):
    settings = MappingSettings(hostname="h", default_address="127.0.0.1", host_ip=host_ip)
    checks, warnings = checks_and_warnings(map_container(container(CROSSED, labels), settings))
    assert checks == {}
    assert any("'127.0.0.1' port 2375" in w and "loopback" in w for w in warnings), warnings


def test_the_containers_own_pairs_are_still_probed():
    """Each binding's own pair at the address the daemon registers at, and the container's IP."""
    labels = {"SERVICE_80_CHECK_TCP": "true", "SERVICE_81_CHECK_TCP": "true",
              "SERVICE_80_CHECKS": json.dumps([{"TCP": f"{CONTAINER_IP}:81"}])}
    settings = MappingSettings(hostname="h", default_address="127.0.0.1")  # a dev agent's advertise address
    checks, warnings = checks_and_warnings(map_container(container(CROSSED, labels), settings))
    assert checks["service:h:evil:80:tcp"]["TCP"] == "127.0.0.1:18080"
    assert checks["service:h:evil:80:1"]["TCP"] == f"{CONTAINER_IP}:81"
    # 127.0.0.2:2375 is its own binding, but on a loopback address nobody chose: never probed.
    assert "service:h:evil:81:tcp" not in checks
    assert any("'127.0.0.2' port 2375" in w and "loopback" in w for w in warnings), warnings


def test_a_port_on_every_address_is_paired_with_the_registration_address_of_its_family_only():
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}],
             "81/tcp": [{"HostIp": "::", "HostPort": "18081"}],
             "82/tcp": [{"HostIp": "10.0.0.7", "HostPort": "18082"}]}
    labels = {"SERVICE_CHECKS": json.dumps([{"TCP": "10.0.0.5:18080"}, {"TCP": "10.0.0.5:18081"},
                                            {"TCP": "10.0.0.7:18082"}, {"TCP": "10.0.0.7:18080"},
                                            {"TCP": "[fd00::5]:18081"}, {"TCP": "[fd00::5]:18080"}])}
    settings = MappingSettings(hostname="h", default_address="10.0.0.5", host_ip6="fd00::5")
    records = map_container(container(ports, labels), settings)
    allowed = {c.definition_dict["TCP"] for c in next(s for s in records.services if s.port == 18080).checks}
    assert allowed == {"10.0.0.5:18080", "10.0.0.7:18082", "[fd00::5]:18081"}


def test_a_host_network_container_probes_its_ports_at_the_registration_address():
    labels = {"SERVICE_PORT": "9000", "SERVICE_CHECK_HTTP": "/", "SERVICE_CHECKS": json.dumps([
        {"TCP": "127.0.0.1:9000"}, {"TCP": "10.0.0.5:9000"}, {"TCP": "127.0.0.1:2375"}])}
    for chosen, expected in (("127.0.0.1", {"http://127.0.0.1:9000/", "127.0.0.1:9000"}),
                             ("10.0.0.5", {"http://10.0.0.5:9000/", "10.0.0.5:9000"})):
        settings = MappingSettings(hostname="h", default_address=chosen)
        records = map_container(container({}, labels, network_mode="host", exposed={}), settings)
        targets = {c.definition_dict.get("HTTP") or c.definition_dict.get("TCP") for c in records.services[0].checks}
        assert targets == expected, records.warnings


def test_a_sidecar_forwards_only_to_the_containers_own_pair():
    settings = MappingSettings(hostname="h", default_address="10.0.0.5")
    crossed = {"80/tcp": [{"HostIp": "10.0.0.7", "HostPort": "18080"}],
               "81/tcp": [{"HostIp": "10.0.0.5", "HostPort": "2375"}]}
    labels = {"SERVICE_80_CONNECT": "sidecar", "SERVICE_80_IP": "10.0.0.5", "SERVICE_81_CONNECT": "sidecar",
              "SERVICE_81_IP": "127.0.0.1"}
    records = map_container(container({**crossed, "82/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18082"}]},
                                      {**labels, "SERVICE_82_CONNECT": "sidecar"}), settings)
    connect = {s.port: s.connect for s in records.services}
    assert connect[18080] is None and connect[2375] is None  # 10.0.0.5:18080 and 127.0.0.1:2375: crossed
    assert connect[18082] is not None and connect[18082].sidecar  # 10.0.0.5:18082: its own
    assert sum("the sidecar proxy would forward to" in w for w in records.warnings) == 2


def test_the_agents_own_ports_are_never_targets_unless_a_rule_lists_them():
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8502"}]}  # the agent listens on 127.0.0.1:8502 only
    labels = {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECKS": json.dumps([{"TCP": f"{CONTAINER_IP}:80"}])}
    policy = CheckPolicy(agent_ports=(8500, 8502, 8600))
    settings = MappingSettings(hostname="h", default_address="10.0.0.5", checks=CheckSettings(policy=policy))
    checks, warnings = checks_and_warnings(map_container(container(ports, labels), settings))
    assert list(checks) == ["service:h:evil:80:1"]  # its own IP's port 80 only
    assert any("8502 is one of the Consul agent's own ports" in w for w in warnings)
    listed = CheckPolicy(allow=(parse_allow_rule("10.0.0.5/32:8502"),), agent_ports=(8500, 8502, 8600))
    settings = MappingSettings(hostname="h", default_address="10.0.0.5", checks=CheckSettings(policy=listed))
    checks, _ = checks_and_warnings(map_container(container(ports, labels), settings))
    assert checks["service:h:evil:80:tcp"]["TCP"] == "10.0.0.5:8502"


def test_the_agents_listeners_are_read_from_its_debug_config():
    # As Consul 1.8.7 -dev answers /v1/agent/self (DebugConfig, abridged).
    debug = {"HTTPPort": 8500, "HTTPSPort": -1, "GRPCPort": 8502, "DNSPort": 8600,
             "HTTPAddrs": ["tcp://127.0.0.1:8500", "unix:///run/consul.sock"], "HTTPSAddrs": [],
             "GRPCAddrs": ["tcp://127.0.0.1:8502"], "DNSAddrs": ["tcp://127.0.0.1:8600", "udp://127.0.0.1:8600"]}
    assert agent_listeners(debug) == (("127.0.0.1",), (8500, 8502, 8600))
    assert agent_listeners({"HTTPSPort": 8501, "HTTPSAddrs": ["tcp://[::1]:8501", "tcp://10.0.0.5:x"],
                            "HTTPPort": True, "GRPCPort": "8502"}) == (("::1",), (8501,))
    assert agent_listeners({}) == ((), ())


def test_the_daemons_policy_holds_the_agents_listeners():
    daemon = Daemon(Config(hostname="h", registry_uris=("consul://127.0.0.1:8500",)))
    try:
        info = AgentInfo("1.8.7", "node", "id", "127.0.0.1", False, listen_addresses=("10.0.0.5",),
                         listen_ports=(8501, 8502, 8600))
        policy = daemon.settings_for(info).checks.policy
        assert {8500, 8501, 8502, 8600} <= set(policy.agent_ports)
        assert {"127.0.0.1", "10.0.0.5"} <= set(policy.agent_addresses)
    finally:
        daemon.registry.close()
        daemon.docker.close()


# -- the same caps for every spelling --------------------------------------------------------------------

BOTH = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}]}
SETTINGS = MappingSettings(hostname="h", default_address="10.0.0.5", checks=CheckSettings(agent_version=(1, 10)))


def one_check(labels: dict[str, str]) -> tuple[dict | None, list[str]]:
    records = map_container(container(BOTH, labels), SETTINGS)
    checks = [c.definition_dict for s in records.services for c in s.checks]
    assert len(checks) <= 1
    return (checks[0] if checks else None), records.warnings


def keyed(**fields: str) -> dict[str, str]:
    return {"SERVICE_CHECK_HTTPS": "/", **{f"SERVICE_CHECK_{k.upper()}": v for k, v in fields.items()}}


def as_json(**fields: Any) -> dict[str, str]:
    return {"SERVICE_CHECKS": json.dumps([{"HTTP": "https://10.0.0.5:18080/", **fields}])}


def headers(count: int, length: int = 1) -> dict[str, str]:
    return {f"SERVICE_CHECK_HTTP_HEADER_X_{i}": "v" * length for i in range(count)}


@pytest.mark.parametrize("fits,over,reason", [
    (keyed(**{k[len("SERVICE_CHECK_"):]: v for k, v in headers(32).items()}),
     keyed(**{k[len("SERVICE_CHECK_"):]: v for k, v in headers(33).items()}), "at most 32 headers (this one has 33)"),
    (as_json(Header={f"X-{i}": "v" for i in range(32)}), as_json(Header={f"X-{i}": ["v", "w"] for i in range(17)}),
     "at most 32 headers (this one has 34)"),
    (keyed(HTTP_HEADER_X="v" * 4096), keyed(HTTP_HEADER_X="v" * 4097), "at most 4096 characters (this one has 4097)"),
    (as_json(Header={"X": "v" * 4096}), as_json(Header={"X": ["ok", "v" * 4097]}), "at most 4096 characters"),
    (keyed(HTTPS="/" + "p" * 2047), keyed(HTTPS="/" + "p" * 2048), "at most 2048 characters (this one has 2049)"),
    (as_json(HTTP="https://10.0.0.5:18080/" + "p" * 2000), as_json(HTTP="https://10.0.0.5:18080/" + "p" * 2048),
     "HTTP may hold at most 2048 characters"),
])
def test_a_check_over_a_cap_is_dropped_in_every_spelling(fits, over, reason):
    check, warnings = one_check(fits)
    assert check is not None, warnings
    check, warnings = one_check(over)
    assert check is None and any(reason in w for w in warnings), warnings


@pytest.mark.parametrize("fits,over,field,reason", [
    (keyed(NOTES="n" * 1024), keyed(NOTES="n" * 1025), "Notes", "Notes must be at most 1024 characters"),
    (keyed(NOTES="fine"), keyed(NOTES="a\x1b[2Jb"), "Notes", "without control characters"),
    (keyed(TLS_SERVER_NAME="s" * 253), keyed(TLS_SERVER_NAME="s" * 254), "TLSServerName", "at most 253"),
])
def test_a_key_based_field_over_a_cap_is_left_out(fits, over, field, reason):
    check, _ = one_check(fits)
    assert check is not None and field in check
    check, warnings = one_check(over)
    assert check is not None and field not in check and any(reason in w and "left out" in w for w in warnings)


@pytest.mark.parametrize("over,reason", [
    (as_json(Notes="n" * 1025), "Notes must be at most 1024"),
    (as_json(Notes="a\nb"), "Notes must be at most 1024 characters without control characters"),
    (as_json(TLSServerName="s" * 254), "TLSServerName must be at most 253"),
])
def test_the_same_fields_over_a_cap_cost_a_json_check(over, reason):
    check, warnings = one_check(over)
    assert check is None and any(reason in w for w in warnings), warnings


def test_grpc_service_names_share_the_path_cap():
    ok, _ = one_check({"SERVICE_CHECK_GRPC": "s" * 2048})
    over, warnings = one_check({"SERVICE_CHECK_GRPC": "s" * 2049})
    assert ok is not None and over is None and any("gRPC check's service name" in w for w in warnings)
    over, warnings = one_check({"SERVICE_CHECKS": json.dumps([{"GRPC": ":18080/" + "s" * 2049}])})
    assert over is None and any("gRPC check's service name" in w for w in warnings)


# -- registration sizes and sidecars -------------------------------------------------------------------------


def many_ports(count: int) -> dict[str, list[dict[str, str]]]:
    return {f"{1000 + i}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(30000 + i)}] for i in range(count)}


def test_a_service_over_the_registration_cap_is_refused_by_name():
    """Every field within its own cap, together over 256 KiB: 32 headers of 4 KiB on an HTTP and an HTTPS check."""
    labels = {"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_HTTPS": "/", **headers(32, 4096)}
    records = map_container(container(many_ports(1), labels), SETTINGS)
    assert records.services == []
    roomy = MappingSettings(hostname="h", default_address="10.0.0.5", checks=SETTINGS.checks,
                            limits=Limits(registration_bytes=1 << 20))
    body = json.dumps(registration_payload(map_container(container(many_ports(1), labels), roomy).services[0]))
    assert len(body) > 256 * 1024
    assert [w for w in records.warnings if "registration" in w] == [
        f"service 'h:evil:1000': its registration would be {len(body)} bytes, over the limit of 262144 for one "
        "service (checks: 2, tags: 0); this service is refused"]
    fits = map_container(container(many_ports(1), {**labels, "SERVICE_CHECK_HTTPS": ""}), SETTINGS)
    assert len(json.dumps(registration_payload(fits.services[0]))) == registration_bytes(fits.services[0]) < 262144


def test_a_containers_registrations_are_capped_in_all():
    labels = {"SERVICE_CHECK_HTTP": "/", **headers(32, 4000)}  # ~130 KB a service: 8 fit in 1 MiB
    records = map_container(container(many_ports(64), labels), SETTINGS)
    sizes = [registration_bytes(s) for s in records.services]
    assert len(records.services) == 8 and sum(sizes) <= 1024 * 1024 < sum(sizes) + sizes[0]
    assert sum("would take this container's registrations over 1048576 bytes" in w for w in records.warnings) == 56
    # The caps are the Limits': a daemon configured otherwise keeps them all.
    roomy = MappingSettings(hostname="h", default_address="10.0.0.5",
                            limits=Limits(registration_bytes_per_container=64 << 20))
    assert len(map_container(container(many_ports(64), labels), roomy).services) == 64


def test_sidecars_per_container_are_capped_below_the_agents_port_range():
    records = map_container(container(many_ports(20), {"SERVICE_CONNECT": "sidecar"}), SETTINGS)
    with_sidecar = [s for s in records.services if s.connect is not None]
    assert len(records.services) == 20 and len(with_sidecar) == 16
    assert [s.port for s in with_sidecar] == list(range(30000, 30016))
    assert all("Connect" not in dict(s.origins) for s in records.services if s.connect is None)
    warned = [w for w in records.warnings if "at most 16 sidecar proxies" in w]
    assert len(warned) == 4 and "service 'h:evil:1016' is registered without one" in warned[0]


# -- a re-read that maps to the same services ------------------------------------------------------------------


class Inspector:
    def inspect(self, container_id: str) -> None:
        return None


def test_a_reread_reuses_equal_services_and_their_digests(monkeypatch):
    builder = DesireBuilder(Config(hostname="h", registry_uris=()).container_rules(), Inspector(), SETTINGS)
    labels = {"SERVICE_CHECK_HTTP": "/", **headers(8, 4000)}
    inspected = container(many_ports(4), labels)
    first = builder.build(json.loads(json.dumps(inspected)), None)
    digests = [s.digest for s in first.services]
    again = builder.build(json.loads(json.dumps(inspected)), None)  # a new answer: equal, not the same strings
    assert all(a is b for a, b in zip(first.services, again.services)) and len(again.services) == 4
    assert all("digest" in vars(s) for s in again.services)  # computed once, kept
    changed = builder.build(container(many_ports(4), {**labels, "SERVICE_1001_TAGS": "new"}), None)
    assert [a is b for a, b in zip(first.services, changed.services)] == [True, False, True, True]
    assert changed.services[1].digest != digests[1]
    builder.forget(first.container_id)
    assert all(a is not b for a, b in zip(first.services, builder.build(inspected, None).services))
