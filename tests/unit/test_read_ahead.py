"""The ownership read made ahead (issue 24): a batch's writes are checked against one
read of the agent made when the loop took the batch's events, beside Docker's
inspects, instead of a read each after the inspect. The rule stays: a record that
is not this daemon's and was present when the events were taken is never
overwritten nor removed. Fake Docker, fake agent behind the real guard, fake clock."""

from __future__ import annotations

import threading

from consul_reg.consul.guard import OwnershipGuard
from consul_reg.core.messages import Start
from consul_reg.core.records import Holdings, Owner, RegisteredService, Service, marker_meta, registered_form
from tests.unit.fakes import FakeAgent, container
from tests.unit.test_loop import HOST, Harness, event


def guarded() -> Harness:
    h = Harness(guard=True)
    h.send(Start())
    return h


def reads(h: Harness) -> list[tuple[str, str]]:
    return [call for call in h.agent.calls if call[0] in ("services", "services in", "services matching", "checks")]


def test_a_start_reads_the_agent_once_when_the_event_is_taken_not_after_the_inspect() -> None:
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.calls.clear()
    h.send(event("c1", "start", name="web"))
    assert h.ids() == {"h1:web:80"}
    assert reads(h) == [("services in", "h1:web,h1:web:*")], "one read of the container's default IDs, none per write"


def test_a_starts_read_is_sent_from_the_loops_thread_before_dockers_inspect() -> None:
    """Sent after the inspect, on the writes' pool, the read answered after the inspect
    and held the register back (~0.5 ms per start, BENCHMARKS.md): it goes first now."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    order: list[tuple[str, str]] = []
    read, inspect = h.agent.services_in_later, h.docker.inspect

    def read_now(scope, wait=True):  # type: ignore[no-untyped-def]
        order.append(("read", threading.current_thread().name))
        return read(scope, wait)

    def inspect_now(container_id):  # type: ignore[no-untyped-def]
        order.append(("inspect", threading.current_thread().name))
        return inspect(container_id)
    h.agent.services_in_later = read_now  # type: ignore[method-assign]
    h.docker.inspect = inspect_now  # type: ignore[method-assign]
    h.send(event("c1", "start", name="web"))
    assert h.ids() == {"h1:web:80"}
    assert [what for what, _ in order] == ["read", "inspect"], order
    assert order[0][1] == threading.current_thread().name, "the read is sent by the loop's own thread"


def test_a_foreign_record_that_appeared_since_the_last_listing_is_never_overwritten() -> None:
    h = guarded()
    # Registered by hand after the loop's last listing, before the container's event.
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand", "10.9.9.9", 1)
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start", name="web"))
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert ("register", "h1:web:80") not in h.agent.calls
    # ...nor removed at the container's death.
    h.docker.add(container("c2", "api", ports={"81/tcp": "8081"}))
    h.send(event("c2", "start", name="api"))
    h.docker.containers["c1"]["State"]["Running"] = False
    h.docker.containers["c2"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="0", name="web"), event("c2", "die", exitCode="0", name="api"))
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert "h1:api:81" not in h.agent.records


def test_a_foreign_record_under_another_spelling_is_seen_by_the_read_ahead() -> None:
    h = guarded()
    h.agent.records["H1:WEB:80"] = RegisteredService("H1:WEB:80", "by-hand")
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.calls.clear()
    h.send(event("c1", "start", name="web"))
    assert set(h.agent.records) == {"H1:WEB:80"}
    assert [c[0] for c in reads(h)] == ["services in"], "refused on the read ahead alone"


def test_the_read_ahead_asks_only_for_the_batchs_ids_however_many_records_the_agent_holds() -> None:
    h = guarded()
    for n in range(150):
        h.agent.records[f"other-{n}"] = RegisteredService(f"other-{n}", "other")
    h.primary.relist()
    h.send()  # the loop lists the agent again
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.docker.add(container("c2", "api", ports={"81/tcp": "8081"}))
    h.agent.calls.clear()
    h.send(event("c1", "start", name="web"), event("c2", "start", name="api"))
    assert {"h1:web:80", "h1:api:81"} <= h.ids()
    assert reads(h) == [("services in", "h1:api,h1:api:*,h1:web,h1:web:*")]


def test_an_id_outside_the_read_ahead_is_read_by_its_write() -> None:
    """A custom ID (from the container's env, which no event carries) is not in the read
    ahead: its write reads the agent itself and still refuses a record not ours."""
    h = guarded()
    h.agent.records["payments"] = RegisteredService("payments", "by-hand")
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, env=["SERVICE_ID=payments"]))
    h.agent.calls.clear()
    h.send(event("c1", "start", name="web"))
    assert h.agent.records["payments"].name == "by-hand"
    assert ("register", "payments") not in h.agent.calls
    assert ("services matching", "payments") in reads(h)


def test_an_event_naming_another_container_costs_a_read_never_the_check() -> None:
    """The event's name is only a hint: a container whose event named another (renamed
    meanwhile, or a label posing as the name) gets its IDs read by the write."""
    h = guarded()
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand")
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.calls.clear()
    h.send(event("c1", "start", name="not-web"))
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert ("register", "h1:web:80") not in h.agent.calls
    assert ("services matching", "h1:web:80") in reads(h)


def test_a_single_death_is_checked_against_the_read_made_when_its_event_was_taken() -> None:
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start", name="web"))
    h.docker.containers["c1"]["State"]["Running"] = False
    h.agent.calls.clear()
    h.send(event("c1", "die", exitCode="0", name="web"))
    assert "h1:web:80" not in h.agent.records
    assert reads(h) == [("services in", "h1:web,h1:web:*,h1:web:80")]


def service(service_id: str) -> Service:
    return Service(id=service_id, name="web", address="10.0.0.1", port=80, container_id="c1", container_name="web",
                   meta=tuple(sorted(marker_meta(HOST, "c1").items())))


def test_an_id_the_batch_already_wrote_is_read_again_before_its_next_write() -> None:
    agent = FakeAgent()
    guard = OwnershipGuard(agent, Owner(HOST))
    ours = registered_form(service("web"))
    agent.records["web"] = ours
    held = Holdings(dict(agent.records), {})
    writes = guard.checked_against(held)
    writes.register(service("Web"))  # our other spelling goes first, then the new one is written
    assert set(agent.records) == {"Web"}
    agent.calls.clear()
    writes.deregister(ours)  # the read ahead still shows "web": it is read again, and is gone
    assert ("services matching", "web") in agent.calls
    assert set(agent.records) == {"Web"}
    assert ("deregister", "web") not in agent.calls


def test_a_death_never_removes_a_record_taken_over_since_the_last_listing() -> None:
    """A removal is checked against the agent as it is when the death is handled, not
    against what the daemon last listed: a record someone wrote over ours since is left."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand")  # written over ours, unlisted
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="0"))
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert ("deregister", "h1:web:80") not in h.agent.calls


def test_a_death_never_removes_a_record_a_full_pass_saw_taken_over() -> None:
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand")  # written over ours
    h.primary.relist()  # a full pass's listing sees it
    h.send()
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="0"))
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert ("deregister", "h1:web:80") not in h.agent.calls
