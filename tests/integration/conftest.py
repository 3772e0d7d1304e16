"""Fixtures for tests against the real dockerd and the real Consul agent.

scripts/start-services.sh starts both (CI runs it first; the session fixture
runs it when they are not up). Every container a test starts carries the
label consul-reg-test=<run id> and is removed by that label; every daemon
runs with its own --hostname, so tests never see each other's services.
"""

from __future__ import annotations

import calendar
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "consul-reg-test/busybox:latest"
TEST_LABEL = "consul-reg-test"
RUN_ID = uuid.uuid4().hex[:8]
CONSUL_ADDR = os.environ.get("CONSUL_REG_TEST_CONSUL", "http://127.0.0.1:8500")


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # the thing polled may not be up yet
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" +
                         (f" (last error: {last_error})" if last_error else ""))


def _services_up() -> bool:
    try:
        docker.from_env(timeout=5).ping()
        httpx.get(f"{CONSUL_ADDR}/v1/agent/self", timeout=5).raise_for_status()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session", autouse=True)
def real_services() -> None:
    if not _services_up():
        subprocess.run(["sh", str(ROOT / "scripts" / "start-services.sh")], check=True)
    subprocess.run(["sh", str(ROOT / "scripts" / "make-test-image.sh")], check=True)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=60)
    # A run that was killed never reached its teardown: its containers (any run ID)
    # are removed once they are an hour old; a run still going is never touched.
    stale = time.time() - 3600
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        created = container.attrs.get("Created", "")[:19]
        if created and calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%S")) < stale:
            container.remove(force=True)
    yield client
    for container in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={RUN_ID}"}):
        container.remove(force=True)
    client.close()


class Consul:
    """A thin reader of the real agent's HTTP API, for assertions."""

    def __init__(self, address: str = CONSUL_ADDR, token: str | None = None) -> None:
        headers = {"X-Consul-Token": token} if token else {}
        self.http = httpx.Client(base_url=address, timeout=10, headers=headers)

    def services(self) -> dict[str, dict[str, Any]]:
        response = self.http.get("/v1/agent/services")
        response.raise_for_status()
        return response.json()

    def services_of(self, hostname: str) -> dict[str, dict[str, Any]]:
        return {sid: s for sid, s in self.services().items() if (s.get("Meta") or {}).get("consul_reg_host") == hostname}

    def checks_of(self, service_id: str) -> dict[str, dict[str, Any]]:
        response = self.http.get("/v1/agent/checks")
        response.raise_for_status()
        return {cid: c for cid, c in response.json().items() if c.get("ServiceID") == service_id}

    def check_status(self, check_id: str) -> str:
        response = self.http.get("/v1/agent/checks")
        response.raise_for_status()
        return (response.json().get(check_id) or {}).get("Status", "")

    def register(self, payload: dict[str, Any]) -> None:
        self.http.put("/v1/agent/service/register", json=payload).raise_for_status()

    def deregister(self, service_id: str) -> None:
        self.http.put(f"/v1/agent/service/deregister/{service_id}").raise_for_status()

    def catalog_index(self) -> int:
        response = self.http.get("/v1/catalog/services")
        response.raise_for_status()
        return int(response.headers["X-Consul-Index"])

    def in_catalog(self, services: dict[str, Any]) -> bool:
        """The agent's records `services` as its anti-entropy wrote them to the catalog
        (asynchronously, after the agent)."""
        for service_id, service in services.items():
            response = self.http.get(f"/v1/catalog/service/{service['Service']}")
            response.raise_for_status()
            entry = {e["ServiceID"]: e for e in response.json()}.get(service_id)
            if entry is None or (entry["ServicePort"], entry["ServiceTags"], entry["ServiceMeta"]) != (
                    service["Port"], service["Tags"], service["Meta"]):
                return False
        return True


@pytest.fixture
def consul_api() -> Iterator[Consul]:
    api = Consul()
    yield api
    api.http.close()


@pytest.fixture
def hostname(consul_api: Consul) -> Iterator[str]:
    """A host name of this test's own: IDs and ownership markers use it."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    for service_id, service in consul_api.services().items():
        if service_id.startswith(name) or (service.get("Meta") or {}).get("consul_reg_host", "").startswith(name):
            consul_api.deregister(service_id)


@pytest.fixture
def run_container(docker_client: docker.DockerClient) -> Iterator[Callable[..., Any]]:
    """Start a labelled busybox container; all are removed at the end of the test."""
    started: list[Any] = []

    def start(command: str | list[str] = "sleep 600", **kwargs: Any):
        labels = dict(kwargs.pop("labels", {}) or {})
        labels[TEST_LABEL] = RUN_ID
        kwargs.setdefault("name", f"crt-{uuid.uuid4().hex[:8]}")
        kwargs.setdefault("stop_signal", "SIGKILL")  # busybox sleep as PID 1 ignores SIGTERM
        container = docker_client.containers.run(IMAGE, command, detach=True, labels=labels, **kwargs)
        started.append(container)
        container.reload()
        return container

    yield start
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def host_port(container: Any, port: str) -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][port][0]["HostPort"])


class DaemonProcess:
    """consul-reg as a real process, with its log in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "DaemonProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "consul_reg", *self.args],
                                        stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        wait_until(lambda: text in self.log(), timeout, message=f"{text!r} in the daemon log")

    @property
    def status_addr(self) -> str:
        if "--status-addr" not in self.args:
            raise AssertionError("this daemon serves no status endpoint: start it with --status-addr "
                                 "(the full-pass counters are read from /health)")
        return self.args[self.args.index("--status-addr") + 1]

    def passes(self) -> tuple[int, int]:
        """(full_passes_started, full_pass_done) as /health shows them now (a 503 carries them too)."""
        assert self.process is not None and self.process.poll() is None, "the daemon exited"
        body = httpx.get(f"http://{self.status_addr}/health", timeout=5).json()
        return int(body["full_passes_started"]), int(body["full_pass_done"])

    def wait_first_full_pass(self, timeout: float = 20.0) -> None:
        """Until the daemon's first full pass (at start-up) has made its writes."""
        wait_until(lambda: self.passes()[1] >= 1, timeout, message="the daemon's first full pass done")

    def wait_full_passes_after(self, action: Callable[[], Any] = lambda: None, count: int = 1,
                               timeout: float = 20.0) -> int:
        """Do `action`, then wait until `count` full passes begun after it are over (their sync,
        drains and publication done); the number of the last one. With no action: `count`
        more passes (a resync's), none of them already running now.

        Why the pass waited for began after the action, even if one was running when it came:
        - The loop numbers a full pass when it begins, before it lists Docker or the agent, and
          publishes that number (`full_passes_started`) at once; `full_pass_done`, the number of
          the latest pass over, moves only after that pass's sync, drains and publication. So
          with S read before the action, a pass numbered above S began after the read, and
          `full_pass_done >= S + count` means the count-th of them is over.
        - A pass already running at the read is numbered S or below: its end is not counted.
          (Waiting for `full_pass_done` to pass its value before the action would count it,
          though it listed Docker before the action. A SIGHUP that arrives during it is taken
          by the loop only in the batch after it: its pass is numbered S + 1 or more.)
        - A pass Docker cut short keeps its number and is never done: the wait ends on a later
          pass that did its work, never on the abandoned one.
        - It ends as long as the action asks for a full pass (or resyncs run): that pass begins
          after the action, so its number is above S.
        - What is left is the window between the read and the action (one HTTP answer): a pass
          begun there would be counted though it may list Docker before the action. With -resync
          0 a full pass begins only when asked: at start-up (over, or seen running by the read),
          by SIGHUP, or when Docker or the agent came back: the test's own actions, which it does
          not run at once with another."""
        started = wait_until(lambda: self.passes(), timeout, message="the daemon's /health")[0]
        action()
        target = started + count
        wait_until(lambda: self.passes()[1] >= target, timeout,
                   message=f"full pass {target} done ({count} begun after the read, which saw {started} begun)")
        return target

    def full_pass_by_sighup(self, timeout: float = 20.0) -> int:
        """SIGHUP (re-read the token, a full pass), and wait until that full pass is over."""
        process = self.process
        assert process is not None
        return self.wait_full_passes_after(lambda: process.send_signal(signal.SIGHUP), timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def start_daemon(tmp_path: Path, hostname: str) -> Iterator[Callable[..., DaemonProcess]]:
    """Start consul-reg with this test's --hostname; -resync 0 unless the test is about the resync.
    A daemon without --filter sees every container on the host, other runs' included: it gets
    --no-check-restart, so it never restarts another test's container (a check-restart test's
    broken one, restarted by two daemons, would break that test's backoff)."""
    daemons: list[DaemonProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, resync: str = "0") -> DaemonProcess:
        unfiltered = not any(a == "--filter" or a.startswith("--filter=") for a in args)
        full_args = ["--hostname", hostname, "-resync", resync, "--log-level", "DEBUG",
                     *(["--no-check-restart"] if unfiltered and "--no-check-restart" not in args else []), *args]
        daemon = DaemonProcess(full_args, tmp_path / f"daemon-{len(daemons)}.log", env).start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill()


def free_port() -> int:
    return free_ports(1)[0]


_HANDED_OUT: set[int] = set()  # a port is handed out once per test session
_LOWEST_PORT = 20000  # above the well-known servers' ports (etcd, ZooKeeper, Prometheus, Consul's own)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free for TCP and UDP, each handed out once per session,
    chosen below the kernel's ephemeral range (ip_local_port_range). A port from that range
    (what a bind to port 0 gives) can be taken, between the choice and a server's bind, as
    the local end of any outgoing connection: an agent started later (a test that starts it
    after the daemon) then exits with 'bind: address already in use'."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = [port for port in range(_LOWEST_PORT, low) if port not in _HANDED_OUT]
    random.shuffle(candidates)
    chosen: list[int] = []
    for port in candidates:
        if len(chosen) == count:
            break
        if _bindable(port):
            chosen.append(port)
    if len(chosen) < count:
        raise RuntimeError(f"only {len(chosen)} of {count} free ports between {_LOWEST_PORT} and {low} "
                           f"(the kernel's ephemeral range begins at {low})")
    _HANDED_OUT.update(chosen)
    return chosen


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        probe = socket.socket(socket.AF_INET, kind)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            probe.close()
    return True


def status_args() -> list[str]:
    """A status endpoint on a free loopback port: DaemonProcess reads the full-pass counters there."""
    return ["--status-addr", f"127.0.0.1:{free_port()}"]


class AgentExited(AssertionError):
    """An agent of a test's own exited before it answered (its log tail says why)."""


class OwnAgent:
    """A Consul dev agent of one test's own, on its own ports: tests that kill,
    restart or reconfigure the agent never touch the shared one."""

    def __init__(self, workdir: Path, hcl: list[str] | None = None, http_socket: str | None = None,
                 tls: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.tls = tls  # {"ca": ..., "cert": ..., "key": ...}: HTTPS only, on the same port
        self.hcl = list(hcl or [])
        self.http_socket = http_socket
        self.http_port, *others = free_ports(5)
        self.ports = dict(zip(("-serf-lan-port", "-serf-wan-port", "-server-port", "-dns-port"), others, strict=True))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"consul-{self.http_port}.log"

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def uri(self) -> str:
        if self.http_socket:
            return f"consul-unix://{self.http_socket}"
        return f"{'consul-tls' if self.tls else 'consul'}://127.0.0.1:{self.http_port}"

    def api(self, token: str | None = None) -> Consul:
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=self.tls["ca"])
            context.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
            api = Consul(self.address, token)
            api.http = httpx.Client(base_url=self.address, timeout=10, headers=api.http.headers, verify=context)
            return api
        if self.http_socket:
            api = Consul("http://consul", token)
            api.http = httpx.Client(base_url="http://consul", timeout=10, headers=api.http.headers,
                                    transport=httpx.HTTPTransport(uds=self.http_socket))
            return api
        return Consul(self.address, token)

    def start(self, wait: bool = True) -> "OwnAgent":
        args = ["consul", "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
                "-http-port", str(self.http_port), "-grpc-port", "-1", "-hcl", 'log_level = "debug"']
        if self.tls:
            args += ["-hcl", f'ports {{ http = -1, https = {self.http_port} }}',
                     "-hcl", f'ca_file = "{self.tls["ca"]}"', "-hcl", f'cert_file = "{self.tls["cert"]}"',
                     "-hcl", f'key_file = "{self.tls["key"]}"', "-hcl", "verify_incoming_https = true"]
        for flag, port in self.ports.items():
            args += [flag, str(port)]
        if self.http_socket:
            args += ["-hcl", f'addresses {{ http = "unix://{self.http_socket}" }}']
        for extra in self.hcl:
            args += ["-hcl", extra]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def ready() -> bool | str:
            if self.process is not None and self.process.poll() is not None:
                return "exited"  # no use waiting: said below
            api = self.api()
            try:
                response = api.http.get("/v1/status/leader")
                return response.status_code in (200, 403) and response.text not in ('""', "")
            finally:
                api.http.close()
        if wait_until(ready, timeout=60, message="own consul agent ready") == "exited":
            raise AgentExited(f"the consul agent exited ({self.process.returncode if self.process else '?'}): "
                              f"{self.log()[-2000:]}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        """Kill and start again on the same ports: a dev agent comes back empty."""
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def own_agent(tmp_path: Path) -> Iterator[Callable[..., OwnAgent]]:
    agents: list[OwnAgent] = []

    def start(hcl: list[str] | None = None, http_socket: str | None = None,
              tls: dict[str, str] | None = None) -> OwnAgent:
        for attempt in range(3):
            agent = OwnAgent(tmp_path, hcl, http_socket, tls)
            agents.append(agent)
            try:
                return agent.start()
            except AgentExited as error:  # a free port taken before the agent bound it: other ports
                if "address already in use" not in str(error) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    yield start
    for agent in agents:
        agent.stop()
