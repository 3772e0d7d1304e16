"""Issue 20, part B: IDs compare case-folded wherever ownership or a contest is
decided (Consul's catalog holds `payments` and `Payments` as one row); a custom ID
may not be shaped like any host's default ID; a sidecar registration never
replaces a `<id>-sidecar-proxy` that is not ours for that `<id>`. The guard over a
fake agent, the planner, the election, the mapping, and the one client's reads."""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any, Iterator

import httpx
import pytest
from loguru import logger

from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.core.records import (
    SIDECAR_FOR_KEY,
    Check,
    Connect,
    ContainerDesire,
    Owner,
    RegisteredService,
    Service,
    marker_meta,
    registered_form,
)
from consul_reg.core.plan import DesiredServices, plan
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.consul.agent import ConsulRegistry
from consul_reg.mirrors.consulkv import ConsulKVRegistry
from consul_reg.consul.guard import OwnershipGuard
from consul_reg.mirrors.keys import owner_tag
from consul_reg.core.messages import Reload, Start
from consul_reg.mapping.default_ids import default_id_host
from tests.unit.fakes import FakeAgent, agent_filter, container
from tests.unit.stub_agent import stub_client
from tests.unit.test_loop import Harness, event

OWNER = Owner("h")


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(lambda message: seen.append(message.record["message"]), level="WARNING")
    yield seen
    logger.remove(sink)


def service(service_id: str, *check_ids: str, container_id: str = "c1", sidecar: bool = False) -> Service:
    return Service(id=service_id, name="web", address="10.0.0.1", port=80, container_id=container_id,
                   container_name="evil", meta=tuple(sorted(marker_meta("h", container_id).items())),
                   checks=tuple(Check(c, "c", (("TTL", "1h"),)) for c in check_ids),
                   connect=Connect(sidecar=True) if sidecar else None)


def guard_over(*records: RegisteredService) -> tuple[OwnershipGuard, FakeAgent]:
    agent = FakeAgent()
    for record in records:
        agent.records[record.id] = record
    return OwnershipGuard(agent, OWNER), agent


HAND = RegisteredService("payments", "payments", port=9999)  # an operator's, registered by hand


# -- the guard ---------------------------------------------------------------------------------------


def test_a_spelling_of_a_record_not_ours_is_refused_with_both_ids_named_and_nothing_written() -> None:
    guard, agent = guard_over(HAND)
    with pytest.raises(RegistryNotOurs, match=r"container evil: service ID 'Payments' differs only in case from "
                                              r"'payments', registered by someone else \(by hand"):
        guard.register(service("Payments"))
    assert agent.writes() == [] and agent.calls == [("services matching", "Payments")]


def test_the_exact_id_held_by_someone_else_keeps_its_usual_message() -> None:
    guard, agent = guard_over(HAND, RegisteredService("PAYMENTS", "x"))
    with pytest.raises(RegistryNotOurs, match="payments was registered meanwhile by someone else"):
        guard.register(service("payments"))
    assert agent.writes() == []


def test_our_record_under_another_spelling_goes_before_the_new_spelling_is_registered() -> None:
    """The catalog deletes by folded ID: removing `WEB` after `web` was synced would
    delete `web`'s row. So the old spelling goes first."""
    old = registered_form(service("WEB", container_id="c0"))
    guard, agent = guard_over(old)
    agent.register(service("WEB", "service:WEB", container_id="c0"))
    agent.calls.clear()
    guard.register(service("web", "service:web"))
    assert agent.writes() == [("deregister", "WEB"), ("register", "web")]
    assert set(agent.records) == {"web"} and agent.check_service == {"service:web": "web"}


def test_a_check_id_that_differs_only_in_case_from_another_services_check_is_refused() -> None:
    guard, agent = guard_over(HAND)
    agent.checks["service:payments:1"] = ("passing", "")
    agent.check_service["service:payments:1"] = "payments"
    with pytest.raises(RegistryNotOurs, match=r"check service:Payments:1 \(from SERVICE_CHECK_TTL\) is already the "
                                              r"check of service 'payments' \(as service:payments:1"):
        guard.register(service("Payments:1", "service:Payments:1"))
    assert agent.writes() == [] and agent.check_service == {"service:payments:1": "payments"}


@pytest.mark.parametrize("holder", [
    RegisteredService("web-sidecar-proxy", "hand-made", port=21000),  # by hand
    RegisteredService("WEB-sidecar-proxy", "hand-made", port=21000),  # another spelling: one catalog row
    RegisteredService("web-sidecar-proxy", "x", meta={"external-source": "consul-reg", SIDECAR_FOR_KEY: "web2"}),
    registered_form(service("web-sidecar-proxy", container_id="c9")),  # our plain service of that ID
])
def test_a_sidecar_registration_never_replaces_a_sidecar_id_not_ours_for_this_id(holder: RegisteredService) -> None:
    guard, agent = guard_over(holder)
    with pytest.raises(RegistryNotOurs, match="the sidecar proxy ID 'web-sidecar-proxy' of web is already registered"):
        guard.register(service("web", sidecar=True))
    assert agent.writes() == [] and agent.records == {holder.id: holder}
    assert agent.calls == [("services matching", "web,web-sidecar-proxy")], "one read for the ID and its sidecar"


def test_a_sidecar_ours_for_this_id_or_for_a_spelling_it_replaces_is_no_obstacle() -> None:
    marker = {"external-source": "consul-reg"}
    guard, agent = guard_over(RegisteredService("web-sidecar-proxy", "web-sidecar-proxy",
                                                meta={**marker, SIDECAR_FOR_KEY: "web"}))
    guard.register(service("web", sidecar=True))
    assert agent.writes() == [("register", "web")]
    old = registered_form(service("Web", container_id="c0"))
    guard, agent = guard_over(old, RegisteredService("Web-sidecar-proxy", "p", meta={**marker, SIDECAR_FOR_KEY: "Web"}))
    guard.register(service("web", sidecar=True))  # the old spelling's sidecar goes with it (if the agent left it)
    assert agent.writes() == [("deregister", "Web"), ("deregister", "Web-sidecar-proxy"), ("register", "web")]


def test_without_connect_the_sidecar_id_is_not_looked_at() -> None:
    guard, agent = guard_over(RegisteredService("web-sidecar-proxy", "hand-made"))
    guard.register(service("web"))
    assert agent.writes() == [("register", "web")]


def test_removing_ours_beside_a_foreign_spelling_warns_that_the_catalog_may_miss_it(warnings: list[str]) -> None:
    ours = registered_form(service("Payments"))
    guard, agent = guard_over(HAND, ours)
    guard.deregister(ours)
    assert agent.writes() == [("deregister", "Payments")] and "payments" in agent.records
    assert any("deregistered Payments; the agent also holds 'payments'" in w for w in warnings), warnings


# -- the one client's read -------------------------------------------------------------------------


def listing_agent(services: dict[str, dict[str, Any]], folds: bool = True) -> tuple[ConsulRegistry, list[str]]:
    """An agent answering /v1/agent/services and its filter; `folds=False`: one whose
    filter language has no `matches` (400, as go-bexpr before regexes)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = urllib.parse.parse_qs(request.url.query.decode())
        expression = query["filter"][0] if "filter" in query else None
        seen.append(expression or "unfiltered")
        if expression is not None and not folds:
            return httpx.Response(400, text='Failed to create boolean expression evaluator: invalid operator "matches"')
        keeps = agent_filter(expression)
        return httpx.Response(200, json={sid: s for sid, s in services.items() if keeps(sid)})

    client = stub_client(handler)
    return ConsulRegistry(client), seen


LISTED = {"payments": {"Service": "payments", "Meta": {}}, "PayMents": {"Service": "x", "Meta": {}},
          "payments2": {"Service": "y", "Meta": {}}, "pay.ments": {"Service": "z", "Meta": {}}}


def test_one_filtered_read_finds_every_spelling_and_a_dot_is_only_a_dot() -> None:
    registry, seen = listing_agent(LISTED)
    assert set(registry.services_matching(["Payments"])) == {"payments", "PayMents"}
    assert set(registry.services_matching(["pay.ments"])) == {"pay.ments"}
    assert seen == ['ID matches "(?i)^(Payments)$"', 'ID matches "(?i)^(pay[.]ments)$"']


def test_an_agent_without_regex_filters_is_read_whole_and_folded_here() -> None:
    registry, seen = listing_agent(LISTED, folds=False)
    assert set(registry.services_matching(["Payments"])) == {"payments", "PayMents"}
    assert set(registry.services_matching(["pay.ments"])) == {"pay.ments"}
    assert seen == ['ID matches "(?i)^(Payments)$"', "unfiltered", "unfiltered"], "asked once, then never again"


# -- the planner and the election ------------------------------------------------------------------


def test_plan_blocks_a_service_whose_key_another_writer_holds_under_another_spelling() -> None:
    wanted = service("Payments")
    result = plan({wanted.id: wanted}, {HAND.id: HAND}, "h")
    assert not result and result.blocked == ((wanted, HAND),)
    scoped = plan({wanted.id: wanted}, {HAND.id: HAND}, "h", scope={"Payments"})
    assert scoped.blocked == ((wanted, HAND),) and not scoped.deregister


def test_plan_replaces_our_other_spelling_even_of_a_kept_container() -> None:
    wanted = service("web", container_id="new")
    old = registered_form(service("WEB", container_id="dead"))
    for scope in (None, {"web"}):
        result = plan({wanted.id: wanted}, {old.id: old}, "h", scope=scope, kept_containers={"dead"})
        assert result.register == (wanted,) and result.deregister == (old,), scope


def desire(container_id: str, created: str, *service_ids: str) -> ContainerDesire:
    return ContainerDesire(container_id, container_id, created,
                           tuple(service(s, container_id=container_id) for s in service_ids))


def test_ids_that_differ_only_in_case_are_one_contest_and_the_newest_wins() -> None:
    desired = DesiredServices()
    older, newer = desire("old", "2026-01-01T00:00:00Z", "web"), desire("new", "2026-01-02T00:00:00Z", "WEB")
    affected, _ = desired.update(None, older)
    assert affected == {"web"} and desired.holds("old", "web")
    affected, warnings = desired.update(None, newer)
    assert set(desired.by_id) == {"WEB"} and desired.holds("new", "WEB") and not desired.holds("old", "web")
    assert affected == {"web", "WEB"}, "the old spelling's record must go, the new one's come"
    assert desired.claimants(["web"]) == desired.claimants(["WEB"]) == {"old", "new"}
    assert warnings == ["service IDs 'WEB', 'web' differ only in case (one ID in Consul's catalog) and are declared "
                        "by containers new and old: the newest, new, gets it, as 'WEB'"]
    affected, _ = desired.update(newer, None)
    assert set(desired.by_id) == {"web"} and desired.holds("old", "web") and affected == {"web", "WEB"}


def test_two_ports_of_one_container_declaring_two_spellings_register_the_first() -> None:
    desired = DesiredServices()
    _, warnings = desired.update(None, desire("c1", "2026-01-01T00:00:00Z", "web", "Web"))
    assert set(desired.by_id) == {"web"}
    assert warnings == ["container c1: two of its ports declare service IDs 'web' and 'Web', which differ only in "
                        "case (one ID in Consul's catalog); the first is registered"]


# -- the loop, through the guard -------------------------------------------------------------------


def test_a_container_declaring_another_spelling_of_a_hand_registered_id_never_touches_it(
        warnings: list[str]) -> None:
    h = Harness(guard=True)
    h.agent.records["payments"] = HAND
    h.send(Start())
    h.docker.add(container("c1", "evil", ports={"80/tcp": "8080"},
                           labels={"SERVICE_ID": "Payments", "SERVICE_CHECK_TTL": "1h"}))
    h.send(event("c1", "start"))
    h.send(Reload())
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "kill", signal="15"))
    h.send(event("c1", "die", exitCode="143"))
    assert h.agent.records == {"payments": HAND} and h.agent.maintenance == {}
    assert not [c for c in h.agent.writes() if c[1].lower() == "payments"]
    assert any("container evil: service ID 'Payments' differs only in case from 'payments'" in w
               for w in warnings), warnings


def test_two_containers_claiming_two_spellings_leave_one_record_the_newest(warnings: list[str]) -> None:
    h = Harness(guard=True)
    h.send(Start())
    h.docker.add(container("c1", "old", ports={"80/tcp": "8080"}, labels={"SERVICE_ID": "web"},
                           created="2026-01-01T00:00:00Z"))
    h.send(event("c1", "start"))
    assert set(h.agent.records) == {"web"}
    h.docker.add(container("c2", "new", ports={"80/tcp": "8081"}, labels={"SERVICE_ID": "WEB"},
                           created="2026-01-02T00:00:00Z"))
    h.send(event("c2", "start"))
    assert set(h.agent.records) == {"WEB"} and h.agent.records["WEB"].container_id == "c2"
    assert h.agent.writes()[-2:] == [("deregister", "web"), ("register", "WEB")]
    del h.docker.containers["c2"]
    h.send(event("c2", "destroy"))
    assert set(h.agent.records) == {"web"} and h.agent.records["web"].container_id == "c1"
    assert any("differ only in case" in w and "the newest, new, gets it" in w for w in warnings), warnings


# -- every host's namespace ------------------------------------------------------------------------


@pytest.mark.parametrize("value,host", [
    ("host2:web:80", "host2"), ("host2:web:80:udp", "host2"), ("HOST2:web.1:8080:UDP", "HOST2"),
    ("host2:worker", "host2"), ("node-1.example.com:redis_1", "node-1.example.com"), ("redis:cache", "redis"),
    ("web:8080", None), ("payments:1", None), ("billing-x:1", None), ("payments", None), ("a:b:c", None),
    ("a:b:80:tcp", None), ("a:b:c:d", None), ("https.1", None),
])
def test_what_is_shaped_like_a_hosts_default_id(value: str, host: str | None) -> None:
    assert default_id_host(value) == host


def test_a_container_may_not_choose_another_hosts_default_id_but_keeps_name_number_ids() -> None:
    settings = MappingSettings(hostname="host1", default_address="10.0.0.5")
    labels = {"SERVICE_80_ID": "host2:web:80", "SERVICE_81_ID": "host2:worker", "SERVICE_82_ID": "web:8080",
              "SERVICE_83_ID": "payments:1"}
    inspect = container("c1", "evil", ports={f"{p}/tcp": str(30000 + p) for p in (80, 81, 82, 83)}, labels=labels)
    records = map_container(inspect, settings)
    assert sorted(s.id for s in records.services) == ["payments:1", "web:8080"]
    for refused, host in (("host2:web:80", "host2"), ("host2:worker", "host2")):
        assert any(f"={refused!r}: it has the shape of host {host!r}'s default IDs" in w and "skipped" in w
                   for w in records.warnings), records.warnings


# -- Consul KV: the rightful host takes its default ID back ------------------------------------------


def test_consul_kv_lists_a_taken_default_id_as_absent_and_writes_over_it_on_its_index() -> None:
    key = "svc/web/h:web:80"
    entries = {key: ("10.9.9.9:1", owner_tag("host2"), 41)}
    writes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = urllib.parse.unquote(request.url.path).removeprefix("/v1/kv/")
        if request.method == "PUT":
            writes.append(f"{path} {request.url.query.decode()} {request.content.decode()}")
            return httpx.Response(200, text="true")
        found = [(k, v) for k, v in entries.items() if k == path or k.startswith(path + "/")]
        return httpx.Response(200, json=[{"Key": k, "Value": base64.b64encode(v.encode()).decode(), "Flags": f,
                                          "ModifyIndex": i} for k, (v, f, i) in found])

    client = stub_client(handler)
    rightful = ConsulKVRegistry(client, "svc", Owner("h"))
    assert rightful.services() == {}, "never removed: it did not write it"
    rightful.register(Service(id="h:web:80", name="web", address="10.0.0.1", port=32768))
    assert writes == [f"{key} flags={owner_tag('h')}&cas=41 10.0.0.1:32768"]
    with pytest.raises(RegistryNotOurs):  # another --instance of the host takes nothing back
        ConsulKVRegistry(client, "svc", Owner("h", "blue")).register(
            Service(id="h:web:80", name="web", address="10.0.0.1", port=32768))


def test_a_json_check_id_differing_only_in_case_from_another_check_of_the_service_is_renamed() -> None:
    """`service:web:HTTP` and `service:web:http` would be two checks in the agent, one in the catalog."""
    settings = MappingSettings(hostname="host1", default_address="10.0.0.5")
    labels = {"SERVICE_ID": "web", "SERVICE_CHECK_HTTP": "/health",
              "SERVICE_CHECKS": '[{"ID": "HTTP", "TTL": "1h"}, {"ID": "Http", "TTL": "1h"}]'}
    records = map_container(container("c1", "web", ports={"80/tcp": "8080"}, labels=labels), settings)
    (web,) = records.services
    assert [c.check_id for c in web.checks] == ["service:web:http", "service:web:HTTP-2", "service:web:Http-3"]
