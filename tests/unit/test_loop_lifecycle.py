"""The loop across a container's life (stop, restart, death, removal), with the
fakes and a fake clock: every event's own action runs whatever else shares its
batch, and nothing kept for a container outlives it."""

from __future__ import annotations

from consul_reg.sync.drain import REASON_PREFIX
from consul_reg.core.records import RegisteredService, Service
from consul_reg.core.errors import RegistryError
from consul_reg.core.messages import AgentBack, CheckMissing, Reload, Start
from tests.unit.fakes import FakeAgent, container
from tests.unit.test_loop import Harness, event, h  # noqa: F401  (h: the started harness fixture)


def started(h: Harness, name: str = "web") -> None:
    h.docker.add(container("c1", name, ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert h.ids() == {f"h1:{name}:80"}


def test_a_docker_stop_in_the_same_batch_as_agent_back_still_drains(h: Harness) -> None:
    started(h)
    h.send(event("c1", "kill", signal="15"), AgentBack(h.identity))
    assert h.agent.maintenance.get("h1:web:80", "").startswith(REASON_PREFIX), "the docker stop was not drained"


def test_a_docker_stop_with_agent_back_drains_what_the_restarted_agent_holds_again(h: Harness) -> None:
    """The agent came back empty (a new node ID): the drain waits for the
    listing of the same batch, so it lands on the record registered again."""
    started(h)
    h.agent.records.clear()
    h.agent.node_id = "node-2"
    h.identity = h.agent.agent_info()
    h.send(event("c1", "kill", signal="15"), AgentBack(h.identity))
    assert h.ids() == {"h1:web:80"}
    assert h.agent.maintenance.get("h1:web:80", "").startswith(REASON_PREFIX)
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="143"))
    assert h.ids() == set() and h.agent.maintenance == {}


def test_a_docker_stop_while_the_agent_is_down_is_no_drain_and_no_crash(h: Harness) -> None:
    started(h)
    h.agent.down = True
    h.send(event("c1", "kill", signal="15"), AgentBack(h.identity))
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
    in maintenance while it is dead; when it starts again, in another batch, its
    records are registered again, which clears the maintenance."""
    h = Harness(deregister="on-success")
    h.send(Start())
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


class RefusingAgent(FakeAgent):
    """An agent that refuses (HTTP 400) every service whose name starts with "bad"."""

    def register(self, service: Service) -> None:
        if service.name.startswith("bad"):
            self._call("register", service.id)
            raise RegistryError(f"fake agent: 400 invalid service {service.id}")
        super().register(service)


def test_refused_definitions_do_not_outlive_their_container() -> None:
    """With -resync 0 no full pass ever clears Primary.refused: a container's
    removal must."""
    h = Harness()
    h.agent = RefusingAgent()
    h.primary.agent = h.agent
    h.send(Start())
    for n in range(50):
        cid = f"c{n}"
        h.docker.add(container(cid, f"job{n}", ports={"80/tcp": "8080"}, labels={"SERVICE_NAME": "bad"}))
        h.send(event(cid, "start"))
        assert f"h1:job{n}:80" in h.primary.refused
        del h.docker.containers[cid]
        h.send(event(cid, "destroy"))
    assert h.loop.containers.desires == {}
    assert len(h.primary.refused) == 0, f"{len(h.primary.refused)} entries of containers long gone"


def test_a_refused_definition_of_a_running_container_is_still_not_retried() -> None:
    h = Harness()
    h.agent = RefusingAgent()
    h.primary.agent = h.agent
    h.send(Start())
    h.docker.add(container("c1", "job", ports={"80/tcp": "8080"}, labels={"SERVICE_NAME": "bad"}))
    h.docker.add(container("c2", "web", ports={"80/tcp": "8081"}))
    h.send(event("c1", "start"))
    h.send(event("c2", "start"), event("c1", "update"))
    assert h.agent.calls.count(("register", "h1:job:80")) == 1 and "h1:job:80" in h.primary.refused


def reaped(h: Harness) -> None:
    h.docker.add(container("c1", "worker", ports={"80/tcp": "8080"},
                           labels={"SERVICE_CHECK_TTL": "10s", "SERVICE_CHECK_DEREGISTER_AFTER": "1m"}))
    h.send(event("c1", "start"))
    del h.agent.records["h1:worker:80"]  # the agent reaps it
    h.send(CheckMissing("h1:worker:80"))
    assert "h1:worker:80" in h.primary.reaps and h.ids() == set()


def test_a_reap_does_not_outlive_its_container(h: Harness) -> None:
    reaped(h)
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    assert h.primary.reaps.digests() == {}, f"kept for a container long gone: {h.primary.reaps.digests()}"


def test_a_full_pass_forgets_the_reap_of_a_container_whose_removal_was_missed(h: Harness) -> None:
    reaped(h)
    del h.docker.containers["c1"]  # its destroy event was lost
    h.send(Reload())
    assert h.primary.reaps.digests() == {}


def test_a_reap_of_a_running_container_stays_through_a_full_pass(h: Harness) -> None:
    reaped(h)
    h.send(Reload())
    h.send(event("c1", "update"))
    assert "h1:worker:80" in h.primary.reaps and h.ids() == set()


def failed_on_success(h: Harness) -> None:
    h.send(Start())
    started(h, "job")
    h.docker.containers["c1"]["State"].update(Running=False, ExitCode=3)
    h.send(event("c1", "die", exitCode="3"))
    assert h.ids() == {"h1:job:80"}  # kept: the container failed


def test_destroy_removes_the_records_on_success_kept() -> None:
    """-deregister on-success keeps a failed container's records; its `docker rm`
    removes them (README "Lifecycle": `destroy` deregisters), with -resync 0 too."""
    h = Harness(deregister="on-success")
    failed_on_success(h)
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    assert h.ids() == set(), "the record of a removed container is still registered"
    h.clock.advance(3600)
    h.send()
    assert h.ids() == set()


def test_destroy_of_a_failed_container_leaves_a_record_someone_else_holds_now() -> None:
    h = Harness(deregister="on-success")
    failed_on_success(h)
    h.agent.records["h1:job:80"] = RegisteredService("h1:job:80", "job")  # taken over by hand meanwhile
    h.send(Reload())
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    assert h.ids() == {"h1:job:80"} and ("deregister", "h1:job:80") not in h.agent.calls


def test_a_failed_container_started_again_under_another_name_drops_its_kept_records() -> None:
    h = Harness(deregister="on-success")
    failed_on_success(h)
    h.docker.containers["c1"]["Name"] = "/job2"
    h.docker.containers["c1"]["State"].update(Running=True, ExitCode=0)
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:job2:80"}
