"""Property tests: the label/env parser, the mapping and the check translation
never raise, whatever a container declares; bad keys cost warnings only."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consul_reg.checks import CheckSettings, service_checks
from consul_reg.labels import KeyValue, collect, split_tags
from consul_reg.mapping import MappingSettings, map_container
from consul_reg.registries.consul import registration_payload

SUFFIXES = ["NAME", "ID", "TAGS", "IGNORE", "IP", "NETWORK", "CHECK_HTTP", "CHECK_TCP", "CHECK_INTERVAL",
            "CHECK_TIMEOUT", "CHECK_TTL", "CHECK_SCRIPT", "CHECK_DOCKER", "CHECK_GRPC", "CHECK_HTTP_HEADER_X",
            "CHECK_INITIAL_STATUS", "CHECK_DEREGISTER_AFTER", "CHECK_PORT", "CHECK_ADDRESS", "HEARTBEAT_TTL",
            "HEARTBEAT_INTERVAL", "CHECK_HTTP_METHOD", "CHECK_FAILURES_BEFORE_CRITICAL", "REGION", "X"]
service_keys = st.one_of(
    st.builds(lambda s: "SERVICE_" + s, st.sampled_from(SUFFIXES)),
    st.builds(lambda p, s: f"SERVICE_{p}_{s}", st.sampled_from(["80", "443", "0", "99999", "8o", ""]),
              st.sampled_from(SUFFIXES)),
    st.builds(lambda s: "SERVICE_" + s, st.text(max_size=40)),
    st.text(max_size=40),
)
values = st.one_of(st.text(max_size=200), st.sampled_from(["", " ", "true", "0", "10s", "banana", "1m30s",
                                                           "-1", "/health", "a\\,b,c", "\x00", "é" * 600]))
label_maps = st.dictionaries(service_keys, values, max_size=40)
env_lists = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", service_keys, values), st.text(max_size=30)),
                     max_size=40)


def container(env, labels, ports) -> dict:
    return {"Id": "f" * 64, "Name": "/hostile", "Config": {"Image": "x/y:z", "Env": env, "Labels": labels,
                                                             "Healthcheck": {"Test": ["CMD", "true"]}},
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": {"Ports": ports, "Networks": {"bridge": {"IPAddress": "172.17.0.2"}}}}


port_maps = st.dictionaries(st.sampled_from(["80/tcp", "443/tcp", "53/udp", "x", "0/tcp", "70000/tcp"]),
                            st.one_of(st.none(), st.just([{"HostIp": "0.0.0.0", "HostPort": "8080"}]),
                                      st.just([{"HostIp": "", "HostPort": "abc"}]), st.just("junk")), max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=env_lists, labels=label_maps, ports=port_maps, internal=st.booleans(), scripts=st.booleans())
def test_mapping_never_raises_and_payloads_are_valid(env, labels, ports, internal, scripts):
    map_settings = MappingSettings(hostname="h", internal=internal,
                                   checks=CheckSettings(agent_runs_scripts=scripts))
    records = map_container(container(env, labels, ports), map_settings)
    for service in records.services:
        payload = registration_payload(service)
        assert len(payload["Meta"]) <= 64
        assert all(len(k) <= 128 and len(v) <= 512 for k, v in payload["Meta"].items())
        assert all(not k.startswith("consul-") for k in payload["Meta"])
        assert payload["Name"] and payload["ID"]
    assert all(isinstance(w, str) for w in records.warnings)


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
