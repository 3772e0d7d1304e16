"""The published ports of Swarm services, for their task containers: read from
Docker once per task container (Swarm replaces a service's tasks whenever its
endpoint changes, so a task's ports never change) and added to its inspect
data by swarm.with_ingress_ports.

The service labels are the container's own word: its service's ports are read
only once Swarm's record of the task it names (`GET /tasks/<id>`) says it runs
this very container for that service. Every name a label gives is escaped
before it reaches a log line."""

from __future__ import annotations

from typing import Any

from cachetools import LRUCache
from loguru import logger

from consul_reg.docker.client import DockerSource, NotASwarmManager
from consul_reg.mapping import swarm
from consul_reg.mapping.labels import printable


class SwarmEndpoints:
    def __init__(self, docker: DockerSource) -> None:
        self.docker = docker
        self._ports: LRUCache[str, tuple[swarm.SwarmPort, ...]] = LRUCache(maxsize=8192)  # by container ID
        self._told: LRUCache[str, None] = LRUCache(maxsize=1024)  # services and claims already logged about

    def augment(self, container: dict[str, Any]) -> dict[str, Any]:
        """The container's inspect data with its service's ingress ports as bindings
        (unchanged for any other container, and for one whose claim Swarm does not
        confirm). Raises DockerUnavailable."""
        service_id = swarm.service_id(container)
        container_id = str(container.get("Id") or "")
        if not service_id or not container_id:
            return container
        ports = self._ports.get(container_id)
        if ports is None:
            ports, settled = self._read(container, service_id, container_id)
            if settled:
                self._ports[container_id] = ports
        return swarm.with_ingress_ports(container, ports)

    def _read(self, container: dict[str, Any], service_id: str, container_id: str
              ) -> tuple[tuple[swarm.SwarmPort, ...], bool]:
        """(the ports, whether that answer is final for this container)."""
        name = printable(swarm.service_name(container) or service_id, 80)
        task_id = swarm.task_id(container)
        try:
            task = self.docker.swarm_task(task_id) if task_id else None
        except NotASwarmManager:
            if service_id not in self._told:
                self._told[service_id] = None
                logger.warning("swarm service {}: this node is not a manager, so the ports it publishes through "
                               "the ingress routing mesh cannot be read and are not registered (publish them with "
                               "mode=host, or run consul-reg with -internal); host-mode ports still are", name)
            return (), True
        problem = swarm.claim_problem(task, service_id, container_id) if task_id else "it names no task ID"
        if problem == swarm.NOT_RECORDED_YET:  # Swarm records it a moment after the start: asked again next time
            logger.debug("container {}: swarm task {} {}", container_id[:12], task_id, problem)
            return (), False
        if problem:
            if container_id not in self._told:
                self._told[container_id] = None
                logger.warning("container {} claims swarm service {}, but Swarm's record of its task does not say "
                               "so ({}): no ingress ports are registered for it",
                               printable(str(container.get("Name") or container_id).lstrip("/"), 80), name,
                               problem)
            return (), True
        ports = swarm.endpoint_ports(self.docker.swarm_service(service_id))
        if any(p.mode == "ingress" for p in ports) and service_id not in self._told:
            self._told[service_id] = None
            logger.info("swarm service {}: ingress-published ports {} registered at this host's address", name,
                        ", ".join(f"{p.published}->{p.target}/{p.protocol}" for p in ports if p.mode == "ingress"))
        return ports, True
