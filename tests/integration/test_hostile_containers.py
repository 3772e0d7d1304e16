"""Hostile containers against a real dockerd and a real Consul 1.8.7 agent.

Both are this module's own: a dockerd (own socket, data root and bridge) so
that no other consul-reg on the machine (another test run, an older build)
ever sees these containers, and an agent per test, so that a regression can
make no shared agent leave its cluster or go into maintenance. (Run against
the shared dockerd, an older consul-reg of another session turned
`SERVICE_ID=../../leave` into `PUT /v1/agent/leave` on the shared agent.)

Each test registers a sentinel service by hand, starts consul-reg (-resync
0), starts one hostile container and waits until the daemon has warned about
it, then asserts with `assert_host_unharmed`: the agent is an alive member,
the sentinel and every other service are as they were, no node maintenance,
the daemon is alive and still registers a well-behaved container started
after the hostile one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import pytest

from tests.integration.conftest import IMAGE, ROOT, RUN_ID, TEST_LABEL, status_args, wait_until

pytestmark = pytest.mark.integration

BRIDGE = "crhostile0"  # not test_docker_restart.py's bridge: the two may run at once on one machine
BRIDGE_CIDR = "10.213.97.1/24"  # not swarm_env.py's 10.213.78.1/24


@contextlib.contextmanager
def dockerd_of_its_own(bridge: str, bridge_cidr: str, prefix: str) -> Iterator[tuple[str, docker.DockerClient]]:
    """A dockerd of the caller's own (no iptables, its own bridge; never `--bridge none`, which deletes
    docker0). Yields its DOCKER_HOST and a client."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))  # short: unix socket paths are limited
    host = f"unix://{workdir / 'docker.sock'}"
    made_bridge = subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    if made_bridge:
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", bridge_cidr, "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    with open(workdir / "dockerd.log", "ab") as log:
        process = subprocess.Popen(
            ["dockerd", "--host", host, "--data-root", str(workdir / "root"), "--exec-root", str(workdir / "exec"),
             "--pidfile", str(workdir / "docker.pid"), "--bridge", bridge, "--iptables=false", "--ip-masq=false"],
            stdout=log, stderr=subprocess.STDOUT)
    client: docker.DockerClient | None = None
    try:
        wait_until(lambda: docker.DockerClient(base_url=host, timeout=5).ping(), timeout=60,
                   message="own dockerd up")
        client = docker.DockerClient(base_url=host, timeout=60)
        subprocess.run(["sh", str(ROOT / "scripts" / "make-test-image.sh")], check=True,
                       env={**os.environ, "DOCKER_HOST": host})
        yield host, client
    finally:
        if process.poll() is None:
            if client is not None:
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.close()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
        if made_bridge:
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


@pytest.fixture(scope="module")
def own_docker() -> Iterator[tuple[str, docker.DockerClient]]:
    with dockerd_of_its_own(BRIDGE, BRIDGE_CIDR, "crh-") as both:
        yield both


@pytest.fixture
def run_container(own_docker) -> Iterator[Callable[..., Any]]:
    """As conftest's run_container, in this module's own dockerd (overrides it here)."""
    _, client = own_docker
    started: list[Any] = []

    def start(command: str | list[str] = "sleep 600", **kwargs: Any):
        labels = {**(kwargs.pop("labels", {}) or {}), TEST_LABEL: RUN_ID}
        kwargs.setdefault("name", f"crt-{uuid.uuid4().hex[:8]}")
        kwargs.setdefault("stop_signal", "SIGKILL")  # busybox sleep as PID 1 ignores SIGTERM
        container = client.containers.run(IMAGE, command, detach=True, labels=labels, **kwargs)
        started.append(container)
        container.reload()
        return container

    yield start
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

NEVER = "24h"  # a check interval: Consul staggers the first run within it, so a refused target is never probed


@pytest.fixture
def host(own_agent, hostname):
    """An agent of the test's own, with a hand-registered sentinel service another team owns."""
    agent = own_agent()
    api = agent.api()
    sentinel = {"ID": f"payments-{hostname}", "Name": "payments", "Port": 9999, "Tags": ["sentinel"],
                "Meta": {"owner": "payments-team"}, "Check": {"TTL": "1h", "Status": "passing"}}
    api.register(sentinel)
    yield agent, api, sentinel
    api.http.close()


def sentinel_view(api, sentinel: dict[str, Any]) -> tuple:
    service = api.services().get(sentinel["ID"])
    assert service is not None, "the hand-registered sentinel service is gone"
    return service["Service"], service["Port"], service["Tags"], service["Meta"], \
        api.check_status(f"service:{sentinel['ID']}")


def assert_host_unharmed(api, daemon, run_container, hostname: str, sentinel: dict[str, Any],
                         hostile_ids: tuple[str, ...] = (), hand_registered: tuple[str, ...] = ()) -> None:
    """The common end state after any hostile container (see the module docstring). The well-behaved
    container goes first: once its service is in, every earlier Docker event has been handled."""
    assert daemon.process.poll() is None, "the daemon died"
    good = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "well-behaved"})
    wait_until(lambda: f"{hostname}:{good.name}:80" in api.services(), message="the well-behaved container")
    assert api.services()[f"{hostname}:{good.name}:80"]["Service"] == "well-behaved"
    node = api.http.get("/v1/agent/self").json()["Config"]["NodeName"]
    members = api.http.get("/v1/agent/members").json()
    assert [m["Status"] for m in members if m["Name"] == node] == [1], members  # 1: alive
    assert sentinel_view(api, sentinel) == ("payments", 9999, ["sentinel"], {"owner": "payments-team"}, "passing")
    checks = api.http.get("/v1/agent/checks").json()
    assert "_node_maintenance" not in checks
    assert f"_service_maintenance:{sentinel['ID']}" not in checks
    for service_id, service in api.services().items():  # nothing but the sentinel and this daemon's own
        assert service_id in (sentinel["ID"], *hand_registered) or \
            (service.get("Meta") or {}).get("consul_reg_host") == hostname, service_id
        assert service_id not in hostile_ids
    assert daemon.process.poll() is None, "the daemon died"


def services_of_container(api, container) -> dict[str, dict[str, Any]]:
    """The dockerd is shared: the daemon also registers other tests' containers, so filter by container."""
    return {sid: s for sid, s in api.services().items()
            if (s.get("Meta") or {}).get("consul_reg_container") == container.id}


def start(start_daemon, agent, own_docker, *args: str):
    daemon = start_daemon(*args, *status_args(), agent.uri, resync="0", env={"DOCKER_HOST": own_docker[0]})
    daemon.wait_first_full_pass()
    return daemon


@pytest.mark.parametrize("key,value,stop", [
    ("SERVICE_ID", "../../leave", True),
    ("SERVICE_ID", "../../maintenance", True),  # docker stop: the drain would have put the node in maintenance
    ("SERVICE_ID", "x/../payments-{hostname}", True),
    ("SERVICE_ID", "web\nINFO forged log line", False),
    ("SERVICE_NAME", "..", False),
    ("SERVICE_ID", "{hostname}:victim:80", False),  # this host's default-ID namespace
    ("SERVICE_ID", "other-{hostname}:victim:80", False),  # another host's, on a shared agent or mirror
    ("SERVICE_ID", "other-{hostname}:victim:80-sidecar-proxy", False),  # the agent's ID for its sidecar
])
def test_hostile_identifiers(host, own_docker, start_daemon, run_container, hostname, key, value, stop):
    agent, api, sentinel = host
    value = value.format(hostname=hostname)
    daemon = start(start_daemon, agent, own_docker)
    hostile = run_container(ports={"80/tcp": None}, labels={key: value})
    daemon.wait_log(f"container {hostile.name}: key {key!r}={value!r}: ")
    assert not any(line.startswith("INFO forged") for line in daemon.log().splitlines())
    if stop:
        hostile.stop(timeout=5)
    assert services_of_container(api, hostile) == {}
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel, hostile_ids=(value,))


def test_expose_every_port_costs_64_services(host, own_docker, start_daemon, run_container, hostname):
    agent, api, sentinel = host
    _, client = own_docker
    daemon = start(start_daemon, agent, own_docker, "-internal")
    created = client.api.create_container(
        IMAGE, "sleep 600", name=f"crt-{uuid.uuid4().hex[:8]}", ports=list(range(1, 65536)), stop_signal="SIGKILL",
        labels={TEST_LABEL: RUN_ID, "SERVICE_NAME": "everything"}, host_config=client.api.create_host_config())
    hostile = client.containers.get(created["Id"])
    try:
        hostile.start()
        wait_until(lambda: len(services_of_container(api, hostile)) == 64, timeout=60, message="64 services")
        ports = sorted(s["Port"] for s in services_of_container(api, hostile).values())
        # The lowest 64 of the first 4,096 entries looked at, in the order Docker lists them (as strings).
        hostile.reload()
        looked_at = list(hostile.attrs["Config"]["ExposedPorts"])[:4096]
        assert ports == sorted(int(key.split("/")[0]) for key in looked_at)[:64]
        daemon.wait_log("declares 65535 exposed port entries; only the first 4096 are looked at")
        daemon.wait_log("only the lowest 64 become services")
        assert daemon.log().count("only the lowest 64 become services") == 1
        assert_host_unharmed(api, daemon, run_container, hostname, sentinel)
        assert len(services_of_container(api, hostile)) == 64
    finally:
        try:
            hostile.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.mark.parametrize("labels,refused_key", [
    ({"SERVICE_CHECK_HTTP": "/v1/agent/self", "SERVICE_CHECK_PORT": "{agent_port}"}, "SERVICE_CHECK_PORT"),
    ({"SERVICE_CHECK_HTTP": "/v1/agent/leave", "SERVICE_CHECK_HTTP_METHOD": "PUT",
      "SERVICE_CHECK_PORT": "8500"}, "SERVICE_CHECK_PORT"),
    ({"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_ADDRESS": "169.254.169.254", "SERVICE_CHECK_PORT": "80"},
     "SERVICE_CHECK_ADDRESS"),
    ({"SERVICE_CHECK_HTTP": "/latest/meta-data/", "SERVICE_CHECK_ADDRESS": "::ffff:169.254.169.254"},
     "SERVICE_CHECK_ADDRESS"),
])
def test_check_targets_outside_the_container_are_refused(host, own_docker, start_daemon, run_container, hostname,
                                                          labels, refused_key):
    agent, api, sentinel = host
    labels = {k: v.format(agent_port=agent.http_port) for k, v in labels.items()}
    daemon = start(start_daemon, agent, own_docker, "-ip", "127.0.0.1")
    hostile = run_container(ports={"80/tcp": None}, labels={**labels, "SERVICE_CHECK_INTERVAL": NEVER,
                                                            "SERVICE_CHECK_TCP": "true"})
    service_id = f"{hostname}:{hostile.name}:80"
    wait_until(lambda: service_id in api.services(), message="the service registers without that check")
    daemon.wait_log(f"container {hostile.name}: key {refused_key!r}={labels[refused_key]!r}: ")
    assert api.checks_of(service_id) == {}  # the override applies to every check kind: all refused
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def test_huge_tags_label(host, own_docker, start_daemon, run_container, hostname):
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker)
    hostile = run_container(ports={"80/tcp": None}, labels={"SERVICE_TAGS": "t," * 51200})
    service_id = f"{hostname}:{hostile.name}:80"
    wait_until(lambda: service_id in api.services(), message="registered without those tags")
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_TAGS': its value of 102400 characters is over")
    assert api.services()[service_id]["Tags"] == []
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def test_catastrophic_backtracking_value_with_a_template(host, own_docker, start_daemon, run_container, hostname):
    """Python's re needs 9 s for 28 characters and doubles per character: 40 would take hours."""
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker, "-tags", 'x={{ matchFirstElement "^X=(a+)+$" .Config.Env }}')
    hostile = run_container(ports={"80/tcp": None}, environment={"X": "a" * 40 + "!"})
    matching = run_container(ports={"80/tcp": None}, environment={"X": "aaaa"})
    wait_until(lambda: {f"{hostname}:{c.name}:80" for c in (hostile, matching)} <= set(api.services()),
               message="both registered")
    services = api.services()
    assert services[f"{hostname}:{hostile.name}:80"]["Tags"] == ["x="]
    assert services[f"{hostname}:{matching.name}:80"]["Tags"] == ["x=X=aaaa"]
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def test_a_hand_registered_id_is_never_taken_over(host, own_docker, start_daemon, run_container, hostname):
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker)
    thief = run_container(ports={"80/tcp": None}, labels={"SERVICE_ID": sentinel["ID"], "SERVICE_NAME": "evil"})
    daemon.wait_log(f"container {thief.name}: service ID {sentinel['ID']!r} is already registered by nobody")
    thief.stop(timeout=5)  # its death must not deregister the sentinel either
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def test_a_hostile_container_never_takes_or_deletes_a_hand_registered_services_check(
        host, own_docker, start_daemon, run_container, hostname):
    """Consul names the checks of a service registered by hand with two checks
    service:<ID>:1 and :2. A container labelled SERVICE_ID=<ID>:1 with SERVICE_CHECK_TTL
    asks for check service:<ID>:1: refused (registering it would move that check to the
    container's service, and `docker rm` would then delete it)."""
    agent, api, sentinel = host
    billing = f"billing-{hostname}"
    api.register({"ID": billing, "Name": "billing", "Port": 9998,
                  "Checks": [{"TTL": "1h", "Status": "passing"}, {"TTL": "1h", "Status": "passing"}]})
    assert set(api.checks_of(billing)) == {f"service:{billing}:1", f"service:{billing}:2"}
    daemon = start(start_daemon, agent, own_docker)
    hostile = run_container(labels={"SERVICE_ID": f"{billing}:1", "SERVICE_NAME": "evil", "SERVICE_CHECK_TTL": "1h"})
    daemon.wait_log(f"container {hostile.name}: check service:{billing}:1 (from SERVICE_CHECK_TTL) is already "
                    f"the check of service {billing!r}")
    hostile.remove(force=True)
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel, hostile_ids=(f"{billing}:1",),
                          hand_registered=(billing,))
    assert set(api.checks_of(billing)) == {f"service:{billing}:1", f"service:{billing}:2"}, (
        f"billing's checks now: {sorted(api.checks_of(billing))}")


def test_a_squatter_started_first_does_not_keep_the_id(host, own_docker, start_daemon, run_container, hostname):
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker)
    shared = f"shop-{hostname}"
    squatter = run_container(ports={"80/tcp": None}, labels={"SERVICE_ID": shared, "SERVICE_NAME": "squatter"})
    wait_until(lambda: api.services().get(shared, {}).get("Service") == "squatter", message="the squatter's record")
    legit = run_container(ports={"80/tcp": None}, labels={"SERVICE_ID": shared, "SERVICE_NAME": "shop"})
    wait_until(lambda: api.services().get(shared, {}).get("Service") == "shop", message="the newer container's")
    assert api.services()[shared]["Meta"]["consul_reg_container"] == legit.id
    daemon.wait_log(f"service ID {shared!r} is declared by containers {legit.name} and {squatter.name}")
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def test_a_container_cannot_write_the_ownership_marker_into_its_meta(host, own_docker, start_daemon, run_container,
                                                                     hostname):
    """`SERVICE_CONSUL.REG.INSTANCE` is Meta `consul_reg_instance` once its characters are fixed: had
    it been kept, the record would be no record of this daemon (run without --instance), never
    updated nor removed, outliving its container. The reserved keys are judged as registered."""
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker)
    hostile = run_container(ports={"80/tcp": None}, labels={
        "SERVICE_NAME": "marker", "SERVICE_CONSUL.REG.INSTANCE": "x", "SERVICE_CONSUL.REG.SIDECAR.FOR": "payments",
        "SERVICE_CONSUL.REG.HOST": "elsewhere", "SERVICE_EXTERNAL-SOURCE": "kubernetes", "SERVICE_KEPT": "yes"})
    service_id = f"{hostname}:{hostile.name}:80"
    wait_until(lambda: service_id in api.services(), message="the container's service")
    meta = api.services()[service_id]["Meta"]
    assert {k: v for k, v in meta.items() if k != "consul_reg_digest"} == {
        "external-source": "consul-reg", "consul_reg_host": hostname, "consul_reg_container": hostile.id,
        "kept": "yes"}
    for key in ("SERVICE_CONSUL.REG.INSTANCE", "SERVICE_CONSUL.REG.SIDECAR.FOR", "SERVICE_EXTERNAL-SOURCE"):
        daemon.wait_log(f"container {hostile.name}: key {key!r}: Meta key")
    hostile.remove(force=True)  # the daemon's record: removed with its container (-resync 0: by the event)
    wait_until(lambda: service_id not in api.services(), message="the record removed with its container")
    daemon.wait_log(f"deregistered {service_id} name=marker")
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel, hostile_ids=(service_id,))


def catalog_view(api, name: str) -> list[tuple]:
    """What Consul's catalog (not the agent) holds under a service name: its rows and their checks."""
    rows = api.http.get(f"/v1/catalog/service/{name}").json()
    checks = api.http.get(f"/v1/health/checks/{name}").json()
    return sorted((r["ServiceID"], r["ServicePort"], r["ServiceTags"], sorted(r["ServiceMeta"].items())) for r in rows) \
        + sorted((c["CheckID"], c["ServiceID"], c["Status"]) for c in checks)


def synced(api) -> None:
    """Anti-entropy has pushed every change the agent had: a service registered by hand
    after them reaches the catalog (a sync pushes all that is out of sync at once)."""
    marker = {"ID": f"sync-{uuid.uuid4().hex[:8]}", "Name": "sync-marker", "Port": 1}
    api.register(marker)
    wait_until(lambda: api.in_catalog({marker["ID"]: api.services()[marker["ID"]]}), message="anti-entropy")
    api.deregister(marker["ID"])


def test_another_spelling_of_a_hand_registered_id_leaves_it_as_registered_in_the_agent_and_the_catalog(
        host, own_docker, start_daemon, run_container, hostname):
    """The agent keys services by their exact ID, Consul's catalog lower-cased: a container's
    `Payments-<h>` beside the payments team's `payments-<h>` would replace its catalog row at
    each anti-entropy sync, and its removal could delete it. It is refused, warned naming both."""
    agent, api, sentinel = host
    synced(api)
    before = catalog_view(api, "payments")
    assert [row[0] for row in before[:1]] == [sentinel["ID"]] and len(before) == 2, before
    daemon = start(start_daemon, agent, own_docker)
    spelled = "P" + sentinel["ID"][1:]
    hostile = run_container(ports={"80/tcp": None}, labels={"SERVICE_ID": spelled, "SERVICE_NAME": "payments",
                                                            "SERVICE_CHECK_TTL": "1h"})
    later = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "later"})
    wait_until(lambda: f"{hostname}:{later.name}:80" in api.services(), message="a later container: "
               "every earlier event was handled")
    synced(api)
    while_running = catalog_view(api, "payments")
    hostile.remove(force=True)
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel, hostile_ids=(spelled,))
    synced(api)
    assert (while_running, catalog_view(api, "payments")) == (before, before)
    daemon.wait_log(f"container {hostile.name}: service ID {spelled!r} differs only in case from {sentinel['ID']!r}")


def test_a_sidecar_registration_leaves_a_foreign_sidecar_proxy_untouched(host, own_docker, start_daemon,
                                                                         run_container, hostname):
    """With SERVICE_CONNECT=sidecar the agent writes `<id>-sidecar-proxy` with `<id>`,
    replacing whatever held that ID, and removes it with `<id>`."""
    agent, api, sentinel = host
    shop = f"shop-{hostname}"
    foreign = {"ID": f"{shop}-sidecar-proxy", "Name": "mesh-proxy", "Port": 21999, "Meta": {"owner": "mesh-team"}}
    api.register(foreign)

    def view() -> tuple | None:
        record = api.services().get(foreign["ID"])
        return record and (record["Service"], record["Port"], record["Meta"], record.get("Kind", ""))

    daemon = start(start_daemon, agent, own_docker)
    hostile = run_container(ports={"80/tcp": None}, labels={"SERVICE_ID": shop, "SERVICE_NAME": "shop",
                                                            "SERVICE_CONNECT": "sidecar"})
    later = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "later"})
    wait_until(lambda: f"{hostname}:{later.name}:80" in api.services(), message="a later container: "
               "every earlier event was handled")
    while_running = view()
    hostile.remove(force=True)
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel, hostile_ids=(shop,),
                         hand_registered=(foreign["ID"],))
    assert (while_running, view()) == (("mesh-proxy", 21999, {"owner": "mesh-team"}, ""),) * 2
    daemon.wait_log(f"container {hostile.name}: the sidecar proxy ID {foreign['ID']!r} of {shop} is already "
                    "registered by someone else")


def test_env_files_that_attack_the_daemon(host, own_docker, start_daemon, run_container, hostname):
    """A directory holding a sparse terabyte, and a file rewritten in a loop while the daemon polls it."""
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker, "--env-file-interval", "0.2")
    before = _status(daemon.process.pid)["VmHWM"]
    sparse = run_container(["sh", "-c", "mkdir -p /data && truncate -s 1099511627776 /data/big && exec sleep 600"],
                           ports={"80/tcp": None}, labels={"SERVICE_ENV_FILE": "/data", "SERVICE_NAME": "sparse"})
    churn = run_container(["sh", "-c", "while :; do printf 'SERVICE_TAGS=a%s\\n' $RANDOM > /tmp/e; usleep 2000; done"],
                          ports={"80/tcp": None}, labels={"SERVICE_ENV_FILE": "/tmp/e", "SERVICE_NAME": "churn"})
    wait_until(lambda: f"{hostname}:{sparse.name}:80" in api.services(), message="registered without the file")
    daemon.wait_log(f"container {sparse.name}: env file /data: ")
    churn_id = f"{hostname}:{churn.name}:80"
    seen: set[str] = set()

    def tags_changed() -> bool:
        tags = api.services().get(churn_id, {}).get("Tags")
        if tags:
            seen.add(tags[0])
        return len(seen) >= 2

    wait_until(tags_changed, timeout=60, message="the churning file read again")
    assert api.services()[f"{hostname}:{sparse.name}:80"]["Service"] == "sparse"
    grown_kb = _status(daemon.process.pid)["VmHWM"] - before
    assert grown_kb < 32 * 1024, f"the daemon's peak RSS grew by {grown_kb} kB"
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def test_yes_as_a_daemon_run_exec_check(host, own_docker, start_daemon, run_container, hostname):
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker, "--exec-checks", "daemon")
    base = _status(daemon.process.pid)
    hostile = run_container(ports={"80/tcp": None}, labels={
        "SERVICE_CHECK_DOCKER": "echo run >> /tmp/runs; exec yes", "SERVICE_CHECK_INTERVAL": "1s",
        "SERVICE_CHECK_TIMEOUT": "1s"})
    check_id = f"service:{hostname}:{hostile.name}:80:docker"
    output = wait_until(lambda: (c := api.http.get("/v1/agent/checks").json().get(check_id)) and
                        c["Status"] == "critical" and "timed out" in c["Output"] and c["Output"], timeout=30,
                        message="the exec timed out and was reported critical")
    assert len(output.encode()) <= 4096 + 200

    def runs() -> int:
        return hostile.exec_run("cat /tmp/runs").output.decode().count("run")

    started = runs()
    wait_until(lambda: runs() >= started + 4, timeout=30, message="more rounds: nothing accumulates")
    now = _status(daemon.process.pid)
    assert now["Threads"] <= base["Threads"] + 6, (base, now)
    assert now["VmHWM"] - base["VmHWM"] < 32 * 1024, (base, now)
    top = hostile.top(ps_args="-o pid,comm")["Processes"] or []
    assert sum(1 for row in top if row[-1] == "yes") <= 1  # at most the one in flight
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def test_a_dot_dot_name_never_wedges_the_mirrors(tmp_path, host, own_docker, start_daemon, run_container, hostname):
    from tests.integration.servers import ZooKeeper

    agent, api, sentinel = host
    zookeeper = ZooKeeper(tmp_path).start()
    try:
        prefix = f"kvh-{hostname}"
        daemon = start_daemon("-ip", "192.0.2.60", *status_args(), agent.uri,
                              f"consulkv://127.0.0.1:{agent.http_port}/{prefix}", f"{zookeeper.uri_base}/services",
                              resync="0", env={"DOCKER_HOST": own_docker[0]})
        daemon.wait_first_full_pass()
        hostile = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": ".."})
        daemon.wait_log(f"container {hostile.name}: key 'SERVICE_NAME'='..': ")
        good = run_container(ports={"81/tcp": None}, labels={"SERVICE_NAME": "fine"})
        client = zookeeper.client()
        try:
            port = good.attrs["NetworkSettings"]["Ports"]["81/tcp"][0]["HostPort"]
            wait_until(lambda: client.exists(f"/services/fine/192.0.2.60:{port}"), message="znode of the good one")
        finally:
            client.stop()
        keys = wait_until(lambda: api.http.get(f"/v1/kv/{prefix}", params={"keys": "true"}).json(),
                          message="KV keys")
        assert keys == [f"{prefix}/fine/{hostname}:{good.name}:81"]
        assert "mirror" not in "".join(line for line in daemon.log().splitlines() if "is down" in line)
        assert_host_unharmed(api, daemon, run_container, hostname, sentinel)
    finally:
        zookeeper.kill()
