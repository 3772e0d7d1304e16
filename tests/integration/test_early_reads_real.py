"""The reads begun on Docker's event thread (sync/early.py, issue 24) against real
Docker and Consul: a SIGKILL's death is checked against the agent as read at the
kill, so a record an operator put in place of ours before the kill stays, while
ours go; a start registers from the inspect sent when its event was read."""

from __future__ import annotations

import pytest

from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


def test_a_record_replaced_before_a_docker_kill_stays_and_ours_are_removed(start_daemon, run_container, consul_api,
                                                                           hostname):
    daemon = start_daemon()
    web = run_container(ports={"80/tcp": None})
    api = run_container(ports={"81/tcp": None})
    web_id, api_id = f"{hostname}:{web.name}:80", f"{hostname}:{api.name}:81"
    wait_until(lambda: {web_id, api_id} <= set(consul_api.services_of(hostname)), message="both registered")
    consul_api.register({"ID": web_id, "Name": "by-hand", "Port": 1})  # an operator's record: no longer ours
    try:
        web.kill()  # SIGKILL: its kill event, then its death ~20 ms later
        api.kill()
        wait_until(lambda: api_id not in consul_api.services(), message="ours removed at its death")
        daemon.wait_log(f"{web_id} is now registered by")  # web's death was handled, and left it
        assert consul_api.services()[web_id]["Service"] == "by-hand"
    finally:
        consul_api.deregister(web_id)


def test_a_container_killed_and_started_again_at_once_is_registered_again(start_daemon, run_container, consul_api,
                                                                          hostname, docker_client):
    """A kill's read and a start's inspect in flight together for one container: the
    last event decides, and the record is there once the container runs again."""
    start_daemon()
    web = run_container(ports={"80/tcp": None})
    web_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: web_id in consul_api.services_of(hostname), message="registered")
    for _ in range(5):
        web.kill()
        docker_client.api.start(web.id)
    wait_until(lambda: docker_client.api.inspect_container(web.id)["State"]["Running"], message="running")
    service = wait_until(lambda: consul_api.services_of(hostname).get(web_id), message="registered again")
    port = docker_client.api.inspect_container(web.id)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
    wait_until(lambda: consul_api.services_of(hostname).get(web_id, {}).get("Port") == int(port),
               message=f"registered at its last port {port} (was {service['Port']})")
