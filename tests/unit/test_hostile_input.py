"""Property tests: the label/env parser, the mapping and the check translation
never raise, whatever a container declares; bad keys cost warnings only."""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consul_reg.mapping.checks import CheckSettings, service_checks
from consul_reg.mapping.default_ids import default_id_host
from consul_reg.mapping.json_checks import FIELDS as JSON_CHECK_FIELDS
from consul_reg.mapping.json_checks import json_checks
from consul_reg.mapping.labels import KeyValue, collect, printable, split_tags
from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.core.records import Connect, ContainerDesire, Owner, RegisteredService, Service, marker_meta
from consul_reg.core.plan import DesiredServices, plan
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.consul.agent import registration_payload
from consul_reg.consul.guard import OwnershipGuard
from consul_reg.mapping.tags_template import Template, TemplateError
from consul_reg.mapping.validate import address_problem, has_control
from consul_reg.mapping.check_targets import CheckPolicy, OwnEndpoints, parse_allow_rule
from consul_reg.mapping.versions import CHECK_FIELD_MIN_VERSION
from tests.unit.fakes import HttpAgent

SUFFIXES = ["NAME", "ID", "TAGS", "IGNORE", "IP", "NETWORK", "CHECK_HTTP", "CHECK_TCP", "CHECK_INTERVAL",
            "CHECK_TIMEOUT", "CHECK_TTL", "CHECK_SCRIPT", "CHECK_DOCKER", "CHECK_GRPC", "CHECK_HTTP_HEADER_X",
            "CHECK_INITIAL_STATUS", "CHECK_DEREGISTER_AFTER", "CHECK_PORT", "CHECK_ADDRESS", "HEARTBEAT_TTL",
            "HEARTBEAT_INTERVAL", "CHECK_HTTP_METHOD", "CHECK_FAILURES_BEFORE_CRITICAL", "REGION", "X",
            "CHECK_HTTPS", "CHECK_UDP", "CHECK_H2PING", "CHECK_TLS_SERVER_NAME", "CHECK_HTTPS_METHOD",
            "CHECK_SUCCESS_BEFORE_PASSING", "CHECK_DOCKER_INTERVAL", "CHECK_DOCKER_TIMEOUT", "ENV_FILE",
            # issue 12's keys
            "PORT", "WEIGHT", "WEIGHT_WARNING", "ENABLE_TAG_OVERRIDE", "CONNECT", "CONNECT_UPSTREAMS", "CHECKS",
            "TAGGED_ADDRESS_WAN", "TAGGED_ADDRESS_LAN_IPV6", "TAGGED_ADDRESS_X/Y", "CHECK_HTTP_BODY",
            "CHECK_HTTPS_BODY"]
service_keys = st.one_of(
    st.builds(lambda s: "SERVICE_" + s, st.sampled_from(SUFFIXES)),
    st.builds(lambda p, s: f"SERVICE_{p}_{s}", st.sampled_from(["80", "443", "0", "99999", "8o", ""]),
              st.sampled_from(SUFFIXES)),
    st.builds(lambda s: "SERVICE_" + s, st.text(max_size=40)),
    st.text(max_size=40),
)
HOSTILE_VALUES = ["", " ", "true", "0", "10s", "banana", "1m30s", "-1", "/health", "a\\,b,c", "\x00", "é" * 600,
                  "../../leave", "../../maintenance", "x/../payments", "..", ".", "vault/core/master", "h:x:80",
                  "host2:web:80", "host2:worker", "H:hostile:80", "web:8080", "Payments",
                  "web\nforged", "\x1b[2J", "²", "٨٠", "9" * 5000, "8500", "169.254.169.254",
                  "::ffff:169.254.169.254",
                  "127.0.0.1", "0.0.0.0", "localhost", "2852039166", "fe80::1", "a@169.254.169.254", "PUT", "1ms",
                  "1ns", "99999999999h", "10.0.0.5", "172.17.0.2", "32768", "80", "a\r\nHost: x", "DELETE",
                  # issue 12's keys
                  "sidecar", "native", "db:19191,x:0,../x:1", "1.2.3.4:99999", "[fd00::1]:80", "8080,9090/udp",
                  "65535", "0", "[" * 3000, '{"a": 1}', '[{"HTTP": "http://169.254.169.254/"}]',
                  '[{"HTTP": "http://[::ffff:169.254.169.254]/"}, {"TCP": "127.0.0.1:8500"}]',
                  '[{"HTTP": "/", "Method": "PUT"}, {"HTTP": "//evil.example/"}, {"HTTP": "http://10.0.0.9:8500/"}]',
                  '[{"Args": ["sh", "-c", "id"]}, {"Args": ["x"], "DockerContainerID": "abcdefabcdef"}]',
                  '[{"AliasNode": "x"}, {"TTL": "1s", "ServiceID": "payments"}, {"HTTP": "/", "Body": "\u0000"}]',
                  '[{"HTTP": "/h", "Interval": "1s"}, {"TCP": ""}, {"GRPC": ":8080/s"}, {"TTL": "1m", "ID": "x"}]',
                  '[{"HTTP": "http://172.17.0.2:80/"}, {"TCP": "[::1]:80"}, {"HTTP": "https://:32768/"}]']
values = st.one_of(st.text(max_size=200), st.sampled_from(HOSTILE_VALUES))
label_maps = st.dictionaries(service_keys, values, max_size=40)
env_lists = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", service_keys, values), st.text(max_size=30)),
                     max_size=40)


def container(env, labels, ports) -> dict:
    return {"Id": "f" * 64, "Name": "/hostile", "Config": {"Image": "x/y:z", "Env": env, "Labels": labels,
                                                             "Healthcheck": {"Test": ["CMD", "true"]}},
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": {"Ports": ports, "Networks": {"bridge": {"IPAddress": "172.17.0.2"}}}}


port_maps = st.dictionaries(st.sampled_from(["80/tcp", "443/tcp", "53/udp", "x", "0/tcp", "70000/tcp", "²/tcp",
                                             "8500/tcp", "80/sctp", "80/weird"]),
                            st.one_of(st.none(), st.just([{"HostIp": "0.0.0.0", "HostPort": "8080"}]),
                                      st.just([{"HostIp": "127.0.0.1", "HostPort": "32768"}]),
                                      st.just([{"HostIp": "", "HostPort": "abc"}]), st.just("junk"),
                                      st.just([{"HostIp": "", "HostPort": "²"}]),
                                      st.just([{"HostIp": "0.0.0.0", "HostPort": "8500"}]),
                                      # crossed publications: loopback and other host addresses, v6 only
                                      st.just([{"HostIp": "127.0.0.2", "HostPort": "2375"}]),
                                      st.just([{"HostIp": "10.0.0.7", "HostPort": "9000"},
                                               {"HostIp": "127.0.0.1", "HostPort": "9001"}]),
                                      st.just([{"HostIp": "::", "HostPort": "8443"}])), max_size=4)


IDENTIFIER = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
DEFAULT_ID = re.compile(r"h:hostile(:[0-9]+(:udp)?)?")  # the default IDs of the container below, on host h
CONTAINER_IP = "172.17.0.2"
AGENT_PORT = 8500


def check_targets(check) -> list[tuple[str, int]]:
    """host:port of a network check, read back from its definition (an oracle independent of validate.py)."""
    definition = check.definition_dict
    targets = []
    if "HTTP" in definition:
        parts = urllib.parse.urlsplit(str(definition["HTTP"]))
        assert parts.scheme in ("http", "https") and not parts.username and not parts.password
        targets.append((parts.hostname or "", parts.port or 0))
    for field in ("TCP", "UDP", "GRPC", "H2PING"):
        if field in definition:
            host_port = str(definition[field]).split("/", 1)[0]
            host, _, port = host_port.rpartition(":")
            targets.append((host.strip("[]"), int(port)))
    return targets


def declared_ports(env: list[str], labels: dict[str, str]) -> set[int]:
    """The container ports a container declares with SERVICE_PORT (env or label, any case), as
    numbers: the mapping may aim a check at the container's own IP on any of them."""
    values = [value for key, value in labels.items() if key.upper() == "SERVICE_PORT"]
    values += [entry.partition("=")[2] for entry in env if entry.partition("=")[0].upper() == "SERVICE_PORT"]
    return {int(part) for value in values for part in re.findall(r"[0-9]+", value)}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=env_lists, labels=label_maps, ports=port_maps, internal=st.booleans(), scripts=st.booleans(),
       host_ip=st.sampled_from([None, "10.0.0.5", "127.0.0.1"]), exec_checks=st.sampled_from(["agent", "daemon"]))
def test_mapping_never_raises_and_payloads_are_valid(env, labels, ports, internal, scripts, host_ip, exec_checks):
    map_settings = MappingSettings(hostname="h", internal=internal, host_ip=host_ip, default_address="10.0.0.9",
                                   checks=CheckSettings(agent_runs_scripts=scripts, exec_checks=exec_checks))
    hostile = container(env, labels, ports)
    records = map_container(hostile, map_settings)
    trusted_hosts = {host_ip or "10.0.0.9", "127.0.0.1" if "32768" in str(ports) else None,
                     "10.0.0.7" if "10.0.0.7" in str(ports) else None}
    host_ports = {8080, 32768, 9000, 9001}  # the exact pairs: test_no_generated_container_gets_a_check_target_...
    for service in records.services:
        payload = registration_payload(service)
        assert len(payload["Meta"]) <= 64
        assert all(len(k) <= 128 and len(v) <= 512 for k, v in payload["Meta"].items())
        assert all(not k.startswith("consul-") for k in payload["Meta"])
        # Identifiers: only the documented set; custom IDs never in any host's default-ID namespace.
        for value in (payload["ID"], payload["Name"]):
            assert IDENTIFIER.fullmatch(value) and value not in (".", "..")
        assert default_id_host(payload["ID"]) is None or DEFAULT_ID.fullmatch(payload["ID"]), payload["ID"]
        assert len(service.tags) <= 128 + 1 and all(len(t) <= 1024 for t in service.tags)
        # Check targets: the container's own IP with a container-side port, or the daemon's own
        # host address with a port this container publishes; never link-local, never the agent.
        for check in service.checks:
            for host, port in check_targets(check):
                address = ipaddress.ip_address(host)
                if address.version == 6 and address.ipv4_mapped:
                    address = address.ipv4_mapped
                assert not address.is_link_local
                assert str(address) in {CONTAINER_IP, *trusted_hosts}, (host, port, labels, env)
                if str(address) == CONTAINER_IP:
                    assert str(port) in str(ports) or port in (80, 443, 53, 8500, 8080, 9090) \
                        or port in declared_ports(env, labels)
                else:
                    assert port in host_ports and port != AGENT_PORT
            probe = check.daemon_probe
            if probe is not None and probe.kind == "exec":
                assert probe.interval >= 1 and 1 <= probe.timeout <= probe.interval
            definition = check.definition_dict
            if "Args" in definition:
                assert scripts  # never a script check where the agent refuses them
                assert definition.get("DockerContainerID", "f" * 64) == "f" * 64  # its own container only
            assert "ServiceID" not in definition and "AliasNode" not in definition
        assert_valid_extras(payload)
    assert all(isinstance(w, str) and "\n" not in w for w in records.warnings)
    assert len(records.warnings) <= 101


TAGGED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def assert_valid_extras(payload: dict) -> None:
    """Issue 12's fields, read back from the body sent to the agent."""
    assert set(payload) <= {"ID", "Name", "Tags", "Address", "Meta", "Port", "Checks", "TaggedAddresses", "Weights",
                            "EnableTagOverride", "Connect"}
    for name, tagged in payload.get("TaggedAddresses", {}).items():
        assert TAGGED_NAME.fullmatch(name) and 0 < tagged["Port"] < 65536
        assert address_problem(tagged["Address"]) is None
    if "Weights" in payload:
        assert all(1 <= payload["Weights"][k] <= 65535 for k in ("Passing", "Warning"))
    connect = payload.get("Connect")
    if connect is not None:
        assert connect == {"Native": True} or set(connect) == {"SidecarService"}
        sidecar = connect.get("SidecarService", {})
        if sidecar:  # never the marker: the agent would copy the service's Meta into it
            assert sidecar["Meta"] == {"external-source": "consul-reg", "consul_reg_sidecar_for": payload["ID"]}
        for upstream in sidecar.get("Proxy", {}).get("Upstreams", []):
            assert IDENTIFIER.fullmatch(upstream["DestinationName"]) and 0 < upstream["LocalBindPort"] < 65536
    for check in payload.get("Checks", []):
        assert payload["ID"] in check["CheckID"] and len(check["CheckID"]) <= 128 + 80
        assert not has_control(check["Name"]) and not has_control(str(check.get("Header", "")))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
              st.sampled_from(["/h", ":8080", "10.0.0.9:8080", "http://172.17.0.2:80/", "30s", "POST", "GET\r\n",
                               # crossed pairs: one binding's address with the other's port
                               "10.0.0.9:32768", "10.0.0.5:8080", "http://10.0.0.5:8080/", "127.0.0.1:32768",
                               "10.0.0.5:32768", ":32768"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.sampled_from(JSON_CHECK_FIELDS), st.text(max_size=10)),
                                               children, max_size=6)),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(definitions=st.lists(json_values, max_size=6), port=st.one_of(st.none(), st.sampled_from([8080, 32768])),
       version=st.sampled_from([(1, 7), (1, 8), (1, 14)]), scripts=st.booleans())
def test_json_checks_never_raise_and_only_emit_allowed_checks(definitions, port, version, scripts):
    warnings: list[str] = []
    own = OwnEndpoints(container_addresses=frozenset({CONTAINER_IP}), container_ports=frozenset({80}),
                       host_pairs=frozenset({("10.0.0.9", 8080), ("10.0.0.5", 32768)}),
                       chosen_addresses=frozenset({"10.0.0.9"}))
    settings_ = CheckSettings(agent_version=version, agent_runs_scripts=scripts)
    checks = json_checks(KeyValue(json.dumps(definitions), "label", "SERVICE_CHECKS"), "h:x:80", "x", "10.0.0.9",
                         port, "f" * 64, settings_, warnings, own, set())
    assert len({c.check_id for c in checks}) == len(checks) <= len(definitions)
    for check in checks:
        for host, target_port in check_targets(check):
            assert (host, target_port) in {(CONTAINER_IP, 80), ("10.0.0.9", 8080), ("10.0.0.5", 32768)}
        definition = check.definition_dict
        assert not {k for k in definition if CHECK_FIELD_MIN_VERSION.get(k, (0, 0)) > version}
        assert "Args" not in definition or scripts
    assert all("\n" not in w for w in warnings)


JSON_SAMPLES = [v for v in HOSTILE_VALUES if v.startswith("[{")]
extras_labels = st.fixed_dictionaries({}, optional={
    "SERVICE_WEIGHT": st.one_of(st.sampled_from(["1", "7", "65535", "65536", "0", "-1", "²", " 3 "]),
                                st.text(max_size=8)),
    "SERVICE_WEIGHT_WARNING": st.sampled_from(["1", "0", "x", "2"]),
    "SERVICE_ENABLE_TAG_OVERRIDE": st.sampled_from(["true", "false", "x", ""]),
    "SERVICE_CONNECT": st.sampled_from(["native", "sidecar", "SIDECAR", "mesh", ""]),
    "SERVICE_CONNECT_UPSTREAMS": st.one_of(st.sampled_from(["db:19191", "db:19191,cache:19192", "db:0,:1,a/b:2",
                                                            "db:1," * 100]), st.text(max_size=40)),
    "SERVICE_TAGGED_ADDRESS_WAN": st.one_of(st.sampled_from(["203.0.113.7:443", "[fd00::1]:80", "fd00::1", "a:b:c",
                                                             "h.example:1", "1.2.3.4:0", "x\n:1"]),
                                            st.text(max_size=30)),
    "SERVICE_TAGGED_ADDRESS_" + "Ü": st.just("1.2.3.4:5"),
    "SERVICE_80_TAGGED_ADDRESS_LAN": st.sampled_from(["10.1.1.1:80", "bad value"]),
    "SERVICE_CHECKS": st.one_of(st.sampled_from(JSON_SAMPLES),
                                st.builds(json.dumps, st.lists(json_values, max_size=4))),
    "SERVICE_80_CHECKS": st.sampled_from(JSON_SAMPLES),
    "SERVICE_PORT": st.sampled_from(["80", "8080,9090/udp", "abc", "0", "80/sctp", ",,", "1-65535"]),
    "SERVICE_IP": st.sampled_from(["fd00::9", "[fd00::9]", "10.0.0.9", "::ffff:169.254.169.254", "127.0.0.1",
                                   CONTAINER_IP]),
    "SERVICE_CHECK_HTTP": st.just("/h"), "SERVICE_CHECK_HTTP_BODY": st.sampled_from(["{}", "a\x00", "x" * 20000]),
})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=extras_labels, internal=st.booleans(), ip6=st.sampled_from([None, "fd00::5"]),
       version=st.sampled_from([(1, 2), (1, 8), (1, 14)]),
       networks=st.sampled_from([None, {"bridge": {"IPAddress": CONTAINER_IP, "GlobalIPv6Address": "fd00:cafe::2"}},
                                 {"bridge": {"IPAddress": "", "GlobalIPv6Address": "fd00:cafe::2"}}]))
def test_issue_12_keys_never_raise_and_produce_valid_registrations(labels, internal, ip6, version, networks):
    hostile = container([], labels, {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                                {"HostIp": "::", "HostPort": "8080"}]})
    if networks is not None:
        hostile["NetworkSettings"]["Networks"] = networks
    settings_ = MappingSettings(hostname="h", internal=internal, host_ip6=ip6, default_address="10.0.0.9",
                                checks=CheckSettings(agent_version=version))
    records = map_container(hostile, settings_)
    for service in records.services:
        payload = registration_payload(service)
        assert_valid_extras(payload)
        if version < (1, 3):
            assert not {"Weights", "Connect", "TaggedAddresses"} & set(payload)
        proxy = payload.get("Connect", {}).get("SidecarService", {}).get("Proxy")
        if proxy is not None:  # the proxy beside the agent forwards only to the container itself
            target = (proxy["LocalServiceAddress"], proxy["LocalServicePort"])
            assert target == ("10.0.0.9", 8080) or (target[0] in {CONTAINER_IP, "fd00:cafe::2"} and
                                                    target[1] in (80, 8080, 9090)), (target, labels)
        for check in service.checks:
            assert not {k for k in check.definition_dict if CHECK_FIELD_MIN_VERSION.get(k, (0, 0)) > version}
            for host, port in check_targets(check):
                assert host in {CONTAINER_IP, "10.0.0.9", "fd00:cafe::2"}, (host, port, labels)
                if host == "10.0.0.9":  # this host's address: only the port this container publishes
                    assert port == 8080, (host, port, labels)
                else:  # the container's own addresses: its own ports (exposed, published or declared)
                    assert port in (80, 8080, 9090), (host, port, labels)
    assert all("\n" not in w for w in records.warnings) and len(records.warnings) <= 101


@settings(max_examples=300, deadline=None)
@given(keys=st.dictionaries(st.builds(lambda s: s.lower(), st.sampled_from(SUFFIXES)), values, max_size=20),
       port=st.one_of(st.none(), st.integers(1, 65535)))
def test_check_translation_never_raises(keys, port):
    entries = {k: KeyValue(v, "label", "SERVICE_" + k.upper()) for k, v in keys.items()}
    warnings: list[str] = []
    checks = service_checks(entries, "id", "name", "10.0.0.1", port, "cid", CheckSettings(), warnings)
    assert len({c.check_id for c in checks}) == len(checks)


@given(st.text())
def test_split_tags_never_raises(raw):
    assert all(tag == tag.strip() and tag for tag in split_tags(raw))


def test_huge_values_and_a_thousand_labels():
    # Bounds (behaviour changed on purpose): at most 128 tags per service, values over 64 KiB ignored.
    labels = {f"SERVICE_K{i}": "v" for i in range(1000)}
    labels["SERVICE_BIG"] = "x" * 1_000_000
    labels["SERVICE_TAGS"] = ",".join(f"t{i}" for i in range(2000))
    records = map_container(container([], labels, {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "1"}]}),
                            MappingSettings(hostname="h"))
    (service,) = records.services
    assert len(registration_payload(service)["Meta"]) == 64
    assert service.tags == tuple(f"t{i}" for i in range(128))
    assert any("'SERVICE_TAGS'" not in w and "2000 tags, only the first 128 kept" in w for w in records.warnings)
    assert any(w.startswith("key 'SERVICE_BIG': its value of 1000000 characters") for w in records.warnings)
    assert all(len(w) < 1000 for w in records.warnings)  # a 1 MB value is never copied into a log line
    assert len(records.warnings) <= 101


def test_collect_keeps_key_sources():
    keys = collect(["SERVICE_A=env"], {"SERVICE_A": "label"}, ("env file", [("SERVICE_A", "file")]))
    assert keys.general["a"].value == "file" and keys.general["a"].source == "env file"


ADDRESSES = ["169.254.169.254", "::ffff:169.254.169.254", "fe80::1", "127.0.0.1", "0.0.0.0", "localhost", "10.0.0.5",
             "10.0.0.9", "10.9.9.9", CONTAINER_IP, "::ffff:172.17.0.2", "2852039166", "metadata.google.internal",
             "a@b", "1.2.3.4/x", "[::1]", "::1", "127.0.0.2", "10.0.0.7", "::ffff:127.0.0.1"]
PORTS = ["8500", "80", "443", "8080", "32768", "22", "²", "0", "65536", "8501", "2375", "9000", "9001", "8443"]
focused_labels = st.fixed_dictionaries(
    {"SERVICE_CHECK_" + kind: st.sampled_from(["/", "true", "/x"]) for kind in ("HTTP",)},
    optional={
        "SERVICE_CHECK_TCP": st.just("true"), "SERVICE_CHECK_HTTPS": st.just("/"), "SERVICE_CHECK_GRPC": st.just("1"),
        "SERVICE_CHECK_ADDRESS": st.sampled_from(ADDRESSES), "SERVICE_CHECK_PORT": st.sampled_from(PORTS),
        "SERVICE_IP": st.sampled_from(ADDRESSES), "SERVICE_80_CHECK_PORT": st.sampled_from(PORTS),
        "SERVICE_80_CHECK_ADDRESS": st.sampled_from(ADDRESSES),
    })


BROAD = CheckPolicy(allow=(parse_allow_rule("0.0.0.0/0"), parse_allow_rule("::/0")))


@settings(max_examples=600, deadline=None)
@given(labels=focused_labels, ports=port_maps, internal=st.booleans(),
       host_ip=st.sampled_from([None, "10.0.0.5", "127.0.0.1"]), broad=st.booleans())
def test_no_generated_container_gets_a_check_target_outside_the_policy(labels, ports, internal, host_ip, broad):
    """Without rules: only the container's own endpoints, as exact pairs (an oracle written
    here from the bindings, independent of mapping.py). With rules opening every address
    (0.0.0.0/0, ::/0): still never link-local, never the agent's port, never loopback
    unless it is the container's own pair at the address the daemon registers at."""
    map_settings = MappingSettings(hostname="h", internal=internal, host_ip=host_ip, default_address="10.0.0.9",
                                   checks=CheckSettings(policy=BROAD if broad else CheckPolicy()))
    records = map_container(container([], labels, ports), map_settings)
    chosen = host_ip or "10.0.0.9"  # an IPv4: the daemon registers there
    parseable = {key: bindings for key, bindings in ports.items()
                 if re.fullmatch(r"[0-9]{1,5}/(tcp|udp|sctp)", key) and 0 < int(key.split("/")[0]) < 65536}
    own = {(CONTAINER_IP, int(key.split("/")[0])) for key in parseable}
    for bindings in parseable.values():
        for binding in bindings if isinstance(bindings, list) else ():
            if not re.fullmatch(r"[0-9]{1,5}", binding["HostPort"]) or not 0 < int(binding["HostPort"]) < 65536:
                continue
            host_port, host_ip_ = int(binding["HostPort"]), binding["HostIp"]
            if host_ip_ in ("", "0.0.0.0"):
                own.add((chosen, host_port))
            elif host_ip_ != "::" and (not host_ip_.startswith("127.") or host_ip_ == chosen):
                own.add((host_ip_, host_port))
    for service in records.services:
        for check in service.checks:
            for host, port in check_targets(check):
                address = ipaddress.ip_address(host)
                address = address.ipv4_mapped or address if address.version == 6 else address
                assert not address.is_link_local
                if str(address) != CONTAINER_IP:
                    assert port != AGENT_PORT
                if address.is_loopback or address.is_unspecified:
                    assert (str(address), port) in own, (host, port, labels, ports)
                if not broad:
                    assert (str(address), port) in own, (host, port, labels, ports)


def reference_split_tags(raw: str) -> list[str]:
    """The character loop split_tags replaced (same results, quadratic-free regex now)."""
    tags, current, i = [], [], 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] == ",":
            current.append(",")
            i += 2
            continue
        if raw[i] == ",":
            tags.append("".join(current))
            current = []
        else:
            current.append(raw[i])
        i += 1
    tags.append("".join(current))
    return [t.strip() for t in tags if t.strip()]


@given(st.text(alphabet="ab ,\\\t", max_size=40))
def test_split_tags_keeps_its_old_meaning(raw):
    assert split_tags(raw) == reference_split_tags(raw)


@given(st.text(max_size=60))
def test_allow_rules_parse_or_raise_value_error(text):
    try:
        rule = parse_allow_rule(text)
    except ValueError as error:
        assert str(error)
    else:
        assert rule.network is not None or rule.hostname


@given(st.text(max_size=300))
def test_printable_leaves_nothing_unprintable(text):
    shown = printable(text)
    assert shown.isprintable() and "\n" not in shown and "\x1b" not in shown


template_pieces = st.sampled_from(['{{', '}}', ' ', '.ID', '.Config.Env', '.Config.Labels', '"x"', '"\\\\u00e9"', '`r`',
                                   '|', '(', ')', 'join', '","', 'split', 'matchFirstElement', '"^a(b+)+$"', '-1', '3',
                                   'sIndex', 'mIndex', 'index', 'replace', 'strSlice', 'toUpper', '"\\\\q"', 'httpGet'])


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(template_pieces, max_size=14), env=st.lists(st.text(max_size=30), max_size=5))
def test_templates_parse_or_fail_cleanly_and_render_or_fail_cleanly(pieces, env):
    try:
        template = Template("".join(pieces))
    except TemplateError:
        return
    try:
        assert isinstance(template.render({"Id": "abc", "Config": {"Env": env, "Labels": {"a": "b"}}}), str)
    except TemplateError:
        pass


# -- case folding (issue 20): one ID per fold, as in Consul's catalog --------------------------------

def fold(identifier: str) -> str:
    """The oracle: how Consul's catalog compares IDs (not the code's own fold_id)."""
    return identifier.lower()


SPELLINGS = ["web", "Web", "WEB", "api", "API", "web-sidecar-proxy", "WEB-sidecar-proxy"]
claims = st.lists(st.tuples(st.sampled_from(SPELLINGS[:5]), st.integers(0, 3)), min_size=1, max_size=8)


def claim_desires(drawn: list[tuple[str, int]]) -> list[ContainerDesire]:
    return [ContainerDesire(f"c{i}", f"n{i}", f"2026-01-0{second + 1}T00:00:00Z",
                            (Service(id=sid, name="s", address="10.0.0.1", port=80, container_id=f"c{i}"),))
            for i, (sid, second) in enumerate(drawn)]


@settings(max_examples=300, deadline=None)
@given(drawn=claims, order=st.randoms(use_true_random=False), removed=st.sets(st.integers(0, 7)))
def test_the_election_is_case_folded_newest_wins_and_order_free(drawn, order, removed):
    desires = claim_desires(drawn)
    whole = DesiredServices()
    whole.replace_all(desires)
    folds = [fold(sid) for sid in whole.by_id]
    assert len(folds) == len(set(folds)), whole.by_id  # one spelling per fold is desired
    for folded in {fold(sid) for sid, _ in drawn}:
        newest = max((d for d in desires if fold(d.services[0].id) == folded),
                     key=lambda d: (d.created, d.container_id))
        assert whole.by_id[newest.services[0].id].container_id == newest.container_id
    # One container at a time, in any order, then some removed: as a rebuild of what is left.
    stepwise, shuffled = DesiredServices(), list(desires)
    order.shuffle(shuffled)
    touched: set[str] = set()
    for desire in shuffled:
        touched |= stepwise.update(None, desire)[0]
    assert stepwise.by_id == whole.by_id and touched >= set(whole.by_id)
    left = [d for i, d in enumerate(desires) if i not in removed]
    for i in sorted(removed & set(range(len(desires)))):
        before = set(stepwise.by_id)
        affected, _ = stepwise.update(desires[i], None)
        assert (before ^ set(stepwise.by_id)) <= affected  # every spelling that came or went is planned
    rebuilt = DesiredServices()
    rebuilt.replace_all(left)
    assert stepwise.by_id == rebuilt.by_id


holders = st.dictionaries(st.sampled_from(SPELLINGS), st.sampled_from(["ours", "ours-c9", "foreign", "other-host",
                                                                      "sidecar-web", "sidecar-Web"]), max_size=5)


def agent_meta(holder: str) -> dict[str, str]:
    if holder.startswith("sidecar-"):
        return {"external-source": "consul-reg", "consul_reg_sidecar_for": holder.removeprefix("sidecar-")}
    if holder == "foreign":
        return {}
    return marker_meta("other" if holder == "other-host" else "h", "c9" if holder == "ours-c9" else "c1")


def agent_record(service_id: str, holder: str) -> RegisteredService:
    return RegisteredService(service_id, "s", meta=agent_meta(holder))


@settings(max_examples=400, deadline=None)
@given(records=holders, wanted=st.sampled_from(SPELLINGS[:5]), sidecar=st.booleans())
def test_the_guard_never_changes_a_record_that_is_not_ours_under_any_spelling(records, wanted, sidecar):
    """The guard and the one client over the agent's HTTP API (keyed by exact ID, filtered as
    Consul filters): whatever the agent holds, a registration leaves every record that is not
    ours as it was, and when it goes ahead no other spelling of the ID or its sidecar's ID
    remains that is not ours."""
    agent = HttpAgent({sid: {"Service": "s", "Meta": agent_meta(holder)} for sid, holder in records.items()})
    before = {sid: dict(record) for sid, record in agent.records.items()}
    service = Service(id=wanted, name="s", address="10.0.0.1", port=80, container_id="c1", container_name="n",
                      meta=tuple(sorted(marker_meta("h", "c1").items())), connect=Connect(sidecar=True) if sidecar
                      else None)
    guard = OwnershipGuard(agent.registry(), Owner("h"))
    try:
        guard.register(service)
        done = True
    except RegistryNotOurs:
        done = False
    ours = {sid for sid, holder in records.items() if holder in ("ours", "ours-c9")}
    parents = {wanted} | {sid for sid in ours if fold(sid) == fold(wanted)}  # ours under another spelling go
    sidecar_of_ours = {sid for sid, holder in records.items() if sidecar and holder.startswith("sidecar-")
                       and fold(sid) == fold(wanted + "-sidecar-proxy") and holder.removeprefix("sidecar-") in parents}
    for sid in set(before) - ours - sidecar_of_ours:
        assert agent.records.get(sid) == before[sid], (sid, records, agent.requests)
    if done:
        claimed = {fold(wanted)} | ({fold(wanted + "-sidecar-proxy")} if sidecar else set())
        assert [sid for sid in agent.records if fold(sid) in claimed and sid not in (wanted, wanted + "-sidecar-proxy")
                ] == [], (records, agent.requests)
    else:
        assert "PUT /v1/agent/service/register" not in agent.requests


@settings(max_examples=300, deadline=None)
@given(records=holders, wanted=st.sets(st.sampled_from(SPELLINGS[:5]), max_size=3), scoped=st.booleans())
def test_plan_never_writes_over_or_removes_a_spelling_that_is_not_ours(records, wanted, scoped):
    actual = {sid: agent_record(sid, holder) for sid, holder in records.items()}
    by_fold = {fold(sid): sid for sid in sorted(wanted)}  # the election leaves one spelling per fold
    desired = {sid: Service(id=sid, name="s", address="10.0.0.1", port=80, container_id="c1",
                            meta=tuple(sorted(marker_meta("h", "c1").items()))) for sid in by_fold.values()}
    scope = set(desired) | set(actual) if scoped else None
    result = plan(desired, actual, "h", scope=scope)
    not_ours = {fold(sid) for sid, record in actual.items() if not record.owned_by("h")}
    assert not [s for s in result.register if fold(s.id) in not_ours]
    assert all(record.owned_by("h") for record in result.deregister)
    assert {s.id for s in result.register} | {s.id for s, _ in result.blocked} == set(desired)
