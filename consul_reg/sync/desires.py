"""One inspected container -> what it asks for (a ContainerDesire).

Gathers what the pure mapping needs besides the inspect data (the network
peer's inspect, the env file's values the loop holds), runs the mapping, and
logs each container's warnings and address choices once, until they change.

The mapping of a container is kept with a digest of everything it reads:
the inspect data but its State (a container's health and run state are not
the mapping's: ContainerStatus is taken from every inspect), the network
peer's likewise, the env file's values, the settings, and what of State a
-tags template reads. A health_status event re-reads the container and maps
it again only when one of those changed: a container with the heaviest
labels (~250 ms to map) whose health flaps costs its inspect and a digest
(~2 ms), not a mapping, at each event.

Off a start's path (issue 24): once the sync loop calls `hold_reports`, the
log lines of a mapping wait until its writes are made (`report_held`), and
the digest of a container mapped for the first time (there is nothing to
compare it with yet) until the batch is written and published (`settle`).
At most UNSETTLED_MAX containers wait at once: a full pass of 1,000 never
holds 1,000 inspects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from loguru import logger

from consul_reg.core.records import AgentInfo, ContainerDesire, ContainerStatus, Service, keeps_records, section
from consul_reg.core.text import printable
from consul_reg.mapping import env_file as envfile
from consul_reg.mapping.services import ContainerRecords, MappingSettings, map_container
from consul_reg.mapping.settings import ContainerRules
from consul_reg.sync.env_files import EnvFileState

UNSETTLED_MAX = 32  # first mappings whose digest waits for `settle` (each holds its inspect data)


@dataclass(frozen=True)
class _Unsettled:
    """A first mapping whose digest is not made yet: what it read."""

    container: dict[str, Any]
    peer: dict[str, Any] | None
    extra: tuple[tuple[str, list[tuple[str, str]]], ...]
    settings: MappingSettings
    records: ContainerRecords


@dataclass(frozen=True)
class _Mapped:
    """One container's last mapping and the digest of what it read."""

    key: bytes
    settings: MappingSettings  # compared by identity: a new settings object maps again
    records: ContainerRecords


class DesireUnavailable(Exception):
    """This container's desire cannot be built right now; its last one stays."""


class Inspector(Protocol):
    def inspect(self, container_id: str) -> dict[str, Any] | None: ...


class SwarmPorts(Protocol):
    def augment(self, container: dict[str, Any]) -> dict[str, Any]: ...  # a task: its service's ingress ports


class NoSwarm:
    def augment(self, container: dict[str, Any]) -> dict[str, Any]:
        return container


class DesireBuilder:
    """`settings_for` gives the mapping's settings for an agent (its version, its
    script checks): they change only when the agent does (`agent_changed`)."""

    def __init__(self, rules: ContainerRules, docker: Inspector, settings: MappingSettings,
                 settings_for: Callable[[AgentInfo], MappingSettings] | None = None,
                 swarm: SwarmPorts = NoSwarm()) -> None:
        self.rules = rules
        self.docker = docker
        self.settings = settings
        self._settings_for = settings_for
        self._reported: dict[str, tuple[tuple[str, str], ...]] = {}
        # The services each container mapped to last: a re-read that maps to the same
        # ones hands those back, digest computed (model.Service.digest serialises all).
        self._last: dict[str, dict[str, Service]] = {}
        self._mapped: dict[str, _Mapped] = {}  # container ID -> its last mapping (see the module's docstring)
        self.mappings = 0  # map_container calls made (a count for tests and measurements)
        self.swarm = swarm
        self._holding = False  # reports and first digests wait for `settle` (`hold_reports`)
        self._unreported: list[tuple[str, str, str]] = []  # (container name, level, text)
        self._unsettled: dict[str, _Unsettled] = {}

    def agent_changed(self, info: AgentInfo) -> bool:
        """The agent answers again, maybe another one: True when the settings changed
        (every container is then mapped again)."""
        if self._settings_for is None:
            return False
        settings = self._settings_for(info)
        if settings == self.settings:
            return False
        self.settings = settings
        return True

    def without_agent_scripts(self) -> bool:
        """The agent refused a check that runs a command: True when that changes the
        settings (exec checks are then run by this daemon, script checks dropped)."""
        checks = self.settings.checks
        if not checks.agent_runs_scripts:
            return False
        self.settings = replace(self.settings, checks=replace(checks, agent_runs_scripts=False))
        return True

    def build(self, container: dict[str, Any], env: EnvFileState | None, listing_key: str = "") -> ContainerDesire:
        """The container's desire. `env` is its env file's state when it has one
        (read: its values apply). Raises DesireUnavailable when part of what it
        needs could not be read (its last desire must stay), DockerUnavailable
        when Docker is down."""
        container_id = str(container.get("Id") or "")
        name = str(container.get("Name") or "").lstrip("/")
        created = str(container.get("Created") or "")
        state = section(container, "State")
        status = ContainerStatus.from_inspect(container)
        chosen = envfile.env_file_path(container, self.rules.env_file, self.rules.container_env_files)
        env_path = chosen.path
        if not state.get("Running"):
            return ContainerDesire(container_id, name, created, (),
                                   keep_existing=keeps_records(self.rules.deregister, state.get("ExitCode")),
                                   status=status, listing_key=listing_key)
        extra: tuple[tuple[str, list[tuple[str, str]]], ...] = ()
        if env_path:
            if env is None or env.path != env_path or not env.read:
                raise DesireUnavailable(f"its env file {printable(env_path)} is not read yet")
            extra = (("env file", list(env.good.pairs)),)
        container = self.swarm.augment(container)  # a Swarm task: its service's ingress ports
        records = self._map(container_id, name, container, self._network_peer(container), extra)
        warnings = [chosen.problem, *records.warnings] if chosen.problem else records.warnings
        self._report(name, container_id, warnings, records.services, records.skipped_reason)
        config = section(container, "Config")
        services = self._reuse(container_id, records.services)
        return ContainerDesire(container_id, name, created, services, status=status,
                               stop_signal=str(config.get("StopSignal") or ""), env_file=env_path,
                               listing_key=listing_key)

    def hold_reports(self) -> None:
        """From now on, each mapping's log lines and a first mapping's digest wait for
        `settle` (the sync loop's, so that they come after the writes they would delay)."""
        self._holding = True

    def report_held(self) -> None:
        """Log the lines held (the loop: once a sync's writes are made)."""
        unreported, self._unreported = self._unreported, []
        for name, level, text in unreported:
            logger.bind(container=name).log(level.upper(), "container {}: {}", name, text)

    def settle(self) -> None:
        """Log the lines held, and make the digests of the first mappings held (the loop:
        once a batch, or a window of a burst, is written and published)."""
        self.report_held()
        unsettled, self._unsettled = self._unsettled, {}
        for container_id, first in unsettled.items():
            self._keep(container_id, mapping_key(first.container, first.peer, first.extra, first.settings),
                       first.settings, first.records)

    def _map(self, container_id: str, name: str, container: dict[str, Any], peer: dict[str, Any] | None,
             extra: tuple[tuple[str, list[tuple[str, str]]], ...]) -> ContainerRecords:
        """map_container's answer, or the last one when nothing it reads has changed."""
        known = self._mapped.get(container_id)
        first = known is None and self._holding and len(self._unsettled) < UNSETTLED_MAX
        key = None if first else mapping_key(container, peer, extra, self.settings)
        if key is not None and known is not None and known.key == key and known.settings is self.settings:
            return known.records
        self.mappings += 1
        try:
            records = map_container(container, self.settings, network_peer=peer, extra_sources=extra)
        except Exception as error:  # mapping is pure and never raises; if it ever does, one container pays
            logger.opt(exception=True).error("container {}: could not map it ({}); its last known services stay",
                                             name, type(error).__name__)
            raise DesireUnavailable(f"mapping failed: {type(error).__name__}") from None
        if first:
            self._unsettled[container_id] = _Unsettled(container, peer, extra, self.settings, records)
        else:
            self._unsettled.pop(container_id, None)
            self._keep(container_id, key, self.settings, records)
        return records

    def _keep(self, container_id: str, key: bytes | None, settings: MappingSettings,
              records: ContainerRecords) -> None:
        if key is None:
            self._mapped.pop(container_id, None)
        else:
            self._mapped[container_id] = _Mapped(key, settings, records)

    def forget(self, container_id: str) -> None:
        self._reported.pop(container_id, None)
        self._last.pop(container_id, None)
        self._mapped.pop(container_id, None)
        self._unsettled.pop(container_id, None)

    def forget_all_but(self, container_ids: set[str]) -> None:
        for known in (self._reported, self._last, self._mapped, self._unsettled):
            for gone in set(known) - container_ids:
                del known[gone]

    def _reuse(self, container_id: str, services: list[Service]) -> tuple[Service, ...]:
        """`services`, each one equal in every field to the one this container mapped to
        last replaced by that one: comparing costs less than a digest."""
        last = self._last.get(container_id, {})
        kept = tuple(last[s.id] if _same(last.get(s.id), s) else s for s in services)
        self._last[container_id] = {s.id: s for s in kept}
        return kept

    def reset_reports(self) -> None:
        self._reported.clear()

    def env_file_path(self, container: dict[str, Any]) -> str:
        """SERVICE_ENV_FILE (label, else env) overrides -envFile, unless refused."""
        return envfile.env_file_path(container, self.rules.env_file, self.rules.container_env_files).path

    def _network_peer(self, container: dict[str, Any]) -> dict[str, Any] | None:
        host_config = section(container, "HostConfig")
        mode = str(host_config.get("NetworkMode") or "")
        if not mode.startswith("container:"):
            return None
        # DockerUnavailable propagates: Docker is down, the last desire stays. A
        # peer that is gone is the mapping's business (it warns, takes the next rule).
        return self.docker.inspect(mode.split(":", 1)[1])

    def _report(self, name: str, container_id: str, warnings: list[str], services, skipped: str) -> None:
        lines = tuple(("warning", w) for w in warnings)
        # Said after the writes (`hold_reports`), so never as if it were registered: the
        # plan or the guard may refuse it.
        lines += tuple(("info", f"{s.id} takes the address {s.address}: {s.address_reason}") for s in services)
        if skipped:
            lines += (("info", f"not registered: {skipped}"),)
        if self._reported.get(container_id) == lines:
            return
        self._reported[container_id] = lines
        if self._holding:
            self._unreported.extend((name, level, text) for level, text in lines)
            return
        for level, text in lines:
            logger.bind(container=name).log(level.upper(), "container {}: {}", name, text)


def mapping_key(container: dict[str, Any], peer: dict[str, Any] | None,
                extra: tuple[tuple[str, list[tuple[str, str]]], ...], settings: MappingSettings) -> bytes | None:
    """A digest of every input of the mapping but the settings (compared by identity):
    the inspect data and the network peer's without their State (mapping.py and what it
    calls never read it), the env file's values, and the parts of State a -tags template
    reads. None when it cannot be computed (then the container is mapped every time)."""
    template = settings.tags_template
    state_read: list[tuple[str, Any]] = []
    if template is not None:
        state = container.get("State")
        for field in sorted(template.fields):
            names = [n for n in field.split(".") if n]
            if not names:  # `.`: the whole container
                state_read.append((field, state))
            elif names[0] == "State":
                state_read.append((field, _at(state, names[1:])))
    parts = (_without_state(container), _without_state(peer) if isinstance(peer, dict) else None, extra, state_read)
    # repr, not sorted JSON (a third of the CPU of a start's mapping key): the inspect data
    # is decoded JSON, in the order dockerd writes it; another order only costs one more
    # mapping, never hides a change.
    try:
        text = repr(parts)
    except RecursionError:
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _without_state(inspected: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inspected.items() if k != "State"}


def _at(value: Any, names: list[str]) -> Any:
    for name in names:
        if not isinstance(value, dict) or name not in value:
            return "<none>"
        value = value[name]
    return value


def _same(old: Service | None, new: Service) -> bool:
    """Equal, and with the same explanations (not compared by ==)."""
    return old is not None and old == new and old.address_reason == new.address_reason and \
        old.origins == new.origins
