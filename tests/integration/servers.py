"""Real etcd and ZooKeeper servers of a test's own, on free loopback ports,
so tests can kill, freeze (SIGSTOP) and restart them."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import httpx
from kazoo.client import KazooClient

from tests.integration.conftest import free_port, wait_until


class Server:
    process: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        log = open(log_path, "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class Etcd(Server):
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / f"etcd-{free_port()}"
        self.port, self.peer_port = free_port(), free_port()
        self.uri_base = f"etcd://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def start(self) -> "Etcd":
        self._spawn(["etcd", "--name", "test", "--data-dir", str(self.dir),
                     "--listen-client-urls", f"http://127.0.0.1:{self.port}",
                     "--advertise-client-urls", f"http://127.0.0.1:{self.port}",
                     "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                     "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}"],
                    self.dir.with_suffix(".log"))
        wait_until(lambda: self.http.get("/health").json().get("health") == "true", timeout=30,
                   message="etcd healthy")
        return self

    def keys(self, prefix: str) -> dict[str, tuple[str, str]]:
        """key -> (value, lease) under prefix."""
        import base64

        end = bytearray(prefix.encode())
        end[-1] += 1
        answer = self.http.post("/v3/kv/range", json={"key": base64.b64encode(prefix.encode()).decode(),
                                                      "range_end": base64.b64encode(bytes(end)).decode()}).json()
        return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")).decode(),
                                                       kv.get("lease", ""))
                for kv in answer.get("kvs") or []}

    def lease_ttl(self, lease: str) -> int:
        """The lease's remaining TTL; -1 when it does not exist (expired or revoked)."""
        answer = self.http.post("/v3/lease/timetolive", json={"ID": lease}).json()
        return int(answer.get("TTL", -1))


class ZooKeeper(Server):
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"zk-{self.port}"
        self.dir.mkdir(parents=True)
        (self.dir / "zoo.cfg").write_text(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\nminSessionTimeout=2000\nmaxSessionTimeout=6000\n"
            f"dataDir={self.dir}/data\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n4lw.commands.whitelist=ruok\n")
        self.uri_base = f"zookeeper://127.0.0.1:{self.port}"

    def wipe(self) -> None:
        """Forget every session and node (the server must be stopped)."""
        import shutil

        shutil.rmtree(self.dir / "data", ignore_errors=True)

    def start(self) -> "ZooKeeper":
        import os

        env = {**os.environ, "ZOO_LOG_DIR": str(self.dir)}
        self._spawn(["/usr/share/zookeeper/bin/zkServer.sh", "start-foreground", str(self.dir / "zoo.cfg")],
                    self.dir / "server.log", env)
        wait_until(self._ok, timeout=60, message="zookeeper answers ruok")
        return self

    def _ok(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as connection:
            connection.sendall(b"ruok")
            return connection.recv(4) == b"imok"

    def client(self) -> KazooClient:
        client = KazooClient(hosts=f"127.0.0.1:{self.port}", timeout=10)
        client.start(timeout=15)
        return client
