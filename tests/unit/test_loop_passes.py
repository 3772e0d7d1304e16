"""The full-pass counters the loop publishes, and /health and /services showing
them (fakes, fake clock): a pass is numbered before it lists anything, and
counted done only once its sync, drains and publication are over. Integration
tests wait on them (tests/integration/conftest.py, wait_full_passes_after)."""

from __future__ import annotations

from typing import Any

from consul_reg.app.metrics import Metrics
from consul_reg.app.status import StatusSources, health, services
from consul_reg.core.liveness import Liveness
from consul_reg.core.snapshot import Snapshot
from consul_reg.sync.drain import REASON_PREFIX
from consul_reg.core.messages import AgentBack, Reload, Start
from tests.unit.fakes import container
from tests.unit.test_loop import Harness, event, h  # noqa: F401  (h: the started harness fixture)


def sources(harness: Harness) -> StatusSources:
    up = Liveness("x")
    up.ok()
    return StatusSources(snapshot=lambda: harness.loop.snapshot, docker=up, agent=up, mirrors=dict,
                         metrics=Metrics(), hostname="h1")


def counters(body: dict[str, Any]) -> tuple[int, int]:
    return body["full_passes_started"], body["full_pass_done"]


def seen_during(harness: Harness, method: str) -> list[tuple[int, int]]:
    """What /health answers each time the loop calls the agent's `method` (in the middle of a batch)."""
    seen: list[tuple[int, int]] = []
    original = getattr(harness.agent, method)

    def spy(*args: Any) -> Any:
        seen.append(counters(health(sources(harness))[1]))
        return original(*args)

    setattr(harness.agent, method, spy)
    return seen


def test_a_full_pass_is_counted_done_only_after_its_writes(h: Harness) -> None:
    assert counters(health(sources(h))[1]) == (1, 1)  # the start-up pass
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    registers = seen_during(h, "register")
    h.send(Reload())
    assert h.ids() == {"h1:web:80"}
    assert registers == [(2, 1)], "while its sync writes, the pass is begun (2) but not done"
    assert counters(health(sources(h))[1]) == (2, 2)
    assert h.loop.snapshot.desired.keys() == {"h1:web:80"}  # published with the pass's own view


def test_a_full_pass_is_counted_done_only_after_the_drains_that_wait_for_its_listing(h: Harness) -> None:
    """The agent came back empty: the stop's drain waits for the pass's listing and
    registration, and lands after the sync; the pass is done only after it."""
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.agent.restart("node-2")
    h.identity = h.agent.agent_info()
    drains = seen_during(h, "enable_maintenance")
    registers = seen_during(h, "register")
    h.send(event("c1", "kill", signal="15"), AgentBack(h.identity))
    assert h.agent.maintenance.get("h1:web:80", "").startswith(REASON_PREFIX)
    assert registers == [(2, 1)] and drains == [(2, 1)]
    assert (h.loop.snapshot.full_passes_started, h.loop.snapshot.full_pass_done) == (2, 2)


def test_only_full_passes_move_the_counters_and_a_resync_comes_when_due() -> None:
    h = Harness(resync=10.0)
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    generation = h.loop.snapshot.generation
    h.send(event("c1", "start"))  # a targeted pass: a new view, no full pass
    assert h.ids() == {"h1:web:80"} and h.loop.snapshot.generation > generation
    assert (h.loop.snapshot.full_passes_started, h.loop.snapshot.full_pass_done) == (1, 1)
    h.clock.advance(9.0)
    h.send()
    assert (h.loop.snapshot.full_passes_started, h.loop.snapshot.full_pass_done) == (1, 1)
    h.clock.advance(1.0)  # the resync is due
    h.send()
    assert (h.loop.snapshot.full_passes_started, h.loop.snapshot.full_pass_done) == (2, 2)


def test_a_pass_docker_cut_short_is_never_done_and_the_next_one_is_numbered_after_it(h: Harness) -> None:
    h.docker.down = True
    h.send(Reload())
    assert h.loop.timers.full_pending
    assert (h.loop.snapshot.full_passes_started, h.loop.snapshot.full_pass_done) == (2, 1)
    h.docker.down = False
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.clock.advance(1.5)  # Docker's backoff: the pass is tried again
    h.send()
    assert h.ids() == {"h1:web:80"}
    assert (h.loop.snapshot.full_passes_started, h.loop.snapshot.full_pass_done) == (3, 3)


def test_a_full_pass_asked_while_one_runs_is_numbered_after_it(h: Harness) -> None:
    """What the integration tests' wait relies on: a SIGHUP that comes while a pass runs
    (read as started=S, done=S-1) is taken in the next batch, whose pass is S+1; the
    running one ends as S, which a wait for done > S does not count."""
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    read_when_signalled: list[tuple[int, int]] = []
    register = h.agent.register

    def signal_meanwhile(service: Any) -> None:
        read_when_signalled.append(counters(health(sources(h))[1]))
        h.loop.post(Reload())  # as the SIGHUP handler does, from another thread
        register(service)

    h.agent.register = signal_meanwhile  # type: ignore[method-assign]
    h.send(Reload())
    h.agent.register = register  # type: ignore[method-assign]
    [(started, done)] = read_when_signalled
    assert (started, done) == (2, 1)
    assert h.loop.snapshot.full_pass_done == started, "the running pass ends as the one read"
    h.send(*h.loop.inbox.next_batch(0))  # the batch holding the signal's message
    assert h.loop.snapshot.full_pass_done == started + 1


def test_health_and_services_show_the_counters_beside_what_they_showed() -> None:
    up, down = Liveness("docker"), Liveness("agent")
    up.ok()
    down.failed("connection refused")
    snapshot = Snapshot(generation=7, full_passes_started=4, full_pass_done=3, last_full_pass=90.0)
    view = StatusSources(snapshot=lambda: snapshot, docker=up, agent=down, mirrors=lambda: {"etcd": "ok"},
                         metrics=Metrics(), hostname="h1")
    code, body = health(view, now=100.0)
    assert code == 503  # a 503 carries them too: a test waits through an outage
    assert (body["generation"], body["full_passes_started"], body["full_pass_done"]) == (7, 4, 3)
    assert body["docker"] == "ok" and body["consul"] == "unreachable" and body["consul_reason"]
    assert body["last_reconcile_seconds_ago"] == 10.0 and body["mirrors"] == {"etcd": "ok"}
    listing = services(view)
    assert (listing["generation"], listing["full_passes_started"], listing["full_pass_done"]) == (7, 4, 3)
    assert listing["containers"] == {} and listing["agent_listing_known"] is False
