"""A due or running resync never holds the event path (issue 24): with a fake
Docker, a fake agent and a fake clock, a start event is registered while a
resync is pending or under way, and the resync still happens afterwards."""

from __future__ import annotations

import threading
from typing import Any

from consul_reg.core.messages import DockerEvent, Start
from tests.unit.fakes import FakeDocker, container
from consul_reg.sync.timers import RESYNC_QUIET_SECONDS
from tests.unit.test_loop import Harness, event

RESYNC = 30.0


def started(resync: float = RESYNC) -> Harness:
    h = Harness(resync=resync)
    h.send(Start())
    return h


def passes(h: Harness) -> tuple[int, int]:
    return h.loop.snapshot.full_passes_started, h.loop.snapshot.full_pass_done


def test_a_start_event_is_registered_while_a_resync_is_due_and_the_resync_follows() -> None:
    h = started()
    lists = h.docker.lists
    h.clock.advance(RESYNC + 1)  # the resync is due
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"}
    assert h.docker.lists == lists, "the event's batch made no full pass"
    assert passes(h) == (1, 1)
    # It waits for a quiet moment (the loop sleeps meanwhile: no empty batch spins).
    assert 0 < h.loop.seconds_until_due() <= RESYNC_QUIET_SECONDS
    h.send()
    assert passes(h) == (1, 1)
    h.clock.advance(RESYNC_QUIET_SECONDS)
    h.send()  # a quiet moment: the resync runs
    assert passes(h) == (2, 2)
    assert h.docker.lists == lists + 1


class PostingDocker(FakeDocker):
    """Posts a message to the loop the first time it inspects `trigger` (as Docker's
    event thread would, while the loop is busy with a full pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.trigger = ""
        self.on_trigger: Any = None

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        if container_id == self.trigger and self.on_trigger is not None:
            post, self.on_trigger = self.on_trigger, None
            post()
        return super().inspect(container_id)


def harness_with_posting_docker() -> Harness:
    h = Harness(resync=RESYNC)
    docker = PostingDocker()
    h.docker = docker
    h.loop.docker = docker
    return h


def test_a_start_event_that_arrives_during_a_resync_is_registered_before_the_resync_ends() -> None:
    h = harness_with_posting_docker()
    h.send(Start())
    # 40 containers the loop has not seen: the resync inspects each of them.
    for n in range(40):
        h.docker.add(container(f"x{n:02d}", f"other{n}", ports={"80/tcp": str(9000 + n)}))
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.docker.trigger = "x00"
    h.docker.on_trigger = lambda: h.loop.post(DockerEvent("c1", "start", 1))
    h.clock.advance(RESYNC + 1)
    inspects = h.docker.inspects
    h.send()  # the resync begins, and gives way to the start event posted meanwhile
    assert passes(h) == (2, 1), "the resync began and was not counted done"
    assert h.docker.inspects - inspects < 41, "it stopped before inspecting every container"
    assert "h1:web:80" not in h.ids()
    batch = h.loop.inbox.next_batch(0)
    assert batch == [DockerEvent("c1", "start", 1)]
    h.send(*batch)  # the event's batch: c1 at once, the resync still waiting
    assert h.ids() == {"h1:web:80"}
    assert passes(h) == (2, 1)
    h.clock.advance(RESYNC_QUIET_SECONDS)
    h.send()  # a quiet moment: the resync is made again, and ends
    assert passes(h)[1] == passes(h)[0] == 3
    assert h.ids() == {"h1:web:80"} | {f"h1:other{n}:80" for n in range(40)}


def test_a_resync_that_gave_way_reuses_what_it_built() -> None:
    h = harness_with_posting_docker()
    h.send(Start())
    for n in range(40):
        h.docker.add(container(f"x{n:02d}", f"other{n}", ports={"80/tcp": str(9000 + n)}))
    h.docker.trigger = "x39"  # the last one inspected: everything before it was built
    h.docker.on_trigger = lambda: h.loop.post(DockerEvent("x00", "pause", 1))
    h.clock.advance(RESYNC + 1)
    h.send()
    # The pass gives way once it sees the event, with up to a window of inspects ahead.
    assert passes(h) == (2, 1)
    h.send(*h.loop.inbox.next_batch(0))  # x00 read again by its event
    inspects = h.docker.inspects
    h.clock.advance(RESYNC_QUIET_SECONDS)
    h.send()
    assert passes(h) == (3, 3)
    assert h.docker.inspects - inspects < 20, "the desires built before it gave way were reused"


def test_a_resync_waits_for_events_at_most_one_more_interval() -> None:
    h = started()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.clock.advance(RESYNC + 1)
    h.send(event("c1", "start"))
    assert passes(h) == (1, 1)
    h.clock.advance(RESYNC)  # events kept flowing for one more interval
    h.send(event("c1", "pause"))
    assert passes(h) == (2, 2), "an overdue resync runs whatever comes"


class SlowListingDocker(FakeDocker):
    """A listing that answers only when `release` is set (dockerd busy under a burst);
    it lists the containers as they were when it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.release = threading.Event()

    def list_containers(self) -> list[dict[str, Any]]:
        listed = super().list_containers()
        self.asked.set()
        assert self.release.wait(10)
        return listed


def test_a_slow_docker_listing_never_holds_an_event_and_the_resumed_pass_uses_it() -> None:
    h = Harness(resync=RESYNC)
    docker = SlowListingDocker()
    docker.release.set()
    h.docker = docker
    h.loop.docker = docker
    h.send(Start())
    docker.release.clear()
    docker.asked.clear()
    docker.add(container("c0", "old", ports={"80/tcp": "8000"}))
    h.clock.advance(RESYNC + 1)
    # An event arrives while dockerd lists: the loop goes back to it.
    threading.Thread(target=lambda: (docker.asked.wait(10), docker.add(container("c1", "web", ports={
        "80/tcp": "8080"})), h.loop.post(DockerEvent("c1", "start", 1))), daemon=True).start()
    h.send()
    assert passes(h) == (2, 1), "the pass gave way while Docker listed"
    h.send(*h.loop.inbox.next_batch(5))
    assert h.ids() == {"h1:web:80"}, "c1 registered while the listing was still pending"
    docker.release.set()
    h.clock.advance(RESYNC_QUIET_SECONDS)
    lists = docker.lists
    h.send()
    assert passes(h) == (3, 3)
    assert docker.lists == lists, "the resumed pass used the listing asked before"
    # c1, started after that listing, keeps what its event said; c0 is found by the pass.
    assert h.ids() == {"h1:web:80", "h1:old:80"}


class SlowInspectDocker(FakeDocker):
    """Inspecting `slow` posts `on_slow` (an event arriving meanwhile), then waits
    for `release`: a dying container's inspect waiting on dockerd's lock."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = ""
        self.on_slow: Any = None
        self.release = threading.Event()

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        if container_id == self.slow and self.on_slow is not None:
            post, self.on_slow = self.on_slow, None
            post()
            assert self.release.wait(10)
        return super().inspect(container_id)


def test_an_event_is_handled_while_a_resync_waits_on_a_slow_inspect() -> None:
    h = Harness(resync=RESYNC)
    docker = SlowInspectDocker()
    h.docker = docker
    h.loop.docker = docker
    h.send(Start())
    for n in range(10):
        docker.add(container(f"x{n:02d}", f"other{n}", ports={"80/tcp": str(9000 + n)}))
    docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    docker.slow = "x00"
    docker.on_slow = lambda: h.loop.post(DockerEvent("c1", "start", 1))
    h.clock.advance(RESYNC + 1)
    h.send()  # the resync's first inspect hangs; the event arrives meanwhile
    assert passes(h) == (2, 1), "the pass gave way without waiting for the inspect"
    h.send(*h.loop.inbox.next_batch(0))
    assert h.ids() == {"h1:web:80"}, "c1 registered while x00's inspect still hangs"
    docker.release.set()
    h.clock.advance(RESYNC_QUIET_SECONDS)
    h.send()
    assert passes(h) == (3, 3)
    assert h.ids() == {"h1:web:80"} | {f"h1:other{n}:80" for n in range(10)}
