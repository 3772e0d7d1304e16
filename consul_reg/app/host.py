"""This host, as the kernel sees it: the address services get when nothing
else chose one and the agent is not local (mapping rule 7)."""

from __future__ import annotations

import socket


def default_address(agent_is_local: bool, advertise_address: str) -> tuple[str, str]:
    """Rule 7: the address a service gets when nothing else chose one, and why."""
    if agent_is_local and advertise_address:
        return advertise_address, "the local Consul agent's advertise address"
    return primary_host_address(), "this host's primary address (the agent is not local; set -ip to choose)"


def primary_host_address() -> str:
    """The address of the interface the default route uses. A UDP connect()
    sends no packet; it only asks the kernel which source address it would use."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never contacted
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
