"""What the catalog says of services, for `consul-reg wait`: one service's
instances on one node, their ownership marker and their checks (the node's
too), read with Consul's blocking queries through the one client
(`consul/agent.py`); the agent's services some consul-reg marked; the agent's
own view of some checks.

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
from consul_reg.core.records import MARKER_CONTAINER_KEY, MARKER_KEYS, RegisteredService

# A node name that may be quoted in a filter expression as it is; any other is filtered here only.
_NODE_FILTER_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")
MAX_WAIT_SECONDS = 300  # Consul caps a blocking query's wait at 10 minutes
MAX_CHECK_OUTPUT = 4096  # characters of a check's output kept (the agent keeps 4 KiB by default)
MAX_MARKER_VALUE = 256  # characters of a marker's value at most (a host name, an --instance, a container ID)


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
    marker: tuple[tuple[str, str], ...] = ()  # the ownership marker's keys of its Meta (none: not consul-reg's)

    @property
    def record(self) -> RegisteredService:
        """As a registry lists it: its marker tells which daemon and container it is of."""
        return RegisteredService(self.service_id, self.name, meta=dict(self.marker))


def service_health(client: ConsulClient, name: str, node: str, index: int = 0, wait: float = 0.0,
                   timeout: float | None = None) -> tuple[int, tuple[InstanceHealth, ...]]:
    """(index, instances) of service `name` on `node`. With an `index` above 0, a
    blocking query that answers when that service's instances or checks change, or
    after `wait` seconds (1 to MAX_WAIT_SECONDS); the index comes back as the agent
    sent it (0 when it sent none): resetting one that went backwards is the caller's.
    `timeout`: the longest the exchange may take beyond the query's own wait (else
    the client's)."""
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
                         timeout=(client.timeout if timeout is None else timeout) + seconds * 17 / 16)
    try:
        listed = answer.json()
    except ValueError:
        raise RegistryError(f"{client.description}: could not {what}: the answer is not JSON") from None
    header = answer.headers.get("x-consul-index", "")
    new_index = int(header) if header.isascii() and header.isdigit() and len(header) < 20 else 0
    return new_index, _instances(listed, node)


def marked_services(client: ConsulClient, container_id: str = "", timeout: float | None = None
                    ) -> tuple[RegisteredService, ...]:
    """The agent's services that some consul-reg (any host, any --instance) marked; only
    those marked as `container_id`'s when it is given (a full container ID, asked with a
    filter). Each with its ID, name and marker: who holds it is the caller's to judge."""
    params = {}
    if container_id:
        if not _CONTAINER_ID.fullmatch(container_id):
            raise RegistryError(f"refusing to look up container ID {container_id[:80]!r}: not a container ID")
        params = {"filter": f'Meta.{MARKER_CONTAINER_KEY} == "{container_id}"'}
    listed = client.json("GET", ("agent", "services"), "list the agent's services", params=params,
                         timeout=timeout)
    found = []
    for service_id, entry in (listed.items() if isinstance(listed, dict) else ()):
        if not isinstance(entry, dict) or not entry.get("Service"):
            continue
        record = RegisteredService(str(service_id), str(entry["Service"]), meta=_marker(entry.get("Meta")))
        if record.from_consul_reg and (not container_id or record.container_id == container_id):
            found.append(record)
    return tuple(found)


def _marker(meta: Any) -> dict[str, str]:
    """The ownership marker's keys of a service's Meta; a value too long to be one is left
    out (never cut: a cut value could match another daemon's)."""
    if not isinstance(meta, dict):
        return {}
    return {key: value for key, value in meta.items()
            if key in MARKER_KEYS and isinstance(value, str) and len(value) <= MAX_MARKER_VALUE}


def agent_checks(client: ConsulClient, check_ids: Collection[str], timeout: float | None = None
                 ) -> dict[str, CheckHealth]:
    """The agent's own view of these checks (ID -> check), their outputs as last written;
    one request, whatever is not a check skipped."""
    wanted = set(check_ids)
    listed = client.json("GET", ("agent", "checks"), "read the agent's checks", timeout=timeout) if wanted else {}
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
            marker=tuple(sorted(_marker(service.get("Meta")).items())),
            checks=tuple(CheckHealth(check_id=str(check.get("CheckID") or ""), name=str(check.get("Name") or ""),
                                     status=str(check.get("Status") or ""),
                                     output=str(check.get("Output") or "")[:MAX_CHECK_OUTPUT],
                                     service_id=str(check.get("ServiceID") or ""))
                         for check in (checks if isinstance(checks, list) else ()) if isinstance(check, dict))))
    return tuple(found)
