"""The small interface every registry (Consul, and later its mirrors) implements."""

from __future__ import annotations

from typing import Protocol

from consul_reg.model import RegisteredService, Service


class RegistryError(Exception):
    """One operation failed; the message is safe to log (never holds a token)."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached at all: retry everything later."""


class RegistryPermissionDenied(RegistryError):
    """The registry refused for lack of permission (a 403 from Consul's ACLs)."""


class RegistryScriptsRefused(RegistryError):
    """The registry refused a check that runs a command (Consul without enable_script_checks)."""


class RegistryCheckMissing(RegistryError, LookupError):
    """A check update was refused because the registry does not know the check."""


class Registry(Protocol):
    """Where services are written. `services()` returns what it holds now."""

    description: str  # for log lines, e.g. "consul 127.0.0.1:8500"

    def services(self) -> dict[str, RegisteredService]: ...

    def register(self, service: Service) -> None: ...

    def deregister(self, service: RegisteredService) -> None: ...

    def close(self) -> None: ...
