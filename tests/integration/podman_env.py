"""Podman for the tests: its Docker-compatible API service (started by
scripts/start-services.sh podman), containers run with the podman CLI as a
user would, and the cleanup of what netavark leaves behind."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from typing import Iterator

import httpx
import pytest

from tests.integration.conftest import IMAGE, ROOT, RUN_ID, TEST_LABEL, wait_until

SOCKET = "/run/podman/podman.sock"
DOCKER_HOST = f"unix://{SOCKET}"
# netavark's chains (table, chain) and the rules that jump to them; it removes
# the rules of a network's last container but never these.
NETAVARK_JUMPS = [
    ("filter", ["FORWARD", "-m", "comment", "--comment", "netavark firewall plugin rules", "-j", "NETAVARK_FORWARD"]),
    ("nat", ["PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "NETAVARK-HOSTPORT-DNAT"]),
    ("nat", ["OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "NETAVARK-HOSTPORT-DNAT"]),
    ("nat", ["POSTROUTING", "-j", "NETAVARK-HOSTPORT-MASQ"]),
]
NETAVARK_CHAINS = [("filter", "NETAVARK_FORWARD"), ("nat", "NETAVARK-HOSTPORT-DNAT"),
                   ("nat", "NETAVARK-HOSTPORT-MASQ"), ("nat", "NETAVARK-HOSTPORT-SETMARK")]


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr.strip()}"
    return done


def api_up(socket: str = SOCKET) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=5) as client:
            return client.get("http://podman/_ping").status_code == 200
    except httpx.HTTPError:
        return False


def clean_netavark() -> None:
    """Remove netavark's leftover iptables chains, once no Podman container is left."""
    if podman("ps", "-aq", check=False).stdout.strip():
        return  # someone's containers still use them
    for table, rule in NETAVARK_JUMPS:
        while subprocess.run(["iptables", "-t", table, "-D", *rule], capture_output=True).returncode == 0:
            pass
    for table, chain in NETAVARK_CHAINS:
        subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


@pytest.fixture(scope="module")
def podman_service() -> Iterator[str]:
    """The shared Podman API socket (started when absent); netavark cleaned after the module."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: scripts/install-deps.sh podman installs it")
    if not api_up() or podman("image", "exists", IMAGE, check=False).returncode != 0:
        subprocess.run(["sh", str(ROOT / "scripts" / "start-services.sh"), "podman"], check=True)
    wait_until(api_up, timeout=30, message="podman API service")
    yield DOCKER_HOST
    clean_netavark()


class PodmanContainers:
    """Containers started with the podman CLI, labelled and removed at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def run(self, *args: str, command: str = "sleep 600") -> str:
        name = f"crt-{uuid.uuid4().hex[:8]}"
        podman("run", "-d", "--name", name, "--label", f"{TEST_LABEL}={RUN_ID}", *args, IMAGE, "sh", "-c", command)
        self.names.append(name)
        return name

    def inspect(self, name: str) -> dict:
        import json

        return json.loads(podman("inspect", name).stdout)[0]

    def host_port(self, name: str, port: str) -> int:
        return int(podman("port", name, port).stdout.strip().splitlines()[0].rsplit(":", 1)[1])

    def remove_all(self) -> None:
        if self.names:
            podman("rm", "-f", "--ignore", "-t", "0", *self.names)


@pytest.fixture
def podman_containers(podman_service) -> Iterator[PodmanContainers]:
    containers = PodmanContainers()
    yield containers
    containers.remove_all()
