"""The read ahead's filtered read (issue 24) against a real Consul agent: the agent's
own `matches` filter decides what a batch's writes are checked against, so what it
returns for a scope of IDs and ID prefixes is checked here, every spelling included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry
from consul_reg.consul.guard import OwnershipGuard
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.core.records import Holdings, Owner, ReadScope, Service, marker_meta
from tests.integration.conftest import OwnAgent


def test_a_scoped_read_returns_every_spelling_of_its_ids_and_prefixes_and_nothing_else(tmp_path: Path) -> None:
    agent = OwnAgent(tmp_path).start()
    client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", agent.http_port))
    try:
        registry = ConsulRegistry(client)
        inside = ["h1:web.v2:80", "H1:WEB.V2:81:udp", "h1:web.v2", "h1:web.v2:80-sidecar-proxy", "payments"]
        outside = ["h1:web.v20:80", "h1:webXv2:80", "xh1:web.v2:80", "h1:web.v2x", "h2:web.v2:80", "payments2",
                   "h1:api:80"]
        for service_id in inside + outside:
            client.call("PUT", ("agent", "service", "register"), "register",
                        body=json.dumps({"ID": service_id, "Name": "x"}).encode())
        scope = ReadScope(frozenset({"h1:web.v2:"}), frozenset({"h1:web.v2", "PAYMENTS"}))
        assert set(registry.services_in(scope)) == set(inside)
        assert all(scope.covers(service_id) for service_id in inside)
        assert not any(scope.covers(service_id) for service_id in outside)
        assert registry.services_in(ReadScope()) == {}
    finally:
        client.close()
        agent.stop()


def test_an_id_spelled_with_a_dotted_capital_i_is_one_catalog_row_with_ours_and_is_never_written_over(
        tmp_path: Path) -> None:
    """Consul's catalog lower-cases IDs with Go's strings.ToLower, which maps `İ` (U+0130)
    to `i`, whereas Go's `(?i)` does not fold `i` to `İ`: an operator's `MİNİ:web:80` is one
    catalog row with host mini's `mini:web:80`. Every read the writes are checked against
    (the write's own, the read ahead) must see it, and the guard refuse to register ours."""
    agent = OwnAgent(tmp_path).start()
    client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", agent.http_port))
    try:
        registry = ConsulRegistry(client)
        theirs = "M\u0130N\u0130:web:80"
        client.call("PUT", ("agent", "service", "register"), "register",
                    body=json.dumps({"ID": theirs, "Name": "by-hand"}).encode())
        assert set(registry.services_matching(["mini:web:80"])) == {theirs}
        scope = ReadScope(frozenset({"mini:web:"}), frozenset({"mini:web"}))
        held = Holdings(registry.services_in_later(scope).result(), None, 0.0, scope)
        assert held.covers(["mini:web:80"]) and set(held.services_matching(["mini:web:80"])) == {theirs}
        ours = Service(id="mini:web:80", name="web", address="10.0.0.1", port=80, container_id="c1",
                       container_name="web", meta=tuple(sorted(marker_meta("mini", "c1").items())))
        guard = OwnershipGuard(registry, Owner("mini"))
        for writes in (guard, guard.checked_against(held)):
            with pytest.raises(RegistryNotOurs):
                writes.register(ours)
        assert set(registry.services()) == {theirs}
    finally:
        client.close()
        agent.stop()
