"""The daemon's configuration: flags from cli.py plus what the environment gives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from consul_reg.checks import CheckSettings, parse_version
from consul_reg.mapping import MappingSettings
from consul_reg.tags_template import Template


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
    status_addr: str | None = None
    env_file: str | None = None  # -envFile: SERVICE_* lines inside each container
    env_file_interval: float = 10.0
    no_script_checks: bool = False
    exec_checks: str = "agent"  # or "daemon": the daemon runs CHECK_DOCKER commands itself
    token_file: str | None = None
    token: str | None = field(default=None, repr=False)

    def mapping_settings(self, default_address: str, default_address_reason: str, agent_version: str = "1.7",
                         agent_runs_scripts: bool = True) -> MappingSettings:
        return MappingSettings(
            hostname=self.hostname,
            default_address=default_address,
            default_address_reason=default_address_reason,
            host_ip=self.host_ip,
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
            ),
        )


class TokenError(ValueError):
    pass


def read_token(environ: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """(token, token file): CONSUL_HTTP_TOKEN wins over CONSUL_HTTP_TOKEN_FILE."""
    environ = dict(os.environ) if environ is None else environ
    token = environ.get("CONSUL_HTTP_TOKEN", "").strip()
    token_file = environ.get("CONSUL_HTTP_TOKEN_FILE", "").strip() or None
    if token:
        return token, token_file
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                return handle.read().strip() or None, token_file
        except OSError as error:
            raise TokenError(f"CONSUL_HTTP_TOKEN_FILE {token_file!r} cannot be read: {error.strerror}") from None
    return None, None
