"""Daemon-owned and agent checks through the sync loop (fake Docker, agent and
clock): a check the agent lost comes back, and of two containers claiming one
service ID only the winner drives that service's checks."""

from __future__ import annotations

from consul_reg.core.records import Service
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.core.messages import CheckMissing, Reload, Start
from tests.unit.fakes import FakeAgent, container
from tests.unit.test_loop import Harness, event, h  # noqa: F401  (h: the started harness fixture)

CLAIM = {"SERVICE_NAME": "jobs", "SERVICE_ID": "jobs"}
CHECK = "service:jobs:heartbeat"


def test_a_heartbeat_check_the_agent_lost_is_registered_again(h: Harness) -> None:
    """The service record is still there with the same digest: only the agent's check
    listing (read with the relist the missing heartbeat asks for) tells it is gone."""
    h.docker.add(container("c1", "jobs", labels={"SERVICE_NAME": "jobs"}))
    h.send(event("c1", "start"))
    check = "service:h1:jobs:heartbeat"
    assert h.ids() == {"h1:jobs"} and check in h.agent.checks
    del h.agent.checks[check]  # the check is gone, the service stays
    h.clock.advance(31.0)
    h.probes.run_due()
    assert h.missing == [check]
    h.send(CheckMissing("h1:jobs"))
    assert check in h.agent.checks
    assert h.agent.calls.count(("register", "h1:jobs")) == 2
    h.probes.run_due()
    assert h.agent.checks[check][0] == "passing", "reported at once once registered again"


def test_a_full_pass_registers_again_a_service_that_lost_an_agent_check(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, labels={"SERVICE_CHECK_TCP": "true"}))
    h.send(event("c1", "start"))
    h.send(Reload())
    assert h.agent.calls.count(("register", "h1:web:80")) == 1, "an in-sync full pass writes nothing"
    del h.agent.checks["service:h1:web:80:tcp"]
    h.send(Reload())
    assert "service:h1:web:80:tcp" in h.agent.checks
    assert h.agent.calls.count(("register", "h1:web:80")) == 2


def test_a_losing_claimant_never_drives_the_winners_heartbeat(h: Harness) -> None:
    h.docker.add(container("legit", "legit", labels=CLAIM, created="2026-01-01T00:00:00.2Z"))
    h.send(event("legit", "start"))
    # An older container (created before) is started later: it loses the ID...
    h.docker.add(container("squat", "squatter", labels=CLAIM, created="2026-01-01T00:00:00.1Z"))
    h.send(event("squat", "start"))
    assert h.agent.registered["jobs"].container_id == "legit"
    # ...and pauses itself.
    h.docker.containers["squat"]["State"]["Paused"] = True
    h.send(event("squat", "pause"))
    h.probes.run_due()
    assert h.agent.checks[CHECK][0] == "passing", f"the winner's check reports the loser's state: {h.agent.checks}"
    assert h.probes._tasks[CHECK].probe.container_id == "legit"


def test_destroying_the_loser_keeps_the_winners_heartbeat(h: Harness) -> None:
    h.docker.add(container("squat", "squatter", labels=CLAIM, created="2026-01-01T00:00:00.1Z"))
    h.docker.add(container("legit", "legit", labels=CLAIM, created="2026-01-01T00:00:00.2Z"))
    h.send(event("squat", "start"), event("legit", "start"))
    assert h.agent.registered["jobs"].container_id == "legit"
    del h.docker.containers["squat"]
    h.send(event("squat", "destroy"))
    assert h.probes._tasks[CHECK].probe.container_id == "legit", "the winner's heartbeat is no longer scheduled"
    assert h.loop.handle([event("legit", "health_status")])


def test_the_checks_follow_the_id_when_the_winner_leaves(h: Harness) -> None:
    """The loser of a contested ID becomes its holder when the winner goes: its checks
    are handed over then (its own desire did not change)."""
    h.docker.add(container("squat", "squatter", labels=CLAIM, created="2026-01-01T00:00:00.1Z"))
    h.send(event("squat", "start"))
    assert h.probes._tasks[CHECK].probe.container_id == "squat"
    h.docker.add(container("legit", "legit", labels=CLAIM, created="2026-01-01T00:00:00.2Z"))
    h.send(event("legit", "start"))
    assert h.probes._tasks[CHECK].probe.container_id == "legit"
    del h.docker.containers["legit"]
    h.send(event("legit", "destroy"))
    assert h.agent.registered["jobs"].container_id == "squat"
    assert h.probes._tasks[CHECK].probe.container_id == "squat"
    h.send(Reload())
    assert h.probes._tasks[CHECK].probe.container_id == "squat" and h.probes.check_count() == 1


class GuardedAgent(FakeAgent):
    """As the OwnershipGuard: a registration whose check another service holds is refused."""

    def register(self, service: Service) -> None:
        for check in service.checks:
            holder = self.check_service.get(check.check_id)
            if holder is not None and holder != service.id:
                self._call("register", service.id)
                raise RegistryNotOurs(f"check {check.check_id} is the check of {holder}")
        super().register(service)


def test_a_service_whose_lost_check_cannot_be_registered_again_still_leaves_with_its_container() -> None:
    h = Harness()
    h.agent.__class__ = GuardedAgent
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, labels={"SERVICE_CHECK_TTL": "30s"}))
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"}
    h.agent.check_service["service:h1:web:80"] = "by-hand"  # a service registered by hand took the check
    h.send(Reload())  # the lost check is noticed; registering it again is refused
    assert "h1:web:80" in h.agent.records
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="0"))
    assert "h1:web:80" not in h.agent.records  # still known as ours: deregistered with its container
