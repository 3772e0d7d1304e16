"""Docker Swarm task containers (pure: inspect dicts in, values out, never raises).

A task container carries its service's name and ID in labels Swarm sets. Ports
published in `mode: host` appear in the task's own port bindings like any
`-p`; ports published through the ingress routing mesh do not: only the
service's Endpoint (readable on a manager) holds them. `with_ingress_ports`
adds those to a copy of the task's inspect data as bindings on every host
address, so the mapping registers them as it registers any published port.

Any container may carry these labels. Its claim to a service is believed only
when Swarm's own record of the task says so (`claim_problem`): the task named
by its task ID label belongs to that service and runs this very container.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

SERVICE_NAME_LABEL = "com.docker.swarm.service.name"
SERVICE_ID_LABEL = "com.docker.swarm.service.id"
TASK_NAME_LABEL = "com.docker.swarm.task.name"
TASK_ID_LABEL = "com.docker.swarm.task.id"
# Swarm's object IDs: 25 characters of [a-z0-9]. Anything else is not looked up.
_SWARM_ID = re.compile(r"[a-z0-9]{25}")
_PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class SwarmPort:
    """One entry of a service's Endpoint.Ports."""

    target: int  # the port inside the task
    published: int  # the port on every node (ingress) or on the task's node (host)
    protocol: str  # "tcp", "udp", "sctp"
    mode: str  # "ingress" or "host"


def _labels(container: object) -> dict[str, Any]:
    config = container.get("Config") if isinstance(container, dict) else None
    labels = config.get("Labels") if isinstance(config, dict) else None
    return labels if isinstance(labels, dict) else {}


def service_name(container: object) -> str:
    """The Swarm service a task container belongs to, or "" for any other container."""
    value = _labels(container).get(SERVICE_NAME_LABEL)
    return value.strip() if isinstance(value, str) else ""


def service_id(container: object) -> str:
    """The task's service ID when it is shaped like one (it is looked up), else ""."""
    value = _labels(container).get(SERVICE_ID_LABEL)
    return value if isinstance(value, str) and _SWARM_ID.fullmatch(value) else ""


def task_id(container: object) -> str:
    """The task ID the container claims when it is shaped like one (it is looked up), else ""."""
    value = _labels(container).get(TASK_ID_LABEL)
    return value if isinstance(value, str) and _SWARM_ID.fullmatch(value) else ""


NOT_RECORDED_YET = "the task names no container yet"


def claim_problem(task: object, service: str, container_id: str) -> str:
    """"" when Swarm's record of the task (`GET /tasks/<id>`, None when there is no such
    task) says it belongs to `service` and runs the container `container_id`; else why not."""
    if not isinstance(task, dict):
        return "no such task"
    if task.get("ServiceID") != service:
        return "the task belongs to another service"
    status = task.get("Status")
    container_status = status.get("ContainerStatus") if isinstance(status, dict) else None
    runs = container_status.get("ContainerID") if isinstance(container_status, dict) else None
    if not runs:
        return NOT_RECORDED_YET
    if runs != container_id:
        return "the task runs another container"
    return ""


def endpoint_ports(service: object) -> tuple[SwarmPort, ...]:
    """The ports of a `docker service inspect` answer (Endpoint.Ports: the published
    ports as assigned, including the ones Swarm picked itself)."""
    endpoint = service.get("Endpoint") if isinstance(service, dict) else None
    entries = endpoint.get("Ports") if isinstance(endpoint, dict) else None
    ports: list[SwarmPort] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        target, published = entry.get("TargetPort"), entry.get("PublishedPort")
        protocol = str(entry.get("Protocol") or "tcp").lower()
        mode = str(entry.get("PublishMode") or "ingress").lower()
        if (type(target) is int and type(published) is int and 0 < target < 65536
                and 0 < published < 65536 and protocol in _PROTOCOLS and mode in ("ingress", "host")):
            ports.append(SwarmPort(target, published, protocol, mode))
    return tuple(ports)


def with_ingress_ports(container: dict[str, Any], ports: tuple[SwarmPort, ...]) -> dict[str, Any]:
    """A copy of the task's inspect data whose NetworkSettings.Ports also binds each
    ingress-published port (on every host address, as the routing mesh listens).
    Host-mode ports are in the task's own bindings already; the original is untouched."""
    ingress = [p for p in ports if p.mode == "ingress"]
    if not ingress or not isinstance(container, dict):
        return container
    augmented = copy.copy(container)
    network_settings = container.get("NetworkSettings")
    augmented["NetworkSettings"] = dict(network_settings) if isinstance(network_settings, dict) else {}
    bindings = augmented["NetworkSettings"].get("Ports")
    bindings = dict(bindings) if isinstance(bindings, dict) else {}
    for port in ingress:
        key = f"{port.target}/{port.protocol}"
        if not bindings.get(key):
            bindings[key] = [{"HostIp": "", "HostPort": str(port.published)}]
    augmented["NetworkSettings"]["Ports"] = bindings
    return augmented
