"""Registry URI transports against a real agent: consul-unix:// here; TLS with the faults tests."""

from __future__ import annotations

import pytest

from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


def test_consul_unix_socket(own_agent, start_daemon, run_container, hostname, tmp_path):
    agent = own_agent(http_socket=str(tmp_path / "consul.sock"))
    api = agent.api()
    start_daemon("-ip", "192.0.2.1", agent.uri)
    web = run_container(ports={"80/tcp": None})
    service = wait_until(lambda: api.services_of(hostname).get(f"{hostname}:{web.name}:80"),
                         message="service registered over the unix socket")
    assert service["Address"] == "192.0.2.1"
    web.stop(timeout=1)
    wait_until(lambda: api.services_of(hostname) == {}, message="deregistered over the unix socket")


def test_agent_unreachable_at_start_is_retried_then_registers(own_agent, start_daemon, run_container, hostname,
                                                              tmp_path):
    from tests.integration.conftest import OwnAgent

    agent = OwnAgent(tmp_path)  # not started yet: the daemon must wait for it
    daemon = start_daemon("-retry-interval", "100", f"consul://127.0.0.1:{agent.http_port}")
    run_container(ports={"80/tcp": None})
    daemon.wait_log("retrying in")
    agent.start()
    try:
        api = agent.api()
        wait_until(lambda: len(api.services_of(hostname)) == 1, timeout=30, message="registered once the agent is up")
    finally:
        agent.stop()
