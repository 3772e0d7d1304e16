"""Reads begun on Docker's event thread as it reads each event (sync/early.py,
issue 24): a start's inspect and agent read are sent before the loop takes the
event; an untrappable kill's read serves the death that follows, so the death's
own path is its deregistration. The ownership rule holds for a record present
when the event was read, within FRESH_SECONDS. Fake Docker, fake agent behind
the real guard, fake clock; events go through `Loop.post` as the reader's do."""

from __future__ import annotations

import threading
import time
from typing import Any

from consul_reg.core.errors import DockerUnavailable
from consul_reg.core.messages import DockerEvent, Start
from consul_reg.core.records import ReadScope, RegisteredService
from consul_reg.sync.early import FRESH_SECONDS, MAX_INSPECTS, MAX_READS, EarlyReads, Taken
from tests.unit.fakes import FakeClock, Lazy, container
from tests.unit.test_loop import Harness, event


def guarded() -> Harness:
    h = Harness(guard=True)
    h.send(Start())
    return h


def reads(h: Harness) -> list[tuple[str, str]]:
    return [call for call in h.agent.calls if call[0] in ("services", "services in", "services matching")]


def posted(h: Harness, *events: DockerEvent) -> None:
    """As Docker's event thread: each event posted (its reads begun), then the loop's batch."""
    for one in events:
        h.loop.post(one)


def handle_posted(h: Harness) -> None:
    assert h.loop.handle(h.loop.inbox.next_batch(0))


def test_a_start_is_inspected_and_read_when_its_event_is_read_not_when_the_loop_takes_it() -> None:
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    inspected: list[str] = []
    h.docker.inspect_later = lambda cid: inspected.append(cid) or Lazy(lambda: h.docker.inspect(cid))  # type: ignore
    h.agent.calls.clear()
    posted(h, event("c1", "start", name="web"))
    assert inspected == ["c1"] and reads(h) == [("services in", "h1:web,h1:web:*")], "both begun at the post"
    inspects = h.docker.inspects
    handle_posted(h)
    assert h.ids() == {"h1:web:80"}
    assert h.docker.inspects == inspects + 1, "the early inspect's answer is the only inspect"
    assert reads(h) == [("services in", "h1:web,h1:web:*")], "no read of its own at the batch, none per write"


def test_a_kills_read_serves_the_death_within_the_window() -> None:
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start", name="web"))
    posted(h, event("c1", "kill", signal="9", name="web"))
    handle_posted(h)  # an untrappable kill: nothing to drain
    h.agent.calls.clear()
    h.clock.advance(FRESH_SECONDS / 2)
    h.docker.containers["c1"]["State"]["Running"] = False
    posted(h, event("c1", "die", exitCode="137", name="web"))
    handle_posted(h)
    assert h.ids() == set()
    assert reads(h) == [], "the kill's read was the death's: its path is the deregistration alone"


def test_a_kills_read_too_old_for_the_death_is_not_used() -> None:
    """Past FRESH_SECONDS the death reads the agent again: a record someone else wrote
    after the kill's read is then seen, and stays."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start", name="web"))
    posted(h, event("c1", "kill", signal="SIGKILL", name="web"))
    handle_posted(h)
    h.clock.advance(FRESH_SECONDS + 0.01)
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand", "10.9.9.9", 1)
    h.docker.containers["c1"]["State"]["Running"] = False
    h.agent.calls.clear()
    posted(h, event("c1", "die", exitCode="137", name="web"))
    handle_posted(h)
    assert reads(h), "the death read the agent itself"
    assert h.agent.records["h1:web:80"].name == "by-hand", "a record not ours when the death was read stays"


def test_a_record_not_ours_when_the_kill_was_read_is_never_removed() -> None:
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start", name="web"))
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand", "10.9.9.9", 1)
    posted(h, event("c1", "kill", signal="9", name="web"))
    handle_posted(h)
    h.docker.containers["c1"]["State"]["Running"] = False
    posted(h, event("c1", "die", exitCode="137", name="web"))
    handle_posted(h)
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert ("deregister", "h1:web:80") not in h.agent.calls


def test_a_later_event_of_the_container_drops_its_early_inspect() -> None:
    """An inspect sent at the start may be older than what a health_status says: the loop
    inspects again; and a trappable kill or a pause begins nothing."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    laters: list[Lazy] = []

    def inspect_later(cid: str) -> Lazy:
        laters.append(Lazy(lambda: h.docker.inspect(cid)))
        return laters[-1]
    h.docker.inspect_later = inspect_later  # type: ignore[method-assign]
    posted(h, event("c1", "start", name="web"), event("c1", "health_status", name="web"))
    assert [later.cancelled for later in laters] == [1]
    inspects = h.docker.inspects
    handle_posted(h)
    assert h.ids() == {"h1:web:80"} and h.docker.inspects == inspects + 1
    posted(h, event("c1", "kill", signal="15", name="web"), event("c1", "pause", name="web"))
    assert len(laters) == 1 and h.loop.early is not None and h.loop.early.take(["c1"]).reads == {}


def test_what_is_begun_at_once_is_bounded_and_the_rest_is_read_by_the_loop() -> None:
    h = guarded()
    for n in range(6):
        h.docker.add(container(f"c{n}", f"web{n}", ports={"80/tcp": str(8080 + n)}))
    begun: list[str] = []
    h.docker.inspect_later = lambda cid: begun.append(cid) or Lazy(lambda: h.docker.inspect(cid))  # type: ignore
    h.agent.calls.clear()
    posted(h, *[event(f"c{n}", "start", name=f"web{n}") for n in range(6)])
    assert len(begun) == MAX_INSPECTS and len(reads(h)) == MAX_READS
    handle_posted(h)
    assert h.ids() == {f"h1:web{n}:80" for n in range(6)}
    assert len(reads(h)) == MAX_READS + 1, "one read of the loop's own for the others"


def test_nothing_is_read_ahead_before_the_agent_is_listed_and_a_failure_costs_nothing() -> None:
    h = Harness(guard=True)  # no Start handled yet: the agent's records are not known
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.calls.clear()
    posted(h, event("c1", "start", name="web"))
    assert reads(h) == []
    h.send(Start())

    def refused(cid: str) -> Any:
        raise DockerUnavailable("fake docker: every early connection is in use")
    h.docker.inspect_later = refused  # type: ignore[method-assign]
    posted(h, event("c1", "start", name="web"))
    handle_posted(h)
    assert h.ids() == {"h1:web:80"}


def test_an_entry_nobody_takes_is_cancelled_once_stale_and_a_bug_never_reaches_the_event_thread() -> None:
    clock = FakeClock()
    laters: list[Lazy] = []

    def later(*args: object) -> Lazy:
        laters.append(Lazy(dict))
        return laters[-1]

    def scope_of(cid: str, name: str) -> ReadScope:
        if name == "bug":
            raise ValueError("a bug")
        return ReadScope(frozenset({f"h:{name}:"}), frozenset({f"h:{name}"}))
    early = EarlyReads(later, later, scope_of, clock)
    early.reads_wanted = True
    early.noticed(DockerEvent("c1", "start", 1, name="web"))
    assert [x.cancelled for x in laters] == [0, 0]
    clock.advance(FRESH_SECONDS + 0.01)
    assert early.take(["c2"]).inspects == {}
    assert [x.cancelled for x in laters] == [1, 1], "both of c1's are cancelled once stale, unread"
    early.noticed(DockerEvent("c3", "start", 1, name="bug"))  # must not raise
    assert laters[-1].cancelled == 1, "what was begun before the bug is cancelled, never left holding a connection"
    assert early.take(["c3"]) == Taken(), "nothing begun: the loop reads for itself"
    early.noticed(DockerEvent("c4", "start", 1, name="web"))
    taken = early.take(["c4"])
    assert len(taken.inspects) == 1 and len(taken.reads) == 1
    assert taken.drop_inspects() == {} and laters[-2].cancelled == 1


def test_a_kills_read_is_answered_on_a_worker_before_the_death_and_cancelled_unread_only_if_not_begun() -> None:
    from concurrent.futures import ThreadPoolExecutor

    clock = FakeClock()
    answered: list[str] = []
    reads: list[Lazy] = []

    def read_later(scope: ReadScope) -> Lazy:
        reads.append(Lazy(lambda: answered.append(threading.current_thread().name) or {}))
        return reads[-1]
    pool = ThreadPoolExecutor(1, thread_name_prefix="answers")
    try:
        early = EarlyReads(lambda cid: Lazy(dict), read_later,
                           lambda cid, name: ReadScope(frozenset({f"h:{name}:"})), clock, answers=pool)
        early.reads_wanted = True
        early.noticed(DockerEvent("c1", "kill", 1, signal="9", name="web"))
        deadline = time.monotonic() + 10
        while not answered and time.monotonic() < deadline:
            time.sleep(0.001)
        assert answered and answered[0].startswith("answers"), "answered on the worker, before any death"
        early.noticed(DockerEvent("c1", "die", 2, exit_code="137", name="web"))
        taken = early.take(["c1"])
        assert taken.reads["c1"].later.result() == {} and answered == answered[:1], "the death's is the kill's"
        blocker = threading.Event()
        pool.submit(blocker.wait, 10)  # the worker is busy: the next kill's read waits in its queue
        early.noticed(DockerEvent("c2", "kill", 3, signal="KILL", name="api"))
        early.drop_all()
        assert reads[-1].cancelled == 1, "not begun by the worker: cancelled unread, its connection freed"
        blocker.set()
    finally:
        pool.shutdown(wait=True)
