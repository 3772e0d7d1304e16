"""`consul-reg explain [the daemon's flags] [registry-uri] CONTAINER`: print,
without registering anything, what the daemon would register for one
container, where every field came from, and every warning."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from consul_reg.app.config import Config
from consul_reg.app.host import default_address
from consul_reg.app.uris import registries_from_uris
from consul_reg.core.errors import DockerUnavailable, RegistryError
from consul_reg.core.messages import EnvFileRead as ReaderAnswer
from consul_reg.core.records import MARKER_KEYS, AgentInfo, Service, section
from consul_reg.docker.client import DockerSource
from consul_reg.docker.swarm import SwarmEndpoints
from consul_reg.mapping import env_file as envfile
from consul_reg.mapping import labels
from consul_reg.mapping.check_fields import origin_key
from consul_reg.mapping.labels import KeyValue, printable
from consul_reg.mapping.services import ContainerRecords, map_container
from consul_reg.mapping.settings import MappingSettings
from consul_reg.sync import env_files

if TYPE_CHECKING:
    from consul_reg.consul.agent import ConsulRegistry
    from consul_reg.consul.memory import MemoryRegistry


def explain(config: Config, container_ref: str, out: TextIO = sys.stdout) -> int:
    primary = registries_from_uris(config).primary
    try:
        docker = DockerSource(filters=config.docker_filters())
        container = docker.inspect(container_ref)
    except DockerUnavailable as error:
        print(f"error: {error}", file=out)
        return 1
    if container is None:
        print(f"error: no container named or with ID {container_ref!r}", file=out)
        return 1
    warnings: list[str] = []
    try:
        settings, info = agent_settings(config, primary)
        print(f"agent: {primary.description}, Consul {info.version}, script checks "
              f"{'enabled' if info.runs_remote_scripts else 'disabled'}", file=out)
    except RegistryError as error:
        warnings.append(f"the agent could not be asked ({error}); assuming Consul 1.7 without script checks")
        settings = config.mapping_settings("(agent address)", "the agent's advertise address", "1.7", False)

    name = str(container.get("Name") or "").lstrip("/")
    config_section = section(container, "Config")
    print(f"container: {printable(name, 200)} ({printable(str(container.get('Id'))[:12])}), "
          f"image {printable(config_section.get('Image'), 200)}", file=out)
    if not (container.get("State") or {}).get("Running"):
        print("would register nothing: the container is not running", file=out)
        return 1

    env = read_env_file(config, docker, container)
    warnings.extend(env.warnings)
    if env.shown_path:
        print(f"env file: {env.shown_path} " + ("(not there yet)" if env.pairs is None else
                                                f"({len(env.pairs)} keys)"), file=out)
    records = map_running(docker, container, settings, env)
    keys = labels.collect(config_section.get("Env"), config_section.get("Labels"), *env.sources,
                          limits=config.limits)
    for service in records.services:
        _print_service(service, keys.for_port(service.exposed_port.split("/")[0]) if service.exposed_port
                       else dict(keys.general), config, out)
    for warning in warnings + records.warnings:
        print(f"warning: {printable(warning)}", file=out)
    if not records.services:
        print(f"would register nothing: {printable(records.skipped_reason or 'no service')}", file=out)
        return 1
    return 0


def agent_settings(config: Config, primary: ConsulRegistry | MemoryRegistry, info: AgentInfo | None = None
                   ) -> tuple[MappingSettings, AgentInfo]:
    """The mapping's settings as the daemon takes them from its agent (version, script
    checks, advertise address, listeners; `info`: the agent's answer when already read).
    Raises RegistryError."""
    info = primary.agent_info() if info is None else info
    address = default_address(primary.endpoint.is_local, info.advertise_address)
    policy = config.check_policy(
        agent_addresses=tuple(a for a in (info.advertise_address, *info.listen_addresses) if a),
        agent_ports=info.listen_ports)
    return config.mapping_settings(*address, info.version, info.runs_remote_scripts, policy=policy), info


@dataclass(frozen=True)
class EnvFileRead:
    """A container's env file as read now: its path as shown ("" without one), its
    pairs (None: not there yet) and what was wrong with it."""

    shown_path: str = ""
    pairs: tuple[tuple[str, str], ...] | None = None
    warnings: tuple[str, ...] = ()

    @property
    def sources(self) -> tuple[tuple[str, list[tuple[str, str]]], ...]:
        """The mapping's extra sources: the env file's keys, when there are some."""
        return (("env file", list(self.pairs)),) if self.pairs is not None else ()


def read_env_file(config: Config, docker: DockerSource, container: dict[str, Any]) -> EnvFileRead:
    """The container's env file as the daemon would take it on its first read (the loop's
    own fold, sync/env_files.py): a malformed file gives none of its keys, as the daemon
    keeps its last good values and has none yet."""
    chosen = envfile.env_file_path(container, config.env_file, not config.no_container_env_file)
    warnings = [chosen.problem] if chosen.problem else []
    if not chosen.path:
        return EnvFileRead(warnings=tuple(warnings))
    shown_path = printable(chosen.path, 200)
    container_id = str(container["Id"])
    try:
        answer = ReaderAnswer(container_id, chosen.path, docker.read_file(container_id, chosen.path, envfile.MAX_BYTES))
    except ValueError as error:
        answer = ReaderAnswer(container_id, chosen.path, None, error=str(error))
    state, _, problems = env_files.fold(env_files.EnvFileState(chosen.path), answer)
    warnings.extend(problems)
    if state.problem and answer.text is not None:
        warnings.append(f"env file {shown_path} is malformed: the daemon uses none of its keys until it parses "
                        "(it keeps a file's last good values, and has none on a first read)")
    if answer.text is None:
        return EnvFileRead(shown_path, None, tuple(warnings))
    return EnvFileRead(shown_path, state.good.pairs, tuple(warnings))


def map_running(docker: DockerSource, container: dict[str, Any], settings: MappingSettings,
                env: EnvFileRead) -> ContainerRecords:
    """What the daemon would register for a running container, as its loop maps it:
    with its network peer's ports and a Swarm task's ingress ports."""
    peer = None
    mode = str((container.get("HostConfig") or {}).get("NetworkMode") or "")
    if mode.startswith("container:"):
        peer = docker.inspect(mode.split(":", 1)[1])
    container = SwarmEndpoints(docker).augment(container)  # a Swarm task: its service's ingress ports
    return map_container(container, settings, network_peer=peer, extra_sources=env.sources)


def _source(keys: dict[str, KeyValue], key: str, default: str) -> str:
    entry = keys.get(key)
    return f"{entry.source} {entry.original_key}" if entry and entry.value.strip() else default


def _check_source(service: Service, check_id: str, keys: dict[str, KeyValue]) -> str:
    key = origin_key(service.id, check_id)
    if not key:
        return "daemon-owned"
    default = {"check_ttl": "SERVICE_CHECK_TTL", "checks": "SERVICE_CHECKS"}.get(key, "a SERVICE_CHECK_* key")
    return _source(keys, key, default)


def _print_service(service: Service, keys: dict[str, KeyValue], config: Config, out: TextIO) -> None:
    """Every value shown here may come from the container: all of it goes through printable()."""
    origins = dict(service.origins)
    print(f"\nservice {printable(service.id)}", file=out)
    port_source = _source(keys, "port", "") or ("-internal: the exposed port" if config.internal
                                                else "the published host port")
    rows: list[tuple[str, Any, str]] = [
        ("ID", service.id, _source(keys, "id", "default <hostname>:<container>:<port>")),
        ("Name", service.name, _source(keys, "name", "default: the image's base name")),
        ("Address", service.address, service.address_reason),
        ("Port", service.port if service.port is not None else "(none: a port-less worker)", port_source),
        ("Tags", ", ".join(service.tags) or "(none)",
         " + ".join(filter(None, [_source(keys, "tags", ""), "flag -tags" if config.force_tags else ""]))
         or "none set"),
    ]
    for tagged in service.tagged_addresses:
        source = origins.get(f"TaggedAddresses {tagged.name}") or next(
            (v for k, v in origins.items() if k.startswith("TaggedAddresses ") and tagged.name in k), "")
        rows.append((f"Tagged {tagged.name}", f"{tagged.address}:{tagged.port}", source))
    if service.weights is not None:
        rows.append(("Weights", f"passing {service.weights[0]}, warning {service.weights[1]}",
                     " + ".join(v for k, v in origins.items() if k.startswith("Weights")) or "default"))
    if service.enable_tag_override:
        rows.append(("TagOverride", "enabled: tags changed in the catalog are kept",
                     origins.get("EnableTagOverride", "")))
    if service.connect is not None:
        if service.connect.native:
            rows.append(("Connect", "native", origins.get("Connect", "")))
        else:
            upstreams = ", ".join(f"{u.destination} at 127.0.0.1:{u.local_port}" for u in service.connect.upstreams)
            rows.append(("Connect", f"sidecar proxy {service.id}-sidecar-proxy (run it with: consul connect proxy "
                                    f"-sidecar-for {service.id})" + (f"; upstreams {upstreams}" if upstreams else ""),
                         " + ".join(v for k, v in origins.items() if k.startswith("Connect"))))
    for key, value in service.meta:
        if key not in MARKER_KEYS:
            rows.append((f"Meta {key}", value, _source(keys, key, "fixed from another key")))
    for check in service.checks:
        definition = check.definition_dict
        where = "consul-reg" if check.daemon_probe else "the agent"
        rows.append((f"Check {check.check_id}", ", ".join(f"{k}={v}" for k, v in definition.items()),
                     f"run by {where}; " + _check_source(service, check.check_id, keys)))
        if check.reading:
            rows.append(("  target", check.reading, "a relative :PORT is the container's port"))
    rows.append(_restart_row(service, config, keys))
    for field, value, source in rows:
        print(f"  {printable(field):<12} {printable(value)}    <- {printable(source)}", file=out)


def _restart_row(service: Service, config: Config, keys: dict[str, KeyValue]) -> tuple[str, str, str]:
    """SERVICE_CHECK_RESTART_*: the policy as the restart watcher applies it."""
    policy = service.restart
    if policy is None:
        return ("Restart", "never (no SERVICE_CHECK_RESTART_LIMIT)", "default")
    counted = ", ".join(f"{check_id} every {seconds:g}s" for check_id, seconds in policy.samples)
    text = (f"after {policy.limit} failed results in a row of one check ({counted}); warnings "
            f"{'ignored' if policy.ignore_warnings else 'count as failures'}; grace {policy.grace:g}s after "
            f"each start ({policy.grace_source}); backoff from {config.check_restart_backoff:g}s doubling to "
            f"{config.check_restart_backoff_max:g}s")
    if not config.check_restart:
        text = "off on this host (--no-check-restart); else: " + text
    return ("Restart", text, _source(keys, "check_restart_limit", "SERVICE_CHECK_RESTART_LIMIT"))
