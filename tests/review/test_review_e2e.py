"""Review H7, end to end: the real daemon process, a dockerd of this module's
own (its own socket, data root and bridge: hostile containers never run on the
shared dockerd) and a Consul agent of the test's own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    IMAGE, ROOT, RUN_ID, TEST_LABEL, consul_api, hostname, own_agent, start_daemon, wait_until,
)

pytestmark = pytest.mark.integration

BRIDGE, BRIDGE_CIDR = "crreview0", "10.233.11.1/24"  # clear of every other bridge on this machine


@pytest.fixture(scope="module")
def review_docker() -> Iterator[tuple[str, docker.DockerClient]]:
    workdir = Path(tempfile.mkdtemp(prefix="crr-"))
    host = f"unix://{workdir / 'docker.sock'}"
    made_bridge = subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0
    if made_bridge:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    with open(workdir / "dockerd.log", "ab") as log:
        process = subprocess.Popen(
            ["dockerd", "--host", host, "--data-root", str(workdir / "root"), "--exec-root", str(workdir / "exec"),
             "--pidfile", str(workdir / "docker.pid"), "--bridge", BRIDGE, "--iptables=false", "--ip-masq=false"],
            stdout=log, stderr=subprocess.STDOUT)
    client: docker.DockerClient | None = None
    try:
        wait_until(lambda: docker.DockerClient(base_url=host, timeout=5).ping(), timeout=60, message="own dockerd up")
        client = docker.DockerClient(base_url=host, timeout=60)
        subprocess.run(["sh", str(ROOT / "scripts" / "make-test-image.sh")], check=True,
                       env={**os.environ, "DOCKER_HOST": host})
        yield host, client
    finally:
        if process.poll() is None:
            if client is not None:
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.close()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
        if made_bridge:
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


@pytest.fixture
def run_container(review_docker) -> Iterator[Callable[..., Any]]:
    _, client = review_docker
    started: list[Any] = []

    def start(command: str | list[str] = "sleep 600", **kwargs: Any):
        labels = {**(kwargs.pop("labels", {}) or {}), TEST_LABEL: RUN_ID}
        kwargs.setdefault("name", f"crr-{uuid.uuid4().hex[:8]}")
        kwargs.setdefault("stop_signal", "SIGKILL")
        container = client.containers.run(IMAGE, command, detach=True, labels=labels, **kwargs)
        started.append(container)
        container.reload()
        return container

    yield start
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_F12c_a_hostile_container_deletes_a_hand_registered_services_check(
        own_agent, review_docker, start_daemon, run_container, hostname) -> None:
    """F12 end to end: the payments team registers its service by hand with two TTL
    checks (Consul names them service:<ID>:1 and :2). A container labelled
    SERVICE_ID=<ID>:1 with SERVICE_CHECK_TTL takes check 1 over; `docker rm` of that
    container deletes it. Final state asserted: the hand-registered service still has
    both its checks."""
    agent = own_agent()
    api = agent.api()
    billing = f"billing-{hostname}"
    api.register({"ID": billing, "Name": "billing", "Port": 9998,
                  "Checks": [{"TTL": "1h", "Status": "passing"}, {"TTL": "1h", "Status": "passing"}]})
    assert set(api.checks_of(billing)) == {f"service:{billing}:1", f"service:{billing}:2"}
    daemon = start_daemon(agent.uri, resync="0", env={"DOCKER_HOST": review_docker[0]})
    daemon.wait_log("full pass done")
    hostile = run_container(labels={"SERVICE_ID": f"{billing}:1", "SERVICE_NAME": "evil",
                                    "SERVICE_CHECK_TTL": "1h"})
    wait_until(lambda: f"{billing}:1" in api.services(), message="the hostile service")
    hostile.remove(force=True)
    wait_until(lambda: f"{billing}:1" not in api.services(), message="the hostile service gone")
    assert daemon.process.poll() is None, "the daemon died"
    assert set(api.checks_of(billing)) == {f"service:{billing}:1", f"service:{billing}:2"}, (
        f"billing's checks now: {sorted(api.checks_of(billing))}")
    api.http.close()
