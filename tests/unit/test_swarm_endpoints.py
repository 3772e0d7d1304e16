"""SwarmEndpoints with a stand-in for DockerSource: one service lookup per task
container, the "not a manager" warning once per service, Docker down raised."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

from consul_reg.docker_source import DockerUnavailable, NotASwarmManager
from consul_reg.swarm_endpoints import SwarmEndpoints

SERVICE_ID = "b1zaxn8p2ryrfctvw51shnlk6"
SERVICE = {"Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 18080,
                                   "PublishMode": "ingress"}]}}


class StandIn:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[str] = []

    def swarm_service(self, service_id: str) -> dict[str, Any] | None:
        self.calls.append(service_id)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def task(container_id: str) -> dict[str, Any]:
    return {"Id": container_id, "Config": {"Labels": {"com.docker.swarm.service.id": SERVICE_ID,
                                                      "com.docker.swarm.service.name": "web"}},
            "NetworkSettings": {"Ports": {}}}


@pytest.fixture
def warnings() -> list[str]:
    seen: list[str] = []
    handler = logger.add(lambda message: seen.append(str(message)), level="WARNING")
    yield seen
    logger.remove(handler)


def test_one_lookup_per_task_container():
    docker = StandIn(SERVICE)
    endpoints = SwarmEndpoints(docker)  # type: ignore[arg-type]
    for _ in range(3):
        for container_id in ("a" * 64, "b" * 64):
            assert endpoints.augment(task(container_id))["NetworkSettings"]["Ports"] == {
                "8080/tcp": [{"HostIp": "", "HostPort": "18080"}]}
    assert docker.calls == [SERVICE_ID, SERVICE_ID]


def test_not_a_manager_is_said_once_per_service(warnings):
    endpoints = SwarmEndpoints(StandIn(NotASwarmManager("This node is not a swarm manager.")))  # type: ignore[arg-type]
    for container_id in ("a" * 64, "b" * 64, "c" * 64):
        assert endpoints.augment(task(container_id))["NetworkSettings"]["Ports"] == {}
    assert len(warnings) == 1 and "swarm service web: this node is not a manager" in warnings[0]


def test_docker_down_is_raised_and_not_remembered():
    docker = StandIn(DockerUnavailable("docker: could not inspect a swarm service"))
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
