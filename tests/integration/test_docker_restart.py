"""dockerd restarted under the daemon: a second dockerd of this test's own
(own socket, data root and bridge), since restarting the shared one would
kill every other test's containers. Never `--bridge none`: a dockerd started
so deletes docker0, the shared dockerd's bridge."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import IMAGE, ROOT, RUN_ID, TEST_LABEL, wait_until

pytestmark = pytest.mark.integration

BRIDGE = "crtest0"  # the test dockerd's own bridge (no NAT, no iptables: containers use the host network)
BRIDGE_CIDR = "10.213.77.1/24"


class OwnDockerd:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="crd-"))  # short: unix socket paths are limited
        self.socket = self.dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
            subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE], check=True)
            subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        log = open(self.dir / "dockerd.log", "ab")
        self.process = subprocess.Popen(
            ["dockerd", "--host", self.host, "--data-root", str(self.dir / "root"), "--exec-root",
             str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"), "--bridge", BRIDGE,
             "--iptables=false", "--ip-masq=false"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: docker.DockerClient(base_url=self.host, timeout=5).ping(), timeout=60,
                   message="own dockerd up")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture
def own_dockerd():
    daemon = OwnDockerd()
    daemon.start()
    subprocess.run(["sh", str(ROOT / "scripts" / "make-test-image.sh")], check=True,
                   env={**os.environ, "DOCKER_HOST": daemon.host})
    yield daemon
    if daemon.process is not None and daemon.process.poll() is None:
        client = docker.DockerClient(base_url=daemon.host, timeout=30)
        for container in client.containers.list(all=True):
            container.remove(force=True)
    daemon.stop()
    shutil.rmtree(daemon.dir, ignore_errors=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


def test_dockerd_restart_reconnects_and_relists(own_dockerd, start_daemon, consul_api, hostname):
    client = docker.DockerClient(base_url=own_dockerd.host, timeout=30)

    def run(port: int, **host_config) -> None:
        """A host-network container exposing `port`: registered with host port = container port."""
        created = client.api.create_container(
            IMAGE, "sleep 600", name=f"{hostname}-{port}", labels={TEST_LABEL: RUN_ID}, ports=[port],
            stop_signal="SIGKILL", host_config=client.api.create_host_config(network_mode="host", **host_config))
        client.api.start(created)

    daemon = start_daemon("-retry-interval", "100", env={"DOCKER_HOST": own_dockerd.host})
    run(8080, restart_policy={"Name": "always"})
    run(8081)
    expected = {f"{hostname}:{hostname}-8080:8080", f"{hostname}:{hostname}-8081:8081"}
    wait_until(lambda: set(consul_api.services_of(hostname)) == expected, message="both registered")

    own_dockerd.stop()  # its containers stop with it; only the one with a restart policy comes back
    daemon.wait_log("docker event stream")
    own_dockerd.start()
    wait_until(lambda: set(consul_api.services_of(hostname)) == {f"{hostname}:{hostname}-8080:8080"}, timeout=40,
               message="relisted after the restart: the stopped container's service removed")
    daemon.wait_log("reconnected; resyncing everything")
    run(8082)  # events flow again
    wait_until(lambda: f"{hostname}:{hostname}-8082:8082" in consul_api.services_of(hostname),
               message="new container registered after the reconnect")
    assert daemon.process.poll() is None
