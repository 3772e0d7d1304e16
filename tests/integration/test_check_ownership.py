"""Check ownership against a real Consul 1.8.7 agent (an agent of each test's own):
check IDs are agent-wide, so a container must never take over, nor through its
removal delete, a check of another service; and a check the agent lost comes back."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
from loguru import logger

from consul_reg.core.messages import Reload, Start
from tests.integration.realagent import RealAgentLoop, real_agent_loop  # noqa: F401  (fixture)
from tests.unit.fakes import container
from tests.unit.test_loop import event

pytestmark = pytest.mark.integration


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(lambda message: seen.append(message.record["message"]), level="WARNING")
    yield seen
    logger.remove(sink)


def web_with_a_check(h: RealAgentLoop, kind: str, value: str) -> tuple[str, str]:
    """Container web (port 80) with SERVICE_CHECK_<KIND>, registered: (its service ID, its check ID)."""
    h.send(Start())
    h.docker.add(container("c-web", "web", ports={"80/tcp": "8080"},
                           labels={f"SERVICE_CHECK_{kind.upper()}": value, "SERVICE_CHECK_INTERVAL": "24h"}))
    h.send(event("c-web", "start"))
    service, check = f"{h.hostname}:web:80", f"service:{h.hostname}:web:80:{kind}"
    assert h.check_owner(check) == service
    return service, check


def test_a_check_id_naming_another_services_check_is_refused(real_agent_loop: RealAgentLoop,
                                                             warnings: list[str]) -> None:
    """Service IDs may hold ':', so SERVICE_ID=<hostname> (allowed) with a SERVICE_CHECKS
    "ID" of web:80:http would make service:<hostname>:web:80:http, the check of another
    container's service <hostname>:web:80; registering it would move that check."""
    h = real_agent_loop
    host = h.hostname
    victim, victim_check = web_with_a_check(h, "http", "/health")

    h.docker.add(container("c-evil", "evil", created="2026-01-02T00:00:00Z", labels={
        "SERVICE_ID": host, "SERVICE_NAME": "evil",
        "SERVICE_CHECKS": json.dumps([{"ID": "web:80:http", "TTL": "1h", "Status": "passing"}])}))
    h.send(event("c-evil", "start"))
    owner_while_hostile_runs = h.check_owner(victim_check)
    assert host in h.api.services(), "the rest of the container still registers"
    assert any("container evil: key 'SERVICE_CHECKS': check 1: ID must be" in w for w in warnings), warnings
    del h.docker.containers["c-evil"]
    h.send(event("c-evil", "destroy"))
    h.send(Reload())
    assert (owner_while_hostile_runs, h.check_owner(victim_check)) == (victim, victim)


def test_a_container_cannot_take_or_remove_a_hand_registered_services_check(real_agent_loop: RealAgentLoop,
                                                                            warnings: list[str]) -> None:
    """Consul names the checks of a hand-registered service service:<ID>:1, :2...
    SERVICE_ID=payments:1 with SERVICE_CHECK_TTL asks for the check ID service:payments:1:
    the registration is refused (it would move the payments team's check, and the
    container's removal would delete it), with a warning naming container and key."""
    h = real_agent_loop
    h.api.register({"ID": "payments", "Name": "payments", "Port": 9999,
                    "Checks": [{"TTL": "1h", "Status": "passing"}, {"TTL": "1h", "Status": "passing"}]})
    assert h.check_owner("service:payments:1") == "payments" and h.check_owner("service:payments:2") == "payments"
    h.send(Start())
    h.docker.add(container("c-evil", "evil", labels={"SERVICE_ID": "payments:1", "SERVICE_NAME": "evil",
                                                     "SERVICE_CHECK_TTL": "1h"}))
    h.send(event("c-evil", "start"))
    while_running = h.check_owner("service:payments:1")
    assert "payments:1" not in h.api.services()
    assert any("container evil: check service:payments:1 (from SERVICE_CHECK_TTL) is already the check of "
               "service 'payments'" in w for w in warnings), warnings
    h.send(Reload())  # a full pass tries again, and is refused again
    del h.docker.containers["c-evil"]
    h.send(event("c-evil", "destroy"))
    assert (while_running, h.check_owner("service:payments:1")) == ("payments", "payments")
    assert set(h.api.checks_of("payments")) == {"service:payments:1", "service:payments:2"}


def test_a_check_removed_from_outside_is_registered_again_by_a_full_pass(real_agent_loop: RealAgentLoop) -> None:
    """The service record is still there with its digest: only the agent's check listing tells."""
    h = real_agent_loop
    service, check = web_with_a_check(h, "tcp", "true")
    h.api.http.put(f"/v1/agent/check/deregister/{check}").raise_for_status()
    assert h.check_owner(check) is None and service in h.api.services()
    h.send(Reload())
    assert h.check_owner(check) == service
