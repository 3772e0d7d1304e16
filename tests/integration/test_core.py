"""The stateful core against real processes, all at -resync 0: health that
tells the truth, an agent restart noticed without any resync, /services while
containers churn, JSON logs that stay JSON."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from consul_reg.app.status import MAX_CONNECTIONS_PER_CLIENT
from tests.integration.conftest import free_port, wait_until
from tests.integration.servers import ZooKeeper

pytestmark = pytest.mark.integration

WORKER = {"SERVICE_NAME": "jobs", "SERVICE_HEARTBEAT_TTL": "3s"}


def ids(api, hostname) -> set[str]:
    return set(api.services_of(hostname))


def test_health_follows_the_agent_and_everything_is_back_without_a_resync(own_agent, start_daemon, run_container,
                                                                         hostname):
    agent = own_agent()
    api = agent.api()
    status = f"127.0.0.1:{free_port()}"
    start_daemon("--status-addr", status, agent.uri)
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_CHECK_TCP": "true"})
    worker = run_container(labels=WORKER)
    heartbeat = f"service:{hostname}:{worker.name}:heartbeat"
    wait_until(lambda: api.check_status(heartbeat) == "passing", message="heartbeat passing")
    before = ids(api, hostname)
    assert httpx.get(f"http://{status}/health").status_code == 200

    agent.stop()
    down = wait_until(lambda: (r := httpx.get(f"http://{status}/health")).status_code == 503 and r, timeout=5,
                      message="503 within 5 s of the agent dying")
    assert down.json()["consul"] == "unreachable" and down.json()["consul_reason"]
    agent.start()  # a dev agent comes back empty, with a new node ID
    wait_until(lambda: httpx.get(f"http://{status}/health").status_code == 200, timeout=5,
               message="200 within 5 s of the agent answering again")
    wait_until(lambda: ids(api, hostname) == before, timeout=5, message="every service back, with -resync 0")
    wait_until(lambda: api.check_status(heartbeat) == "passing", timeout=5, message="heartbeats resumed")
    assert set(api.checks_of(f"{hostname}:{web.name}:80")) == {f"service:{hostname}:{web.name}:80:tcp"}


def test_health_is_never_503_during_a_healthy_resync(start_daemon, run_container, consul_api, hostname):
    status = f"127.0.0.1:{free_port()}"
    daemon = start_daemon("--status-addr", status, resync="0.2")  # about the resync: many of them
    for _ in range(3):
        run_container(ports={"80/tcp": None})
    wait_until(lambda: len(ids(consul_api, hostname)) == 3, message="registered")
    target = daemon.passes()[0] + 10  # ten passes begun after now, each seen through /health itself
    codes = []
    with httpx.Client() as client:
        def probe() -> bool:
            response = client.get(f"http://{status}/health")
            codes.append(response.status_code)
            return response.json()["full_pass_done"] >= target

        wait_until(probe, timeout=30, interval=0, message=f"full pass {target} done")
    assert codes and set(codes) == {200}


def test_services_endpoint_under_churn(start_daemon, run_container, docker_client, hostname):
    status = f"127.0.0.1:{free_port()}"
    start_daemon("--status-addr", status)
    stop = threading.Event()
    answers: list[int] = []
    errors: list[str] = []

    def hammer() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.get(f"http://{status}/services")
                    json.loads(response.text)
                    answers.append(response.status_code)
                except Exception as error:  # collected, asserted below
                    errors.append(repr(error))

    # Three readers and this test each keep one connection alive: the four a client may hold.
    watcher = httpx.Client(timeout=10)
    wait_until(lambda: watcher.get(f"http://{status}/health").status_code == 200, message="daemon up")
    readers = [threading.Thread(target=hammer) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        containers = [run_container(ports={"80/tcp": None}) for _ in range(8)]
        for container in containers[:4]:
            container.remove(force=True)
        expected = {c.name for c in containers[4:]}
        wait_until(lambda: {name for name in watcher.get(f"http://{status}/services").json()["containers"]
                            if name in {c.name for c in containers}} == expected, message="/services follows")
    finally:
        watcher.close()
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == [] and answers and set(answers) == {200}


def test_json_logs_stay_json_when_zookeeper_goes_away(tmp_path, start_daemon, run_container, hostname):
    zookeeper = ZooKeeper(tmp_path).start()
    try:
        daemon = start_daemon("--log-format", "json", "-ip", "192.0.2.30", "consul://127.0.0.1:8500",
                              f"{zookeeper.uri_base}/services")
        run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
        daemon.wait_log("mirror zookeeper")
        wait_until(lambda: '"mirror zookeeper' in daemon.log() and "is up" in daemon.log(), message="mirror up")
        zookeeper.kill()
        daemon.wait_log("kazoo", timeout=30)  # kazoo's own records, through loguru
    finally:
        zookeeper.kill()
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert "text" in record and "record" in record
    assert any("kazoo" in json.loads(line)["text"] for line in lines)


def test_the_status_endpoint_bounds_slow_clients(start_daemon, hostname):
    import socket

    port = free_port()
    daemon = start_daemon("--status-addr", f"127.0.0.1:{port}")
    # /health answers 200 once the daemon reached Docker and the agent, before it starts its threads
    # (events, heartbeats, agent watch); its first full pass comes after they all started.
    wait_until(lambda: (r := httpx.get(f"http://127.0.0.1:{port}/health")).status_code == 200
               and r.json()["last_reconcile_seconds_ago"] is not None, message="up, first pass done")

    def threads() -> int:
        status = open(f"/proc/{daemon.process.pid}/status").read()
        return int(status.split("Threads:")[1].split()[0])

    def refused_at_once(connection: socket.socket) -> bytes:
        connection.settimeout(10)
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
        return answer

    base = threads()
    # Every loopback address is one client: it gets MAX_CONNECTIONS_PER_CLIENT threads.
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
    try:
        # The idle ones hold their slots (they are being served, each by a thread): one more
        # is told why and closed at once, not queued or given a thread.
        more = socket.create_connection(("127.0.0.1", port))
        idle.append(more)
        answer = refused_at_once(more)
        assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer, answer
        idle += [socket.create_connection(("127.0.0.1", port)) for _ in range(55)]  # never send a request
        assert threads() <= base + MAX_CONNECTIONS_PER_CLIENT + 2  # the cap, not one thread per connection
        # Idle clients are dropped after the request timeout; the endpoint answers again.
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200, timeout=15,
                   message="answers again once the idle clients timed out")
    finally:
        for connection in idle:
            connection.close()
    assert daemon.process.poll() is None
