"""Docker as the sync loop reads it (core.protocols.DockerReads): the listing
and inspects from the one client, and env files through the reader pool,
whose answers come back to the loop as messages."""

from __future__ import annotations

from typing import Any

from consul_reg.core.calls import Later
from consul_reg.docker.client import DockerSource
from consul_reg.docker.env_files import EnvFileReader


class LoopReads:
    def __init__(self, client: DockerSource, env_files: EnvFileReader) -> None:
        self.client = client
        self.env_files = env_files

    def list_containers(self) -> list[dict[str, Any]]:
        return self.client.list_containers()

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        return self.client.inspect(container_id)

    def inspect_later(self, container_id: str) -> Later[dict[str, Any] | None]:
        return self.client.inspect_later(container_id)

    def request_env_file(self, container_id: str, path: str) -> None:
        self.env_files.request(container_id, path)
