"""`consul-reg wait` against the real dockerd and agent, with a daemon registering
this test's containers. A counting proxy in front of the agent shows it reads with
blocking queries: a handful of requests over a whole time-out, not a poll."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import CONSUL_ADDR, ROOT, free_port, host_port, wait_until
from tests.unit.stub_agent import StubAgent

pytestmark = pytest.mark.integration


class CountingProxy:
    """The real agent behind a loopback HTTP server that counts every request by path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.exchanges: list[tuple[str, dict[str, str], float, float, str]] = []  # path, query, asked, answered, index
        self._lock = threading.Lock()
        self._stub = StubAgent(self._forward)
        self.uri = f"consul://127.0.0.1:{self._stub.port}"

    def _forward(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.paths.append(request.url.path)
            asked = time.monotonic()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        upstream = httpx.request(request.method, CONSUL_ADDR + request.url.raw_path.decode(), headers=headers,
                                 content=request.content, timeout=700)
        kept = {k: v for k, v in upstream.headers.items()
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding", "connection")}
        with self._lock:
            self.exchanges.append((request.url.path, dict(request.url.params), asked, time.monotonic(),
                                   upstream.headers.get("x-consul-index", "")))
        return httpx.Response(upstream.status_code, headers=kept, content=upstream.content)

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(path.startswith(prefix) for path in self.paths)

    def assert_blocking(self, prefix: str) -> None:
        """Every read after the first is a blocking query on the index the previous answer
        carried, asked again on the same index only after a wait ran out: never a poll.
        (A busy shared agent moves its index often; each move may answer a query.)"""
        with self._lock:
            reads = [e for e in self.exchanges if e[0].startswith(prefix)]
        assert reads and "index" not in reads[0][1], reads
        for before, after in zip(reads, reads[1:]):
            assert after[1]["index"] == before[4] and "wait" in after[1], (before, after)
            if before[1].get("index") == before[4]:  # no news: the previous one waited it out (1 s at least)
                assert before[3] - before[2] >= 0.9, (before, after)

    def close(self) -> None:
        self._stub.close()


@pytest.fixture
def proxy() -> Iterator[CountingProxy]:
    server = CountingProxy()
    yield server
    server.close()


@pytest.fixture
def label() -> str:
    return f"crt-wait-{uuid.uuid4().hex[:8]}"


def wait_cmd(hostname: str, label: str, *args: str) -> list[str]:
    # the daemon's own flags, as a deploy script gives them
    return [sys.executable, "-m", "consul_reg", "wait", "--hostname", hostname, "-ip", "127.0.0.1",
            "--filter", f"label={label}", *args]


def run_wait(hostname: str, label: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(wait_cmd(hostname, label, *args), capture_output=True, text=True, timeout=120, cwd=ROOT)


def web(run_container, label: str, service: str, healthy: bool = True, **kwargs):
    script = "mkdir -p /www && " + ("echo ok > /www/health && " if healthy else "") + "exec httpd -f -p 80 -h /www"
    return run_container(["sh", "-c", script], ports={"80/tcp": None},
                         labels={label: "1", "SERVICE_NAME": service, "SERVICE_CHECK_HTTP": "/health",
                                 "SERVICE_CHECK_INTERVAL": "1s"}, **kwargs)


def test_wait_exits_0_once_passing_reading_with_blocking_queries(start_daemon, run_container, hostname, label,
                                                                  proxy):
    start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    app = web(run_container, label, f"app-{hostname}")
    result = run_wait(hostname, label, "--timeout", "60s", app.name, proxy.uri)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"passing: service {hostname}:{app.name}:80 (app-{hostname}) of container {app.name}\n"
    assert result.stderr == ""
    proxy.assert_blocking("/v1/health/service/")


def test_wait_times_out_naming_the_failing_check_with_its_output(start_daemon, run_container, hostname, label,
                                                                 proxy, consul_api):
    start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    app = web(run_container, label, f"app-{hostname}", healthy=False)
    service_id = f"{hostname}:{app.name}:80"
    wait_until(lambda: [c["Output"] for c in consul_api.checks_of(service_id).values() if "404" in c["Output"]],
               timeout=30, message="the check ran and failed")
    result = run_wait(hostname, label, "--timeout", "8s", app.name, proxy.uri)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    node = consul_api.http.get('/v1/agent/self').json()['Config']['NodeName']
    # the time actually spent: the 8 s, give or take the last answer's way back
    assert re.fullmatch(rf"consul-reg wait: timed out after 8(\.[0-9])?s waiting for 1 service\(s\) to be passing in "
                        rf"the agent's node {re.escape(node)}; not yet:", lines[0]), lines[0]
    port = host_port(app, "80/tcp")
    assert lines[1].startswith(f"  service {service_id} (app-{hostname}) of container {app.name}: "
                               f"check service:{service_id}:http (") and \
        f"is critical: HTTP GET http://127.0.0.1:{port}/health: 404 Not Found" in lines[1], lines
    assert len(lines) == 2 and result.stdout == ""
    # 8 s of waiting on a check that does not change: the first read, then blocking queries only,
    # and few of them (a poll every 0.1 s would be 80).
    proxy.assert_blocking("/v1/health/service/")
    assert proxy.count("/v1/health/service/") <= 30, proxy.exchanges
    assert proxy.count("/v1/agent/checks") == 1  # the fresh outputs, once, at the time-out
    # the same container with --registered: registered, whatever its check says
    registered = run_wait(hostname, label, "--registered", "--timeout", "30s", app.name)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.startswith(f"registered: service {service_id} ")


def test_wait_gone_after_stop_and_for_a_removed_container(start_daemon, run_container, hostname, label, proxy):
    start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    app = web(run_container, label, f"app-{hostname}")
    assert run_wait(hostname, label, "--timeout", "60s", app.name).returncode == 0
    waiting = subprocess.Popen(wait_cmd(hostname, label, "--gone", "--timeout", "60s", app.name, proxy.uri),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # once it reads the agent (its services computed while the container ran), stop the container
        wait_until(lambda: proxy.count("/v1/health/service/") >= 1, timeout=60, message="wait reading the agent")
        app.stop(timeout=10)
        out, err = waiting.communicate(timeout=90)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, out + err
    assert out == f"gone: service {hostname}:{app.name}:80 (app-{hostname}) of container {app.name}\n"
    app.remove(force=True)
    removed = run_wait(hostname, label, "--gone", "--timeout", "10s", app.name)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"gone: container {app.name}: no service left\n"


def test_wait_gone_times_out_while_the_container_still_runs(start_daemon, run_container, hostname, label):
    start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    app = web(run_container, label, f"app-{hostname}")
    assert run_wait(hostname, label, "--registered", "--timeout", "60s", app.name).returncode == 0
    result = run_wait(hostname, label, "--gone", "--timeout", "3s", app.name)
    assert result.returncode == 1
    assert f"  service {hostname}:{app.name}:80 (app-{hostname}) of container {app.name}: still registered" \
        in result.stderr.splitlines()


def test_wait_refuses_a_missing_or_stopped_container_and_an_unreachable_agent(run_container, hostname, label):
    missing = run_wait(hostname, label, "--timeout", "10s", f"no-such-{uuid.uuid4().hex[:8]}")
    assert missing.returncode == 3
    assert "consul-reg wait: no container named or with ID no-such-" in missing.stderr
    stopped = run_container(["true"], labels={label: "1", "SERVICE_NAME": "x"}, stop_signal="SIGTERM")
    wait_until(lambda: (stopped.reload(), stopped.status)[1] == "exited", timeout=30, message="exited")
    result = run_wait(hostname, label, "--registered", stopped.name)
    assert result.returncode == 3
    assert f"container {stopped.name} is not running (exited, exit code 0)" in result.stderr
    outside = run_container(labels={"SERVICE_NAME": "x"})  # running, without this daemon's --filter label
    result = run_wait(hostname, label, outside.name)
    assert result.returncode == 3
    assert f"container {outside.name} would register nothing: it does not match --filter label={label}" \
        in result.stderr
    unreachable = run_wait(hostname, label, "--timeout", "2s", stopped.name, f"consul://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1
    assert re.match(r"consul-reg wait: the Consul agent cannot be reached or refused \(tried for 2(\.[0-9])?s\): ",
                    unreachable.stderr), unreachable.stderr
    assert "Connection refused" in unreachable.stderr


@contextlib.contextmanager
def paused(daemon) -> Iterator[None]:
    """The daemon lagging behind Docker (SIGSTOP), always resumed."""
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        daemon.process.send_signal(signal.SIGCONT)


def test_wait_does_not_count_the_instance_of_a_container_replaced_under_the_same_name(
        start_daemon, run_container, hostname, label):
    """`docker rm -f app && docker run --name app ...` while the daemon has not caught up: the
    catalog holds the old container's instance under the new one's default ID. It does not count."""
    daemon = start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    name = f"app-{uuid.uuid4().hex[:8]}"
    v1 = web(run_container, label, f"app-{hostname}", name=name)
    assert run_wait(hostname, label, "--registered", "--timeout", "60s", name).returncode == 0
    service_id = f"{hostname}:{name}:80"
    with paused(daemon):
        v1.remove(force=True)
        v2 = web(run_container, label, f"app-{hostname}", name=name)
        result = run_wait(hostname, label, "--registered", "--timeout", "4s", name)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"  service {service_id} (app-{hostname}) of container {name}: not registered (the ID is held by " \
               f"container {v1.id[:12]}, by the daemon of host {hostname})" in result.stderr.splitlines(), result.stderr
    # the daemon catches up: v2's own instance, passing
    result = run_wait(hostname, label, "--timeout", "60s", name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"passing: service {service_id} (app-{hostname}) of container {name}\n"
    assert v2.id != v1.id


def test_wait_gone_for_a_removed_container_waits_for_the_daemon_to_deregister_it(
        start_daemon, run_container, hostname, label, proxy):
    daemon = start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    app = web(run_container, label, f"app-{hostname}")
    assert run_wait(hostname, label, "--registered", "--timeout", "60s", app.name).returncode == 0
    service_id = f"{hostname}:{app.name}:80"
    with paused(daemon):
        app.remove(force=True)
        for ref in (app.id, app.id[:12]):  # by its ID: any daemon's records of it
            by_id = run_wait(hostname, label, "--gone", "--timeout", "2s", ref)
            assert by_id.returncode == 1, by_id.stdout + by_id.stderr
            assert f"  service {service_id} (app-{hostname}) of container {ref}: still registered" \
                in by_id.stderr.splitlines(), by_id.stderr
        waiting = subprocess.Popen(wait_cmd(hostname, label, "--gone", "--timeout", "60s", app.name, proxy.uri),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            wait_until(lambda: proxy.count("/v1/health/service/") >= 1 or waiting.poll() is not None, timeout=60,
                       message="wait reading the agent")
            assert waiting.poll() is None, waiting.communicate()  # by its name: this daemon's default IDs
        except BaseException:
            waiting.kill()
            raise
    try:
        out, err = waiting.communicate(timeout=90)  # the daemon resumed: it deregisters the removed container
    finally:
        waiting.kill()
    assert waiting.returncode == 0, out + err
    assert out == f"gone: service {service_id} (app-{hostname}) of container {app.name}\n"


def test_wait_ends_at_once_when_the_container_stops_meanwhile(start_daemon, run_container, hostname, label,
                                                              proxy):
    start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    app = web(run_container, label, f"app-{hostname}", healthy=False)  # never passes
    waiting = subprocess.Popen(wait_cmd(hostname, label, "--timeout", "120s", app.name, proxy.uri),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # once it waits (its services computed while the container ran), stop the container
        wait_until(lambda: proxy.count("/v1/health/service/") >= 1, timeout=60, message="wait reading the agent")
        started = time.monotonic()
        app.stop(timeout=1)
        out, err = waiting.communicate(timeout=90)
    finally:
        waiting.kill()
    assert waiting.returncode == 3, out + err
    assert time.monotonic() - started < 60  # long before the 120 s time-out
    assert err.startswith("consul-reg wait: gave up after "), err
    assert f"  container {app.name}: not running (exited, exit code 137)" in err.splitlines(), err


def test_wait_expects_what_the_daemon_registers_for_a_malformed_env_file(start_daemon, run_container, hostname,
                                                                         label):
    """A malformed env file: the daemon keeps its last good values (none on a first read), so it
    registers the default name; wait (and explain) must not expect the lines that parsed."""
    start_daemon("-ip", "127.0.0.1", "--filter", f"label={label}")
    app = run_container(["sh", "-c", f"printf 'SERVICE_NAME=from-{hostname}\\nnot a pair\\n' > /svc.env; "
                                     "exec sleep 600"],
                        ports={"80/tcp": None}, labels={label: "1", "SERVICE_ENV_FILE": "/svc.env"})
    result = run_wait(hostname, label, "--registered", "--timeout", "60s", app.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"registered: service {hostname}:{app.name}:80 (busybox) of container {app.name}\n"
