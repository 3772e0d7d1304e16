"""The interfaces the layers talk through. The loop, the heartbeat scheduler
and the mirror workers know only these; the Docker and Consul clients (and
the tests' fakes) implement them, and app/daemon.py wires them together."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

from consul_reg.core.calls import Later
from consul_reg.core.records import CheckRead, ContainerStatus, Holdings, ReadScope, RegisteredService, Service
from consul_reg.core.snapshot import Snapshot


class RegistryWrites(Protocol):
    """What applying a plan needs of a registry."""

    def register(self, service: Service) -> None: ...

    def deregister(self, service: RegisteredService) -> None: ...


class Registry(Protocol):
    """Where services are written. `services()` returns what it holds now."""

    description: str  # for log lines, e.g. "consul 127.0.0.1:8500"

    def services(self) -> dict[str, RegisteredService]: ...

    def register(self, service: Service) -> None: ...

    def deregister(self, service: RegisteredService) -> None: ...

    def close(self) -> None: ...


class AgentAPI(Protocol):
    """The primary as the loop sees it: the Consul agent behind its ownership
    guard (consul/guard.py), or the in-memory stand-in when no agent is named."""

    description: str

    def services(self) -> dict[str, RegisteredService]: ...

    def check_owners(self) -> dict[str, str]: ...  # check ID -> its service's ID

    # Sent now, read later; wait=False: RegistryError rather than wait for a connection.
    def services_in_later(self, scope: ReadScope, wait: bool = True) -> Later[dict[str, RegisteredService]]: ...

    def register(self, service: Service) -> None: ...

    def deregister(self, service: RegisteredService) -> None: ...

    def checked_against(self, held: Holdings | None) -> RegistryWrites: ...  # checked against `held`, read once

    def ours_now(self, service_ids: Collection[str], container_id: str) -> set[str]: ...

    def enable_maintenance(self, service_id: str, reason: str) -> None: ...

    def disable_maintenance(self, service_id: str) -> None: ...

    def maintenance_reasons(self, service_ids: Collection[str]) -> dict[str, str]: ...


class DockerReads(Protocol):
    """Docker as the loop sees it. An env file is asked for here and answered
    later, by an EnvFileRead message in the loop's inbox."""

    def list_containers(self) -> list[dict[str, Any]]: ...

    def inspect(self, container_id: str) -> dict[str, Any] | None: ...

    # Sent now (from Docker's event thread), answered by `result()`; DockerUnavailable when it cannot be sent at once.
    def inspect_later(self, container_id: str) -> Later[dict[str, Any] | None]: ...

    def request_env_file(self, container_id: str, path: str) -> None: ...


class ProbeSink(Protocol):
    """The heartbeat scheduler as the loop sees it: which daemon-owned checks run."""

    def set_container(self, container_id: str, services: Iterable[Service], status: ContainerStatus) -> None: ...

    def replace_all(self, services_by_container: dict[str, list[Service]],
                    statuses: dict[str, ContainerStatus]) -> None: ...

    def report_now(self, service_ids: set[str]) -> None: ...

    def report_container_now(self, container_id: str, status: ContainerStatus) -> None: ...


class SnapshotSubscriber(Protocol):
    """A mirror worker: offered each snapshot the loop publishes (never queued)."""

    def offer(self, snapshot: Snapshot, relist: bool = False) -> None: ...


class CheckStatuses(Protocol):
    """The agent as the restart watcher reads it: its checks' results and which services
    are in maintenance (one read), and its records of services, read just before a restart."""

    def check_statuses(self, check_ids: Collection[str], service_ids: Collection[str] = ()) -> CheckRead: ...

    def services_matching(self, service_ids: Collection[str]) -> dict[str, RegisteredService]: ...


class ContainerRestarts(Protocol):
    """Docker as the restart watcher asks it: `docker restart` with `stop_timeout` (the
    container's own), done within `timeout_seconds`; raises DockerUnavailable otherwise."""

    def restart(self, container_id: str, stop_timeout: float, timeout_seconds: float) -> None: ...


class RestartMetrics(Protocol):
    def check_restart(self, outcome: str) -> None: ...  # "restarted" or "failed"


class LoopMetrics(Protocol):
    def applied(self, registry: str, registered: int, deregistered: int, failed: int) -> None: ...

    def reconcile(self, kind: str, seconds: float) -> None: ...

    def event_lag(self, seconds: float) -> None: ...

    def services_managed(self, count: int) -> None: ...


class NoMetrics:
    """Counts nothing (no status endpoint: nothing reads them)."""

    def applied(self, registry: str, registered: int, deregistered: int, failed: int) -> None:
        pass

    def reconcile(self, kind: str, seconds: float) -> None:
        pass

    def event_lag(self, seconds: float) -> None:
        pass

    def services_managed(self, count: int) -> None:
        pass


class MirrorRegistry(Registry, Protocol):
    """A secondary registry: keys its records its own way and says what it stores."""

    # True for a store that can be replaced under us (an agent's KV that restarts empty):
    # its worker watches identity() and relists when it changes.
    replaceable: bool

    def listen(self, on_change: Callable[[], None]) -> None: ...  # call on_change when its state was lost

    def identity(self) -> str: ...  # "" for a store that is never replaced

    def key_of(self, service: Service) -> str: ...

    def accepts(self, service: Service) -> str: ...  # "" or why this mirror cannot hold it

    def digest_of(self, service: Service) -> str: ...

    def maintain(self) -> bool: ...  # True: its state was lost (new lease, new session): relist

    def seconds_until_maintenance(self) -> float: ...

    def remove_all(self) -> None: ...  # -deregister-on-exit: every record of this daemon, now
