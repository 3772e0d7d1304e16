"""The read ahead's filtered read (issue 24) against a real Consul agent: the agent's
own `matches` filter decides what a batch's writes are checked against, so what it
returns for a scope of IDs and ID prefixes is checked here, every spelling included."""

from __future__ import annotations

import json
from pathlib import Path

from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry
from consul_reg.core.records import ReadScope
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
