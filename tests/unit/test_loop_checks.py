"""Daemon-owned and agent checks through the sync loop (fake Docker, agent and
clock): a check the agent lost comes back."""

from __future__ import annotations

from consul_reg.router import CHECK_MISSING, RELOAD, Hint
from tests.unit.fakes import container
from tests.unit.test_loop import Harness, event, h  # noqa: F401  (h: the started harness fixture)

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
    h.send(Hint("", CHECK_MISSING, attributes=(("service_id", "h1:jobs"),)))
    assert check in h.agent.checks
    assert h.agent.calls.count(("register", "h1:jobs")) == 2
    h.probes.run_due()
    assert h.agent.checks[check][0] == "passing", "reported at once once registered again"


def test_a_full_pass_registers_again_a_service_that_lost_an_agent_check(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, labels={"SERVICE_CHECK_TCP": "true"}))
    h.send(event("c1", "start"))
    h.send(Hint("", RELOAD))
    assert h.agent.calls.count(("register", "h1:web:80")) == 1, "an in-sync full pass writes nothing"
    del h.agent.checks["service:h1:web:80:tcp"]
    h.send(Hint("", RELOAD))
    assert "service:h1:web:80:tcp" in h.agent.checks
    assert h.agent.calls.count(("register", "h1:web:80")) == 2

