"""One inspected container -> what it asks for (a ContainerDesire).

Gathers what the pure mapping needs from Docker (the network peer's inspect,
the env file's text), runs the mapping, and logs each container's warnings
and address choices once, until they change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from consul_reg import envfile
from consul_reg.config import Config
from consul_reg.docker_source import DockerSource, DockerUnavailable
from consul_reg.mapping import MappingSettings, map_container
from consul_reg.model import ContainerStatus
from consul_reg.reconcile import ContainerDesire
from consul_reg.swarm_endpoints import SwarmEndpoints


@dataclass(frozen=True)
class _EnvFileState:
    text: str | None  # None: no file (yet)
    good: envfile.EnvFile  # the last content that parsed; kept when a later one does not


class DesireBuilder:
    def __init__(self, config: Config, docker: DockerSource, settings: MappingSettings) -> None:
        self.config = config
        self.docker = docker
        self.settings = settings
        self._reported: dict[str, tuple[tuple[str, str], ...]] = {}
        self._env_files: dict[str, _EnvFileState] = {}
        self.swarm = SwarmEndpoints(docker)

    def desire_for(self, container: dict[str, Any]) -> ContainerDesire:
        container_id = str(container.get("Id") or "")
        name = str(container.get("Name") or "").lstrip("/")
        created = str(container.get("Created") or "")
        state = container.get("State") if isinstance(container.get("State"), dict) else {}
        status = ContainerStatus.from_inspect(container)
        env_path = self.env_file_path(container)
        if not state.get("Running"):
            exit_code = state.get("ExitCode")
            keep = (self.config.deregister == "on-success" and isinstance(exit_code, int)
                    and 0 < exit_code < 128)
            self._env_files.pop(container_id, None)
            return ContainerDesire(container_id, name, created, (), keep_existing=keep, status=status)
        extra = (("env file", list(self._env_file(container_id, name, env_path).pairs)),) if env_path else ()
        container = self.swarm.augment(container)  # a Swarm task: its service's ingress ports
        try:
            records = map_container(container, self.settings, network_peer=self._network_peer(container),
                                    extra_sources=extra)
        except Exception:  # mapping is pure and never raises; if it ever does, one container pays
            logger.exception("container {}: could not map it; skipped", name)
            return ContainerDesire(container_id, name, created)
        self._report(name, container_id, records.warnings, records.services, records.skipped_reason)
        stop_signal = str((container.get("Config") or {}).get("StopSignal") or "")
        return ContainerDesire(container_id, name, created, tuple(records.services), status=status,
                               stop_signal=stop_signal, env_file=env_path)

    def forget(self, container_id: str) -> None:
        self._reported.pop(container_id, None)
        self._env_files.pop(container_id, None)

    def forget_all_but(self, container_ids: set[str]) -> None:
        for gone in set(self._reported) - container_ids:
            del self._reported[gone]
        for gone in set(self._env_files) - container_ids:
            del self._env_files[gone]

    def reset_reports(self) -> None:
        self._reported.clear()

    def env_file_path(self, container: dict[str, Any]) -> str:
        """SERVICE_ENV_FILE (label, else env) overrides -envFile."""
        config = container.get("Config") if isinstance(container.get("Config"), dict) else {}
        labels = config.get("Labels") if isinstance(config.get("Labels"), dict) else {}
        if isinstance(labels.get("SERVICE_ENV_FILE"), str) and labels["SERVICE_ENV_FILE"].strip():
            return labels["SERVICE_ENV_FILE"].strip()
        for entry in config.get("Env") or ():
            if isinstance(entry, str) and entry.startswith("SERVICE_ENV_FILE=") and entry.split("=", 1)[1].strip():
                return entry.split("=", 1)[1].strip()
        return self.config.env_file or ""

    def env_file_changed(self, container_id: str, path: str) -> bool:
        """Poll: has the file's text changed since it was last read?"""
        known = self._env_files.get(container_id)
        try:
            text = self.docker.read_file(container_id, path, envfile.MAX_BYTES)
        except (ValueError, DockerUnavailable):
            return False
        return known is None or known.text != text

    def _env_file(self, container_id: str, name: str, path: str) -> envfile.EnvFile:
        known = self._env_files.get(container_id, _EnvFileState(None, envfile.EnvFile((), ())))
        try:
            text = self.docker.read_file(container_id, path, envfile.MAX_BYTES)
        except DockerUnavailable:
            return known.good
        except ValueError as error:
            if known.text != f"unreadable: {error}":
                logger.bind(container=name).warning("container {}: env file {}: {}; keeping its last good values",
                                                    name, path, error)
                self._env_files[container_id] = _EnvFileState(f"unreadable: {error}", known.good)
            return known.good
        if text == known.text:
            return known.good
        if text is None:  # missing: "nothing yet", no warning
            self._env_files[container_id] = _EnvFileState(None, envfile.EnvFile((), ()))
            return self._env_files[container_id].good
        parsed = envfile.parse(text)
        for problem in parsed.problems:
            logger.bind(container=name).warning("container {}: env file {}: {}", name, path, problem)
        good = known.good if parsed.problems else parsed  # malformed: the last good values stay
        self._env_files[container_id] = _EnvFileState(text, good)
        logger.bind(container=name).info("container {}: env file {} read ({} keys)", name, path, len(good.pairs))
        return good

    def _network_peer(self, container: dict[str, Any]) -> dict[str, Any] | None:
        mode = str((container.get("HostConfig") or {}).get("NetworkMode") or "")
        if not mode.startswith("container:"):
            return None
        try:
            return self.docker.inspect(mode.split(":", 1)[1])
        except DockerUnavailable:
            return None

    def _report(self, name: str, container_id: str, warnings: list[str], services, skipped: str) -> None:
        lines = tuple(("warning", w) for w in warnings)
        lines += tuple(("info", f"{s.id} registers at {s.address}: {s.address_reason}") for s in services)
        if skipped:
            lines += (("info", f"not registered: {skipped}"),)
        if self._reported.get(container_id) == lines:
            return
        self._reported[container_id] = lines
        for level, text in lines:
            logger.bind(container=name).log(level.upper(), "container {}: {}", name, text)
