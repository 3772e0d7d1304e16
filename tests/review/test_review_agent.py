"""Review H7: ownership against a real Consul 1.8.7 agent (own agent per test)."""

from __future__ import annotations

import json

import pytest

from consul_reg.router import RELOAD, START, Hint
from tests.review.realagent import RealAgentLoop, real_agent_loop  # noqa: F401  (fixture)
from tests.unit.fakes import container
from tests.unit.test_loop import event

pytestmark = pytest.mark.integration


def test_F12_a_container_cannot_take_another_services_check_by_naming_its_check_id(
        real_agent_loop: RealAgentLoop) -> None:
    """README "Security model": nothing a container declares reaches beyond its own
    services; a container cannot choose an ID in the host's default-ID namespace.
    Check IDs are `service:<service ID>:<suffix>` and both parts may hold ':', so
    SERVICE_ID=<hostname> (allowed: no ':' after it) with a SERVICE_CHECKS entry
    {"ID": "web:80:http"} makes `service:<hostname>:web:80:http`, the check of another
    container's service `<hostname>:web:80`. Consul's check IDs are agent-wide: the
    registration moves the check to the hostile service. The victim is left without
    its health check (Consul counts it passing whatever its state), and since its
    digest did not change no pass ever registers it again, not even a full one."""
    h = real_agent_loop
    host = h.hostname
    h.send(Hint("", START))
    h.docker.add(container("c-web", "web", ports={"80/tcp": "8080"},
                           labels={"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "24h"}))
    h.send(event("c-web", "start"))
    victim, victim_check = f"{host}:web:80", f"service:{host}:web:80:http"
    assert h.check_owner(victim_check) == victim

    h.docker.add(container("c-evil", "evil", created="2026-01-02T00:00:00Z", labels={
        "SERVICE_ID": host, "SERVICE_NAME": "evil",
        "SERVICE_CHECKS": json.dumps([{"ID": "web:80:http", "TTL": "1h", "Status": "passing"}])}))
    h.send(event("c-evil", "start"))
    owner_while_hostile_runs = h.check_owner(victim_check)
    # The hostile container goes; then a full pass (SIGHUP) looks at everything again.
    del h.docker.containers["c-evil"]
    h.send(event("c-evil", "destroy"))
    h.send(Hint("", RELOAD))
    assert h.check_owner(victim_check) == victim, (
        f"while the hostile container ran, {victim}'s check belonged to {owner_while_hostile_runs!r}; "
        f"after it left and a full pass: {h.check_owner(victim_check)!r}")


def test_F12b_a_container_cannot_remove_a_hand_registered_services_check(real_agent_loop: RealAgentLoop) -> None:
    """The same reaches services consul-reg does not manage at all: Consul names the
    checks of a hand-registered service `service:<ID>:1`, `service:<ID>:2`... A
    container with SERVICE_ID=payments:1 and SERVICE_CHECK_TTL gets the check ID
    `service:payments:1`: registering it moves the payments team's check to the
    container's service, and removing the container deletes it. The payments service is
    left with one check less, for good (nobody re-registers a hand-made service)."""
    h = real_agent_loop
    h.api.register({"ID": "payments", "Name": "payments", "Port": 9999,
                    "Checks": [{"TTL": "1h", "Status": "passing"}, {"TTL": "1h", "Status": "passing"}]})
    assert h.check_owner("service:payments:1") == "payments" and h.check_owner("service:payments:2") == "payments"
    h.send(Hint("", START))
    h.docker.add(container("c-evil", "evil", labels={"SERVICE_ID": "payments:1", "SERVICE_NAME": "evil",
                                                     "SERVICE_CHECK_TTL": "1h"}))
    h.send(event("c-evil", "start"))
    while_running = h.check_owner("service:payments:1")
    del h.docker.containers["c-evil"]
    h.send(event("c-evil", "destroy"))
    assert h.check_owner("service:payments:1") == "payments", (
        f"the hand-registered check belonged to {while_running!r} while the container ran, "
        f"and to {h.check_owner('service:payments:1')!r} after it left")
