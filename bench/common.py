"""Helpers shared by the benchmarks: an own Consul dev agent (info log level,
so its own logging costs little), statistics, /proc readings, machine load,
and the cleanup of labelled containers. Never imported by the daemon."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGE = "consul-reg-test/busybox:latest"
LABEL = "consul-reg-bench"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Agent:
    """A Consul dev agent of the benchmark's own, on free ports, killed at the end."""

    def __init__(self, extra_hcl: tuple[str, ...] = ()) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="consul-reg-bench-agent-"))
        self.http_port = free_port()
        self.ports = [free_port() for _ in range(5)]
        self.extra_hcl = extra_hcl
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"consul://127.0.0.1:{self.http_port}"

    def start(self) -> "Agent":
        dns, lan, wan, server, _ = self.ports
        args = ["consul", "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
                "-http-port", str(self.http_port), "-grpc-port", "-1", "-dns-port", str(dns),
                "-serf-lan-port", str(lan), "-serf-wan-port", str(wan),
                "-server-port", str(server), "-hcl", 'log_level = "warn"']
        for hcl in self.extra_hcl:
            args += ["-hcl", hcl]
        with open(self.workdir / "consul.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, body = self.request("GET", "/v1/status/leader")
                if status == 200 and body not in (b'""', b""):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("own consul agent did not become ready")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def services(self) -> dict[str, Any]:
        status, body = self.request("GET", "/v1/agent/services")
        return json.loads(body) if status == 200 else {}

    def deregister_all(self) -> None:
        """Empties the agent: what one subject left is never read by the next one."""
        for service_id in self.services():
            self.request("PUT", f"/v1/agent/service/deregister/{service_id}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def restart(self) -> None:
        """Killed and started again on the same ports: a dev agent comes back empty."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def describe_ms(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (f"n={len(values)} p50 {statistics.median(values):.2f} / p90 {percentile(values, 0.9):.2f} / "
            f"p99 {percentile(values, 0.99):.2f} / max {max(values):.2f} ms")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_figures(pid: int, settle: float, idle: float) -> tuple[dict[str, int], dict[str, int], float]:
    """After `settle` seconds: the process's status, then its status and CPU share
    (of one core) over `idle` seconds more."""
    time.sleep(settle)
    before = proc_status(pid)
    cpu_before, began = cpu_seconds(pid), time.monotonic()
    time.sleep(idle)
    share = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - began)
    return before, proc_status(pid), share


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def remove_labelled(client: Any, label: str = LABEL, threads: int = 8) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def remove(container_id: str) -> None:
        try:
            client.api.remove_container(container_id, force=True)
        except Exception:
            pass
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(remove, [s["Id"] for s in client.api.containers(all=True, filters={"label": label})]))


# `python -m consul_reg` looks in its working directory first: a daemon started from
# the checkout would be this checkout's whatever PYTHONPATH says.
DAEMON_CWD = "/"


def daemon_env(code: str = "") -> dict[str, str]:
    """The environment of a daemon started by a benchmark: this checkout's consul_reg,
    or the one in `code` (a directory holding another checkout's consul_reg: before/after)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = (code or str(ROOT)) + os.pathsep + env.get("PYTHONPATH", "")
    # registrator's own default is unix:///tmp/docker.sock (the path it has in its image)
    env.setdefault("DOCKER_HOST", "unix:///var/run/docker.sock")
    return env
