"""contrib/compose runs with Debian's docker-compose against local stand-in
images under the names it uses, consul-reg included (from its image, run by
the compose file itself); what lands in Consul is checked."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.integration.conftest import IMAGE, ROOT, wait_until
from tests.integration.image_build import consul_reg_image  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration
COMPOSE_FILE = ROOT / "contrib" / "compose" / "docker-compose.yml"


@pytest.fixture
def compose_project(docker_client, hostname, consul_reg_image, tmp_path):
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: scripts/install-deps.sh compose installs it")
    for name in ("example/web:1.0", "example/jobs:1.0", "example/scheduler:1.0"):
        docker_client.images.get(IMAGE).tag(name)
    project = f"crt{hostname}"
    # The test's image tag, and this test's own --hostname (and -resync 0) for the daemon.
    override = tmp_path / "docker-compose.test.yml"
    override.write_text(json.dumps({"version": "2.4", "services": {"consul-reg": {
        "image": consul_reg_image,
        "command": ["--hostname", hostname, "-resync", "0", "consul://localhost:8500"]}}}))
    command = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE), "-f", str(override)]
    subprocess.run([*command, "up", "-d", "--no-build"], check=True, capture_output=True, timeout=120)
    yield project
    subprocess.run([*command, "down", "-t", "1"], capture_output=True, timeout=120)
    for container in docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        container.remove(force=True)


def test_compose_example_lands_in_consul(compose_project, consul_api, hostname, docker_client):
    # The daemon sees the whole shared dockerd: only this project's containers are looked at.
    project = {c.id: c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={compose_project}"})}

    def project_services() -> dict[str, dict]:
        return {v["Service"]: v for v in consul_api.services_of(hostname).values()
                if v["Meta"].get("consul_reg_container") in project}

    by_name = wait_until(lambda: len(s := project_services()) == 3 and s, timeout=30,
                         message="web, jobs and scheduler registered")
    web, jobs, scheduler = by_name["web"], by_name["jobs"], by_name["scheduler"]
    daemon = docker_client.containers.get(f"{compose_project}_consul-reg_1")
    assert daemon.id in project and len(project) == 4  # the daemon's container is not among the 3
    assert daemon.attrs["HostConfig"]["NetworkMode"] == "host"
    assert "connected: docker unix:///tmp/docker.sock" in daemon.logs().decode()
    assert web["Tags"] == ["traefik.enable=true", "traefik.http.routers.web.rule=Host(`web.example.com`)",
                           "traefik.http.routers.web.tls=true", "prometheus"]
    assert web["Meta"]["version"] == "1.0"
    web_container = docker_client.containers.get(f"{compose_project}_web_1")
    assert web["Port"] == int(web_container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    assert jobs["Tags"] == ["prometheus", "worker"] and jobs["Port"] > 0
    assert scheduler["Port"] == 0 and scheduler["Tags"] == ["worker"]
    for check_id in (f"service:{web['ID']}:http", f"service:{web['ID']}:docker-health",
                     f"service:{jobs['ID']}:http", f"service:{scheduler['ID']}:heartbeat"):
        wait_until(lambda: consul_api.check_status(check_id) == "passing", timeout=40, message=f"{check_id} passing")
