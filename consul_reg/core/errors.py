"""Errors that cross layers: what a registry raises (each message safe to log,
never holding a token) and what the Docker side raises. The loop and the
mirrors catch these without knowing the clients behind them."""

from __future__ import annotations


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


class DockerUnavailable(Exception):
    """Docker could not be reached; the message says why."""


class DockerUnreachable(DockerUnavailable):
    """dockerd did not answer at all (not an error about one container): the calls
    that would follow in the same batch are not made."""
