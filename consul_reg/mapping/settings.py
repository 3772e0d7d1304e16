"""The records the pure mapping modules share: the daemon's settings for
mapping and checks, and one published port. Lowest in the import order
(mapping, addresses and checks all import it; it imports none of them)."""

from __future__ import annotations

from dataclasses import dataclass

from consul_reg.mapping.check_targets import CheckPolicy
from consul_reg.mapping.selection import LabelFilter
from consul_reg.mapping.tags_template import Template
from consul_reg.mapping.validate import Limits


@dataclass(frozen=True)
class CheckSettings:
    agent_version: tuple[int, int] = (1, 8)
    agent_runs_scripts: bool = True  # the agent has enable_script_checks
    refuse_script_checks: bool = False  # --no-script-checks
    exec_checks: str = "agent"  # --exec-checks agent|daemon
    policy: CheckPolicy = CheckPolicy()  # which endpoints and methods network checks may use
    # --allow-check-redirects: on an agent that follows redirects (before Consul 1.12), still
    # register HTTP checks that send a body or a method other than GET and HEAD.
    allow_check_redirects: bool = False


@dataclass(frozen=True)
class MappingSettings:
    """The daemon's flags and facts that shape every container's records."""

    hostname: str
    default_address: str = "127.0.0.1"
    default_address_reason: str = "the Consul agent's advertise address"
    host_ip: str | None = None  # -ip
    host_ip6: str | None = None  # -ip6: this host's IPv6 for ports published on IPv6
    instance: str = ""  # --instance, recorded in the ownership marker
    selection: tuple[LabelFilter, ...] = ()  # --filter: containers that match every one are registered
    internal: bool = False  # -internal
    explicit: bool = False  # -explicit
    use_ip_from_label: str | None = None  # -useIpFromLabel
    force_tags: tuple[str, ...] = ()  # -tags
    tags_template: Template | None = None  # -tags in Go-template form, rendered per container
    checks: CheckSettings = CheckSettings()
    health_reassert_seconds: float = 30.0  # how often docker-health checks are re-asserted
    limits: Limits = Limits()


@dataclass(frozen=True)
class PublishedPort:
    exposed: str  # "80"
    protocol: str  # "tcp" / "udp"
    host_port: str  # "" when not published
    host_ip: str  # "" when published on every address
    on_ipv4: bool = True  # published on an IPv4 host address (or every address)
    on_ipv6: bool = False  # published on an IPv6 host address (or every address)
    declared: bool = False  # from SERVICE_PORT rather than what Docker shows


@dataclass(frozen=True)
class ContainerRules:
    """The operator's rules for reading a container, besides the mapping's settings."""

    env_file: str = ""  # -envFile
    container_env_files: bool = True  # SERVICE_ENV_FILE honoured (off: --no-container-env-file)
    deregister: str = "always"  # -deregister: whether a dead container's records stay
