"""The ownership read made ahead (issue 24): a batch's writes are checked against one
read of the agent made when the loop took the batch's events, beside Docker's
inspects, instead of a read each after the inspect. The rule stays: a record that
is not this daemon's and was present when the events were taken is never
overwritten nor removed. Fake Docker, fake agent behind the real guard, fake clock."""

from __future__ import annotations

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
    return [call for call in h.agent.calls if call[0] in ("services", "services matching", "checks")]


def test_a_start_reads_the_agent_once_when_the_event_is_taken_not_after_the_inspect() -> None:
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.calls.clear()
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"}
    assert reads(h) == [("services", "")], "one listing read ahead, no read per write"


def test_a_foreign_record_that_appeared_since_the_last_listing_is_never_overwritten() -> None:
    h = guarded()
    # Registered by hand after the loop's last listing, before the container's event.
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand", "10.9.9.9", 1)
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert ("register", "h1:web:80") not in h.agent.calls
    # ...nor removed at the container's death (two deaths: the batch reads ahead).
    h.docker.add(container("c2", "api", ports={"81/tcp": "8081"}))
    h.send(event("c2", "start"))
    h.docker.containers["c1"]["State"]["Running"] = False
    h.docker.containers["c2"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="0"), event("c2", "die", exitCode="0"))
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert "h1:api:81" not in h.agent.records


def test_a_foreign_record_under_another_spelling_is_seen_by_the_read_ahead() -> None:
    h = guarded()
    h.agent.records["H1:WEB:80"] = RegisteredService("H1:WEB:80", "by-hand")
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert set(h.agent.records) == {"H1:WEB:80"}


def test_a_batch_reads_ahead_only_while_one_listing_costs_less_than_the_reads_it_saves() -> None:
    h = guarded()
    for n in range(150):  # more records than one container's read ahead is worth
        h.agent.records[f"other-{n}"] = RegisteredService(f"other-{n}", "other")
    h.primary.relist()
    h.send()  # the loop lists the agent again
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.calls.clear()
    h.send(event("c1", "start"))
    assert "h1:web:80" in h.agent.records
    assert [c[0] for c in reads(h)] == ["services matching"], "the write read its own ID, as before"


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
