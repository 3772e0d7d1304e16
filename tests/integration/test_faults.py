"""Faults with real processes really killed: the agent, the daemon. Each test
owns the agent it kills (its own ports); -resync 2 keeps them short."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.conftest import status_args, wait_until

pytestmark = pytest.mark.integration

WORKER = {"SERVICE_NAME": "jobs", "SERVICE_HEARTBEAT_TTL": "3s"}


def ids(api, hostname) -> set[str]:
    return set(api.services_of(hostname))


def test_in_sync_resync_writes_nothing(own_agent, start_daemon, run_container, hostname):
    agent = own_agent()
    api = agent.api()
    daemon = start_daemon(*status_args(), agent.uri, resync="1")  # about the periodic resync: it must write nothing
    web = run_container(ports={"80/tcp": None, "443/tcp": None},
                        labels={"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_INTERVAL": "1s"})
    run_container(ports={"81/tcp": None}, labels={"SERVICE_TAGS": "a,b", "SERVICE_ZONE": "z"})
    wait_until(lambda: len(ids(api, hostname)) == 3, message="3 services")
    # Let the agent settle first: a check turning passing is a write of the agent's own.
    wait_until(lambda: api.check_status(f"service:{hostname}:{web.name}:80:tcp") == "passing", message="settled")
    daemon.wait_full_passes_after()  # a resync begun once it settled
    wait_until(lambda: (services := api.services_of(hostname)) and len(services) == 3 and api.in_catalog(services),
               message="the 3 services synced to the catalog")
    index = api.catalog_index()
    register_calls = agent.log().count("/v1/agent/service/register")
    assert register_calls >= 3  # the agent's debug log shows each register call
    daemon.wait_full_passes_after(count=3)  # three more resyncs
    assert api.catalog_index() == index
    assert agent.log().count("/v1/agent/service/register") == register_calls
    assert agent.log().count("/v1/agent/service/deregister") == 0


def test_agent_restart_restores_everything(own_agent, start_daemon, run_container, hostname):
    agent = own_agent()
    api = agent.api()
    start_daemon("-retry-interval", "100", agent.uri)
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_CHECK_TCP": "true"})
    worker = run_container(labels=WORKER)
    heartbeat = f"service:{hostname}:{worker.name}:heartbeat"
    wait_until(lambda: api.check_status(heartbeat) == "passing", message="heartbeat passing")
    before = ids(api, hostname)
    agent.restart()  # a dev agent comes back empty: the final state is what counts, whenever it was repaired
    wait_until(lambda: ids(api, hostname) == before, timeout=5, message="all services back, with -resync 0")
    wait_until(lambda: api.check_status(heartbeat) == "passing", timeout=5, message="heartbeats resumed")
    assert set(api.checks_of(f"{hostname}:{web.name}:80")) == {f"service:{hostname}:{web.name}:80:tcp"}


def test_agent_down_while_containers_change(own_agent, start_daemon, run_container, hostname):
    agent = own_agent()
    api = agent.api()
    daemon = start_daemon("-retry-interval", "100", agent.uri)
    leaving = run_container(ports={"80/tcp": None})
    staying = run_container(ports={"81/tcp": None})
    wait_until(lambda: len(ids(api, hostname)) == 2, message="two services")
    agent.stop()
    leaving.remove(force=True)
    arriving = run_container(ports={"82/tcp": None})
    daemon.wait_log("retrying in")
    assert daemon.process.poll() is None  # still running, still following Docker
    agent.start()
    wait_until(lambda: ids(api, hostname) == {f"{hostname}:{staying.name}:81", f"{hostname}:{arriving.name}:82"},
               timeout=40, message="converged after the agent came back")


def test_daemon_sigkill_then_restart(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon()
    keep = run_container(ports={"80/tcp": None})
    gone = run_container(ports={"80/tcp": None})
    wait_until(lambda: len(ids(consul_api, hostname)) == 2, message="two services")
    daemon.stop(signal.SIGKILL)
    gone.remove(force=True)
    new = run_container(ports={"80/tcp": None})
    start_daemon()
    expected = {f"{hostname}:{keep.name}:80", f"{hostname}:{new.name}:80"}
    wait_until(lambda: ids(consul_api, hostname) == expected, message="no orphan, no duplicate")
    per_container = [s["Meta"]["consul_reg_container"] for s in consul_api.services_of(hostname).values()]
    assert sorted(per_container) == sorted([keep.id, new.id])


def test_sigterm_is_quick_and_keeps_services(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon()
    run_container(ports={"80/tcp": None})
    wait_until(lambda: len(ids(consul_api, hostname)) == 1, message="registered")
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert len(ids(consul_api, hostname)) == 1
    with_cleanup = start_daemon("-deregister-on-exit", *status_args())
    with_cleanup.wait_first_full_pass()
    assert with_cleanup.stop(signal.SIGTERM) == 0
    assert ids(consul_api, hostname) == set()
