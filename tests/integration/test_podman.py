"""The daemon pointed at Podman's Docker-compatible API (Debian's podman 4.3.1,
`podman system service`) with DOCKER_HOST, following containers run with the
podman CLI. The differences it meets are listed in the README's "Podman"."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import wait_until
from tests.integration.podman_env import (  # noqa: F401 (fixtures)
    api_up, podman, podman_containers, podman_service,
)

pytestmark = pytest.mark.integration


def test_podman_containers_register_follow_events_and_deregister(podman_service, podman_containers, start_daemon,
                                                                 consul_api, hostname):
    daemon = start_daemon("--exec-checks", "daemon", resync="0", env={"DOCKER_HOST": podman_service})
    daemon.wait_log(f"connected: docker {podman_service}")
    # Image localhost/consul-reg-test/busybox: the default name is still the image's base name.
    web = podman_containers.run("-p", "8080", "--label", "SERVICE_TAGS=web,podman", "-e", "SERVICE_VERSION=3",
                                "--label", "SERVICE_CHECK_DOCKER=echo exec ok in $(hostname)",
                                command="exec httpd -f -p 8080 -h /www")
    worker = podman_containers.run("-e", "SERVICE_NAME=pm-worker", "--label", "SERVICE_ENV_FILE=/tmp/svc.env",
                                   command="printf 'SERVICE_TAGS=from-env-file\\n' > /tmp/svc.env; exec sleep 600")
    web_id, worker_id = f"{hostname}:{web}:8080", f"{hostname}:{worker}"
    services = wait_until(lambda: (s := consul_api.services_of(hostname)) and {web_id, worker_id} <= set(s) and s,
                          timeout=30, message="the Podman containers registered")
    assert services[web_id]["Service"] == "busybox"
    assert services[web_id]["Port"] == podman_containers.host_port(web, "8080")  # HostIp "" is "every address"
    assert services[web_id]["Address"] == "127.0.0.1"  # the agent's advertise address, as with Docker
    assert services[web_id]["Tags"] == ["web", "podman"] and services[web_id]["Meta"]["version"] == "3"
    assert services[worker_id]["Service"] == "pm-worker" and services[worker_id]["Port"] == 0
    # SERVICE_CHECK_DOCKER run by the daemon through Podman's exec API.
    exec_check = wait_until(lambda: (c := consul_api.checks_of(web_id)[f"service:{web_id}:docker"])["Status"]
                            == "passing" and c, message="exec check")  # its output read with its status
    assert "exec ok in" in exec_check["Output"]
    # The env file, read through Podman's archive API.
    wait_until(lambda: consul_api.services_of(hostname)[worker_id]["Tags"] == ["from-env-file"],
               message="env file tags")
    wait_until(lambda: consul_api.check_status(f"service:{worker_id}:heartbeat") == "passing",
               message="worker heartbeat passing")

    podman("stop", "-t", "0", worker)  # die
    wait_until(lambda: worker_id not in consul_api.services_of(hostname), message="stopped worker deregistered")
    podman("start", worker)  # start
    wait_until(lambda: worker_id in consul_api.services_of(hostname), message="restarted worker registered")
    podman("rm", "-f", "-t", "0", web)  # die, then Podman's `remove` (Docker says `destroy`)
    podman("rm", "-f", "-t", "0", worker)
    wait_until(lambda: not {web_id, worker_id} & set(consul_api.services_of(hostname)), message="both deregistered")
    # A container removed while being inspected answers 500 on Podman: read as gone, not as "Docker is down".
    assert "could not inspect" not in daemon.log()
    assert daemon.process.poll() is None


def test_podman_healthcheck_run_on_demand_reaches_consul(podman_service, podman_containers, start_daemon,
                                                         consul_api, hostname):
    # Podman 4.3 sends `health_status` before the new status can be read (an inspect at
    # the event saw the old one ~1 time in 12): the daemon reads it again shortly after.
    daemon = start_daemon(env={"DOCKER_HOST": podman_service})
    daemon.wait_log(f"connected: docker {podman_service}")
    web = podman_containers.run("-p", "8080", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1h",
                                command="exec httpd -f -p 8080 -h /www")
    check = f"service:{hostname}:{web}:8080:docker-health"
    # Without systemd Podman never runs the HEALTHCHECK: Docker health stays `starting` -> critical.
    # The check is registered critical: only a report's output shows `starting` was read and reported.
    wait_until(lambda: (c := consul_api.checks_of(f"{hostname}:{web}:8080")[check])["Status"] == "critical"
               and c["Output"].startswith("docker health: starting"), timeout=30, message="starting is critical")
    assert podman("inspect", "-f", "{{.State.Health.Status}}", web).stdout.strip() == "starting"
    podman("exec", web, "touch", "/tmp/ok")
    podman("healthcheck", "run", web)  # its `health_status` event carries no ": healthy" suffix
    wait_until(lambda: consul_api.check_status(check) == "passing", message="healthy -> passing")
    podman("exec", web, "rm", "/tmp/ok")
    for _ in range(3):  # the default retries: unhealthy after the third failure in a row
        podman("healthcheck", "run", web, check=False)
    wait_until(lambda: consul_api.check_status(check) == "critical", message="unhealthy -> critical")


def test_podman_api_service_restart_is_survived(podman_service, podman_containers, start_daemon, consul_api,
                                                hostname):
    """A Podman API service of the test's own (same storage, own socket) killed and restarted
    under the daemon: the event stream reconnects, a full relist catches up."""
    workdir = Path(tempfile.mkdtemp(prefix="crp-"))
    socket = workdir / "podman.sock"

    def start_service() -> subprocess.Popen[bytes]:
        log = open(workdir / "podman.log", "ab")
        process = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(lambda: api_up(str(socket)), timeout=30, message="own podman service")
        return process

    service = start_service()
    try:
        daemon = start_daemon("-retry-interval", "100", resync="0", env={"DOCKER_HOST": f"unix://{socket}"})
        first = podman_containers.run("-e", "SERVICE_NAME=pm-one")
        wait_until(lambda: f"{hostname}:{first}" in consul_api.services_of(hostname), message="first registered")
        os.killpg(service.pid, signal.SIGKILL)
        service.wait(timeout=30)
        daemon.wait_log("docker event stream")
        second = podman_containers.run("-e", "SERVICE_NAME=pm-two")  # while the API is gone
        podman("rm", "-f", "-t", "0", first)
        service = start_service()
        daemon.wait_log("reconnected; resyncing everything", timeout=40)
        ours = {f"{hostname}:{first}", f"{hostname}:{second}"}  # the daemon sees every Podman container
        wait_until(lambda: set(consul_api.services_of(hostname)) & ours == {f"{hostname}:{second}"}, timeout=30,
                   message="relisted: the new one registered, the removed one gone")
        third = podman_containers.run("-e", "SERVICE_NAME=pm-three")  # events flow again
        wait_until(lambda: f"{hostname}:{third}" in consul_api.services_of(hostname), message="third registered")
        assert daemon.process.poll() is None
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGTERM)
            service.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
