"""Port-less workers, heartbeats, Docker health mirrored, pause, graceful drain."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.conftest import status_args, wait_until

pytestmark = pytest.mark.integration

WORKER = {"SERVICE_NAME": "jobs", "SERVICE_HEARTBEAT_TTL": "3s"}
TRAP_TERM = "trap 'exit {code}' TERM; while true; do sleep 0.1; done"  # a process that stops on SIGTERM
SECOND = 1_000_000_000
# Healthy once /tmp/healthy exists; failures during the start period do not count.
HEALTH = {"test": ["CMD-SHELL", "test -f /tmp/healthy && echo probe-ok || { echo probe-failed; exit 1; }"],
          "interval": SECOND, "timeout": SECOND, "retries": 1, "start_period": 60 * SECOND}


def observe(predicate, seconds: float, message: str) -> None:
    """Assert `predicate` holds at every poll for `seconds` (a duration is the point here)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), message
        time.sleep(0.2)


def check(consul_api, check_id: str) -> dict:
    return consul_api.http.get("/v1/agent/checks").json().get(check_id) or {}


def test_portless_worker_heartbeat_lapses_when_daemon_stops(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon()
    worker = run_container(labels=WORKER)
    service_id = f"{hostname}:{worker.name}"
    heartbeat = f"service:{service_id}:heartbeat"
    service = wait_until(lambda: consul_api.services_of(hostname).get(service_id), message="worker registered")
    assert service["Service"] == "jobs" and service["Port"] == 0
    wait_until(lambda: consul_api.check_status(heartbeat) == "passing", message="heartbeat passing")
    observe(lambda: consul_api.check_status(heartbeat) == "passing", 9, "stays passing over 3 TTLs")
    assert daemon.stop() == 0
    wait_until(lambda: consul_api.check_status(heartbeat) == "critical", timeout=5,
               message="critical within the TTL once nobody vouches")
    start_daemon()
    wait_until(lambda: consul_api.check_status(heartbeat) == "passing", timeout=5, message="passing again at once")


def test_no_port_and_no_name_stays_unregistered(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon(*status_args())
    silent = run_container()
    ignored = run_container(labels={**WORKER, "SERVICE_IGNORE": "true"})
    daemon.wait_log(f"container {silent.name}: not registered: it publishes no port")
    daemon.wait_log(f"container {ignored.name}: not registered: SERVICE_IGNORE='true' asks to ignore it")
    daemon.wait_first_full_pass()
    assert consul_api.services_of(hostname) == {}


def test_worker_mirrors_docker_health(start_daemon, run_container, consul_api, hostname):
    start_daemon()
    worker = run_container(labels=WORKER, healthcheck=HEALTH)
    heartbeat = f"service:{hostname}:{worker.name}:heartbeat"
    wait_until(lambda: consul_api.check_status(heartbeat) == "warning", message="starting -> warning")
    worker.exec_run("touch /tmp/healthy")
    # Status and output in one read: a late report lets the 3 s TTL expire (critical, "TTL expired").
    wait_until(lambda: (c := check(consul_api, heartbeat))["Status"] == "passing" and "probe-ok" in c["Output"],
               message="healthy -> passing, with the probe's output")
    worker.exec_run("rm /tmp/healthy")
    wait_until(lambda: (c := check(consul_api, heartbeat))["Status"] == "critical" and "probe-failed" in c["Output"],
               message="unhealthy -> critical, with the probe's output")


def test_web_service_gets_docker_health_check(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon()
    web = run_container(ports={"80/tcp": None}, healthcheck=HEALTH)
    check_id = f"service:{hostname}:{web.name}:80:docker-health"
    # Registered critical: only a report's output shows that `starting` was read and reported.
    wait_until(lambda: (c := check(consul_api, check_id))["Status"] == "critical"
               and c["Output"].startswith("docker health: starting"), message="starting -> critical")
    web.exec_run("touch /tmp/healthy")
    wait_until(lambda: consul_api.check_status(check_id) == "passing", message="healthy -> passing")
    # A stopped daemon is not an outage: the long TTL keeps it passing well past the workers' TTLs.
    assert daemon.stop() == 0
    observe(lambda: consul_api.check_status(check_id) == "passing", 8, "stays passing while the daemon is down")
    start_daemon()
    web.exec_run("rm /tmp/healthy")
    wait_until(lambda: (c := check(consul_api, check_id))["Status"] == "critical" and "probe-failed" in c["Output"],
               message="unhealthy -> critical, with the probe's output")


def test_pause_reports_critical_and_unpause_restores(start_daemon, run_container, consul_api, hostname):
    start_daemon()
    worker = run_container(labels=WORKER)
    heartbeat = f"service:{hostname}:{worker.name}:heartbeat"
    wait_until(lambda: consul_api.check_status(heartbeat) == "passing", message="passing")
    worker.pause()
    # The 3 s TTL expiring is critical too: status and output in one read.
    wait_until(lambda: (c := check(consul_api, heartbeat))["Status"] == "critical" and "paused" in c["Output"],
               timeout=5, message="paused -> critical")
    worker.unpause()
    wait_until(lambda: consul_api.check_status(heartbeat) == "passing", timeout=5, message="unpaused -> passing")


def maintenance(consul_api, service_id: str) -> dict:
    return check(consul_api, f"_service_maintenance:{service_id}")


def test_docker_stop_drains_before_deregistering(start_daemon, run_container, consul_api, hostname):
    start_daemon()
    # busybox sleep as PID 1 ignores SIGTERM: docker stop waits its timeout (long: the drain is
    # seen however slow this machine is), unless the process dies sooner: the test kills it.
    web = run_container(ports={"80/tcp": None}, stop_signal="SIGTERM")
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in consul_api.services_of(hostname), message="registered")
    stopper = threading.Thread(target=web.stop, kwargs={"timeout": 60})
    stopper.start()
    try:
        drained = wait_until(lambda: (m := maintenance(consul_api, service_id)) and service_id in consul_api.services()
                             and m, timeout=30, message="in maintenance while stopping, still registered")
        assert drained["Notes"].startswith("consul-reg: draining")
        web.kill()  # docker stop's own kill, sooner
        wait_until(lambda: service_id not in consul_api.services(), timeout=15, message="deregistered after death")
    finally:
        stopper.join()


def test_reload_signal_never_drains_and_trapped_term_is_undrained(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("--drain-timeout", "15")  # a window no poll misses, however slow this machine is
    web = run_container(ports={"80/tcp": None}, stop_signal="SIGTERM")
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in consul_api.services_of(hostname), message="registered")
    web.kill(signal="SIGHUP")  # a reload: PID 1 ignores it and keeps running
    observe(lambda: not maintenance(consul_api, service_id), 3, "a reload never drains")
    web.kill(signal="SIGTERM")  # ignored too: the process keeps running
    wait_until(lambda: maintenance(consul_api, service_id), timeout=10, message="drained on SIGTERM")
    wait_until(lambda: not maintenance(consul_api, service_id), timeout=30, message="undrained after the timeout")
    daemon.wait_log("maintenance cleared")
    web.reload()
    assert web.status == "running"


def test_operator_maintenance_is_never_cleared(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("--drain-timeout", "1")
    web = run_container(ports={"80/tcp": None}, stop_signal="SIGTERM")
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in consul_api.services_of(hostname), message="registered")
    consul_api.http.put(f"/v1/agent/service/maintenance/{service_id}",
                        params={"enable": "true", "reason": "operator: disk swap"}).raise_for_status()
    web.kill(signal="SIGTERM")
    daemon.wait_log(f"left as is: {service_id}")
    assert maintenance(consul_api, service_id)["Notes"] == "operator: disk swap"


def test_a_drained_container_kept_by_on_success_leaves_maintenance_when_it_starts_again(
        start_daemon, run_container, consul_api, hostname):
    """A stop whose process exits 1: -deregister on-success keeps the record, in
    maintenance while the container is dead; its start registers it again, which
    (replacing its checks) takes it out of maintenance."""
    start_daemon("-deregister", "on-success")
    web = run_container(["sh", "-c", TRAP_TERM.format(code=1)], ports={"80/tcp": None}, stop_signal="SIGTERM")
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in consul_api.services_of(hostname), message="registered")
    web.stop(timeout=10)
    web.reload()
    assert web.attrs["State"]["ExitCode"] == 1
    wait_until(lambda: maintenance(consul_api, service_id), timeout=4, message="drained while stopping")
    observe(lambda: service_id in consul_api.services() and maintenance(consul_api, service_id), 2,
            "a failed container's record is kept, out of rotation")
    web.start()
    wait_until(lambda: not maintenance(consul_api, service_id), timeout=5, message="back in rotation once started")
    assert service_id in consul_api.services()

