"""Review H7: reproductions against the sync loop, with the unit tests' fakes
(tests/unit/fakes.py and tests/unit/test_loop.py's Harness). Each test states
the behaviour the README promises; a failing test is a finding."""

from __future__ import annotations

from consul_reg.model import Service
from consul_reg.registries.base import RegistryError
from consul_reg.router import CHECK_MISSING, RELOAD, START, Hint
from tests.unit.fakes import FakeAgent, container
from tests.unit.test_loop import Harness, event, h  # noqa: F401  (h: the started harness fixture)


def test_F4_a_check_the_agent_lost_is_registered_again(h: Harness) -> None:
    """router.CHECK_MISSING: "the agent lost a check we report: re-register that
    service". The loop only relists the agent; the service record is still
    there with the same digest, so nothing is registered, the check never comes
    back, and every heartbeat asks for another full agent listing."""
    h.docker.add(container("c1", "jobs", labels={"SERVICE_NAME": "jobs"}))
    h.send(event("c1", "start"))
    check = "service:h1:jobs:heartbeat"
    assert h.ids() == {"h1:jobs"} and check in h.agent.checks
    del h.agent.checks[check]  # the check is gone, the service stays (e.g. taken over by another registration)
    for _ in range(3):
        h.clock.advance(31.0)
        h.probes.run_due()
        for check_id in h.missing:
            h.send(Hint("", CHECK_MISSING, attributes=(("service_id", "h1:jobs"),)))
        h.missing.clear()
    assert check in h.agent.checks, (
        f"the check was never registered again; the agent was listed {h.agent.calls.count(('services', ''))} times")


def test_F5_a_losing_claimant_never_drives_the_winners_heartbeat(h: Harness) -> None:
    """Two containers claiming one ID: the newer gets it (README). But the heartbeat
    scheduler keys tasks by check ID, and a check ID derives from the service ID:
    the loser's task replaces the winner's. Pausing the loser turns the winner's
    check critical; destroying the loser drops the winner's heartbeat altogether."""
    labels = {"SERVICE_NAME": "jobs", "SERVICE_ID": "jobs"}
    h.docker.add(container("legit", "legit", labels=labels, created="2026-01-01T00:00:00.2Z"))
    h.send(event("legit", "start"))
    # An older container (created before) is started later: it loses the ID...
    h.docker.add(container("squat", "squatter", labels=labels, created="2026-01-01T00:00:00.1Z"))
    h.send(event("squat", "start"))
    assert h.agent.registered["jobs"].container_id == "legit"
    check = "service:jobs:heartbeat"
    # ...and pauses itself.
    h.docker.containers["squat"]["State"]["Paused"] = True
    h.send(event("squat", "pause"))
    h.probes.run_due()
    assert h.agent.checks[check][0] == "passing", f"the winner's check reports the loser's state: {h.agent.checks[check]}"


def test_F5b_destroying_the_loser_keeps_the_winners_heartbeat(h: Harness) -> None:
    labels = {"SERVICE_NAME": "jobs", "SERVICE_ID": "jobs"}
    h.docker.add(container("squat", "squatter", labels=labels, created="2026-01-01T00:00:00.1Z"))
    h.docker.add(container("legit", "legit", labels=labels, created="2026-01-01T00:00:00.2Z"))
    h.send(event("squat", "start"), event("legit", "start"))
    assert h.agent.registered["jobs"].container_id == "legit"
    del h.docker.containers["squat"]
    h.send(event("squat", "destroy"))
    assert "service:jobs:heartbeat" in h.probes._tasks, "the winner's heartbeat is no longer scheduled"
    assert h.loop.handle([event("legit", "health_status")])  # raised KeyError out of handle()


class RefusingAgent(FakeAgent):
    """An agent that refuses (HTTP 400) every service whose name starts with "bad"."""

    def register(self, service: Service) -> None:
        if service.name.startswith("bad"):
            self._call("register", service.id)
            raise RegistryError(f"fake agent: 400 invalid service {service.id}")
        super().register(service)


def test_F6_tables_keyed_by_service_id_do_not_outlive_their_container() -> None:
    """README "Guarantees" (uptime): "every table is per container or per check".
    With -resync 0, Primary.refused keeps one entry per refused service ID for
    ever: only a success or a full pass removes it, never the container's death."""
    h = Harness()
    h.agent = RefusingAgent()
    h.primary.agent = h.agent
    h.send(Hint("", START))
    for n in range(50):
        cid = f"c{n}"
        h.docker.add(container(cid, f"job{n}", ports={"80/tcp": "8080"}, labels={"SERVICE_NAME": "bad"}))
        h.send(event(cid, "start"))
        del h.docker.containers[cid]
        h.send(event(cid, "destroy"))
    assert h.loop.desires == {}
    assert len(h.primary.refused) == 0, f"{len(h.primary.refused)} entries of containers long gone"


def test_F6b_a_reap_does_not_outlive_its_container(h: Harness) -> None:
    """The same for ReapTracker: a reaped service's entry leaves only when its
    container restarts or the agent is replaced, never when the container is
    removed, not even by a full pass."""
    h.docker.add(container("c1", "worker", ports={"80/tcp": "8080"},
                           labels={"SERVICE_CHECK_TTL": "10s", "SERVICE_CHECK_DEREGISTER_AFTER": "1m"}))
    h.send(event("c1", "start"))
    del h.agent.records["h1:worker:80"]  # the agent reaps it
    h.send(Hint("", CHECK_MISSING, attributes=(("service_id", "h1:worker:80"),)))
    assert "h1:worker:80" in h.primary.reaps
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    h.send(Hint("", RELOAD))
    assert h.primary.reaps.digests() == {}, f"kept for a container long gone: {h.primary.reaps.digests()}"


def test_F15_destroy_removes_the_records_on_success_kept() -> None:
    """README "Lifecycle": "`destroy` deregisters". With -deregister on-success a failed
    container's records are kept (right); its death set its desire's services to (),
    so its later `docker rm` affects no service ID and nothing is deregistered: the
    record of a container that no longer exists stays in the agent (with -resync 0
    for ever), while the mirrors, which follow the snapshot, drop it."""
    h = Harness(deregister="on-success")
    h.send(Hint("", START))
    h.docker.add(container("c1", "job", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.docker.containers["c1"]["State"].update(Running=False, ExitCode=3)
    h.send(event("c1", "die", exitCode="3"))
    assert h.ids() == {"h1:job:80"}  # kept: the container failed
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    h.clock.advance(3600)
    h.send()
    assert h.ids() == set(), "the record of a removed container is still registered an hour later"
