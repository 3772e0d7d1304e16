"""The loop under bursts: a batch's inspects and writes overlap on the I/O
pool, yet only the loop's thread builds desires and changes state; every
container of a burst registers once; a container Docker could not answer
for is looked at again (never lost); per-container order holds across
batches; the indexes kept beside `desires` never drift from it."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
import time
from typing import Any

from consul_reg.core.errors import DockerUnreachable
from consul_reg.core.messages import Reload, Start, Stop
from tests.unit.fakes import FakeDocker, container
from tests.unit.test_loop import Harness, event


class RecordingDocker(FakeDocker):
    """Inspects from several threads: counted under a lock, with the thread that made them."""

    def __init__(self, hold: float = 0.0) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.by_container: dict[str, int] = {}
        self.threads: set[str] = set()
        self.hold = hold
        self.in_flight = 0
        self.most = 0

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        with self.lock:
            self.by_container[container_id] = self.by_container.get(container_id, 0) + 1
            self.threads.add(threading.current_thread().name)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(self.hold)
            return super().inspect(container_id)
        finally:
            with self.lock:
                self.in_flight -= 1


def harness(hold: float = 0.0, **options: Any) -> tuple[Harness, RecordingDocker]:
    h = Harness(**options)
    docker = RecordingDocker(hold)
    h.docker = docker
    h.loop.docker = docker
    h.loop.builder.docker = docker
    h.send(Start())
    return h, docker


def inspect_with(h: Harness, function: Any) -> None:
    """The loop's inspects (of a batch, overlapped) made by `function`."""
    h.loop.reader.inspecting = replace(h.loop.reader.inspecting, call=function)


def web(n: int) -> dict[str, Any]:
    return container(f"c{n:03d}", f"web{n}", ports={"80/tcp": str(8000 + n)},
                     created=f"2026-01-01T00:00:00.{n:09d}Z")


def test_a_burst_in_one_batch_inspects_each_once_off_the_loop_and_builds_on_it() -> None:
    h, docker = harness(hold=0.005)
    built_on: set[str] = set()
    build = h.loop.builder.build

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        built_on.add(threading.current_thread().name)
        return build(*args, **kwargs)

    h.loop.builder.build = recording_build  # type: ignore[method-assign]
    for n in range(50):
        docker.add(web(n))
    h.send(*[event(f"c{n:03d}", "start") for n in range(50)])
    assert h.ids() == {f"h1:web{n}:80" for n in range(50)}
    assert docker.by_container == {f"c{n:03d}": 1 for n in range(50)}
    assert 1 < docker.most <= 4 and all(name.startswith("loop-io") for name in docker.threads)
    assert built_on == {threading.current_thread().name}, "desires are built by the loop's thread only"
    assert [w for w in h.agent.writes() if w[0] == "register"] and len(h.agent.writes()) == 50


def test_a_burst_registers_window_by_window_while_its_later_inspects_go_on() -> None:
    """Issue 24: the first containers of a burst are written while the burst's later
    containers are still being inspected, on a pool of their own, each once."""
    h, docker = harness(hold=0.002)
    order: list[str] = []
    inspect = docker.inspect

    def recording_inspect(container_id: str) -> Any:
        with docker.lock:
            order.append(f"inspect {container_id}")
        return inspect(container_id)

    inspect_with(h, recording_inspect)
    register = h.agent.register
    write_threads: set[str] = set()

    def recording_register(service: Any) -> None:
        with docker.lock:
            order.append(f"register {service.id}")
            write_threads.add(threading.current_thread().name)
        register(service)

    h.agent.register = recording_register  # type: ignore[method-assign]
    for n in range(48):
        docker.add(web(n))
    h.send(*[event(f"c{n:03d}", "start", name=f"web{n}") for n in range(48)])
    assert h.ids() == {f"h1:web{n}:80" for n in range(48)}
    first_write = next(i for i, entry in enumerate(order) if entry.startswith("register"))
    last_inspect = max(i for i, entry in enumerate(order) if entry.startswith("inspect"))
    assert first_write < last_inspect, "the first window was written before the last was inspected"
    assert len([w for w in h.agent.writes() if w[0] == "register"]) == 48, "each registered once"
    assert write_threads and all(name.startswith("loop-write") for name in write_threads)


def test_a_burst_never_writes_a_record_not_ours_in_any_window() -> None:
    h, docker = harness(guard=True)
    from consul_reg.core.records import RegisteredService

    h.agent.records["h1:web40:80"] = RegisteredService("h1:web40:80", "by-hand")  # since the last listing
    for n in range(48):
        docker.add(web(n))
    h.agent.calls.clear()
    h.send(*[event(f"c{n:03d}", "start", name=f"web{n}") for n in range(48)])
    assert h.agent.records["h1:web40:80"].name == "by-hand"
    assert {f"h1:web{n}:80" for n in range(48) if n != 40} <= h.ids()
    # A burst reads the agent's whole listing once (a filter of 96 alternatives would be
    # matched against every record the agent holds), every window checked against it.
    assert [c[0] for c in h.agent.calls if c[0].startswith("services")] == ["services"]


def test_containers_docker_could_not_answer_for_are_looked_at_again() -> None:
    h, docker = harness()
    for n in range(10):
        docker.add(web(n))
    docker.broken = {"c003", "c007"}
    h.send(*[event(f"c{n:03d}", "start") for n in range(10)])
    assert h.ids() == {f"h1:web{n}:80" for n in range(10) if n not in (3, 7)}
    assert h.loop.reader.retry == {"c003", "c007"}
    docker.broken = set()
    h.clock.advance(60)
    assert h.loop.seconds_until_due() <= 0
    h.send()
    assert h.ids() == {f"h1:web{n}:80" for n in range(10)} and not h.loop.reader.retry


def test_docker_going_down_mid_burst_loses_no_container() -> None:
    h, docker = harness()
    for n in range(30):
        docker.add(web(n))
    calls = 0
    inspect = docker.inspect

    def failing_after_five(container_id: str) -> Any:
        nonlocal calls
        with docker.lock:
            calls += 1
            if calls > 5:
                raise DockerUnreachable("docker: connection refused")
        return inspect(container_id)

    inspect_with(h, failing_after_five)
    h.send(*[event(f"c{n:03d}", "start") for n in range(30)])
    registered = {sid for sid in h.ids()}
    looked_again = h.loop.reader.retry
    assert len(registered) < 30
    assert {f"h1:web{int(cid[1:])}:80" for cid in looked_again} | registered == {f"h1:web{n}:80" for n in range(30)}
    assert calls < 30, "once dockerd did not answer, the batch's inspects not started were not made"
    inspect_with(h, inspect)
    h.clock.advance(60)
    h.send()
    assert h.ids() == {f"h1:web{n}:80" for n in range(30)}


def test_docker_down_in_a_full_pass_stops_it_and_keeps_everything() -> None:
    h, docker = harness()
    for n in range(20):
        docker.add(web(n))
    h.send(*[event(f"c{n:03d}", "start") for n in range(20)])
    for n in range(20, 40):
        docker.add(web(n))
    inspect = docker.inspect

    def unreachable_for_c025(container_id: str) -> Any:
        if container_id == "c025":
            raise DockerUnreachable("docker: connection refused")
        return inspect(container_id)

    inspect_with(h, unreachable_for_c025)
    h.send(Reload())
    assert h.ids() == {f"h1:web{n}:80" for n in range(20)} and h.loop.timers.full_pending
    inspect_with(h, inspect)
    h.clock.advance(60)
    h.send()
    assert h.ids() == {f"h1:web{n}:80" for n in range(40)} and not h.loop.timers.full_pending


def test_one_container_docker_errs_about_costs_a_full_pass_nothing_else() -> None:
    h, docker = harness()
    for n in range(20):
        docker.add(web(n))
    h.send(*[event(f"c{n:03d}", "start") for n in range(20)])
    docker.containers["c005"]["Config"]["Labels"]["SERVICE_NAME"] = "renamed"
    for n in range(20, 30):
        docker.add(web(n))
    docker.broken = {"c005", "c025"}  # dockerd answers an error about these two only
    h.send(Reload())
    assert h.ids() == {f"h1:web{n}:80" for n in range(30) if n != 25}  # c005's last desire stays
    assert not h.loop.timers.full_pending and h.loop.reader.retry == {"c005", "c025"}
    docker.broken = set()
    h.clock.advance(1.5)
    assert h.loop.seconds_until_due() <= 0, "the retry wakes the loop by itself (-resync 0)"
    h.send()
    assert h.ids() == {f"h1:web{n}:80" for n in range(30)} and h.agent.records["h1:web5:80"].name == "renamed"
    assert not h.loop.reader.retry


def test_each_containers_last_event_wins_across_batches() -> None:
    h, docker = harness()
    for n in range(20):
        docker.add(web(n))
    rng = random.Random(7)
    alive: dict[str, bool] = {}
    for _ in range(30):
        batch = []
        for n in rng.sample(range(20), 8):
            cid = f"c{n:03d}"
            running = rng.random() < 0.6
            docker.containers[cid]["State"]["Running"] = running
            alive[cid] = running
            batch.append(event(cid, "start") if running else event(cid, "die", exitCode="0"))
        h.send(*batch)
        assert h.ids() == {f"h1:web{int(c[1:])}:80" for c, up in alive.items() if up}


def test_no_event_of_a_burst_posted_from_many_threads_is_lost() -> None:
    h, docker = harness()
    for n in range(200):
        docker.add(web(n))
    runner = threading.Thread(target=h.loop.run)
    runner.start()

    def post(part: int) -> None:
        for n in range(part, 200, 8):
            h.loop.post(event(f"c{n:03d}", "start"))

    posters = [threading.Thread(target=post, args=(part,)) for part in range(8)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join()
    deadline = time.monotonic() + 20
    while len(h.agent.records) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    h.loop.post(Stop())
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert h.ids() == {f"h1:web{n}:80" for n in range(200)}
    assert docker.by_container.keys() == {f"c{n:03d}" for n in range(200)}
    assert h.loop.inbox.empty()


def test_the_indexes_beside_desires_never_drift() -> None:
    h, docker = harness(deregister="on-success")
    rng = random.Random(11)
    for n in range(15):
        docker.add(web(n))
    for step in range(60):
        cid = f"c{rng.randrange(15):03d}"
        state = docker.containers[cid]["State"]
        if rng.random() < 0.5:
            state.update(Running=True, ExitCode=0)
            h.send(event(cid, "start"))
        else:
            code = rng.choice([0, 1, 3, 137])
            state.update(Running=False, ExitCode=code)
            h.send(event(cid, "die", exitCode=str(code)))
        if step % 10 == 9:
            h.send(Reload())
        assert h.loop.containers.kept == {c for c, d in h.loop.containers.desires.items() if d.keep_existing}
        assert h.loop.containers.with_env_file == {c for c, d in h.loop.containers.desires.items() if d.env_file}
        assert {s.container_id for s in h.loop.snapshot.kept} <= h.loop.containers.kept


def test_a_full_pass_holds_at_most_a_window_of_inspect_answers() -> None:
    from consul_reg.sync.reading import WINDOW

    h, docker = harness()
    for n in range(100):
        docker.add(web(n))
    ahead: list[int] = []
    build = h.loop.builder.build
    built = 0

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        nonlocal built
        with docker.lock:
            ahead.append(sum(docker.by_container.values()) - built)
        built += 1
        return build(*args, **kwargs)

    h.loop.builder.build = counting_build  # type: ignore[method-assign]
    h.send(Reload())
    assert h.ids() == {f"h1:web{n}:80" for n in range(100)} and built == 100
    assert max(ahead) <= WINDOW, "answers are taken a window ahead of the builder, not all at once"
    assert max(ahead) > 1, "yet ahead of it: the inspects overlap"


# -- a full pass lists the agent beside Docker ----------------------------------------------


def test_a_full_pass_lists_the_agent_while_docker_lists() -> None:
    h, docker = harness()
    docker.add(web(1))
    agent_listed = threading.Event()
    overlapped: list[bool] = []
    services, list_containers = h.agent.services, docker.list_containers

    def agent_services() -> Any:
        agent_listed.set()
        return services()

    def docker_listing() -> Any:
        overlapped.append(agent_listed.wait(5))  # the agent's listing began before Docker's answer
        return list_containers()

    h.agent.services = agent_services  # type: ignore[method-assign]
    docker.list_containers = docker_listing  # type: ignore[method-assign]
    h.send(Reload())
    assert overlapped == [True]
    assert h.ids() == {"h1:web1:80"}


class HeldListing:
    """The agent's services listing, read at once, then held until `release` is set: a
    listing still on its way when the loop moves on. Docker answers its listing only
    once this one has begun (so it is in flight, never cancelled before it starts)."""

    def __init__(self, h: Harness) -> None:
        self.read, self.release = threading.Event(), threading.Event()
        self._services = h.agent.services
        h.agent.services = self  # type: ignore[method-assign]
        list_containers = h.loop.docker.list_containers

        def after_the_agents() -> Any:
            self.read.wait(5)
            return list_containers()
        h.loop.docker.list_containers = after_the_agents

    def __call__(self) -> Any:
        listing = self._services()
        self.read.set()
        self.release.wait(5)
        return listing


def test_a_listing_read_for_a_pass_docker_failed_is_never_used_later() -> None:
    h, docker = harness()
    docker.add(web(1))
    h.send(Reload())
    assert h.ids() == {"h1:web1:80"}
    held = HeldListing(h)
    docker.down = True
    h.send(Reload())  # the agent's listing (still holding the service) is on its way; Docker fails
    assert held.read.wait(5)
    del h.agent.records["h1:web1:80"]  # then the service is removed by hand
    held.release.set()
    docker.down = False
    h.clock.advance(60)  # past Docker's backoff
    h.send(Reload())
    assert h.ids() == {"h1:web1:80"}  # the pass saw the agent as it is now, and registered it again


def test_a_hung_agent_does_not_hold_the_loop_when_docker_fails() -> None:
    """The listing started beside Docker's is not waited for once the pass failed."""
    h, docker = harness()
    docker.add(web(1))
    h.send(Reload())
    held = HeldListing(h)
    docker.down = True
    began = time.monotonic()
    h.send(Reload())
    assert held.read.wait(5)
    took = time.monotonic() - began
    held.release.set()
    assert took < 2.5  # the listing is held for 5 s


def test_a_full_pass_takes_the_listing_made_beside_docker_and_lists_nothing_else() -> None:
    h, docker = harness()
    docker.add(web(1))
    h.send(Reload())
    h.agent.calls.clear()
    h.send(Reload())
    assert [call for call in h.agent.calls if call[0] in ("services", "checks")] == [("services", ""), ("checks", "")]


def test_a_listing_left_by_an_unexpected_error_is_never_used_later() -> None:
    h, docker = harness()
    docker.add(web(1))
    h.send(Reload())
    held = HeldListing(h)
    list_containers = h.loop.docker.list_containers
    failures = [RuntimeError("a bug in the pass")]

    def failing_once() -> Any:
        if failures:
            held.read.wait(5)  # the agent's listing is on its way
            raise failures.pop()
        return list_containers()
    h.loop.docker.list_containers = failing_once
    runner = threading.Thread(target=h.loop.run)
    h.loop.post(Reload())
    runner.start()
    try:
        assert held.read.wait(5)
        del h.agent.records["h1:web1:80"]  # removed by hand while that listing was on its way
        held.release.set()
        h.clock.advance(60)  # past the backoff of the error
        h.loop.post(Reload())
        deadline = time.monotonic() + 5
        while h.ids() != {"h1:web1:80"} and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        h.loop.post(Stop())
        runner.join(10)
    assert not runner.is_alive()
    assert h.ids() == {"h1:web1:80"}  # the pass after the error listed the agent as it is now
def test_an_agent_down_during_the_prefetch_is_an_unreachable_agent_as_before() -> None:
    h, docker = harness()
    docker.add(web(1))
    h.agent.down = True
    h.send(Reload())
    assert h.loop.primary.backoff.failing and "connection refused" in h.loop.primary.last_error
    h.agent.down = False
    h.clock.advance(60)
    h.send(Reload())
    assert h.ids() == {"h1:web1:80"} and not h.loop.primary.backoff.failing


def test_a_container_replaced_under_its_name_in_a_burst_is_re_registered_never_removed_first() -> None:
    """A death and the start of its replacement (same name, so the same default ID) in one
    burst: the ID is registered again for the new container, never deregistered first (a
    window's sync before the new container was read would leave the service absent)."""
    h, docker = harness()
    docker.add(container("a-old", "web", ports={"80/tcp": "8080"}, created="2026-01-01T00:00:00.000000001Z"))
    h.send(event("a-old", "start", name="web"))
    assert h.agent.records["h1:web:80"].port == 8080
    docker.containers["a-old"]["State"]["Running"] = False
    docker.add(container("z-new", "web", ports={"80/tcp": "9090"}, created="2026-01-02T00:00:00.000000001Z"))
    for n in range(20):  # more containers than one window of inspects
        docker.add(web(n))
    h.agent.calls.clear()
    h.send(event("a-old", "die", exitCode="0", name="web"), event("z-new", "start", name="web"),
           *[event(f"c{n:03d}", "start", name=f"web{n}") for n in range(20)])
    assert h.agent.records["h1:web:80"].port == 9090 and h.ids() == {"h1:web:80"} | {f"h1:web{n}:80" for n in range(20)}
    assert [c for c in h.agent.writes() if c[1] == "h1:web:80"] == [("register", "h1:web:80")]


def test_a_burst_removes_its_deaths_once_every_container_was_read() -> None:
    h, docker = harness()
    for n in range(40):
        docker.add(web(n))
    h.send(*[event(f"c{n:03d}", "start", name=f"web{n}") for n in range(20)])
    for n in range(10):
        docker.containers[f"c{n:03d}"]["State"]["Running"] = False
    h.send(*[event(f"c{n:03d}", "die", exitCode="0") for n in range(10)],
           *[event(f"c{n:03d}", "start", name=f"web{n}") for n in range(20, 40)])
    assert h.ids() == {f"h1:web{n}:80" for n in range(10, 40)}
def test_a_custom_id_two_containers_of_a_burst_claim_is_registered_for_the_newer_only() -> None:
    """Two containers of one burst declare SERVICE_ID=payments: the newer wins it, and it is
    never registered first for the older one (read in an earlier window)."""
    h, docker = harness()
    docker.add(container("a-old", "olda", ports={"80/tcp": "8080"}, env=["SERVICE_ID=payments"], created="2026-01-01T00:00:00.000000001Z"))
    docker.add(container("z-new", "newz", ports={"80/tcp": "9090"}, env=["SERVICE_ID=payments"], created="2026-01-02T00:00:00.000000001Z"))
    for n in range(20):
        docker.add(web(n))
    h.agent.calls.clear()
    h.send(event("a-old", "start"), event("z-new", "start"), *[event(f"c{n:03d}", "start") for n in range(20)])
    assert h.agent.records["payments"].port == 9090
    assert [c for c in h.agent.writes() if c[1] == "payments"] == [("register", "payments")]
