"""The registry interface family: the errors every registry raises, the
primary's interface, and the mirrors' interface."""

from __future__ import annotations

from typing import Callable, Protocol

from consul_reg.core.records import RegisteredService, Service


class RegistryError(Exception):
    """One operation failed; the message is safe to log (never holds a token)."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached at all: retry everything later."""


class RegistryPermissionDenied(RegistryError):
    """The registry refused for lack of permission (a 403 from Consul's ACLs)."""


class RegistryScriptsRefused(RegistryError):
    """The registry refused a check that runs a command (Consul without enable_script_checks)."""


class RegistryRefused(RegistryError):
    """The registry refused this one record (an ACL not ours on it or on its parent, a
    parent that cannot have children): the registry is up and the other records are
    written. `apply` does not log it; its caller warns once per record and cause."""

    def __init__(self, key: str, cause: str) -> None:
        super().__init__(f"{key}: {cause}")
        self.key, self.cause = key, cause


class RegistryNotFound(RegistryError, LookupError):
    """The registry does not know the thing named (a check, a service, a key)."""


class RegistryNotOurs(RegistryError):
    """The record exists and belongs to someone else: never written over."""


class Registry(Protocol):
    """Where services are written. `services()` returns what it holds now."""

    description: str  # for log lines, e.g. "consul 127.0.0.1:8500"

    def services(self) -> dict[str, RegisteredService]: ...

    def register(self, service: Service) -> None: ...

    def deregister(self, service: RegisteredService) -> None: ...

    def close(self) -> None: ...


class MirrorRegistry(Registry, Protocol):
    """A secondary registry: keys its records its own way and says what it stores."""

    on_change: Callable[[], None]  # set by its worker: call it when its state was lost (a session)

    def key_of(self, service: Service) -> str: ...

    def accepts(self, service: Service) -> str: ...  # "" or why this mirror cannot hold it

    def digest_of(self, service: Service) -> str: ...

    def maintain(self) -> bool: ...  # True: its state was lost (new lease, new session): relist

    def seconds_until_maintenance(self) -> float: ...

    def remove_all(self) -> None: ...  # -deregister-on-exit: every record of this daemon, now
