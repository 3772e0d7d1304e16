"""Routing through the real Traefik (Consul Catalog provider) in front of the test
agent, with consul-reg registering busybox httpd containers: what users run
consul-reg for. Every request goes to 127.0.0.1 only and is bounded in time;
every client is bounded in requests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROOT, wait_until
from tests.integration.traefik import Traefik, traefik_fixture  # noqa: F401  (the fixture "traefik")

pytestmark = pytest.mark.integration

GRACE_AFTER_SIGTERM = 5  # seconds a v1 keeps serving after SIGTERM: more than Traefik's refresh, with margin


@dataclass
class Site:
    """One test's routing setup: its daemon's flags and its containers' labels."""

    traefik: Traefik
    hostname: str
    label: str = field(default_factory=lambda: f"crt-route-{uuid.uuid4().hex[:8]}")

    @property
    def daemon_args(self) -> list[str]:
        # Only this test's containers: the shared dockerd runs other tests' and helpers' too.
        return ["-ip", "127.0.0.1", "--filter", f"label={self.label}"]

    def labels(self, service: str, host: str, check: bool = True) -> dict[str, str]:
        router = service.replace(".", "-")
        labels = {
            self.label: "1",
            "SERVICE_NAME": service,
            "SERVICE_TAGS": f"{self.traefik.tag},traefik.enable=true,"
                            f"traefik.http.routers.{router}.rule=Host(`{host}`)",
        }
        if check:
            labels.update({"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "1s"})
        return labels


def httpd_command(body: str, healthy: bool = True, grace: int = 0) -> list[str]:
    """busybox httpd answering `body` on /; /health there when `healthy`. With `grace`, it
    keeps serving that many seconds after SIGTERM, then exits 0 (an app that drains)."""
    script = (f"mkdir -p /www && echo {body} > /www/index.html && "
              + ("echo ok > /www/health && " if healthy else ""))
    if grace:
        script += (f"httpd -f -p 80 -h /www & pid=$!; trap 'sleep {grace}; kill $pid; exit 0' TERM; "
                   "while kill -0 $pid 2>/dev/null; do wait $pid; done")
    else:
        script += "exec httpd -f -p 80 -h /www"
    return ["sh", "-c", script]


def run_wait(site_args: list[str], hostname: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consul_reg", "wait", "--hostname", hostname, *site_args, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class Hammer:
    """A client sending a steady stream of requests through Traefik from its own thread,
    one at a time, each bounded in time; it records what every one got."""

    def __init__(self, traefik: Traefik, host: str, pause: float = 0.03, limit: int = 20_000) -> None:
        self.traefik, self.host, self.pause, self.limit = traefik, host, pause, limit
        self.results: list[tuple[float, str]] = []  # (when, "200 v1" / "404" / "error ...")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hammer", daemon=True)

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set() and len(self.results) < self.limit:
                try:
                    answer = self.traefik.get(self.host, client, timeout=5)
                    outcome = f"{answer.status_code} {answer.text.strip()}" if answer.status_code == 200 \
                        else str(answer.status_code)
                except httpx.HTTPError as error:
                    outcome = f"error {type(error).__name__}: {error}"
                self.results.append((time.monotonic(), outcome))
                self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "a request through Traefik hung"

    def failures(self) -> list[str]:
        return [outcome for _, outcome in self.results if not outcome.startswith(("200 ", "404"))]

    def count(self) -> int:
        return len(self.results)

    def since(self, moment: float) -> list[str]:
        return [outcome for when, outcome in self.results if when >= moment]


def answers(traefik: Traefik, host: str, body: str) -> bool:
    answer = traefik.get(host)
    return answer.status_code == 200 and answer.text.strip() == body


def test_a_labelled_container_answers_through_traefik_and_another_host_gets_404(
        traefik, start_daemon, run_container, hostname):
    site = Site(traefik, hostname)
    start_daemon(*site.daemon_args)
    body = f"hello-{uuid.uuid4().hex[:6]}"
    host = f"web-{hostname}.example.test"
    run_container(httpd_command(body), ports={"80/tcp": None}, labels=site.labels(f"web-{hostname}", host))
    wait_until(lambda: answers(traefik, host, body), timeout=60,
               message=f"the container's answer through Traefik (log: {traefik.log()[-1500:]})")
    assert f"web-{hostname}@consulcatalog" in traefik.routers()
    assert traefik.get(f"other-{hostname}.example.test").status_code == 404


def test_a_failing_check_keeps_the_container_out_until_it_passes(traefik, start_daemon, run_container, hostname,
                                                                   consul_api):
    site = Site(traefik, hostname)
    start_daemon(*site.daemon_args)
    bad_host, good_host = f"bad-{hostname}.example.test", f"good-{hostname}.example.test"
    bad = run_container(httpd_command("bad", healthy=False), ports={"80/tcp": None},
                        labels=site.labels(f"bad-{hostname}", bad_host))
    bad_id = f"{hostname}:{bad.name}:80"
    critical = lambda: [c["Status"] for c in consul_api.checks_of(bad_id).values()] == ["critical"]  # noqa: E731
    wait_until(critical, timeout=30, message="the bad container registered with its check critical")
    # A healthy container registered after it: once Traefik routes that one, it has read the
    # catalog with the bad one in it.
    run_container(httpd_command("good"), ports={"80/tcp": None}, labels=site.labels(f"good-{hostname}", good_host))
    wait_until(lambda: answers(traefik, good_host, "good"), timeout=60, message="the healthy container routed")
    statuses = Counter(traefik.get(bad_host).status_code for _ in range(20))
    assert statuses == Counter({404: 20}), statuses
    assert critical()

    bad.exec_run(["sh", "-c", "echo ok > /www/health"])
    wait_until(lambda: answers(traefik, bad_host, "bad"), timeout=60, message="the container routed once it passes")


def test_docker_stop_drains_without_a_failed_request(traefik, start_daemon, run_container, hostname, docker_client):
    site = Site(traefik, hostname)
    start_daemon(*site.daemon_args)
    host = f"drain-{hostname}.example.test"
    web = run_container(httpd_command("v1", grace=GRACE_AFTER_SIGTERM), ports={"80/tcp": None},
                        labels=site.labels(f"drain-{hostname}", host), stop_signal="SIGTERM")
    wait_until(lambda: answers(traefik, host, "v1"), timeout=60, message="routed")
    with Hammer(traefik, host) as hammer:
        wait_until(lambda: hammer.count() >= 20, timeout=30, message="requests flowing")
        stopped_at = time.monotonic()
        web.stop(timeout=GRACE_AFTER_SIGTERM + 10)
        exited_at = time.monotonic()
        wait_until(lambda: hammer.since(exited_at)[-10:] == ["404"] * 10, timeout=30,
                   message="no route once the container is gone")
    assert hammer.failures() == [], hammer.failures()[:10]
    web.reload()
    assert web.attrs["State"]["ExitCode"] == 0
    # Traefik had taken it out of rotation while it still served (the drain), not after it died.
    during_grace = [outcome for when, outcome in hammer.results if stopped_at <= when < exited_at]
    assert "404" in during_grace, Counter(during_grace)
    print(f"drain: {hammer.count()} requests, {Counter(o for _, o in hammer.results)}")


def test_docker_kill_stops_routing_within_seconds_and_no_request_hangs(traefik, start_daemon, run_container,
                                                                      hostname):
    site = Site(traefik, hostname)
    start_daemon(*site.daemon_args)
    host = f"kill-{hostname}.example.test"
    web = run_container(httpd_command("v1"), ports={"80/tcp": None}, labels=site.labels(f"kill-{hostname}", host))
    wait_until(lambda: answers(traefik, host, "v1"), timeout=60, message="routed")
    with Hammer(traefik, host) as hammer:
        wait_until(lambda: hammer.count() >= 20, timeout=30, message="requests flowing")
        killed_at = time.monotonic()
        web.kill()
        wait_until(lambda: hammer.since(killed_at)[-10:] == ["404"] * 10, timeout=30,
                   message="no route after the kill")
        taken_out_after = next(when for when, outcome in hammer.results if when >= killed_at and outcome == "404")
    # Traefik answered every request (a 502 at most while it still listed the dead instance),
    # none hung past its bound (Hammer.stop asserts the thread ended), and routing stopped within seconds.
    assert [o for _, o in hammer.results if o.startswith("error")] == []
    assert taken_out_after - killed_at < 10, taken_out_after - killed_at
    print(f"kill: routing stopped after {taken_out_after - killed_at:.1f}s; "
          f"{Counter(o for when, o in hammer.results if when >= killed_at)}")


def test_rolling_deploy_with_consul_reg_wait_drops_no_request(traefik, start_daemon, run_container, hostname):
    """The documented recipe (docs/deploys.md): start v2, `consul-reg wait v2`, `docker stop v1`,
    while a client sends a steady stream through Traefik."""
    site = Site(traefik, hostname)
    start_daemon(*site.daemon_args)
    host, service = f"app-{hostname}.example.test", f"app-{hostname}"
    v1 = run_container(httpd_command("v1", grace=GRACE_AFTER_SIGTERM), ports={"80/tcp": None},
                       labels=site.labels(service, host), stop_signal="SIGTERM")
    first = run_wait(site.daemon_args, hostname, "--timeout", "60s", v1.name)
    assert first.returncode == 0, first.stderr
    wait_until(lambda: answers(traefik, host, "v1"), timeout=60, message="v1 routed")

    with Hammer(traefik, host) as hammer:
        wait_until(lambda: hammer.count() >= 20, timeout=30, message="requests flowing")
        v2 = run_container(httpd_command("v2", grace=GRACE_AFTER_SIGTERM), ports={"80/tcp": None},
                           labels=site.labels(service, host), stop_signal="SIGTERM")
        waited = run_wait(site.daemon_args, hostname, "--timeout", "60s", v2.name)
        assert waited.returncode == 0, waited.stderr
        assert f"passing: service {hostname}:{v2.name}:80 ({service})" in waited.stdout
        v1.stop(timeout=GRACE_AFTER_SIGTERM + 10)
        after = time.monotonic()
        wait_until(lambda: hammer.since(after)[-20:] == ["200 v2"] * 20, timeout=30, message="v2 serves alone")

    outcomes = Counter(outcome for _, outcome in hammer.results)
    print(f"rolling deploy: {hammer.count()} requests through Traefik: {dict(outcomes)}")
    assert hammer.failures() == [], hammer.failures()[:10]
    assert outcomes["404"] == 0, outcomes  # never without an instance
    assert outcomes["200 v1"] >= 20 and outcomes["200 v2"] >= 20, outcomes
    assert hammer.count() == sum(outcomes.values()) and hammer.count() >= 100, outcomes
