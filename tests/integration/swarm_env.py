"""A single-node Docker Swarm of the tests' own: a second dockerd (own socket,
data root, exec root, fresh each time) on its own bridge made with `ip link`,
never touching the shared dockerd or its docker0. Never `--bridge none`: a
dockerd started so deletes docker0."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import docker
import pytest

from tests.integration.conftest import IMAGE, free_port, wait_until

BRIDGE, BRIDGE_CIDR = "crswarm0", "10.213.78.1/24"  # containers on this dockerd's default bridge
GW_BRIDGE, GW_SUBNET = "crswarm_gw", "10.213.79.0/24"  # Swarm's docker_gwbridge, under a name of our own
ADDRESS_POOL = "10.213.80.0/20"  # overlay networks (ingress) come from here


class OwnSwarm:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="crs-"))  # short: unix socket paths are limited
        self.host = f"unix://{self.dir / 'docker.sock'}"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: docker.DockerClient | None = None

    def cli(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr.strip()}"
        return done.stdout.strip()

    def start(self) -> None:
        for name in (BRIDGE, GW_BRIDGE):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)  # a leftover of a killed run
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        log = open(self.dir / "dockerd.log", "ab")
        self.process = subprocess.Popen(
            ["dockerd", "--host", self.host, "--data-root", str(self.dir / "root"), "--exec-root",
             str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"), "--bridge", BRIDGE,
             "--iptables=false", "--ip-forward=false", "--ip-masq=false"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.client = docker.DockerClient(base_url=self.host, timeout=60, version="1.41")
        wait_until(self.client.ping, timeout=60, message="own dockerd up")
        saved = subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE)
        self.cli_input("load", "-q", stdin=saved.stdout)
        assert saved.wait(timeout=60) == 0
        self.cli("network", "create", "--driver", "bridge", "--subnet", GW_SUBNET,
                 "--opt", f"com.docker.network.bridge.name={GW_BRIDGE}",
                 "--opt", "com.docker.network.bridge.enable_icc=false",
                 "--opt", "com.docker.network.bridge.enable_ip_masquerade=false", "docker_gwbridge")
        self.cli("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}",
                 "--default-addr-pool", ADDRESS_POOL, "--default-addr-pool-mask-length", "24")

    def cli_input(self, *args: str, stdin) -> None:
        done = subprocess.run(["docker", "-H", self.host, *args], stdin=stdin, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr

    def tasks(self, service: str) -> dict[str, docker.models.containers.Container]:
        """Running task containers of a service, by container name."""
        assert self.client is not None
        return {c.name: c for c in self.client.containers.list(
            filters={"label": f"com.docker.swarm.service.name={service}", "status": "running"})}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:  # its tasks would otherwise be restarted with it, only to be killed
                services = subprocess.run(["docker", "-H", self.host, "service", "ls", "-q"], capture_output=True,
                                          text=True, timeout=60).stdout.split()
                if services:
                    subprocess.run(["docker", "-H", self.host, "service", "rm", *services], capture_output=True,
                                   timeout=60)
            finally:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=30)
        if self.client is not None:
            self.client.close()
        self._unmount()
        shutil.rmtree(self.dir, ignore_errors=True)
        for name in (BRIDGE, GW_BRIDGE):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)

    def _unmount(self) -> None:
        """Network namespaces and overlay mounts a dockerd that died hard leaves under its directories."""
        with open("/proc/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(self.dir))]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture(scope="module")
def own_swarm() -> Iterator[OwnSwarm]:
    if os.geteuid() != 0:
        pytest.fail("the swarm tests start a dockerd and a bridge: they run as root")
    swarm = OwnSwarm()
    try:
        swarm.start()
        yield swarm
    finally:
        swarm.stop()
