"""What the catalog says of services, for `consul-reg wait`: one service's
instances on one node and their checks (the node's too), read with Consul's
blocking queries through the one client (`consul/agent.py`); the agent's
services that one daemon marked as one container's; the agent's own view of
some checks.

A blocking query answers when the service's instances or checks change, or
after its wait: the agent's own endpoints never block in Consul 1.8, the
health endpoint does. The catalog is what routers (Traefik, DNS) read, a
moment after the agent itself (its anti-entropy sync). A check's status
reaches the catalog at once, but a change of its output alone only every
`check_update_interval` (5 minutes by default): the agent's own view of its
checks (`agent_checks`) has the output as the check last wrote it."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from consul_reg.consul.agent import ConsulClient
from consul_reg.core.errors import RegistryError
from consul_reg.core.records import MARKER_CONTAINER_KEY, MARKER_INSTANCE_KEY, Owner, owner_meta

# A node name that may be quoted in a filter expression as it is; any other is filtered here only.
_NODE_FILTER_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")
MAX_WAIT_SECONDS = 300  # Consul caps a blocking query's wait at 10 minutes
MAX_CHECK_OUTPUT = 4096  # characters of a check's output kept (the agent keeps 4 KiB by default)


@dataclass(frozen=True)
class CheckHealth:
    """One check of an instance as the catalog holds it ("" service_id: a node check)."""

    check_id: str
    name: str
    status: str
    output: str
    service_id: str


@dataclass(frozen=True)
class InstanceHealth:
    """One instance of a service on one node, with its checks and its node's."""

    service_id: str
    name: str
    checks: tuple[CheckHealth, ...]


def service_health(client: ConsulClient, name: str, node: str, index: int = 0, wait: float = 0.0
                   ) -> tuple[int, tuple[InstanceHealth, ...]]:
    """(index, instances) of service `name` on `node`. With an `index` above 0, a
    blocking query that answers when that service's instances or checks change, or
    after `wait` seconds (1 to MAX_WAIT_SECONDS); the index comes back as the agent
    sent it (0 when it sent none): resetting one that went backwards is the caller's."""
    params: dict[str, str] = {}
    seconds = 0
    if index > 0:
        seconds = int(min(max(wait, 1.0), MAX_WAIT_SECONDS))
        params = {"index": str(index), "wait": f"{seconds}s"}
    if _NODE_FILTER_SAFE.fullmatch(node):
        params["filter"] = f'Node.Node == "{node}"'
    what = f"read the health of service {name}"
    # Consul adds up to wait/16 of jitter to a blocking query's wait.
    answer = client.call("GET", ("health", "service", name), what, params=params,
                         timeout=client.timeout + seconds * 17 / 16)
    try:
        listed = answer.json()
    except ValueError:
        raise RegistryError(f"{client.description}: could not {what}: the answer is not JSON") from None
    header = answer.headers.get("x-consul-index", "")
    new_index = int(header) if header.isascii() and header.isdigit() and len(header) < 20 else 0
    return new_index, _instances(listed, node)


def container_services(client: ConsulClient, container_id: str, owner: Owner) -> dict[str, str]:
    """Service ID -> name of the agent's services `owner` (a daemon: host and --instance)
    marked as `container_id`'s; other daemons' records of the container are theirs."""
    if not _CONTAINER_ID.fullmatch(container_id):
        raise RegistryError(f"refusing to look up container ID {container_id[:80]!r}: not a container ID")
    listed = client.json("GET", ("agent", "services"), "list the agent's services of a container",
                         params={"filter": f'Meta.{MARKER_CONTAINER_KEY} == "{container_id}"'})
    marker = owner_meta(owner)
    found = {}
    for service_id, entry in (listed.items() if isinstance(listed, dict) else ()):
        meta = entry.get("Meta") if isinstance(entry, dict) else None
        if not isinstance(meta, dict) or not entry.get("Service") or meta.get(MARKER_CONTAINER_KEY) != container_id:
            continue
        if all(meta.get(key) == value for key, value in marker.items()) \
                and meta.get(MARKER_INSTANCE_KEY, "") == owner.instance:
            found[str(service_id)] = str(entry["Service"])
    return found


def agent_checks(client: ConsulClient, check_ids: Collection[str]) -> dict[str, CheckHealth]:
    """The agent's own view of these checks (ID -> check), their outputs as last written;
    one request, whatever is not a check skipped."""
    wanted = set(check_ids)
    listed = client.json("GET", ("agent", "checks"), "read the agent's checks") if wanted else {}
    found = {}
    for check_id, check in (listed.items() if isinstance(listed, dict) else ()):
        if check_id in wanted and isinstance(check, dict):
            found[check_id] = CheckHealth(check_id=str(check_id), name=str(check.get("Name") or ""),
                                          status=str(check.get("Status") or ""),
                                          output=str(check.get("Output") or "")[:MAX_CHECK_OUTPUT],
                                          service_id=str(check.get("ServiceID") or ""))
    return found


def _instances(listed: Any, node: str) -> tuple[InstanceHealth, ...]:
    """/v1/health/service/<name>'s entries of `node`; whatever is not an entry is skipped."""
    found = []
    for entry in listed if isinstance(listed, list) else ():
        where = entry.get("Node") if isinstance(entry, dict) else None
        service = entry.get("Service") if isinstance(entry, dict) else None
        if not isinstance(where, dict) or where.get("Node") != node or not isinstance(service, dict):
            continue
        checks = entry.get("Checks")
        found.append(InstanceHealth(
            service_id=str(service.get("ID") or ""), name=str(service.get("Service") or ""),
            checks=tuple(CheckHealth(check_id=str(check.get("CheckID") or ""), name=str(check.get("Name") or ""),
                                     status=str(check.get("Status") or ""),
                                     output=str(check.get("Output") or "")[:MAX_CHECK_OUTPUT],
                                     service_id=str(check.get("ServiceID") or ""))
                         for check in (checks if isinstance(checks, list) else ()) if isinstance(check, dict))))
    return tuple(found)
