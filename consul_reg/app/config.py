"""The daemon's configuration: flags from cli.py plus what the environment gives."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field

from consul_reg.core.records import Owner
from consul_reg.mapping.check_fields import parse_version
from consul_reg.mapping.check_targets import AllowRule, CheckPolicy
from consul_reg.mapping.selection import LabelFilter, docker_filters
from consul_reg.mapping.settings import CheckSettings, ContainerRules, MappingSettings
from consul_reg.mapping.tags_template import Template
from consul_reg.mapping.validate import DEFAULT_CHECK_METHODS, Limits

DEFAULT_AGENT_HTTP_PORT = 8500


@dataclass(frozen=True)
class Config:
    hostname: str
    registry_uris: tuple[str, ...]
    host_ip: str | None = None
    internal: bool = False
    explicit: bool = False
    use_ip_from_label: str | None = None
    force_tags: tuple[str, ...] = ()
    tags_template: str = ""  # -tags with {{ }}: rendered per container
    ttl: int = 0
    ttl_refresh: int = 0
    resync_seconds: float = 30.0
    deregister: str = "always"  # or "on-success"
    retry_attempts: int = -1
    retry_interval_ms: int = 2000
    cleanup: bool = False
    deregister_on_exit: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    drain_timeout: float = 30.0
    check_restart: bool = True  # --no-check-restart: False
    check_restart_backoff: float = 10.0  # least seconds between two check restarts of one container; doubles
    check_restart_backoff_max: float = 300.0
    status_addr: str | None = None
    env_file: str | None = None  # -envFile: SERVICE_* lines inside each container
    env_file_interval: float = 10.0
    no_script_checks: bool = False
    exec_checks: str = "agent"  # or "daemon": the daemon runs CHECK_DOCKER commands itself
    token_file: str | None = None
    token: str | None = field(default=None, repr=False)
    limits: Limits = Limits()  # --max-services-per-container, --max-tags-per-service, ...
    allow_check_targets: tuple[AllowRule, ...] = ()  # --allow-check-target
    allow_check_methods: tuple[str, ...] = ()  # --allow-check-method, beyond GET HEAD OPTIONS POST
    allow_check_redirects: bool = False  # --allow-check-redirects: POST and bodies on an agent before 1.12
    no_container_env_file: bool = False  # refuse containers' own SERVICE_ENV_FILE
    host_ip6: str | None = None  # -ip6: this host's IPv6 for ports published on IPv6
    instance: str = ""  # --instance: this daemon's name beside others of the same host on one agent
    filters: tuple[LabelFilter, ...] = ()  # --filter label=KEY[=VALUE]: the containers this daemon registers

    @property
    def owner(self) -> Owner:
        """The identity in the ownership marker; pass it wherever the host name is the owner."""
        return Owner(self.hostname, self.instance)

    def docker_filters(self) -> dict[str, list[str]]:
        """--filter as Docker's listing and event stream take it."""
        return docker_filters(self.filters)

    def agent_http(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The agent's HTTP address(es) and port(s) as far as the flags tell:
        the primary URI's host and port, and Consul's default port 8500."""
        parts = urllib.parse.urlsplit(self.registry_uris[0]) if self.registry_uris else None
        addresses, ports = ["127.0.0.1"], [DEFAULT_AGENT_HTTP_PORT]
        if parts is not None and parts.scheme in ("consul", "consul-tls") and parts.hostname:
            addresses.append(parts.hostname)
            try:
                if parts.port:
                    ports.append(parts.port)
            except ValueError:
                pass
        return tuple(dict.fromkeys(addresses)), tuple(dict.fromkeys(ports))

    def container_rules(self) -> ContainerRules:
        return ContainerRules(env_file=self.env_file, container_env_files=not self.no_container_env_file,
                              deregister=self.deregister)

    def check_policy(self, agent_addresses: tuple[str, ...] = (), agent_ports: tuple[int, ...] = ()) -> CheckPolicy:
        """The check-target policy; the daemon may add the agent's addresses and
        ports it learnt from the agent itself (e.g. its HTTPS port)."""
        addresses, ports = self.agent_http()
        return CheckPolicy(
            allow=self.allow_check_targets,
            methods=tuple(dict.fromkeys(DEFAULT_CHECK_METHODS + self.allow_check_methods)),
            agent_addresses=tuple(dict.fromkeys(addresses + agent_addresses)),
            agent_ports=tuple(dict.fromkeys(ports + agent_ports)),
        )

    def mapping_settings(self, default_address: str, default_address_reason: str, agent_version: str = "1.7",
                         agent_runs_scripts: bool = True, policy: CheckPolicy | None = None) -> MappingSettings:
        return MappingSettings(
            hostname=self.hostname,
            default_address=default_address,
            default_address_reason=default_address_reason,
            host_ip=self.host_ip,
            host_ip6=self.host_ip6,
            instance=self.instance,
            selection=self.filters,
            internal=self.internal,
            explicit=self.explicit,
            use_ip_from_label=self.use_ip_from_label,
            force_tags=self.force_tags,
            tags_template=Template(self.tags_template) if self.tags_template else None,
            health_reassert_seconds=self.resync_seconds or 60.0,
            checks=CheckSettings(
                agent_version=parse_version(agent_version),
                agent_runs_scripts=agent_runs_scripts,
                refuse_script_checks=self.no_script_checks,
                exec_checks=self.exec_checks,
                policy=policy or self.check_policy(),
                allow_check_redirects=self.allow_check_redirects,
            ),
            limits=self.limits,
        )


class TokenError(ValueError):
    pass


def read_token(environ: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """(token, token file): CONSUL_HTTP_TOKEN wins over CONSUL_HTTP_TOKEN_FILE."""
    environ = dict(os.environ) if environ is None else environ
    token = environ.get("CONSUL_HTTP_TOKEN", "").strip()
    token_file = environ.get("CONSUL_HTTP_TOKEN_FILE", "").strip() or None
    if token:
        return _checked_token(token, "CONSUL_HTTP_TOKEN"), token_file
    if token_file:
        try:
            with open(token_file, encoding="utf-8", errors="replace") as handle:
                text = handle.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as error:
            raise TokenError(f"CONSUL_HTTP_TOKEN_FILE {token_file!r} cannot be read: {error.strerror}") from None
        if len(text) > MAX_TOKEN_FILE_BYTES:
            raise TokenError(f"CONSUL_HTTP_TOKEN_FILE {token_file!r} is over {MAX_TOKEN_FILE_BYTES} bytes: "
                             "not a token file")
        return _checked_token(text.strip(), f"CONSUL_HTTP_TOKEN_FILE {token_file!r}") or None, token_file
    return None, None


MAX_TOKEN_FILE_BYTES = 4096


def _checked_token(token: str, where: str) -> str:
    """A token goes into an HTTP header: printable ASCII without spaces only.
    The message never shows the token, nor any part of it."""
    for char in token:
        if not "\x21" <= char <= "\x7e":
            kind = "whitespace" if char.isspace() else "a control character" if not char.isprintable() \
                else "a non-ASCII character"
            raise TokenError(f"{where}: the token holds {kind} (a file of several "
                             "lines?); a token is printable ASCII without spaces. Refused; the token is not shown")
    return token
