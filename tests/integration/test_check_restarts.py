"""Restarts of containers whose checks stay critical (SERVICE_CHECK_RESTART_*),
by the real dockerd, from the real agent's check results. Each daemon here is
filtered to this test's own containers (--filter label=...), so it never sees,
let alone restarts, another test's. Docker's own State.StartedAt proves each
restart. -internal: the agent probes the container's IP (a published port
through Docker's proxy would accept connections with nothing behind it)."""

from __future__ import annotations

import time
import urllib.parse
import uuid

import httpx
import pytest
from consul_reg.core.records import docker_time

from tests.integration.conftest import CONSUL_ADDR, status_args, wait_until

pytestmark = pytest.mark.integration

FAILING = "mkdir -p /www && exec httpd -f -p 80 -h /www"  # /health: 404, so the HTTP check is critical
PASSING = "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 80 -h /www"
CHECK = {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "1s", "SERVICE_CHECK_TIMEOUT": "1s"}


def started_at(container) -> float:
    container.reload()
    return docker_time(container.attrs["State"]["StartedAt"])


def starts(container, seen: list[float]) -> list[float]:
    """Every StartedAt seen so far (polled), the new one appended."""
    now = started_at(container)
    if now and (not seen or now != seen[-1]):
        seen.append(now)
    return seen


def web(run_container, own: str, command: str, **keys: str):
    return run_container(["sh", "-c", command], ports={"80/tcp": None}, labels={own: "1", **CHECK, **keys})


def own_label() -> str:
    return f"crt-restarts-{uuid.uuid4().hex[:8]}"


def test_a_container_whose_check_stays_critical_is_restarted_with_growing_delays(start_daemon, run_container):
    own = own_label()
    backoff, backoff_max, grace, limit, interval = 6.0, 12.0, 2.0, 2, 1.0
    daemon = start_daemon("-internal", "--filter", f"label={own}", "--check-restart-backoff", f"{backoff:g}",
                          "--check-restart-backoff-max", f"{backoff_max:g}", *status_args())
    broken = web(run_container, own, FAILING, SERVICE_CHECK_RESTART_LIMIT=str(limit),
                 SERVICE_CHECK_RESTART_GRACE=f"{grace:g}s")
    runs: dict[float, float] = {}  # each run's StartedAt -> its FinishedAt (Docker's, once it ended)

    def restarted_three_times() -> bool:
        broken.reload()
        state = broken.attrs["State"]
        started, finished = docker_time(state["StartedAt"]), docker_time(state["FinishedAt"])
        if started and started not in runs:
            previous = max(runs, default=0.0)
            if previous:
                runs[previous] = finished  # the run before this start ended then (its restart's stop)
            runs[started] = 0.0
        return len(runs) >= 4

    wait_until(restarted_three_times, 150, 0.2, message="three restarts by the daemon")
    lasted = [finished - started for started, finished in sorted(runs.items())[:3]]
    # Unheld, a run lasts its grace and `limit` samples (`interval` apart) plus the stop: the first's
    # cadence, well below the backoff; the backoff (from each new start) makes the next runs last at
    # least `backoff`, then `backoff_max` (the cap). A loaded host only makes runs longer.
    cadence = grace + (limit - 1) * interval
    assert cadence + 2 <= backoff
    assert lasted[1] >= backoff - 0.5 and lasted[2] >= backoff_max - 0.5, (lasted, cadence)
    assert "restarting container" in daemon.log() and f"failed {limit} times in a row" in daemon.log()
    metrics = httpx.get(f"http://{daemon.status_addr}/metrics", timeout=5).text
    restarted = [line for line in metrics.splitlines()
                 if line.startswith('consul_reg_check_restarts_total{outcome="restarted"}')]
    assert restarted and float(restarted[0].split()[-1]) >= 3


def statuses_of(consul_api, container) -> list[str]:
    """The agent's statuses of the checks of this container's services (with their output)."""
    return [check["Status"] for check in consul_api.http.get("/v1/agent/checks").json().values()
            if container.name in check["ServiceID"] and check["Output"]]


def test_only_what_the_policy_asks_is_restarted(start_daemon, run_container, consul_api):
    """Beside a control that the daemon restarts twice: a passing container, one within its grace,
    one without the key, and one seen only by a daemon run with --no-check-restart stay as they are."""
    own, off = own_label(), own_label()
    start_daemon("-internal", "--filter", f"label={own}", "--check-restart-backoff", "1",
                 "--check-restart-backoff-max", "1")
    # its own --instance: with the same host name and no instance, either daemon would take the
    # other's records for its own stale ones and remove them
    start_daemon("-internal", "--filter", f"label={off}", "--instance", "off", "--no-check-restart")
    fast = {"SERVICE_CHECK_RESTART_LIMIT": "1", "SERVICE_CHECK_RESTART_GRACE": "1s"}
    control = web(run_container, own, FAILING, **fast)
    kept = {
        "passing": web(run_container, own, PASSING, **fast),
        "within its grace": web(run_container, own, FAILING, SERVICE_CHECK_RESTART_LIMIT="1",
                                SERVICE_CHECK_RESTART_GRACE="1h"),
        "without the key": web(run_container, own, FAILING),
        "--no-check-restart": web(run_container, off, FAILING, **fast),
    }
    before = {why: started_at(c) for why, c in kept.items()}
    seen = [started_at(control)]
    wait_until(lambda: len(starts(control, seen)) >= 3, 120, 0.2, message="the control restarted twice")
    assert {why: started_at(c) for why, c in kept.items()} == before
    # and not for want of a failing result: each failing one's check has run and is critical
    assert {why: statuses_of(consul_api, c) for why, c in kept.items()} == {
        "passing": ["passing"], "within its grace": ["critical"], "without the key": ["critical"],
        "--no-check-restart": ["critical"]}


def test_a_daemon_restart_during_the_backoff_causes_no_extra_restart(start_daemon, run_container):
    """The first daemon restarts the container once; a new daemon, started at once, must not restart
    it again before the longest backoff after that restart (Docker's StartedAt is what it goes by),
    though its check is critical again within 2 s (1s grace, one sample)."""
    own = own_label()
    args = ("-internal", "--filter", f"label={own}", "--check-restart-backoff", "1",
            "--check-restart-backoff-max", "15")
    first = start_daemon(*args)
    broken = web(run_container, own, FAILING, SERVICE_CHECK_RESTART_LIMIT="1", SERVICE_CHECK_RESTART_GRACE="1s")
    seen = [started_at(broken)]
    wait_until(lambda: len(starts(broken, seen)) >= 2, 120, 0.2, message="the first restart")
    first.kill()
    second = start_daemon(*args)
    wait_until(lambda: len(starts(broken, seen)) >= 3, 120, 0.2, message="the restart after the backoff")
    assert seen[2] - seen[1] >= 15 - 0.5, seen
    assert "not restarting container" in second.log()  # held, and said so


# An app that stops answering at SIGTERM and exits a few seconds later (a graceful shutdown).
GRACEFUL = ("mkdir -p /www && echo ok > /www/health; httpd -f -p 80 -h /www & pid=$!; "
            "trap 'kill $pid; sleep 8; exit 0' TERM; while true; do sleep 1; done")


def test_a_docker_stop_of_a_graceful_app_is_never_turned_into_a_restart(start_daemon, run_container, consul_api):
    """From the adversarial review: during the stop timeout the container still runs and its check
    fails; the daemon's drain puts its service in maintenance at the kill event, and a service in
    maintenance gives no result. The container ends exited, never started again."""
    own = own_label()
    daemon = start_daemon("-internal", "--filter", f"label={own}")
    graceful = run_container(["sh", "-c", GRACEFUL], ports={"80/tcp": None}, stop_signal="SIGTERM",
                             labels={own: "1", **CHECK, "SERVICE_CHECK_RESTART_LIMIT": "2",
                                     "SERVICE_CHECK_RESTART_GRACE": "1s"})
    first = started_at(graceful)
    wait_until(lambda: statuses_of(consul_api, graceful) == ["passing"], 90, 0.5, message="its check passing")
    wait_until(lambda: "watching 1 containers" in daemon.log() and time.time() > first + 3, 60, 0.2,
               message="watched, past its grace")
    graceful.stop(timeout=30)  # the operator's docker stop: ~8 s of a failing check before the exit
    wait_until(lambda: not any(graceful.name in service_id
                               for service_id in consul_api.http.get("/v1/agent/services").json()),
               60, 0.2, message="its death handled (deregistered)")
    graceful.reload()
    assert graceful.attrs["State"]["Status"] == "exited"
    assert started_at(graceful) == first
    assert "restarting container" not in daemon.log()


def test_one_read_gives_the_checks_and_which_services_are_in_maintenance(consul_api, hostname):
    """The restart watcher's read against the real agent: the asked checks under their exact IDs, and
    the asked services whose `_service_maintenance:` check the agent holds (the drain's, an operator's)."""
    from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry

    drained, serving = f"{hostname}-drained", f"{hostname}-serving"
    for service_id in (drained, serving):
        consul_api.http.put("/v1/agent/service/register", json={
            "ID": service_id, "Name": service_id, "Check": {"CheckID": f"service:{service_id}:1", "TTL": "60s"}}
        ).raise_for_status()
    consul_api.http.put(f"/v1/agent/service/maintenance/{drained}",
                        params={"enable": "true", "reason": "stopping"}).raise_for_status()
    address = urllib.parse.urlsplit(CONSUL_ADDR)
    client = ConsulClient(ConsulEndpoint(address.scheme, address.hostname or "127.0.0.1", address.port or 8500))
    try:
        read = ConsulRegistry(client).check_statuses([f"service:{drained}:1", f"service:{serving}:1"],
                                                     [drained, serving])
    finally:
        client.close()
    assert read.maintenance == {drained}
    assert {check_id: check.service_id for check_id, check in read.checks.items()} == {
        f"service:{drained}:1": drained, f"service:{serving}:1": serving}
    assert all(check.status == "critical" for check in read.checks.values())  # a TTL check not reported yet
