"""The ownership read made ahead (issue 24): a batch's writes are checked against one
read of the agent made when the loop took the batch's events, beside Docker's
inspects, instead of a read each after the inspect. The rule stays: a record that
is not this daemon's and was present when the events were taken is never
overwritten nor removed. Fake Docker, fake agent behind the real guard, fake clock."""

from __future__ import annotations

import threading

from consul_reg.consul.guard import OwnershipGuard
from consul_reg.core.messages import DockerReconnected, Start
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


def test_a_lone_starts_inspect_is_sent_first_then_the_read_both_from_the_loops_thread() -> None:
    """Both requests go out before either answer is waited for, from the loop's own thread
    (no hop to a pool): the inspect first, as its answer is needed first (the mapping), the
    agent's read next, answering while the inspect is under way (BENCHMARKS.md)."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    order: list[tuple[str, str]] = []
    read, inspect_later = h.agent.services_in_later, h.docker.inspect_later

    def read_now(scope):  # type: ignore[no-untyped-def]
        order.append(("read sent", threading.current_thread().name))
        return read(scope)

    class Traced:
        def __init__(self, later):  # type: ignore[no-untyped-def]
            self.later = later

        def result(self):  # type: ignore[no-untyped-def]
            order.append(("inspect answered", threading.current_thread().name))
            return self.later.result()

        def cancel(self) -> None:
            order.append(("inspect cancelled", threading.current_thread().name))

    def inspect_sent(container_id):  # type: ignore[no-untyped-def]
        order.append(("inspect sent", threading.current_thread().name))
        return Traced(inspect_later(container_id))
    h.agent.services_in_later = read_now  # type: ignore[method-assign]
    h.docker.inspect_later = inspect_sent  # type: ignore[method-assign]
    h.send(event("c1", "start", name="web"))
    assert h.ids() == {"h1:web:80"}
    assert [what for what, _ in order] == ["inspect sent", "read sent", "inspect answered"], order
    assert {thread for _, thread in order} == {threading.current_thread().name}, "all on the loop's own thread"


class Settled:
    """An inspect sent ahead, and what became of it: taken or cancelled."""

    def __init__(self, container_id, later, log):  # type: ignore[no-untyped-def]
        self.container_id, self.later, self.log = container_id, later, log

    def result(self):  # type: ignore[no-untyped-def]
        self.log.append(("taken", self.container_id))
        return self.later.result()

    def cancel(self) -> None:
        self.log.append(("cancelled", self.container_id))


def traced_aheads(h: Harness) -> list[tuple[str, str]]:
    log: list[tuple[str, str]] = []
    inspect_later = h.docker.inspect_later
    h.docker.inspect_later = lambda cid: Settled(cid, inspect_later(cid), log)  # type: ignore[method-assign]
    return log


def test_a_batch_that_asks_for_a_full_pass_sends_no_inspect_ahead() -> None:
    """The pass reads every container itself: an inspect sent ahead would be wasted (and
    cancelling it closes a kept-alive connection)."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.docker.add(container("c2", "api", ports={"81/tcp": "8081"}))
    log = traced_aheads(h)
    h.send(event("c1", "start", name="web"), DockerReconnected())
    assert h.ids() == {"h1:web:80", "h1:api:81"}
    assert log == []


def test_an_inspect_sent_ahead_that_the_batch_reads_otherwise_is_cancelled() -> None:
    """A lone start joined by a container due for another read: the two are inspected
    together on the pool, and the inspect sent ahead is cancelled, never left holding a connection."""
    h = guarded()
    h.docker.add(container("c2", "api", ports={"81/tcp": "8081"}))
    h.docker.broken.add("c2")
    h.send(event("c2", "start", name="api"))  # could not be read: looked at again on a backoff
    assert h.ids() == set()
    h.docker.broken.clear()
    h.clock.advance(60)
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    log = traced_aheads(h)
    h.send(event("c1", "start", name="web"))
    assert h.ids() == {"h1:web:80", "h1:api:81"}
    assert log == [("cancelled", "c1")]


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
