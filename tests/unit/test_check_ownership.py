"""The agent's check IDs are agent-wide: the guard never registers a service whose
check ID another service holds (the registration would move that check), and the
one client looks checks up with a filter built only from safe IDs."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest

from consul_reg.core.records import Check, DaemonProbe, Owner, Service, marker_meta
from consul_reg.core.errors import RegistryError, RegistryNotOurs
from consul_reg.consul.agent import ConsulRegistry
from consul_reg.consul.guard import OwnershipGuard, check_origin
from consul_reg.consul.memory import MemoryRegistry
from tests.unit.fakes import agent_filter
from tests.unit.stub_agent import stub_client

def agent(checks: dict[str, str]) -> tuple[OwnershipGuard, list[str]]:
    """An agent with no services and these checks (check ID -> service ID), answering
    the listings' filters as Consul does."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = urllib.parse.parse_qs(request.url.query.decode())
        seen.append(f"{request.method} {request.url.path}" + (f" {query['filter'][0]}" if "filter" in query else ""))
        keeps = agent_filter(query["filter"][0] if "filter" in query else None)
        if request.url.path == "/v1/agent/checks":
            return httpx.Response(200, json={cid: {"CheckID": cid, "ServiceID": sid}
                                             for cid, sid in checks.items() if keeps(cid)})
        if request.url.path == "/v1/agent/services":
            return httpx.Response(200, json={})
        return httpx.Response(200, text="")

    client = stub_client(handler)
    return OwnershipGuard(ConsulRegistry(client), Owner("h")), seen


def service(sid: str, *check_ids: str) -> Service:
    return Service(id=sid, name="evil", address="1.2.3.4", port=80, container_name="evil",
                   meta=tuple(sorted(marker_meta("h", "c1").items())),
                   checks=tuple(Check(cid, "c", (("TTL", "1h"),)) for cid in check_ids))


def test_a_service_whose_check_another_service_holds_is_refused_without_a_write() -> None:
    guard, seen = agent({"service:payments:1": "payments", "service:payments:2": "payments"})
    with pytest.raises(RegistryNotOurs, match=r"container evil: check service:payments:1 \(from SERVICE_CHECK_TTL\) "
                                              r"is already the check of service 'payments'; payments:1 is not"):
        guard.register(service("payments:1", "service:payments:1"))
    assert seen == ['GET /v1/agent/services ID matches "(?i)^(payments:1)$"',
                    'GET /v1/agent/checks CheckID matches "(?i)^(serv[i\u0130]ce:payments:1)$"'], "no PUT"


def test_a_node_check_is_not_taken_over_either() -> None:
    guard, seen = agent({"service:web:http": ""})
    with pytest.raises(RegistryNotOurs, match="is already the check of a node check"):
        guard.register(service("web", "service:web:http", "service:web"))
    assert not [s for s in seen if s.startswith("PUT")]
    assert seen[-1] == 'GET /v1/agent/checks CheckID matches "(?i)^(serv[i\u0130]ce:web|serv[i\u0130]ce:web:http)$"'


def test_checks_absent_or_already_this_services_are_registered() -> None:
    guard, seen = agent({"service:web:http": "web"})
    guard.register(service("web", "service:web:http", "service:web:tcp"))
    guard.register(service("plain"))  # no check: no check lookup
    assert seen[-4:] == ['GET /v1/agent/checks CheckID matches "(?i)^(serv[i\u0130]ce:web:http|serv[i\u0130]ce:web:tcp)$"',
                         "PUT /v1/agent/service/register", 'GET /v1/agent/services ID matches "(?i)^(pla[i\u0130]n)$"',
                         "PUT /v1/agent/service/register"]


def test_a_check_id_that_could_break_out_of_the_filter_is_never_sent() -> None:
    guard, seen = agent({})
    for unsafe in ('x" or CheckID != "', "a\\b", "a b", ""):
        with pytest.raises(RegistryError, match="unsafe characters"):
            guard.registry.check_owners([unsafe])
    assert seen == []
    assert guard.registry.check_owners([]) == {} and seen == []


def test_the_whole_listing_maps_checks_to_their_service() -> None:
    guard, seen = agent({"service:a:1": "a", "serfHealth": ""})
    assert guard.check_owners() == {"service:a:1": "a", "serfHealth": ""} and seen == ["GET /v1/agent/checks"]


def test_the_origin_of_a_check_is_told_by_its_id() -> None:
    assert check_origin("a:b", "service:a:b") == "SERVICE_CHECK_TTL"
    assert check_origin("a:b", "service:a:b:https") == "SERVICE_CHECK_HTTPS"
    assert check_origin("a", "service:a:heartbeat") == "the daemon's own heartbeat check"
    assert check_origin("a", "service:a:ready") == check_origin("a", "service:a:1") == "SERVICE_CHECKS"


def test_the_memory_primary_keeps_each_check_with_its_service() -> None:
    memory = MemoryRegistry()
    probe = DaemonProbe(kind="heartbeat", interval=10.0)
    memory.register(service("a", "service:a", "service:a:http"))
    memory.register(Service(id="b", name="b", address="", port=None,
                            checks=(Check("service:b:heartbeat", "hb", daemon_probe=probe),)))
    memory.register(service("a", "service:a"))  # re-registered with one check less
    assert memory.check_owners() == {"service:a": "a", "service:b:heartbeat": "b"}
    memory.deregister(memory.services()["b"])
    assert memory.check_owners() == {"service:a": "a"}
