"""Review of sync/early.py (issue 24): reproductions of what the early reads got wrong."""

from __future__ import annotations

from consul_reg.core.messages import Start
from tests.unit.fakes import Lazy, container
from tests.unit.test_loop import Harness, event


def guarded() -> Harness:
    h = Harness(guard=True)
    h.send(Start())
    return h


def test_a_death_read_while_the_loop_still_registers_the_start_still_deregisters() -> None:
    """The die is read (its agent read begun) while the loop's batch of the start is still
    under way: that read is older than the start's registration, so it must not serve the
    death (it says the record is absent: the deregistration would be skipped as 'already
    gone' and the record of a dead container left in the agent)."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))

    def inspect_later(cid: str) -> Lazy:
        def answer() -> object:
            inspected = h.docker.inspect(cid)  # sent at the start: running
            h.docker.containers[cid]["State"]["Running"] = False
            h.loop.post(event(cid, "die", exitCode="0", name="web"))  # Docker's event thread, meanwhile
            return inspected
        return Lazy(answer)
    h.docker.inspect_later = inspect_later  # type: ignore[method-assign]
    h.loop.post(event("c1", "start", name="web"))
    assert h.loop.handle(h.loop.inbox.next_batch(0))  # the start: registered
    assert ("register", "h1:web:80") in h.agent.calls
    h.agent.calls.clear()
    assert h.loop.handle(h.loop.inbox.next_batch(0))  # the death
    assert h.ids() == set(), "the dead container's record is left in the agent"
    assert [c[0] for c in h.agent.calls] == ["services in", "deregister"], \
        "the loop read the container's records itself, for its writes, once"


def test_a_kill_read_while_the_loop_still_registers_the_start_does_not_serve_the_death() -> None:
    """As above with `docker run` then `docker kill` (SIGKILL) at once: the kill's read,
    kept for the death, was sent before the start's registration."""
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))

    def inspect_later(cid: str) -> Lazy:
        def answer() -> object:
            inspected = h.docker.inspect(cid)
            h.loop.post(event(cid, "kill", signal="9", name="web"))  # read while the start's batch runs
            return inspected
        return Lazy(answer)
    h.docker.inspect_later = inspect_later  # type: ignore[method-assign]
    h.loop.post(event("c1", "start", name="web"))
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    assert h.loop.handle(h.loop.inbox.next_batch(0))  # the kill: nothing to drain
    h.docker.containers["c1"]["State"]["Running"] = False
    h.loop.post(event("c1", "die", exitCode="137", name="web"))  # keeps the kill's read
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    assert h.ids() == set(), "the dead container's record is left in the agent"


def test_a_bug_between_taking_the_early_reads_and_reading_ahead_leaves_no_read_uncancelled(monkeypatch) -> None:
    """A read the loop took is its own: whatever the batch raises (a bug costs one pass), it
    is answered or cancelled. Uncancelled, a Pending holds one of the agent pool's slots for
    good (heartbeats and the loop's reads share them)."""
    import pytest

    import consul_reg.sync.loop as loop_module
    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    laters: list[Lazy] = []

    def services_in_later(scope: object, wait: bool = True) -> Lazy:
        laters.append(Lazy(dict))
        return laters[-1]
    h.agent.services_in_later = services_in_later  # type: ignore[method-assign]
    h.loop.post(event("c1", "start", name="web"))
    assert len(laters) == 1, "the early read was begun"

    def bug(*args: object) -> object:
        raise RuntimeError("a bug")
    monkeypatch.setattr(loop_module, "batch_scope", bug)
    with pytest.raises(RuntimeError):
        h.loop.handle(h.loop.inbox.next_batch(0))
    h.primary.drop_prefetch()  # as Loop.run does after an unexpected error
    assert laters[0].cancelled >= 1, "the taken read was neither answered nor cancelled"


def test_the_loops_own_inspects_of_a_window_are_under_way_while_an_early_one_is_awaited() -> None:
    """A batch of a container with an early inspect and one without: the second's inspect
    is made while the first's answer is awaited (before the review, only after it: a slow
    early answer, dockerd holding the container's lock, delayed the whole batch by as much)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from consul_reg.sync.reading import Reader

    own_begun = threading.Event()

    def inspect(cid: str) -> dict[str, str]:
        own_begun.set()
        return {"Id": cid}

    def early_answer() -> dict[str, str]:
        assert own_begun.wait(5), "the loop's own inspect waited for the early one's answer"
        return {"Id": "a"}
    pool = ThreadPoolExecutor(2)
    try:
        answered = dict(Reader(inspect, pool, 1.0, time.monotonic).answers(["a", "b"], early={"a": Lazy(early_answer)}))
    finally:
        pool.shutdown()
    assert answered == {"a": {"Id": "a"}, "b": {"Id": "b"}}


def test_a_bursts_listing_is_not_awaited_before_its_inspects_are_sent() -> None:
    """A burst (more containers than a window) is checked against the agent's whole listing,
    made on the writes' pool while the first window is inspected. Once (`take_read_now`, for a
    batch with early inspects) that listing was waited for before any inspect of the loop's own."""
    import threading

    h = guarded()
    n = 20
    for i in range(n):
        h.docker.add(container(f"c{i:02}", f"web{i}", ports={"80/tcp": str(8000 + i)}))
    inspected = threading.Event()
    inspect, services = h.docker.inspect, h.agent.services

    def inspect_noting(cid: str) -> object:
        inspected.set()
        return inspect(cid)

    def listing() -> object:
        assert inspected.wait(5), "the listing was awaited before any inspect was sent"
        return services()
    h.docker.inspect = inspect_noting  # type: ignore[method-assign]
    h.docker.inspect_later = lambda cid: Lazy(lambda: inspect(cid))  # type: ignore[method-assign]
    h.agent.services = listing  # type: ignore[method-assign]
    for i in range(n):
        h.loop.post(event(f"c{i:02}", "start", name=f"web{i}"))
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    assert len(h.ids()) == n
    assert not [c for c in h.agent.calls if c[0] == "services matching"], "every write checked against the listing"


def test_a_read_older_than_the_window_when_the_write_comes_is_not_what_it_is_checked_against() -> None:
    """docs/guarantees-latency.md: a read is used at most FRESH_SECONDS after it was sent,
    a record not ours when the kill was read 'at most 0.25 s before the removal' is never
    removed. The freshness was checked when the loop took the read, not when the batch
    wrote: a batch whose other container's inspect took 1 s (dockerd's lock) removed a
    record that replaced ours 0.5 s after the kill's read."""
    from consul_reg.core.records import RegisteredService
    from consul_reg.sync.early import FRESH_SECONDS

    h = guarded()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.docker.add(container("c2", "api", ports={"80/tcp": "8081"}))
    h.send(event("c1", "start", name="web"))
    h.loop.post(event("c1", "kill", signal="9", name="web"))  # its read: ours
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    inspect = h.docker.inspect

    def slow(cid: str) -> object:
        if cid == "c2":
            h.clock.advance(0.5)
            h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand", "10.9.9.9", 1)
            h.clock.advance(0.5)
        return inspect(cid)
    h.docker.inspect = slow  # type: ignore[method-assign]
    h.docker.inspect_later = lambda cid: Lazy(lambda: inspect(cid))  # type: ignore[method-assign]
    h.docker.containers["c1"]["State"]["Running"] = False
    h.loop.post(event("c1", "die", exitCode="137", name="web"))
    h.loop.post(event("c2", "restart", name="api"))  # its early inspect is dropped by nothing: keep it own
    h.loop.early.take(["c2"]).drop_all()  # type: ignore[union-attr]  # c2 inspected by the loop (slow)
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    assert FRESH_SECONDS < 0.5
    assert h.agent.records.get("h1:web:80") is not None and h.agent.records["h1:web:80"].name == "by-hand", \
        "a record written 0.5 s after the read, 0.5 s before the removal, was removed"


def test_a_bursts_listing_is_listed_again_once_older_than_the_window() -> None:
    """docs/guarantees-latency.md: a read is used at most FRESH_SECONDS after it was sent.
    A burst's writes are checked against one listing of the agent; a window of the burst
    written after that (dockerd slow on an inspect) is checked against a new listing: a
    record written by someone else after the first listing stays."""
    from consul_reg.core.records import RegisteredService
    from consul_reg.sync.early import FRESH_SECONDS

    h = guarded()
    h.docker.add(container("c0", "old", ports={"80/tcp": "8000"}))
    h.send(event("c0", "start", name="old"))
    assert "h1:old:80" in h.agent.records
    for n in range(1, 20):
        h.docker.add(container(f"c{n}", f"w{n}", ports={"80/tcp": str(8000 + n)}))
    inspect = h.docker.inspect

    def slow(cid: str) -> object:
        if cid == "c19":
            h.clock.advance(FRESH_SECONDS * 8)  # dockerd's lock
            h.agent.records["h1:old:80"] = RegisteredService("h1:old:80", "by-hand", "10.9.9.9", 1)
        return inspect(cid)
    h.docker.inspect = slow  # type: ignore[method-assign]
    h.docker.inspect_later = lambda cid: Lazy(lambda: slow(cid))  # type: ignore[method-assign]
    h.docker.containers["c0"]["State"]["Running"] = False
    h.loop.post(event("c0", "die", exitCode="0", name="old"))
    for n in range(1, 20):
        h.loop.post(event(f"c{n}", "start", name=f"w{n}"))
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    assert h.agent.records["h1:old:80"].name == "by-hand", "written after the listing, and removed"
    assert {f"h1:w{n}:80" for n in range(1, 20)} <= h.ids()
    listings = [call for call in h.agent.calls if call[0] == "services"]
    assert len(listings) >= 2, "listed again for the writes after the window"
