"""SwarmEndpoints with a stand-in for DockerSource: a container's claim to a service
believed only when Swarm's record of its task says so; one lookup per task
container; the "not a manager" warning once per service; every label-given name
escaped in the log; Docker down raised."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

from consul_reg.docker.client import NotASwarmManager

from consul_reg.core.errors import DockerUnavailable
from consul_reg.docker.swarm import SwarmEndpoints

SERVICE_ID = "b1zaxn8p2ryrfctvw51shnlk6"
OTHER_SERVICE_ID = "q8x7w6v5u4t3s2r1p0o9n8m7l"
SERVICE = {"Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 18080,
                                   "PublishMode": "ingress"}]}}
INGRESS = {"8080/tcp": [{"HostIp": "", "HostPort": "18080"}]}


def task_id(container_id: str) -> str:
    return (container_id[0] * 25)[:25]


def record(container_id: str, service_id: str = SERVICE_ID) -> dict[str, Any]:
    """Swarm's record of the task that runs `container_id`."""
    return {"ID": task_id(container_id), "ServiceID": service_id,
            "Status": {"State": "running", "ContainerStatus": {"ContainerID": container_id}}}


class StandIn:
    def __init__(self, answer: Any, tasks: dict[str, Any] | None = None) -> None:
        self.answer = answer
        self.tasks = tasks
        self.calls: list[str] = []

    def swarm_task(self, task: str) -> dict[str, Any] | None:
        self.calls.append(f"task {task}")
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.tasks is None:  # every task is the one its container claims
            return record(next(c for c in ("a" * 64, "b" * 64, "c" * 64) if task_id(c) == task))
        return self.tasks.get(task)

    def swarm_service(self, service_id: str) -> dict[str, Any] | None:
        self.calls.append(f"service {service_id}")
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def task(container_id: str, name: str = "web", service_id: str = SERVICE_ID, task: str | None = None
         ) -> dict[str, Any]:
    labels = {"com.docker.swarm.service.id": service_id, "com.docker.swarm.service.name": name,
              "com.docker.swarm.task.id": task_id(container_id) if task is None else task}
    return {"Id": container_id, "Name": f"/{name}.1.x", "Config": {"Labels": labels}, "NetworkSettings": {"Ports": {}}}


@pytest.fixture
def logged() -> list[str]:
    seen: list[str] = []
    handler = logger.add(lambda message: seen.append(str(message)), level="DEBUG")
    yield seen
    logger.remove(handler)


def test_one_lookup_per_task_container():
    docker = StandIn(SERVICE)
    endpoints = SwarmEndpoints(docker)  # type: ignore[arg-type]
    for _ in range(3):
        for container_id in ("a" * 64, "b" * 64):
            assert endpoints.augment(task(container_id))["NetworkSettings"]["Ports"] == INGRESS
    assert docker.calls == [f"task {'a' * 25}", f"service {SERVICE_ID}", f"task {'b' * 25}", f"service {SERVICE_ID}"]


def test_not_a_manager_is_said_once_per_service_with_the_name_escaped(logged):
    endpoints = SwarmEndpoints(StandIn(NotASwarmManager("This node is not a swarm manager.")))  # type: ignore[arg-type]
    for container_id in ("a" * 64, "b" * 64, "c" * 64):
        assert endpoints.augment(task(container_id, name="web\n\x1b[31mERROR forged"))["NetworkSettings"]["Ports"] == {}
    warnings = [line for line in logged if "WARNING" in line]
    assert len(warnings) == 1 and "swarm service web\\n\\x1b[31mERROR forged: this node is not a manager" in warnings[0]
    assert not any("\x1b" in line or "\nERROR" in line for line in logged)


@pytest.mark.parametrize("tasks,labels,problem", [
    ({"a" * 25: record("a" * 64, OTHER_SERVICE_ID)}, {}, "the task belongs to another service"),
    ({"a" * 25: record("f" * 64)}, {}, "the task runs another container"),
    ({}, {}, "no such task"),
    ({}, {"task": "not-a-task-id"}, "it names no task ID"),
])
def test_a_claim_the_task_record_does_not_confirm_gets_no_ingress_ports(logged, tasks, labels, problem):
    """On a manager, a container naming a real service (and even a real task of it) gets
    none of that service's ports unless the task's record names this container."""
    docker = StandIn(SERVICE, tasks)
    endpoints = SwarmEndpoints(docker)  # type: ignore[arg-type]
    forged = task("a" * 64, name="web\x1b]0;pwned\x07", **labels)
    for _ in range(2):
        assert endpoints.augment(forged)["NetworkSettings"]["Ports"] == {}
    assert not [call for call in docker.calls if call.startswith("service")]  # its ports never even read
    assert len([call for call in docker.calls if call.startswith("task")]) <= 1  # the answer is kept
    warnings = [line for line in logged if "WARNING" in line]
    assert len(warnings) == 1 and f"does not say so ({problem})" in warnings[0]
    assert "web\\x1b]0;pwned\\x07" in warnings[0] and not any("\x1b" in line or "\x07" in line for line in logged)


def test_a_task_not_recorded_yet_is_asked_again_at_the_next_inspect():
    docker = StandIn(SERVICE, {"a" * 25: {**record("a" * 64), "Status": {"State": "starting"}}})
    endpoints = SwarmEndpoints(docker)  # type: ignore[arg-type]
    assert endpoints.augment(task("a" * 64))["NetworkSettings"]["Ports"] == {}
    docker.tasks = {"a" * 25: record("a" * 64)}
    assert endpoints.augment(task("a" * 64))["NetworkSettings"]["Ports"] == INGRESS


def test_docker_down_is_raised_and_not_remembered():
    docker = StandIn(DockerUnavailable("docker: could not inspect a swarm task"))
    endpoints = SwarmEndpoints(docker)  # type: ignore[arg-type]
    with pytest.raises(DockerUnavailable):
        endpoints.augment(task("a" * 64))
    docker.answer = SERVICE
    assert endpoints.augment(task("a" * 64))["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"] == "18080"


def test_other_containers_are_not_looked_up():
    docker = StandIn(SERVICE)
    plain = {"Id": "d" * 64, "Config": {"Labels": {}}}
    assert SwarmEndpoints(docker).augment(plain) is plain  # type: ignore[arg-type]
    assert docker.calls == []
