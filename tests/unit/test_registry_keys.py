"""Property tests: any service ID or name either passes the identifier rules
and round-trips through every mirror's key unchanged, or is refused; nothing
ever yields a key outside the mirror's prefix."""

from __future__ import annotations

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_reg.core.records import Service
from consul_reg.mirrors.consulkv import ConsulKVRegistry
from consul_reg.mirrors.etcd import EtcdRegistry
from consul_reg.mirrors.skydns2 import SkyDNS2Registry
from consul_reg.mirrors.zookeeper import ZooKeeperRegistry
from consul_reg.mapping.validate import identifier_problem
from tests.unit.stub_agent import stub_client

ALPHABET = st.sampled_from(list("abcXYZ019-_.:@/\\%?#\n\x00 é.")) 
texts = st.one_of(st.text(min_size=0, max_size=20), st.text(ALPHABET, min_size=0, max_size=12),
                  st.sampled_from(["..", ".", "../../leave", "a/..", "vault/core/master", "%2e%2e", ""]))

MIRRORS = [
    ConsulKVRegistry(stub_client(lambda r: httpx.Response(200)),
                     "services", "h"),
    EtcdRegistry("127.0.0.1", 1, "services", "h", 300),
    SkyDNS2Registry("127.0.0.1", 1, "skydns.local", "h", 300, 0),
    ZooKeeperRegistry("127.0.0.1", 1, "services", "h"),
]
PREFIXES = ["services", "/services", "/skydns/local/skydns", "/services"]


def service(service_id: str, name: str) -> Service:
    return Service(id=service_id, name=name, address="10.0.0.1", port=80)


@settings(max_examples=400, deadline=None)
@given(texts, texts)
def test_every_key_stays_inside_its_prefix(service_id: str, name: str) -> None:
    wanted = service(service_id, name)
    for mirror, prefix in zip(MIRRORS, PREFIXES):
        if mirror.accepts(wanted):
            continue  # refused for this mirror, with the reason as a warning
        key = mirror.key_of(wanted)
        assert key.startswith(prefix + "/")
        segments = key[len(prefix) + 1:].split("/")
        assert len(segments) == 2 and all(s not in ("", ".", "..") for s in segments)
        assert segments[0] == name  # the service name is one whole segment, as written


@settings(max_examples=400, deadline=None)
@given(texts, texts)
def test_valid_identifiers_round_trip_unchanged_through_every_mirror(service_id: str, name: str) -> None:
    if identifier_problem(service_id) or identifier_problem(name, "service name"):
        return
    wanted = service(service_id, name)
    for mirror, prefix in zip(MIRRORS, PREFIXES):
        refusal = mirror.accepts(wanted)
        if isinstance(mirror, SkyDNS2Registry) and refusal:
            assert "DNS label" in refusal  # SkyDNS serves names: a stricter rule, said so
            continue
        assert refusal == ""
        rest = mirror.key_of(wanted)[len(prefix) + 1:]
        got_name, _, got_last = rest.partition("/")
        assert got_name == name
        expected_last = "10.0.0.1:80" if isinstance(mirror, ZooKeeperRegistry) else service_id
        assert got_last == expected_last


def test_the_issues_examples_are_refused_before_any_mirror() -> None:
    for value in ("..", "../../leave", "vault/core/master", "x/../payments", "web\nINFO forged"):
        assert identifier_problem(value) is not None
