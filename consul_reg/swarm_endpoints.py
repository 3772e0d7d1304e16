"""The published ports of Swarm services, for their task containers: read from
Docker once per task container (Swarm replaces a service's tasks whenever its
endpoint changes, so a task's ports never change) and added to its inspect
data by swarm.with_ingress_ports."""

from __future__ import annotations

from typing import Any

from cachetools import LRUCache
from loguru import logger

from consul_reg import swarm
from consul_reg.docker_source import DockerSource, NotASwarmManager


class SwarmEndpoints:
    def __init__(self, docker: DockerSource) -> None:
        self.docker = docker
        self._ports: LRUCache[str, tuple[swarm.SwarmPort, ...]] = LRUCache(maxsize=8192)  # by container ID
        self._told: LRUCache[str, None] = LRUCache(maxsize=1024)  # services already logged about

    def augment(self, container: dict[str, Any]) -> dict[str, Any]:
        """The container's inspect data with its service's ingress ports as bindings
        (unchanged for any other container). Raises DockerUnavailable."""
        service_id = swarm.service_id(container)
        container_id = str(container.get("Id") or "")
        if not service_id or not container_id:
            return container
        ports = self._ports.get(container_id)
        if ports is None:
            ports = self._read(service_id, swarm.service_name(container) or service_id)
            self._ports[container_id] = ports
        return swarm.with_ingress_ports(container, ports)

    def _read(self, service_id: str, name: str) -> tuple[swarm.SwarmPort, ...]:
        try:
            service = self.docker.swarm_service(service_id)
        except NotASwarmManager:
            if service_id not in self._told:
                self._told[service_id] = None
                logger.warning("swarm service {}: this node is not a manager, so the ports it publishes through "
                               "the ingress routing mesh cannot be read and are not registered (publish them with "
                               "mode=host, or run consul-reg with -internal); host-mode ports still are", name)
            return ()
        ports = swarm.endpoint_ports(service)
        if any(p.mode == "ingress" for p in ports) and service_id not in self._told:
            self._told[service_id] = None
            logger.info("swarm service {}: ingress-published ports {} registered at this host's address", name,
                        ", ".join(f"{p.published}->{p.target}/{p.protocol}" for p in ports if p.mode == "ingress"))
        return ports
