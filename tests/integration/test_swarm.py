"""Docker Swarm services: task containers register under the service's name,
one record per task, ingress ports at this host's address with the published
port read from the service's endpoint, host-mode ports like any published
port; Consul follows scaling and updates. The routing mesh itself carries no
traffic here (no IPVS in this kernel): the records are what is checked."""

from __future__ import annotations

import pytest

import subprocess

from tests.integration.conftest import RUN_ID, TEST_LABEL, free_port, wait_until
from tests.integration.image_build import consul_reg_image  # noqa: F401 (a fixture)
from tests.integration.swarm_env import own_swarm  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration
TASK_FLAGS = ("-d", "--no-resolve-image", "--stop-signal", "SIGKILL", "--container-label", f"{TEST_LABEL}={RUN_ID}")
IMAGE_AND_COMMAND = ("consul-reg-test/busybox:latest", "sleep", "600")


def records(consul_api, hostname: str, service: str) -> dict[str, dict]:
    return {sid: s for sid, s in consul_api.services_of(hostname).items() if s["Service"].startswith(service)}


def replaced(own_swarm, service: str, before: set[str]) -> None:
    """Wait until an update replaced every task of `service` that ran before it."""
    wait_until(lambda: (now := set(own_swarm.tasks(service))) and not now & before, timeout=90, interval=0.3,
               message=f"the tasks of {service} replaced")


def expect_tasks(own_swarm, consul_api, hostname: str, service: str, count: int, ports: tuple[int, ...],
                 timeout: float = 90) -> dict[str, dict]:
    """Wait until Swarm runs `count` tasks of `service` and Consul holds exactly one
    record per task and port, with IDs naming each task's container."""
    def matched() -> dict[str, dict] | None:
        tasks = own_swarm.tasks(service)
        expected = {f"{hostname}:{name}:{port}" for name in tasks for port in ports}
        registered = records(consul_api, hostname, service)
        return registered if len(tasks) == count and set(registered) == expected else None
    return wait_until(matched, timeout=timeout, interval=0.3,
                      message=f"{count} tasks of {service} in Consul, one record per task and port")


def test_replicated_and_global_services_follow_scale_and_update(own_swarm, start_daemon, consul_api, hostname):
    daemon = start_daemon(resync="0", env={"DOCKER_HOST": own_swarm.host})
    daemon.wait_log(f"connected: docker {own_swarm.host}")
    ingress_port, host_port, added_port = free_port(), free_port(), free_port()
    own_swarm.cli("service", "create", *TASK_FLAGS, "--name", "web", "--replicas", "2",
                  "--publish", f"published={ingress_port},target=8080",
                  "--container-label", "SERVICE_TAGS=swarm,web", "--env", "SERVICE_VERSION=1", *IMAGE_AND_COMMAND)
    own_swarm.cli("service", "create", *TASK_FLAGS, "--name", "edge", "--mode", "global",
                  "--publish", f"mode=host,published={host_port},target=8081",
                  "--env", "SERVICE_NAME=edge-proxy", *IMAGE_AND_COMMAND)

    web = expect_tasks(own_swarm, consul_api, hostname, "web", 2, (8080,))
    assert {(s["Service"], s["Address"], s["Port"]) for s in web.values()} == {("web", "127.0.0.1", ingress_port)}
    assert all(s["Tags"] == ["swarm", "web"] and s["Meta"]["version"] == "1" for s in web.values())
    edge = expect_tasks(own_swarm, consul_api, hostname, "edge", 1, (8081,))
    assert [(s["Service"], s["Port"]) for s in edge.values()] == [("edge-proxy", host_port)]
    assert daemon.log().count("swarm service web: ingress-published ports") == 1

    own_swarm.cli("service", "scale", "-d", "web=3")
    expect_tasks(own_swarm, consul_api, hostname, "web", 3, (8080,))
    own_swarm.cli("service", "scale", "-d", "web=1")
    expect_tasks(own_swarm, consul_api, hostname, "web", 1, (8080,))

    # An update replaces the tasks: new container names, new records, the old ones gone.
    before = set(own_swarm.tasks("web"))
    own_swarm.cli("service", "update", "-d", "--container-label-add", "SERVICE_TAGS=swarm,v2",
                  "--env-add", "SERVICE_VERSION=2", "web")
    replaced(own_swarm, "web", before)
    web = expect_tasks(own_swarm, consul_api, hostname, "web", 1, (8080,))
    assert [(s["Tags"], s["Meta"]["version"]) for s in web.values()] == [(["swarm", "v2"], "2")]
    before = set(own_swarm.tasks("edge"))
    own_swarm.cli("service", "update", "-d", "--env-add", "SERVICE_VERSION=2", "edge")
    replaced(own_swarm, "edge", before)
    edge = expect_tasks(own_swarm, consul_api, hostname, "edge", 1, (8081,))
    assert [(s["Service"], s["Port"], s["Meta"]["version"]) for s in edge.values()] == [("edge-proxy", host_port,
                                                                                        "2")]

    # A new ingress publication: its tasks are replaced too, and both ports register.
    before = set(own_swarm.tasks("web"))
    own_swarm.cli("service", "update", "-d", "--publish-add", f"published={added_port},target=9090", "web")
    replaced(own_swarm, "web", before)
    web = expect_tasks(own_swarm, consul_api, hostname, "web", 1, (8080, 9090))
    assert sorted((s["Service"], s["Port"]) for s in web.values()) == [("web-8080", ingress_port),
                                                                      ("web-9090", added_port)]

    own_swarm.cli("service", "rm", "web", "edge")
    wait_until(lambda: not consul_api.services_of(hostname), timeout=60, message="every task deregistered")
    assert daemon.process.poll() is None


def test_without_a_manager_ingress_ports_are_logged_once_and_host_ports_register(
        run_container, start_daemon, consul_api, hostname):
    """The shared dockerd is in no swarm: it answers a service lookup as a worker node
    does (503, not a manager). Task-like containers there show what a worker does."""
    daemon = start_daemon(resync="0")
    labels = {"com.docker.swarm.service.name": "far", "com.docker.swarm.service.id": "z" * 25,
              "com.docker.swarm.task.name": "far.1.abc", "com.docker.swarm.task.id": "y" * 25}
    first = run_container(ports={"8081/tcp": None}, labels=labels)  # a host-mode-like binding
    second = run_container(ports={"8081/tcp": None}, labels=labels)
    for container in (first, second):
        wait_until(lambda: f"{hostname}:{container.name}:8081" in consul_api.services_of(hostname),
                   message="host-published port registered under the swarm service name")
    assert {s["Service"] for s in consul_api.services_of(hostname).values()
            if s["Meta"]["consul_reg_container"] in (first.id, second.id)} == {"far"}
    assert daemon.log().count("swarm service far: this node is not a manager") == 1


def test_a_forged_swarm_name_never_reaches_a_log_line_raw(run_container, start_daemon, consul_api, hostname):
    """On a node that is no manager (the shared dockerd is in no swarm), the name a
    container claims is still logged: escaped, never a line of its own or a terminal
    escape."""
    daemon = start_daemon(resync="0")
    forged = "far\n2030-01-01 00:00:00 INFO forged line \x1b[2J\x1b]0;owned\x07"
    labels = {"com.docker.swarm.service.name": forged, "com.docker.swarm.service.id": "x" * 25,
              "com.docker.swarm.task.id": "w" * 25, "SERVICE_NAME": "forger"}
    container = run_container(ports={"8081/tcp": None}, labels=labels)
    wait_until(lambda: f"{hostname}:{container.name}:8081" in consul_api.services_of(hostname),
               message="the forger registered (its own host port)")
    daemon.wait_log("this node is not a manager")
    log = daemon.log()
    assert "far\\n2030-01-01 00:00:00 INFO forged line \\x1b[2J\\x1b]0;owned\\x07: this node is not a manager" in log
    assert "\x1b" not in log and "\x07" not in log and "\n2030-01-01" not in log


def test_a_container_claiming_a_real_service_gets_none_of_its_ports(own_swarm, start_daemon, consul_api, hostname):
    """On a manager: a plain container labelled with a real service's ID and name, and
    even with the ID of one of its real tasks, is not that service's task: Swarm's
    record of the task says which container it runs. It gets none of the service's
    ingress ports; the real task does."""
    daemon = start_daemon(resync="0", env={"DOCKER_HOST": own_swarm.host})
    daemon.wait_log(f"connected: docker {own_swarm.host}")
    ingress_port = free_port()
    own_swarm.cli("service", "create", *TASK_FLAGS, "--name", "paid", "--replicas", "1",
                  "--publish", f"published={ingress_port},target=8080", *IMAGE_AND_COMMAND)
    paid = expect_tasks(own_swarm, consul_api, hostname, "paid", 1, (8080,))
    assert [s["Port"] for s in paid.values()] == [ingress_port]
    real = next(iter(own_swarm.tasks("paid").values()))
    assert own_swarm.client is not None
    forgers = []
    for task_id in ("v" * 25, real.labels["com.docker.swarm.task.id"]):  # no such task; a real task of it
        labels = {key: real.labels[key] for key in ("com.docker.swarm.service.id", "com.docker.swarm.service.name")}
        forgers.append(own_swarm.client.containers.run(
            IMAGE_AND_COMMAND[0], list(IMAGE_AND_COMMAND[1:]), detach=True, stop_signal="SIGKILL",
            labels={**labels, "com.docker.swarm.task.id": task_id, TEST_LABEL: RUN_ID}))
    try:
        # a well-behaved container started after them registers: every earlier event was handled
        control = own_swarm.client.containers.run(IMAGE_AND_COMMAND[0], list(IMAGE_AND_COMMAND[1:]), detach=True,
                                                  stop_signal="SIGKILL", ports={"80/tcp": None},
                                                  labels={TEST_LABEL: RUN_ID, "SERVICE_NAME": "control"})
        forgers.append(control)
        wait_until(lambda: f"{hostname}:{control.name}:80" in consul_api.services_of(hostname),
                   message="the control container registered")
        registered = consul_api.services_of(hostname)
        assert not [sid for sid, s in registered.items()
                    if s["Meta"]["consul_reg_container"] in {f.id for f in forgers[:2]}]
        assert [s["Port"] for s in records(consul_api, hostname, "paid").values()] == [ingress_port]
        for forger, problem in zip(forgers, ("no such task", "the task runs another container")):
            daemon.wait_log(f"container {forger.name} claims swarm service paid, but Swarm's record of its task "
                            f"does not say so ({problem})")
    finally:
        for forger in forgers:
            forger.remove(force=True)
    own_swarm.cli("service", "rm", "paid")
    wait_until(lambda: not records(consul_api, hostname, "paid"), timeout=60, message="paid's task deregistered")


def test_consul_reg_as_a_global_service_on_the_host_network(own_swarm, consul_reg_image, consul_api, hostname):
    """As registrator's users deploy it in a swarm: a global service on the `host`
    network with the node's Docker socket mounted; it never registers itself."""
    saved = subprocess.Popen(["docker", "save", consul_reg_image], stdout=subprocess.PIPE)
    own_swarm.cli_input("load", "-q", stdin=saved.stdout)
    assert saved.wait(timeout=120) == 0
    socket = own_swarm.host.removeprefix("unix://")
    own_swarm.cli("service", "create", "-d", "--no-resolve-image", "--name", "consul-reg", "--mode", "global",
                  "--network", "host", "--mount", f"type=bind,source={socket},target=/tmp/docker.sock",
                  "--container-label", "SERVICE_NAME=consul-reg", consul_reg_image,
                  "--hostname", hostname, "-resync", "0", "consul://localhost:8500")
    port = free_port()
    own_swarm.cli("service", "create", *TASK_FLAGS, "--name", "api", "--replicas", "2",
                  "--publish", f"published={port},target=8080", *IMAGE_AND_COMMAND)
    api = expect_tasks(own_swarm, consul_api, hostname, "api", 2, (8080,))
    assert {(s["Service"], s["Port"]) for s in api.values()} == {("api", port)}
    daemon = own_swarm.tasks("consul-reg")
    assert len(daemon) == 1
    assert not [s for s in consul_api.services_of(hostname).values()
                if s["Meta"]["consul_reg_container"] == next(iter(daemon.values())).id]
    own_swarm.cli("service", "rm", "api")
    wait_until(lambda: not consul_api.services_of(hostname), timeout=60, message="api's tasks deregistered")
    own_swarm.cli("service", "rm", "consul-reg")
