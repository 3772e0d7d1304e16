"""Relative check ports name the container's own ports (issue 22): with `-P`
(random host ports) `{"HTTP": ":9090/metrics"}` and `{"TCP": ":9090"}` on a
container exposing 80 and 9090 reach its port 9090 through its random binding
(and the container's IP with -internal), and the real agent's checks pass.
`explain` says which reading was taken and shows the restart policy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import IMAGE, RUN_ID, TEST_LABEL, host_port, wait_until

pytestmark = pytest.mark.integration

# /metrics served on 9090 (busybox httpd without -f goes to the background), the app on 80.
SERVE = "mkdir -p /www && echo ok > /www/metrics && httpd -p 9090 -h /www && exec httpd -f -p 80 -h /www"
CHECKS = json.dumps([{"HTTP": ":9090/metrics", "Interval": "1s"}, {"TCP": ":9090", "Interval": "1s"}])


@pytest.fixture
def dash_p(docker_client):
    """`docker run -P` of a container exposing 80 and 9090: both on random host ports."""
    api = docker_client.api
    created = api.create_container(
        IMAGE, ["sh", "-c", SERVE], ports=[80, 9090], stop_signal="SIGKILL",
        labels={TEST_LABEL: RUN_ID, "SERVICE_80_CHECKS": CHECKS, "SERVICE_9090_IGNORE": "1",
                "SERVICE_80_CHECK_RESTART_LIMIT": "3"},
        host_config=api.create_host_config(publish_all_ports=True))
    api.start(created["Id"])
    container = docker_client.containers.get(created["Id"])
    yield container
    container.remove(force=True)


def check_outputs(consul_api, service_id: str) -> dict[str, tuple[str, str]] | None:
    checks = consul_api.checks_of(service_id)
    return {c: (v["Status"], v["Output"]) for c, v in checks.items()} if len(checks) == 2 else None


def both_passing(consul_api, service_id: str):
    outputs = check_outputs(consul_api, service_id)
    return outputs if outputs and all(status == "passing" for status, _ in outputs.values()) else None


@pytest.mark.parametrize("internal", [False, True], ids=["published", "internal"])
def test_dash_p_relative_ports_reach_the_containers_own_port(start_daemon, dash_p, consul_api, hostname, internal):
    start_daemon(*(["-internal"] if internal else []), "--filter", f"label={TEST_LABEL}={RUN_ID}")
    service_id = f"{hostname}:{dash_p.name}:80"
    outputs = wait_until(lambda: both_passing(consul_api, service_id), 60, 0.2,
                         message="both relative checks passing")
    service = consul_api.services_of(hostname)[service_id]
    dash_p.reload()
    if internal:
        where = f"{dash_p.attrs['NetworkSettings']['IPAddress']}:9090"
    else:
        where = f"{service['Address']}:{host_port(dash_p, '9090/tcp')}"
        assert host_port(dash_p, "9090/tcp") != 9090 and service["Port"] == host_port(dash_p, "80/tcp")
    texts = sorted(output for _, output in outputs.values())
    assert texts[0].startswith(f"HTTP GET http://{where}/metrics: 200"), texts
    assert texts[1].startswith(f"TCP connect {where}: Success"), texts


def test_explain_says_how_a_relative_port_was_read_and_shows_the_restart_policy(dash_p, hostname):
    result = subprocess.run([sys.executable, "-m", "consul_reg", "explain", "-ip", "192.0.2.7", "--hostname",
                             hostname, dash_p.name], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    published = host_port(dash_p, "9090/tcp")
    assert f"HTTP=http://192.0.2.7:{published}/metrics" in result.stdout
    assert f":9090 is the container's port 9090, published at 192.0.2.7:{published}" in result.stdout
    assert "Restart      after 3 failed results in a row of one check" in result.stdout
    assert "<- label SERVICE_80_CHECK_RESTART_LIMIT" in result.stdout
