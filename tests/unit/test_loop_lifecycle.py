"""The loop across a container's life (stop, restart, death, removal), with the
fakes and a fake clock: every event's own action runs whatever else shares its
batch, and nothing kept for a container outlives it."""

from __future__ import annotations

from consul_reg.drain import REASON_PREFIX
from consul_reg.router import AGENT_BACK, RELOAD, START, Hint
from tests.unit.fakes import container
from tests.unit.test_loop import Harness, event, h  # noqa: F401  (h: the started harness fixture)


def started(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"}


def test_a_docker_stop_in_the_same_batch_as_agent_back_still_drains(h: Harness) -> None:
    started(h)
    h.send(event("c1", "kill", signal="15"), Hint("", AGENT_BACK))
    assert h.agent.maintenance.get("h1:web:80", "").startswith(REASON_PREFIX), "the docker stop was not drained"


def test_a_docker_stop_with_agent_back_drains_what_the_restarted_agent_holds_again(h: Harness) -> None:
    """The agent came back empty (a new node ID): the drain waits for the
    listing of the same batch, so it lands on the record registered again."""
    started(h)
    h.agent.records.clear()
    h.agent.node_id = "node-2"
    h.identity = h.agent.agent_info()
    h.send(event("c1", "kill", signal="15"), Hint("", AGENT_BACK))
    assert h.ids() == {"h1:web:80"}
    assert h.agent.maintenance.get("h1:web:80", "").startswith(REASON_PREFIX)
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="143"))
    assert h.ids() == set() and h.agent.maintenance == {}


def test_a_docker_stop_while_the_agent_is_down_is_no_drain_and_no_crash(h: Harness) -> None:
    started(h)
    h.agent.down = True
    h.send(event("c1", "kill", signal="15"), Hint("", AGENT_BACK))
    assert h.agent.maintenance == {} and h.loop.drainer.next_deadline() is None


def test_a_docker_restart_whose_die_and_start_share_a_batch_is_not_left_draining(h: Harness) -> None:
    """kill (drained), then die and start in one batch: the container runs
    again, so its maintenance is cleared at once, not at the drain timeout."""
    started(h)
    h.send(event("c1", "kill", signal="15"))
    assert "h1:web:80" in h.agent.maintenance  # draining while it stops: right
    h.send(event("c1", "die", exitCode="143"), event("c1", "start"), event("c1", "restart"))
    assert h.ids() == {"h1:web:80"}
    assert "h1:web:80" not in h.agent.maintenance, "the restarted container is still out of rotation"
    assert h.loop.drainer.next_deadline() is None
    h.clock.advance(60)
    h.send()
    assert h.ids() == {"h1:web:80"} and h.agent.maintenance == {}


def test_a_whole_restart_in_one_batch_writes_no_maintenance(h: Harness) -> None:
    started(h)
    h.send(event("c1", "kill", signal="15"), event("c1", "die", exitCode="143"), event("c1", "start"),
           event("c1", "restart"))
    assert not [c for c in h.agent.calls if c[0].startswith("maintenance")]
    assert h.ids() == {"h1:web:80"}


def test_a_stop_after_a_start_in_one_batch_still_drains(h: Harness) -> None:
    started(h)
    h.send(event("c1", "restart"), event("c1", "kill", signal="15"))
    assert h.agent.maintenance.get("h1:web:80", "").startswith(REASON_PREFIX)


def test_a_drained_container_whose_records_were_kept_leaves_maintenance_when_it_starts_again() -> None:
    """-deregister on-success: a drained container that failed keeps its records,
    in maintenance (Consul keeps maintenance across a re-registration); when it
    starts again, in another batch, the maintenance is cleared."""
    h = Harness(deregister="on-success")
    h.send(Hint("", START))
    started(h)
    h.send(event("c1", "kill", signal="15"))
    h.docker.containers["c1"]["State"].update(Running=False, ExitCode=1)
    h.send(event("c1", "die", exitCode="1"))
    assert h.ids() == {"h1:web:80"} and "h1:web:80" in h.agent.maintenance  # kept, out of rotation
    h.clock.advance(3600)
    h.send()
    assert "h1:web:80" in h.agent.maintenance, "a dead container's kept record went back into rotation"
    h.docker.containers["c1"]["State"].update(Running=True, ExitCode=0)
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"} and h.agent.maintenance == {}
