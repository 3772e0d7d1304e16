"""Review H7: reproductions against the sync loop, with the unit tests' fakes
(tests/unit/fakes.py and tests/unit/test_loop.py's Harness). Each test states
the behaviour the README promises; a failing test is a finding."""

from __future__ import annotations

from consul_reg.router import CHECK_MISSING, Hint
from tests.unit.fakes import container
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
